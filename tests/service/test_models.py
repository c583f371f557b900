"""The registry: loading, hot swaps, and a volume that lies."""

from __future__ import annotations

import gc
import json
import logging
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

import volume
import volume.versions
from service.models import ModelRegistry, session_options
from tests.service.conftest import TRAINED, gemm_model, publish, random_model

BATCH = np.zeros((3, 1, 28, 28), np.float32)


def test_loads_every_published_step(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir)
    assert registry.refresh() == list(TRAINED)
    assert set(registry.models) == set(TRAINED)
    probabilities = registry.models["gap"].predict(BATCH)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert registry.refresh() == []  # nothing new: nothing reloaded
    assert registry.best_accuracy() == {"gap": 90.0, "scheduler": 91.0}


@pytest.mark.parametrize("root", ["missing", "empty"])
def test_an_empty_or_missing_volume_loads_nothing(tmp_path: Path, root: str) -> None:
    (tmp_path / "empty").mkdir()
    registry = ModelRegistry(tmp_path / root)
    assert registry.refresh() == [] and not registry.models


def test_sessions_do_not_each_pin_a_thread_per_core() -> None:
    options = session_options(threads=1)
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_swap_keeps_the_old_model_working_until_released(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir, pinned=0)  # none held for `?version=`
    registry.refresh()
    old = registry.models["gap"]
    new_version = publish(models_dir, "gap", random_model(7))
    assert registry.refresh() == ["gap"]
    assert registry.models["gap"].version == new_version != old.version
    assert old.predict(BATCH).shape == (3, 10)  # a request in flight still holds it
    released = weakref.ref(old.session)
    del old
    gc.collect()
    assert released() is None  # the last holder gone, the old session is freed


def test_predictions_never_fail_while_versions_swap(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir)
    registry.refresh()
    failures: list[BaseException] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                model = registry.get("gap")
                assert model is not None and model.predict(BATCH).shape == (3, 10)
            except BaseException as e:  # collected, so the test fails with the cause
                failures.append(e)

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for seed in range(5):
            publish(models_dir, "gap", random_model(seed + 10), accuracy=80.0 + seed)
            assert registry.refresh() == ["gap"]
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not failures


def corrupt_model_file(root: Path, step: str) -> None:
    """Flip bytes of the current model.onnx in place: the disk lied."""
    entry = volume.read_index(root).steps[step]
    path = volume.version_folder(root, step, entry.version) / volume.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\0" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def truncate_metrics(root: Path, step: str) -> None:
    entry = volume.read_index(root).steps[step]
    path = volume.version_folder(root, step, entry.version) / volume.METRICS_FILE
    path.write_bytes(path.read_bytes()[:40])


def wrong_names_model() -> bytes:
    model = random_model()
    return model.replace(volume.OUTPUT_NAME.encode(), b"probabilitiez")


def logits_model() -> bytes:
    rng = np.random.default_rng(0)
    return gemm_model(rng.normal(0, 1, (784, 10)), rng.normal(0, 1, 10), softmax=False)


# (what the disk holds, how to make it, a substring of the logged reason)
LIES = [
    ("a half-written model", corrupt_model_file, "sha256 does not match"),
    ("truncated metrics", truncate_metrics, "not a valid Metrics file"),
    ("bytes that are not ONNX", lambda root, step: publish(root, step, b"garbage"), "PROTOBUF"),
    (
        "the wrong tensor names",
        lambda root, step: publish(root, step, wrong_names_model()),
        "expected 'image' -> 'probabilities'",
    ),
    (
        "logits, not probabilities",
        lambda root, step: publish(root, step, logits_model()),
        "not probabilities",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [lie[1:] for lie in LIES], ids=[lie[0] for lie in LIES]
)
def test_a_bad_version_is_logged_and_the_old_one_kept(
    models_dir: Path, caplog: pytest.LogCaptureFixture, make, reason: str
) -> None:
    registry = ModelRegistry(models_dir)
    registry.refresh()
    serving = registry.models["gap"].version
    # A new good version, then the lie; or the lie in the version being served.
    publish(models_dir, "gap", random_model(5))
    make(models_dir, "gap")
    with caplog.at_level(logging.ERROR, logger="service.models"):
        assert registry.refresh() == []
        assert registry.refresh() == []  # and tried once: versions are immutable
    assert registry.models["gap"].version == serving
    assert len(caplog.records) == 1
    assert reason in caplog.text and f"still serving {serving}" in caplog.text


def test_a_corrupt_index_keeps_everything_loaded(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(models_dir)
    registry.refresh()
    (models_dir / volume.INDEX_FILE).write_text(json.dumps({"schema_version": 1, "steps": 3}))
    with caplog.at_level(logging.ERROR):
        assert registry.refresh() == []
    assert set(registry.models) == set(TRAINED) and "cannot read the index" in caplog.text


def test_a_bad_first_version_is_never_served(tmp_path: Path) -> None:
    root = tmp_path / "models"
    publish(root, "gap", b"garbage")
    registry = ModelRegistry(root)
    registry.refresh()
    assert "gap" not in registry.models
    version = publish(root, "gap", random_model())  # the trainer republishes
    assert registry.refresh() == ["gap"] and registry.models["gap"].version == version


# --- pinned versions (`?version=`) --------------------------------------------------------


def test_pinned_versions_load_on_demand_and_are_bounded(models_dir: Path) -> None:
    (first,) = volume.list_versions(models_dir, "gap")
    others = [publish(models_dir, "gap", random_model(20 + i)) for i in range(2)]
    registry = ModelRegistry(models_dir, pinned=1)
    registry.refresh()
    assert registry.held("gap", others[1]) is registry.models["gap"]  # the current one
    assert registry.held("gap", first) is None  # not loaded until asked for
    pinned = registry.load_pinned("gap", first)
    assert (pinned.step, pinned.version) == ("gap", first)
    assert registry.held("gap", first) is pinned
    assert not np.array_equal(pinned.predict(BATCH), registry.models["gap"].predict(BATCH))
    registry.load_pinned("gap", others[0])  # one is held: the least recently used goes
    assert registry.held("gap", first) is None and registry.held("gap", others[0]) is not None
    with pytest.raises(volume.versions.UnknownVersionError, match=first):
        registry.load_pinned("gap", "20260101T000000.000000Z-00000000")


def test_a_version_left_by_a_swap_is_held_until_pruned(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir, pinned=4)
    registry.refresh()
    old = registry.models["gap"]
    publish(models_dir, "gap", random_model(30))
    registry.refresh()
    assert registry.held("gap", old.version) is old  # a rollback's clients wait for nothing
    for seed in (31, 32):  # keep=3: `old` is pruned by the second
        publish(models_dir, "gap", random_model(seed))
    registry.refresh()
    assert old.version not in volume.list_versions(models_dir, "gap")
    assert registry.held("gap", old.version) is None


def test_a_corrupt_kept_version_is_refused(models_dir: Path) -> None:
    (first,) = volume.list_versions(models_dir, "gap")
    publish(models_dir, "gap", random_model(40))
    (models_dir / "gap" / first / volume.MODEL_FILE).write_bytes(b"not the model")
    registry = ModelRegistry(models_dir)
    registry.refresh()
    with pytest.raises(volume.VolumeError, match="does not match its version's name"):
        registry.load_pinned("gap", first)
