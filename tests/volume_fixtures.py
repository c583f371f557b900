"""Valid volume files made without torch, for tests of the volume itself."""

from __future__ import annotations

from volume import (
    STEPS_BY_SLUG,
    Digit,
    EpochMetrics,
    LayerRow,
    Metrics,
    Mistake,
    Mistakes,
    Provenance,
    Samples,
    Summary,
    encode_pixels,
)


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


def fake_digit_pixels(seed: int = 0) -> str:
    """A 28x28 'digit' (a vertical bar, light on black), as a Digit holds it."""
    grey = bytearray(784)
    for row in range(4, 24):
        for col in range(12 + seed % 3, 15 + seed % 3):
            grey[row * 28 + col] = 255
    return encode_pixels(bytes(grey))


def fake_mistakes(step: str, best_epoch: int = 1) -> Mistakes:
    """Ten test digits of each class, all right but for one 4 taken for a 9."""
    confusion = [[10 if t == p else 0 for p in range(10)] for t in range(10)]
    confusion[4][4], confusion[4][9] = 9, 1
    mistake = Mistake(index=3, label=4, predicted=9, confidence=0.8, pixels=fake_digit_pixels())
    return Mistakes(step=step, best_epoch=best_epoch, confusion=confusion, mistakes=[mistake])


def fake_samples() -> Samples:
    return Samples(
        digits=[Digit(index=i, label=i % 10, pixels=fake_digit_pixels(i)) for i in range(4)]
    )
