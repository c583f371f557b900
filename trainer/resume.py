"""Resuming a killed training: the state saved after every epoch, and what it must match.

After each epoch `fit` hands `snapshot()` to the trainer, which writes it atomically to
``checkpoints/<step>.resume.pt`` beside the kept checkpoint: the weights, the optimiser and
scheduler, the RNG states of torch (CPU and CUDA), numpy and Python, the epoch history and the
best epoch's weights so far, and the fingerprint of what is being trained. A kill at any moment
leaves the last completed epoch's state whole. `python -m trainer run --resume` restores it
(`restore()`) and trains the remaining epochs; with every RNG as it was, they draw the same
shuffles, augmentations and dropout masks as a run that was never stopped, so on the CPU the
numbers are the same, epoch by epoch.

The fingerprint says what a run trains: the step, its recipe, the code that decides its numbers
and its published files (the step's model classes, the training loop, the data pipeline, the
export; a hash each, so a refusal can name what changed; a hash of source, not a git commit,
so that it holds in the images, which have no .git), the data's checksums, the subset, torch's
version and the device type. A state whose fingerprint differs is refused, never mixed in; a
published version whose metrics record the same fingerprint is not trained again.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import io
import random
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.steps import Recipe, get_step
from volume import EpochMetrics, Metrics, atomic_write_bytes, checkpoint_path, space_needed

# The trainer's modules that decide a step's numbers and what is published of it; the classes
# of steps.py that its model is made of are hashed by their source (code_hashes), so another
# step's classes do not change it. Not the CLI: it chooses what they are given (the recipe, seed,
# --limit and device, all recorded in the provenance), so a new flag or a better message does
# not make every committed run older code.
CODE_MODULES = ("train.py", "loop.py", "data.py", "export.py", "summary.py")
TRAINER_DIR = Path(__file__).resolve().parent


class ResumeError(Exception):
    """A resume state that cannot be used; the message says why and what to do."""


def code_digest(source: str) -> str:
    """A hash of what Python runs of ``source``: its syntax tree without docstrings and without
    a class's decorators (a step's ``@register`` holds its objective, prose). A comment or a
    docstring mended does not make a run older code; a changed statement does."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            node.decorator_list = []
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return "ast:" + hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def code_hashes(step: str, legacy: bool = False) -> dict[str, str]:
    """File (or `steps.py:Class`) -> the digest of its code (`code_digest`): what trains `step`.

    ``legacy``: sha256 of the raw source instead, as runs recorded before 2026-12-05 did (every
    comment counted), so that those runs can still be compared with the code as it is."""

    def digest(source: str) -> str:
        return hashlib.sha256(source.encode()).hexdigest()[:16] if legacy else code_digest(source)

    hashes = {f"trainer/{name}": digest((TRAINER_DIR / name).read_text()) for name in CODE_MODULES}
    # Every class of steps.py the model is made of: its own class and bases, and the blocks it
    # builds from (scheduler's and tiny's `Separable`), each with its bases. Building the model
    # costs a few milliseconds (reading classes off the step's class alone missed the blocks);
    # its initial weights are drawn from a forked RNG, so hashing never moves a run's numbers.
    with torch.random.fork_rng(devices=[]):
        model = get_step(step).build()
    classes = {c for m in model.modules() for c in inspect.getmro(type(m))}
    for cls in sorted(classes, key=lambda c: c.__name__):
        if cls.__module__ == "trainer.steps":
            hashes[f"trainer/steps.py:{cls.__name__}"] = digest(inspect.getsource(cls))
    return hashes


@dataclass(frozen=True)
class Fingerprint:
    """What a run trains; two runs with equal fingerprints train the same numbers on the same
    CPU host (another host's float rounding moves the digits, docs/steps.md)."""

    step: str
    recipe: dict[str, Any]
    code: dict[str, str]
    data: dict[str, str]  # IDX file name -> sha256
    limit: int | None
    torch: str
    device: str  # "cpu" or "cuda": the same seed gives other numbers on another device

    @classmethod
    def of(
        cls, step: str, recipe: Recipe, data: dict[str, str], limit: int | None, device: str
    ) -> Fingerprint:
        return cls(step, asdict(recipe), code_hashes(step), data, limit, torch.__version__, device)

    def differences(self, other: Fingerprint) -> list[str]:
        """What differs from `other`, one phrase each: "recipe lr 0.01 -> 0.02"."""
        found = []
        for key in sorted(self.recipe.keys() | other.recipe.keys()):
            if self.recipe.get(key) != other.recipe.get(key):
                found.append(f"recipe {key} {self.recipe.get(key)} -> {other.recipe.get(key)}")
        changed = sorted(
            k for k in self.code.keys() | other.code.keys() if self.code.get(k) != other.code.get(k)
        )
        if changed:
            found.append(f"code of {', '.join(changed)} changed")
        if self.data != other.data:
            found.append("MNIST files differ (checksums)")
        for name in ("step", "limit", "torch", "device"):
            if getattr(self, name) != getattr(other, name):
                found.append(f"{name} {getattr(self, name)} -> {getattr(other, name)}")
        return found


def published_differences(metrics: Metrics, wanted: Fingerprint) -> list[str]:
    """What differs between a published version's run and `wanted` (device and torch aside:
    a version trained on a GPU, or by another torch, is as good a result of this recipe)."""
    provenance = metrics.provenance
    published = Fingerprint(
        step=metrics.step,
        recipe=metrics.recipe,
        code=provenance.code or {},
        data=provenance.data,
        limit=provenance.limit,
        torch=wanted.torch,
        device=wanted.device,
    )
    found = published.differences(wanted)
    return (
        ["no code hash recorded (published before resuming existed)"]
        if not provenance.code
        else found
    )


# --- the state after an epoch ---------------------------------------------------------------


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def snapshot(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    history: list[EpochMetrics],
    best_epoch: int,
    best_state: dict[str, torch.Tensor],
    ema: nn.Module | None = None,
) -> dict[str, Any]:
    """Everything `fit` needs to go on after the epoch it just finished, copied (state_dict()
    returns the live tensors, which the next epoch changes in place)."""
    return {
        "model": copy.deepcopy(model.state_dict()),
        "ema": copy.deepcopy(ema.state_dict()) if ema is not None else None,
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_states(),
        "history": [epoch.model_dump() for epoch in history],
        "best_epoch": best_epoch,
        "best_state": best_state,
    }


def restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ema: nn.Module | None = None,
) -> tuple[list[EpochMetrics], int, dict[str, torch.Tensor]]:
    """Put a snapshot back; return (history, best epoch, best weights). RNGs are set last."""
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_states(state["rng"])
    history = [EpochMetrics.model_validate(epoch) for epoch in state["history"]]
    return history, state["best_epoch"], state["best_state"]


# --- on the volume --------------------------------------------------------------------------


def state_path(root: Path, step: str) -> Path:
    return checkpoint_path(root, step).with_suffix(".resume.pt")


def save_state(
    root: Path, fingerprint: Fingerprint, state: dict[str, Any], extra: dict[str, Any]
) -> None:
    """Write the state of `fingerprint.step` atomically: a kill leaves this one or the last."""
    buffer = io.BytesIO()
    torch.save({"fingerprint": asdict(fingerprint), **extra, **state}, buffer)
    path = state_path(root, fingerprint.step)
    with space_needed(root, f"the resume state of {fingerprint.step}", len(buffer.getvalue())):
        atomic_write_bytes(path, buffer.getvalue())


def load_state(root: Path, wanted: Fingerprint) -> dict[str, Any] | None:
    """The saved state of `wanted.step`, or None; ResumeError if it was saved by another run."""
    path = state_path(root, wanted.step)
    if not path.exists():
        return None
    try:
        # Our own file: it holds numpy's RNG state and plain Python values besides tensors.
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        saved = Fingerprint(**state["fingerprint"])
    except Exception as e:  # written atomically, so this is damage or another format
        raise ResumeError(
            f"{path} cannot be read ({type(e).__name__}: {e}); run with --fresh to start "
            f"{wanted.step} over"
        ) from None
    differences = saved.differences(wanted)
    if differences:
        raise ResumeError(
            f"{path} was saved by another run of {wanted.step} ({'; '.join(differences)}): "
            f"refusing to mix them. Run with --fresh to start {wanted.step} over (its state is "
            "discarded), or restore what changed"
        )
    return state


def remove_state(root: Path, step: str) -> None:
    state_path(root, step).unlink(missing_ok=True)
