"""The models being served: one onnxruntime session per step, swapped when the trainer publishes.

The registry reads the volume through `volume` (the trainer's contract) and never trusts it
blindly: a version whose file is corrupt, or that onnxruntime cannot load, or whose graph does
not answer [N,10] probabilities, is logged and skipped, and the step keeps serving what it had.

Swapping: the registry's dict of loaded models is rebuilt and replaced in one assignment. A
request takes one `LoadedModel` from it and uses only that, so a swap never changes the model
under a request in flight; the old version's session is released (garbage-collected) as soon as
the last request holding it returns.

Pinned versions (`?version=`): a kept version other than the current one is loaded on demand
and held in a least-recently-used cache of PINNED_VERSIONS models; a version that stops being
current goes there too, so that clients pinned to it (a rollback's) are not made to wait.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.inside import InsideModel
from service.sessions import session_options
from volume import (
    IMAGE_SIZE,
    INDEX_FILE,
    INPUT_NAME,
    NUM_CLASSES,
    OUTPUT_NAME,
    Metrics,
    Mistakes,
    PublishedVersion,
    Samples,
    Summary,
    VolumeError,
    read_index,
    read_version,
)
from volume.versions import UnknownVersionError, read_kept

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One published version of one step, ready to run."""

    step: str
    version: str
    summary: Summary
    metrics: Metrics
    session: ort.InferenceSession
    mistakes: Mistakes | None = None  # None: a version published before mistakes.json
    samples: Samples | None = None  # None: a version published before samples.json
    inside: InsideModel | None = None  # every layer's output (service/inside.py); None: ...
    inside_problem: str = ""  # ... why not: its graph does not line up with its table

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities [N,10] for normalised images [N,1,28,28]; thread-safe."""
        probabilities: np.ndarray = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        return probabilities


def load_model(published: PublishedVersion, options: ort.SessionOptions) -> LoadedModel:
    """An InferenceSession for a checked version; raise VolumeError if it does not fit the API."""
    session = ort.InferenceSession(
        published.model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
        raise VolumeError(
            f"{published.model_path}: graph has inputs {inputs} and outputs {outputs}, expected "
            f"{INPUT_NAME!r} -> {OUTPUT_NAME!r}; re-export it with `python -m trainer export`"
        )
    # The inside view is a part of the lab: a version that has none still serves predictions.
    inside, problem = None, ""
    try:
        inside = InsideModel(published.model_bytes, published.summary, options)
    except Exception as e:  # the mapping's own InsideError, or onnx / onnxruntime refusing
        problem = f"{type(e).__name__}: {e}"
        log.warning("step %s version %s: no inside view: %s", published.step, published.version, e)
    model = LoadedModel(
        published.step,
        published.version,
        published.summary,
        published.metrics,
        session,
        mistakes=published.mistakes,
        samples=published.samples,
        inside=inside,
        inside_problem=problem,
    )
    # One run now, so that a model that loads but cannot answer is never served.
    probabilities = model.predict(np.zeros((2, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32))
    if probabilities.shape != (2, NUM_CLASSES) or not np.allclose(
        probabilities.sum(axis=1), 1, atol=1e-3
    ):
        raise VolumeError(
            f"{published.model_path}: answers shape {probabilities.shape}, not probabilities "
            f"[N,{NUM_CLASSES}] summing to 1; re-export it with `python -m trainer export`"
        )
    return model


class ModelRegistry:
    """The current version of every published step, refreshed from the volume's index.

    What stops it from loading (an unreadable or vanished volume, a version that cannot be
    loaded) is kept in `problems` for /readyz, and logged once when it starts and once when it
    ends, not at every poll; meanwhile the models already loaded keep serving.
    """

    def __init__(
        self,
        root: Path,
        threads: int = 1,
        on_swap: Callable[[str, str, str | None], None] | None = None,
        pinned: int = 8,
    ) -> None:
        """`on_swap(step, version, previous version)` is called after each swap (the app
        records it in Prometheus: this module stays free of the web service's parts).
        `pinned`: how many versions other than the current ones are held loaded."""
        self.root = Path(root)
        self._on_swap = on_swap
        self._options = session_options(threads)
        self._models: dict[str, LoadedModel] = {}
        # Versions are immutable, so one that failed to load will fail again: log it once.
        self._failed: set[tuple[str, str]] = set()
        self._problems: dict[str, str] = {}  # "volume" or a step -> what is wrong with it
        self._refreshing = threading.Lock()
        self._pinned: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._pinned_size = pinned
        self._pinning = threading.Lock()

    @property
    def models(self) -> Mapping[str, LoadedModel]:
        """A snapshot: slug -> loaded model, for the steps that have one."""
        return self._models

    @property
    def problems(self) -> list[str]:
        """What is wrong with the volume or a step's current version, now."""
        return list(self._problems.values())

    def get(self, step: str) -> LoadedModel | None:
        return self._models.get(step)

    def best_accuracy(self) -> dict[str, float]:
        """Slug -> best test accuracy, as `volume.resolve_step` wants it to resolve 'best'."""
        return {s: m.metrics.best_test_accuracy for s, m in self._models.items()}

    def _problem(self, key: str, problem: str | None) -> None:
        """Record what is wrong with `key` (None: nothing); log only when that changes."""
        before = self._problems.get(key)
        if problem == before:
            return
        if problem is None:
            del self._problems[key]
            if key == "volume":  # a step says so itself: "serving version ..."
                log.info("the model volume %s is readable again", self.root)
        else:
            self._problems[key] = problem
            log.error("%s", problem)

    def refresh(self) -> list[str]:
        """Load every step whose index entry names a new version; return the steps swapped."""
        with self._refreshing:
            try:
                index = read_index(self.root)
                if not index.steps and not self.root.is_dir():
                    raise VolumeError(f"{self.root} is not a folder (is the volume mounted?)")
                if not index.steps and self._models:  # a mount vanished, an empty one in its place
                    raise VolumeError(f"{INDEX_FILE} is gone (is the volume still mounted?)")
            except (VolumeError, OSError) as e:
                serving = ", ".join(self._models) or "nothing"
                self._problem(
                    "volume",
                    f"cannot read the index of the model volume {self.root}: {e}; "
                    f"still serving what was loaded ({serving})",
                )
                return []
            self._problem("volume", None)
            models = dict(self._models)
            swapped = []
            for step, entry in index.steps.items():
                current = models.get(step)
                if (current and current.version == entry.version) or (
                    (step, entry.version) in self._failed
                ):
                    continue
                serving = f"still serving {current.version}" if current else "not serving it"
                try:
                    models[step] = load_model(read_version(self.root, step, entry), self._options)
                except OSError as e:  # unreadable now (permissions, a mount): try again later
                    self._problem(
                        step, f"step {step}: cannot read version {entry.version}, {serving}: {e}"
                    )
                    continue
                # onnxruntime raises its own exception types for bad graphs; whatever breaks
                # one version must not stop the other steps or the service.
                except Exception as e:
                    self._failed.add((step, entry.version))
                    self._problem(
                        step, f"step {step}: cannot load version {entry.version}, {serving}: {e}"
                    )
                    continue
                self._problem(step, None)
                swapped.append(step)
                if current is not None:
                    self._remember(current)
                if self._on_swap is not None:
                    self._on_swap(step, entry.version, current.version if current else None)
                log.info("step %s: serving version %s", step, entry.version)
            self._models = models  # one assignment: readers see the old dict or the new one
            self._forget_pruned()
            return swapped

    def _forget_pruned(self) -> None:
        """Drop the pinned versions the trainer has pruned: no longer kept, no longer served."""
        with self._pinning:
            held = list(self._pinned)
        gone = [key for key in held if not (self.root / key[0] / key[1]).is_dir()]
        with self._pinning:
            for key in gone:
                self._pinned.pop(key, None)

    def _remember(self, model: LoadedModel) -> None:
        """Hold `model` among the pinned versions, the least recently used one dropped."""
        with self._pinning:
            self._pinned[model.step, model.version] = model
            self._pinned.move_to_end((model.step, model.version))
            while len(self._pinned) > self._pinned_size:
                self._pinned.popitem(last=False)

    def held(self, step: str, version: str) -> LoadedModel | None:
        """Version `version` of `step` if it is loaded (current or pinned): no file is read."""
        current = self._models.get(step)
        if current is not None and current.version == version:
            return current
        with self._pinning:
            model = self._pinned.get((step, version))
            if model is not None:
                self._pinned.move_to_end((step, version))
        return model

    def load_pinned(self, step: str, version: str) -> LoadedModel:
        """Kept version `version` of `step`, loaded now and held (blocking: call it from a
        worker thread). Raises `volume.versions.UnknownVersionError` for a version the volume
        does not keep, VolumeError for one that cannot be served."""
        model = self.held(step, version)  # another request may have loaded it meanwhile
        if model is not None:
            return model
        try:
            model = load_model(read_kept(self.root, step, version), self._options)
        except (VolumeError, UnknownVersionError):
            raise
        except OSError as e:
            raise VolumeError(f"step {step}: cannot read version {version}: {e}") from None
        except Exception as e:  # onnxruntime's own exception types, as in `refresh`
            raise VolumeError(f"step {step}: cannot load version {version}: {e}") from None
        self._remember(model)
        log.info("step %s: loaded pinned version %s", step, version)
        return model
