"""Valid volume files made without torch, for tests of the volume itself."""

from __future__ import annotations

from volume import STEPS_BY_SLUG, EpochMetrics, LayerRow, Metrics, Provenance, Summary


def fake_summary(step: str) -> Summary:
    row = LayerRow(
        name="Conv2d-1", type="Conv2d", output_shape=[-1, 10, 26, 26], params=90,
        trainable=True, receptive_field=3, jump=1,
    )  # fmt: skip
    return Summary(
        step=step, layers=[row], total_params=90, trainable_params=90, non_trainable_params=0,
        input_size_mb=0.0, forward_backward_size_mb=0.1, params_size_mb=0.0,
        estimated_total_size_mb=0.1, text="(table)\n",
    )  # fmt: skip


def fake_metrics(step: str, accuracy: float = 98.0) -> Metrics:
    epoch = EpochMetrics(
        epoch=1, train_loss=0.5, train_accuracy=90.0, test_loss=0.4, test_accuracy=accuracy,
        lr=0.01, seconds=1.0,
    )  # fmt: skip
    provenance = Provenance(
        command="test", seed=1, device="cpu", versions={}, data={}, limit=None,
        started_at="2026-01-01T00:00:00+00:00", wall_seconds=1.0,
    )  # fmt: skip
    info = STEPS_BY_SLUG[step]
    return Metrics(
        step=step, number=info.number, title=info.title, objective="test", params=90,
        recipe={}, epochs=[epoch], best_epoch=1, best_test_accuracy=accuracy,
        provenance=provenance, verification={},
    )  # fmt: skip
