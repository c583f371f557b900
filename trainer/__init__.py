"""The trainer: trains each step of the assignment, exports it to ONNX, publishes it."""
