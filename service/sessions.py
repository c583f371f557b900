"""The onnxruntime session settings every model in this project is served with.

Its own module, importing nothing but onnxruntime, so that the framework peers of
`bench/peers.py` share them without the service's other dependencies.
"""

from __future__ import annotations

import onnxruntime as ort

__all__ = ["session_options"]


def session_options(threads: int) -> ort.SessionOptions:
    """Settings shared by every session: the service runs one a step (eight) side by side."""
    options = ort.SessionOptions()
    # By default each session starts one intra-op thread per core; eight sessions would put
    # eight threads on every core. These models are tiny, so `threads` (1 by default) per run
    # is enough, and concurrent requests use the other cores.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads would otherwise spin waiting for work, each burning a core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
