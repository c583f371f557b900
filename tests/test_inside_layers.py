"""The inside view's map from the layer table to the exported graph, over the step registry:
every row's tensor in onnxruntime is what PyTorch's module gave, for every step as the trainer
exports it; and the step-to-step diff names exactly the layers each step adds or changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from service.inside import InsideModel, diff, weight_stats
from service.models import session_options
from tests.volume_fixtures import fake_metrics
from trainer.export import export_onnx
from trainer.steps import REGISTRY, get_step
from trainer.summary import summarize
from volume import IMAGE_SIZE, Summary

pytestmark = pytest.mark.slow  # eight ONNX exports


def untrained(slug: str) -> nn.Module:
    """The step's model with seeded weights and BatchNorm statistics far from their defaults,
    so that a fold or a swapped tensor shows in the numbers."""
    torch.manual_seed(0)
    model = get_step(slug).build()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


def module_calls(model: nn.Module, image: torch.Tensor) -> list[tuple[nn.Module, np.ndarray]]:
    """Every leaf module called and its output, in call order: the rows of `summarize`'s table."""
    outputs: list[tuple[nn.Module, np.ndarray]] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [
        m.register_forward_hook(lambda m, _i, out: outputs.append((m, out[0].numpy().copy())))
        for m in leaves
    ]
    with torch.no_grad():
        model(image)
    for hook in hooks:
        hook.remove()
    return outputs


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[nn.Module, bytes, Summary]]:
    models = {slug: untrained(slug) for slug in REGISTRY}
    return {s: (m, export_onnx(m), summarize(m, s)) for s, m in models.items()}


@pytest.mark.parametrize("slug", list(REGISTRY))
def test_every_row_is_the_tensor_pytorch_computed(slug: str, exported: dict) -> None:
    model, onnx_bytes, summary = exported[slug]
    view = InsideModel(onnx_bytes, summary, session_options(1))
    image = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 1, IMAGE_SIZE, IMAGE_SIZE)))
    image = image.float()
    expected = [output for _, output in module_calls(model, image)]
    probabilities, values = view.run(image.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(probabilities, model(image).exp()[0].numpy(), atol=1e-5)
    assert [layer.row.name for layer in view.layers] == [r.name for r in summary.layers]
    rows = summary.layers
    for i, layer in enumerate(view.layers):
        # Only a convolution directly before a BatchNorm is folded; only Dropout passes through.
        folds = (
            layer.row.type == "Conv2d" and i + 1 < len(rows) and rows[i + 1].type == "BatchNorm2d"
        )
        assert (layer.folded_into is not None) == folds, layer.row.name
        assert (layer.same_as is not None) == (layer.row.type == "Dropout"), layer.row.name
        if layer.tensor is None:
            assert layer.folded_into == rows[i + 1].name
            continue
        np.testing.assert_allclose(
            values[layer.tensor], expected[i], atol=1e-4, err_msg=layer.row.name
        )


@pytest.mark.parametrize("slug", list(REGISTRY))
def test_weights_are_the_modules_parameters(slug: str, exported: dict) -> None:
    model, onnx_bytes, summary = exported[slug]
    view = InsideModel(onnx_bytes, summary, session_options(1))
    answer = weight_stats(view, slug, "v1")
    image = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    called = [module for module, _ in module_calls(model, image)]
    by_row = dict(zip([r.name for r in summary.layers], called, strict=True))
    listed = {s.layer: s for s in answer.layers}
    for row in summary.layers:
        layer = next(x for x in view.layers if x.row.name == row.name)
        if row.params == 0 or layer.folded_into:
            continue
        stats = listed[row.name]
        if stats.holds == [row.name]:  # not folded: exactly the module's parameters
            values = torch.cat([p.detach().ravel() for p in by_row[row.name].parameters()])
            assert stats.count == row.params == values.numel()
            assert stats.min == pytest.approx(values.min().item(), abs=1e-5)
            assert stats.max == pytest.approx(values.max().item(), abs=1e-5)
            assert sum(stats.histogram) == stats.count
    first = next(r for r in summary.layers if r.type == "Conv2d")
    assert answer.kernels is not None and answer.kernels.holds[0] == first.name
    assert answer.kernels.count == first.output_shape[1] and answer.kernels.size == 3


@pytest.fixture(scope="module")
def tables(exported: dict) -> dict[str, Summary]:
    return {slug: summary for slug, (_, _, summary) in exported.items()}


# (earlier step, step, the layer types added, the types removed, whether any row is resized)
DIFFS = [
    ("lighter", "batchnorm", ["BatchNorm2d"] * 6, [], False),
    ("batchnorm", "dropout", ["Dropout"] * 6, [], False),
    ("dropout", "gap", ["BatchNorm2d", "Dropout", "AvgPool2d"], ["Conv2d"], True),
    ("skeleton", "lighter", [], [], True),
    # A third block a stage (three) and a channel shuffle before each grouped 1x1 (seven).
    ("scheduler", "tiny", ["Conv2d"] * 6 + ["ChannelShuffle"] * 7 + ["BatchNorm2d", "ReLU"] * 3, [],
     True),
    ("gap", "gap", [], [], False),
]  # fmt: skip


@pytest.mark.parametrize(("before", "after", "added", "removed", "resized"), DIFFS)
def test_the_diff_names_what_each_step_changed(
    tables: dict[str, Summary],
    before: str,
    after: str,
    added: list[str],
    removed: list[str],
    resized: bool,
) -> None:
    summaries = tables
    answer = diff(
        (summaries[before], fake_metrics(before)), (summaries[after], fake_metrics(after))
    )
    assert sorted(c.after.type for c in answer.layers if c.change == "added" and c.after) == sorted(
        added
    )
    assert [c.before.type for c in answer.layers if c.change == "removed" and c.before] == removed
    assert any(c.change == "resized" for c in answer.layers) == resized
    # Both tables, whole and in order, side by side.
    assert [c.before.name for c in answer.layers if c.before] == [
        r.name for r in summaries[before].layers
    ]
    assert [c.after.name for c in answer.layers if c.after] == [
        r.name for r in summaries[after].layers
    ]
    assert sum(c.params for c in answer.layers) == answer.params_after - answer.params_before
