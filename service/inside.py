"""The inside of a step: every layer's output for one input, its learned weights, and what
changed from another step. From the published files only (model.onnx, summary.json,
metrics.json), with onnxruntime and the torch-free `onnx` package.

Which tensor of the graph is which row of the layer table. The table (trainer/summary.py)
lists the model's leaf-module calls in order ("Conv2d-1", "ReLU-2", ...). The dynamo exporter
(trainer/export.py) records on every node the module it came from (the metadata
`pkg.torch.onnx.name_scopes` and `pkg.torch.onnx.class_hierarchy`); consecutive nodes of one
module are one call, and a node of no leaf module (F.relu, a flatten) belongs to no row. Rows
and calls are then matched in order, by type. Two kinds of rows have no call of their own:
- Dropout: the identity when the model answers, so the exporter leaves it out; its output is
  its input, the row before's (`same_as`).
- a convolution that BatchNorm follows directly (the `scheduler` and `tiny` steps): the export
  folds the BatchNorm into the convolution's weights, so the served graph never holds the
  convolution's own output (`folded_into`); the BatchNorm row shows the folded result.
A graph without that metadata (made by hand, or by another exporter) is matched by ONNX op type.
Every matched tensor's shape must be the table's and every layer's weights must count the
table's parameters, or the step has no inside view (the reason is logged and answered).
"""

from __future__ import annotations

import ast
import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from pydantic import BaseModel, Field

from volume import IMAGE_SIZE, INPUT_NAME, OUTPUT_NAME, LayerRow, Metrics, Summary

# How each layer type of the table is exported: only read for graphs without module metadata.
OPS: dict[str, frozenset[str]] = {
    "Conv2d": frozenset({"Conv"}),
    "ReLU": frozenset({"Relu"}),
    "BatchNorm2d": frozenset({"BatchNormalization"}),
    "MaxPool2d": frozenset({"MaxPool"}),
    "AvgPool2d": frozenset({"AveragePool"}),
    "AdaptiveAvgPool2d": frozenset({"GlobalAveragePool", "ReduceMean", "AveragePool"}),
    "Linear": frozenset({"Gemm"}),
}
PASS_THROUGH = frozenset({"Dropout", "Identity"})  # the identity when the model answers
FOLDS_INTO = {"Conv2d": "BatchNorm2d"}  # a layer type the export folds into the next one
SCOPES, CLASSES = "pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy"
# BatchNormalization's inputs 3 and 4 are its running mean and variance: buffers, not
# parameters (the table does not count them).
NOT_LEARNED = {"BatchNormalization": {3, 4}}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}

DEFAULT_CHANNELS = 8  # channel tiles per layer unless asked for more: one row on the page
MAX_CHANNELS = 512  # the widest layer of any step has 256


class InsideError(Exception):
    """A version's graph does not line up with its layer table; the message says where."""


@dataclass(frozen=True)
class Call:
    """One module call in the graph: the layer types it can be, its output, its weights."""

    types: frozenset[str]
    output: str
    weights: tuple[str, ...]  # initializers holding learned parameters


@dataclass(frozen=True)
class Layer:
    """A row of the table and where its output is in the graph."""

    row: LayerRow
    tensor: str | None  # None: folded into the next row, not in the graph
    weights: tuple[str, ...] = ()
    same_as: str | None = None  # Dropout: the row whose output it passes on
    folded_into: str | None = None  # the row this one's weights were folded into
    holds: tuple[str, ...] = ()  # the rows whose weights `weights` are (two when folded)


def module_calls(graph: onnx.GraphProto) -> list[Call]:
    """The graph's nodes grouped into module calls, in order."""
    # Learned parameters are floating point; integer initializers are shapes and axes.
    initializers = {i.name for i in graph.initializer if i.data_type in FLOATS}
    with_metadata = any(p.key == SCOPES for n in graph.node for p in n.metadata_props)
    calls: list[Call] = []
    last_scope = None
    for node in graph.node:
        skip = NOT_LEARNED.get(node.op_type, set())
        learned = tuple(
            name for i, name in enumerate(node.input) if name in initializers and i not in skip
        )
        if not with_metadata:
            types = frozenset(t for t, ops in OPS.items() if node.op_type in ops)
            calls.append(Call(types, node.output[0], learned))
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta.get(SCOPES, "[]"))
        classes = ast.literal_eval(meta.get(CLASSES, "[]"))
        # ['', 'model', 'model.conv1', 'conv2d']: the last entry is the op, the one before it
        # the innermost module; a functional op's is the step's own module (no row's type).
        if len(scopes) >= 3 and len(classes) == len(scopes):
            scope, types = scopes[-2], frozenset({classes[-2].rsplit(".", 1)[-1]})
        else:
            scope, types = None, frozenset()
        if scope is not None and scope == last_scope:
            previous = calls.pop()
            calls.append(Call(types, node.output[0], previous.weights + learned))
        else:
            calls.append(Call(types, node.output[0], learned))
        last_scope = scope
    return calls


def match(rows: list[LayerRow], calls: list[Call]) -> list[Layer]:
    """Each row's place in the graph (the module docstring says how), or InsideError."""
    row_types = {r.type for r in rows}
    todo = [c for c in calls if c.types & row_types]
    layers: list[Layer] = []
    k = 0
    for i, row in enumerate(rows):
        call = todo[k] if k < len(todo) else None
        following = rows[i + 1] if i + 1 < len(rows) else None
        if call is not None and row.type in call.types:
            folded = layers[-1].row.name if layers and layers[-1].folded_into else None
            holds = (folded, row.name) if folded else (row.name,)
            layers.append(Layer(row, call.output, call.weights, holds=holds))
            k += 1
        elif row.type in PASS_THROUGH:
            source = layers[-1] if layers else None
            tensor = source.tensor if source else INPUT_NAME
            layers.append(Layer(row, tensor, same_as=source.row.name if source else None))
        elif (
            call is not None
            and following is not None
            and FOLDS_INTO.get(row.type) == following.type
            and following.type in call.types
        ):
            layers.append(Layer(row, None, folded_into=following.name))
        else:
            found = "/".join(sorted(call.types)) if call else "nothing"
            raise InsideError(
                f"layer {row.name} of the table has no node in the graph (the next is {found})"
            )
    if k != len(todo):
        extra = ", ".join("/".join(sorted(c.types)) for c in todo[k:])
        raise InsideError(f"the graph has layers the table does not list: {extra}")
    return layers


class InsideModel:
    """A copy of a version's graph whose outputs are every layer's tensor, in its own session.

    Made when the version is loaded (service/models.py), so that the first look inside costs
    what every other does, and a version whose graph does not line up with its table is
    logged at once. The cost, measured for the eight steps (docs/lab.md): a second session
    per step, holding a second copy of its weights (2.4 MB for `setup`, 32 KB for `scheduler`),
    and tens of milliseconds of loading; model.onnx itself is neither changed nor re-read.
    """

    def __init__(self, model_bytes: bytes, summary: Summary, options: ort.SessionOptions) -> None:
        graph_model = onnx.load_from_string(model_bytes)
        graph = graph_model.graph
        self.layers = match(summary.layers, module_calls(graph))
        needed = {name for layer in self.layers for name in layer.weights}
        self.weights = {
            i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name in needed
        }
        for layer in self.layers:
            counted = sum(self.weights[name].size for name in layer.weights)
            if len(layer.holds) == 1 and counted != layer.row.params:
                raise InsideError(
                    f"layer {layer.row.name}: the graph holds {counted} parameters for it, "
                    f"the table {layer.row.params}"
                )
        self.tensors = list(dict.fromkeys(x.tensor for x in self.layers if x.tensor))
        outputs = {o.name for o in graph.output}
        for name in self.tensors:
            if name not in outputs and name != INPUT_NAME:
                graph.output.append(onnx.ValueInfoProto(name=name))
        self.session = ort.InferenceSession(
            graph_model.SerializeToString(),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        _, values = self.run(np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32))
        for layer in self.layers:
            if layer.tensor is None:
                continue
            shape = [*values[layer.tensor].shape]
            if shape != layer.row.output_shape[1:]:
                raise InsideError(
                    f"layer {layer.row.name}: its tensor {layer.tensor!r} has shape {shape}, "
                    f"the table says {layer.row.output_shape[1:]}"
                )

    def run(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One normalised image [1,1,28,28]: its probabilities [10] and every layer tensor of
        it by name (without the batch dimension); thread-safe."""
        fetch = [OUTPUT_NAME, *(t for t in self.tensors if t != INPUT_NAME)]
        results = self.session.run(fetch, {INPUT_NAME: image})
        values = dict(zip(fetch, (r[0] for r in results), strict=True))
        values[INPUT_NAME] = image[0]
        return values.pop(OUTPUT_NAME), values


# --- The answers ------------------------------------------------------------------------


def b64(data: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(data, np.uint8).tobytes()).decode("ascii")


def quantise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values in [low, high] as grey levels 0..255 (all 0 when the layer is constant)."""
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    levels = np.rint((values - low) * (255.0 / (high - low)))
    return levels.clip(0, 255).astype(np.uint8)


class LayerOutput(BaseModel):
    name: str = Field(examples=["Conv2d-1"])
    type: str = Field(examples=["Conv2d"])
    shape: list[int] = Field(
        description="channels, height, width (or features), as in the layer table",
        examples=[[10, 26, 26]],
    )
    params: int = Field(examples=[90])
    receptive_field: int = Field(
        description="input pixels a side that one unit sees (the table's)", examples=[3]
    )
    jump: int = Field(description="input pixels between neighbouring units", examples=[1])
    low: float = Field(description="the layer's smallest value: grey level 0", examples=[-0.812])
    high: float = Field(description="its largest value: grey level 255", examples=[2.944])
    mean: float = Field(examples=[0.213])
    zeros: float = Field(
        description="share of its units at or below zero: after a ReLU, the dead ones",
        examples=[0.41],
    )
    shown: int = Field(
        description="channels in `tiles`, the first ones; the rest with ?channels= or ?layer=",
        examples=[10],
    )
    tiles: str = Field(
        description="base64 of uint8 grey levels: `shown` channels of height x width, row by "
        "row; a value is low + level * (high - low) / 255. Empty for `same_as` and "
        "`folded_into` layers",
        examples=["AAECAw=="],
    )
    same_as: str | None = Field(
        None,
        description="Dropout passes its input on unchanged when the model answers: this "
        "layer's output is that layer's",
        examples=[None],
    )
    folded_into: str | None = Field(
        None,
        description="the export folded this layer into that one (a convolution into the "
        "BatchNorm after it): its own output is not in the served model",
        examples=[None],
    )


def layer_outputs(
    inside: InsideModel, image: np.ndarray, channels: int, only: str | None
) -> tuple[np.ndarray, list[LayerOutput]]:
    """The probabilities for `image` [1,1,28,28] and every layer's output (or only the layer
    named `only`), the first `channels` channels of each as tiles."""
    probabilities, values = inside.run(image)
    answer = []
    for layer in inside.layers:
        row = layer.row
        if only is not None and row.name != only:
            continue
        common: dict[str, Any] = {
            "name": row.name,
            "type": row.type,
            "shape": row.output_shape[1:],
            "params": row.params,
            "receptive_field": row.receptive_field,
            "jump": row.jump,
            "same_as": layer.same_as,
            "folded_into": layer.folded_into,
        }
        if layer.tensor is None:
            answer.append(LayerOutput(**common, low=0, high=0, mean=0, zeros=0, shown=0, tiles=""))
            continue
        value = values[layer.tensor]
        maps = value if value.ndim == 3 else value.reshape(-1, 1, 1)  # features: 1x1 tiles
        # A vector of features is one small strip: all of it. Maps: the first `channels`.
        shown = len(maps) if maps.shape[1] * maps.shape[2] == 1 else min(channels, len(maps))
        low, high = float(value.min()), float(value.max())
        tiles = "" if layer.same_as and only is None else b64(quantise(maps[:shown], low, high))
        answer.append(
            LayerOutput(
                **common,
                low=round(low, 5),
                high=round(high, 5),
                mean=round(float(value.mean()), 5),
                zeros=round(float((value <= 0).mean()), 4),
                shown=shown,
                tiles=tiles,
            )
        )
    return probabilities, answer


HISTOGRAM_BINS = 16


class WeightStats(BaseModel):
    layer: str = Field(examples=["Conv2d-1"])
    holds: list[str] = Field(
        description="the table's rows these weights are: two when the export folded a "
        "convolution and its BatchNorm into one",
        examples=[["Conv2d-1"]],
    )
    count: int = Field(description="numbers in the served graph for it", examples=[90])
    min: float = Field(examples=[-0.61])
    max: float = Field(examples=[0.58])
    mean: float = Field(examples=[0.004])
    std: float = Field(examples=[0.21])
    histogram: list[int] = Field(
        description=f"counts in {HISTOGRAM_BINS} equal bins from min to max",
        examples=[[1, 3, 9, 20]],
    )


class Kernels(BaseModel):
    layer: str = Field(description="the first convolution", examples=["Conv2d-1"])
    holds: list[str] = Field(examples=[["Conv2d-1"]])
    count: int = Field(description="kernels (its output channels)", examples=[10])
    size: int = Field(description="pixels a side", examples=[3])
    scale: float = Field(
        description="the largest |weight|: grey 0 is -scale, 128 about 0, 255 +scale",
        examples=[0.61],
    )
    tiles: str = Field(
        description="base64 of uint8: `count` kernels of size x size, row by row",
        examples=["gICA"],
    )


class StepWeights(BaseModel):
    step: str = Field(examples=["gap"])
    version: str = Field(examples=["20261125T161300.123456Z-3f2a9c1b"])
    kernels: Kernels | None = Field(
        description="None when the first convolution sees more than one input channel"
    )
    layers: list[WeightStats] = Field(description="every layer with weights, in table order")


def weight_stats(inside: InsideModel, step: str, version: str) -> StepWeights:
    """Every layer's weight statistics, and the first convolution's kernels as tiles."""
    types = {layer.row.name: layer.row.type for layer in inside.layers}
    stats = []
    kernels = None
    first_conv = True
    for layer in inside.layers:
        if not layer.weights:
            continue
        arrays = [inside.weights[name] for name in layer.weights]
        flat = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
        counts, _ = np.histogram(flat, bins=HISTOGRAM_BINS)
        stats.append(
            WeightStats(
                layer=layer.row.name,
                holds=list(layer.holds),
                count=flat.size,
                min=round(float(flat.min()), 5),
                max=round(float(flat.max()), 5),
                mean=round(float(flat.mean()), 5),
                std=round(float(flat.std()), 5),
                histogram=counts.tolist(),
            )
        )
        kernel = arrays[0]
        if first_conv and types[layer.holds[0]] == "Conv2d":
            first_conv = False
            if kernel.ndim != 4 or kernel.shape[1] != 1:
                continue
            scale = float(np.abs(kernel).max())
            kernels = Kernels(
                layer=layer.row.name,
                holds=list(layer.holds),
                count=kernel.shape[0],
                size=kernel.shape[2],
                scale=round(scale, 5),
                tiles=b64(quantise(kernel[:, 0], -scale, scale)),
            )
    return StepWeights(step=step, version=version, kernels=kernels, layers=stats)


# --- What changed from one step to another ----------------------------------------------

Change = Literal["same", "resized", "added", "removed"]


class LayerChange(BaseModel):
    change: Change = Field(examples=["added"])
    before: LayerRow | None = Field(description="the row in the earlier step's table")
    after: LayerRow | None = Field(description="the row in this step's table")
    params: int = Field(description="parameters gained (negative: lost)", examples=[32])


class RecipeChange(BaseModel):
    field: str = Field(examples=["lr"])
    before: Any = Field(examples=[0.01])
    after: Any = Field(examples=[0.065])


class StepDiff(BaseModel):
    step: str = Field(examples=["batchnorm"])
    before: str = Field(description="the step it is compared with", examples=["lighter"])
    layers: list[LayerChange] = Field(
        description="both layer tables side by side: the most rows of the same type paired"
    )
    params_before: int = Field(examples=[20954])
    params_after: int = Field(examples=[21166])
    accuracy_before: float = Field(description="best test accuracy, percent", examples=[98.9])
    accuracy_after: float = Field(examples=[99.2])
    recipe: list[RecipeChange] = Field(
        description="the training recipe's fields that differ, from both metrics.json"
    )


def align(before: list[LayerRow], after: list[LayerRow]) -> list[tuple[int | None, int | None]]:
    """The two tables' rows paired as an edit script: the most pairs of the same layer type
    (a longest common subsequence), and among those the most with the same shape and
    parameters; a row left unpaired is removed (None after) or added (None before)."""
    n, m = len(before), len(after)

    def score(a: LayerRow, b: LayerRow) -> int:
        if a.type != b.type:
            return -1
        return 1000 + (a.output_shape == b.output_shape and a.params == b.params)

    best = [[0] * (m + 1) for _ in range(n + 1)]  # best[i][j]: of before[i:] and after[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            paired = score(before[i], after[j])
            best[i][j] = max(
                best[i + 1][j], best[i][j + 1], paired + best[i + 1][j + 1] if paired > 0 else 0
            )
    pairs: list[tuple[int | None, int | None]] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m:
            paired = score(before[i], after[j])
            if paired > 0 and best[i][j] == paired + best[i + 1][j + 1]:
                pairs.append((i, j))
                i, j = i + 1, j + 1
                continue
        if i < n and (j == m or best[i][j] == best[i + 1][j]):
            pairs.append((i, None))
            i += 1
        else:
            pairs.append((None, j))
            j += 1
    return pairs


def diff(before: tuple[Summary, Metrics], after: tuple[Summary, Metrics]) -> StepDiff:
    """The layer tables of two steps aligned (`align`), and the recipe fields that differ."""
    rows_a, rows_b = before[0].layers, after[0].layers
    changes = []
    for i, j in align(rows_a, rows_b):
        a = rows_a[i] if i is not None else None
        b = rows_b[j] if j is not None else None
        change: Change
        if a is None:
            change = "added"
        elif b is None:
            change = "removed"
        elif a.output_shape == b.output_shape and a.params == b.params:
            change = "same"
        else:
            change = "resized"
        gained = (b.params if b else 0) - (a.params if a else 0)
        changes.append(LayerChange(change=change, before=a, after=b, params=gained))
    recipe_a, recipe_b = before[1].recipe, after[1].recipe
    recipe = [
        RecipeChange(field=key, before=recipe_a.get(key), after=recipe_b.get(key))
        for key in dict.fromkeys([*recipe_b, *recipe_a])
        if recipe_a.get(key) != recipe_b.get(key)
    ]
    return StepDiff(
        step=after[0].step,
        before=before[0].step,
        layers=changes,
        params_before=before[0].total_params,
        params_after=after[0].total_params,
        accuracy_before=before[1].best_test_accuracy,
        accuracy_after=after[1].best_test_accuracy,
        recipe=recipe,
    )
