"""A model's layer table in torchsummary's layout, plus the receptive field after each layer.

torchsummary (the tool the course and the seed use) is unmaintained; this reproduces its table
and size estimates exactly, from forward hooks on the leaf modules, numbered in call order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from volume import IMAGE_SIZE, LayerRow, Summary

_RULE = "-" * 64
_DOUBLE = "=" * 64
_MB = 1024.0**2
_BYTES_PER_VALUE = 4.0  # float32, as torchsummary assumes


def summarize(model: nn.Module, step: str) -> Summary:
    """Run one forward pass of a batch of 2 and describe every leaf layer it called."""
    calls: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        calls.append((module, tuple(inputs[0].shape), tuple(output.shape)))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()  # so that summarising never moves BatchNorm's running statistics
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    rows = []
    rf, jump, size, channels = 1, 1, IMAGE_SIZE, 1
    for i, (module, in_shape, out_shape) in enumerate(calls):
        rf, jump = _receptive_field(module, in_shape, rf, jump, size, channels)
        if len(out_shape) == 4:
            channels, size = out_shape[1], out_shape[2]
        else:
            size = 1  # flattened: later layers see everything the first Linear saw
        params = list(module.parameters(recurse=False))
        rows.append(
            LayerRow(
                name=f"{type(module).__name__}-{i + 1}",
                type=type(module).__name__,
                output_shape=[-1, *out_shape[1:]],
                params=sum(p.numel() for p in params),
                trainable=any(p.requires_grad for p in params),
                receptive_field=rf,
                jump=jump,
            )
        )

    total = sum(r.params for r in rows)
    trainable = sum(r.params for r in rows if r.trainable)
    input_mb = IMAGE_SIZE * IMAGE_SIZE * _BYTES_PER_VALUE / _MB
    # torchsummary counts every layer's output twice: once forward, once for its gradient.
    outputs = sum(math.prod(r.output_shape[1:]) for r in rows)
    forward_backward_mb = 2.0 * outputs * _BYTES_PER_VALUE / _MB
    params_mb = total * _BYTES_PER_VALUE / _MB
    summary = Summary(
        step=step,
        layers=rows,
        total_params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
        input_size_mb=input_mb,
        forward_backward_size_mb=forward_backward_mb,
        params_size_mb=params_mb,
        estimated_total_size_mb=input_mb + forward_backward_mb + params_mb,
        text="",
    )
    return summary.model_copy(update={"text": format_table(summary)})


def _receptive_field(
    module: nn.Module, in_shape: tuple[int, ...], rf: int, jump: int, size: int, channels: int
) -> tuple[int, int]:
    """The receptive field and jump after ``module``, given those after the previous layer.

    A functional pooling between two layers (the seed's first model pools with F.max_pool2d)
    does not show up as a layer; it shows as an input smaller than the previous output, and is
    counted as a k x k pool with stride k.
    """
    if len(in_shape) == 4:
        hidden = size // in_shape[2] if in_shape[2] < size else 1
        rf, jump = rf + (hidden - 1) * jump, jump * hidden
    elif len(in_shape) == 2 and size > 1:  # the first Linear after flattening a feature map
        seen = round(math.sqrt(in_shape[1] / channels))
        hidden = size // seen if 0 < seen < size else 1
        rf, jump = rf + (hidden - 1) * jump, jump * hidden
        rf = rf + (seen - 1) * jump  # it sees every position of the map
    if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        k = _first(module.kernel_size)
        stride = _first(module.stride) if module.stride else k
        dilation = _first(getattr(module, "dilation", 1))
        rf, jump = rf + (k - 1) * dilation * jump, jump * stride
    elif isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        rf = rf + (in_shape[2] - 1) * jump
    return rf, jump


def _first(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else value[0]


def format_table(summary: Summary) -> str:
    """The torchsummary text: the layer table, the totals and the size estimates."""
    lines = [_RULE, "{:>20}  {:>25} {:>15}".format("Layer (type)", "Output Shape", "Param #")]
    lines.append(_DOUBLE)
    for row in summary.layers:
        shape = "[" + ", ".join(str(d) for d in row.output_shape) + "]"
        lines.append(f"{row.name:>20}  {shape:>25} {row.params:>15,}")
    lines += [
        _DOUBLE,
        f"Total params: {summary.total_params:,}",
        f"Trainable params: {summary.trainable_params:,}",
        f"Non-trainable params: {summary.non_trainable_params:,}",
        _RULE,
        f"Input size (MB): {summary.input_size_mb:0.2f}",
        f"Forward/backward pass size (MB): {summary.forward_backward_size_mb:0.2f}",
        f"Params size (MB): {summary.params_size_mb:0.2f}",
        f"Estimated Total Size (MB): {summary.estimated_total_size_mb:0.2f}",
        _RULE,
    ]
    return "\n".join(lines) + "\n"
