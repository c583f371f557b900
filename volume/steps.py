"""The step catalogue: the seed's steps in its order, and the names that address them.

Both sides know the steps before anything is trained: the trainer registers a model under each
slug (trainer/steps.py), the service answers 404 for a name that is not here and 503 for a step
here that is not published yet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StepInfo:
    """A step of the assignment, as both sides know it before anything is trained."""

    slug: str
    title: str  # the seed's heading

    @property
    def number(self) -> int:
        return STEP_SLUGS.index(self.slug) + 1


# The seed's steps, in its order. The trainer registers a model under each slug.
STEPS: tuple[StepInfo, ...] = (
    StepInfo("setup", "First Step - Initial Step"),
    StepInfo("skeleton", "Basic Model Skeleton"),
    StepInfo("lighter", "Lighter Model"),
    StepInfo("batchnorm", "With BatchNorm"),
    StepInfo("dropout", "With Dropout"),
    StepInfo("gap", "GAP"),
    StepInfo("scheduler", "With Learning rate Scheduler"),
    StepInfo("tiny", "Beyond the Assignment: Under 3,000 Parameters"),
)
STEP_SLUGS: tuple[str, ...] = tuple(s.slug for s in STEPS)
# The assignment's final model (tiny goes beyond it): what the benchmarks serve and time.
FINAL_STEP = "scheduler"
# The seed's steps, up to its final one; the steps after it (`tiny`) go beyond the assignment.
ASSIGNMENT_SLUGS: tuple[str, ...] = STEP_SLUGS[: STEP_SLUGS.index(FINAL_STEP) + 1]
STEPS_BY_SLUG: dict[str, StepInfo] = {s.slug: s for s in STEPS}


class UnknownStepError(KeyError):
    """A step name that is neither a slug, a 1-based number, nor ``best``."""

    def __str__(self) -> str:
        return str(self.args[0])


def resolve_step(name: str, best_accuracy: Mapping[str, float] | None = None) -> str:
    """Turn a slug, a 1-based number or ``best`` into a slug.

    ASCII only, any case, with spaces around it allowed: exactly what ``STEP_NAME_PATTERN``
    matches. ``best`` needs ``best_accuracy`` (slug -> best test accuracy of the trained
    steps); it names the trained step with the highest one, the earlier step on a tie.
    """
    key = name.strip(" ").lower() if name.isascii() else ""
    if key in STEPS_BY_SLUG:
        return key
    if key.isdigit() and 1 <= int(key) <= len(STEPS):
        return STEPS[int(key) - 1].slug
    if key == "best":
        trained = {s: a for s, a in (best_accuracy or {}).items() if s in STEPS_BY_SLUG}
        if not trained:
            raise UnknownStepError("no step is trained yet, so there is no 'best' step")
        return max(STEP_SLUGS, key=lambda s: (trained.get(s, -1.0), -STEP_SLUGS.index(s)))
    choices = ", ".join(STEP_SLUGS)
    raise UnknownStepError(
        f"unknown step {name!r}: use one of {choices}, a number 1-{len(STEPS)}, or 'best'"
    )


def _any_case(word: str) -> str:
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


# The names `resolve_step` accepts, as an OpenAPI (ECMA 262) pattern: an HTTP API's schema
# describes its path parameter with it, so that a client (or a fuzzer) knows them exactly.
STEP_NAME_PATTERN = (
    "^ *(?:"
    + "|".join(_any_case(word) for word in (*STEP_SLUGS, "best"))
    + "|0*(?:"
    + "|".join(str(number) for number in range(len(STEPS), 0, -1))
    + ")) *$"
)
