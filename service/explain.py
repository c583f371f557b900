"""Occlusion sensitivity: which pixels of the 28x28 input a step's answer depends on.

Every PATCH x PATCH square of the input, every STRIDE pixels, is erased in turn: set to
BASELINE, the normalised value of a pixel with no ink (the background of every MNIST digit).
The model answers all the erased copies and the input itself in one batched onnxruntime run.
A pixel's sensitivity is the mean, over the squares that cover it, of how much erasing the
square lowered the probability of the digit the model answers for the whole input: positive
where the answer rests on that ink, negative where the ink there argues against it. Erasing
blank background changes nothing, so squares without ink are not run: the map is the same and
the batch about half as large for a drawn digit (169 squares at most, 13 a side).

Erasing (rather than Zeiler and Fergus's grey square) asks the learner's question, "which
strokes made it say 7?", and never paints ink where there was none.

Pure numpy around the model's `predict`: the service stays torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from volume import IMAGE_SIZE, MNIST_MEAN, MNIST_STD

PATCH = 4  # pixels a side: about a stroke's width in MNIST's 28x28
STRIDE = 2  # pixels between squares: each pixel away from the border lies in 2x2 squares
BASELINE = -MNIST_MEAN / MNIST_STD  # a pixel with no ink, normalised as in training
STARTS = tuple(range(0, IMAGE_SIZE - PATCH + 1, STRIDE))  # 0, 2, ..., 24: the last at the edge
# Half a grey level (of 255) above the background counts as ink.
INK = BASELINE + 0.5 / (255 * MNIST_STD)


def coverage() -> np.ndarray:
    """How many squares cover each pixel (1 to 4)."""
    counts = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float64)
    for top in STARTS:
        for left in STARTS:
            counts[top : top + PATCH, left : left + PATCH] += 1
    return counts


COVERAGE = coverage()


@dataclass(frozen=True)
class Sensitivity:
    probabilities: np.ndarray  # [10]: the model's answer for the input as it is
    digit: int  # the digit it answers
    map: np.ndarray  # [28,28] float64: mean drop of that digit's probability, -1..1
    occluded: int  # squares run (those holding ink)


def occlusion(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> Sensitivity:
    """The sensitivity map of one model input `image` [1,28,28] under `predict` ([N,1,28,28]
    -> probabilities [N,10]), in one call of `predict`."""
    ink = image[0] > INK
    squares = [(top, left) for top in STARTS for left in STARTS]
    squares = [(t, left) for t, left in squares if ink[t : t + PATCH, left : left + PATCH].any()]
    batch = np.repeat(image[None], 1 + len(squares), axis=0)
    for k, (top, left) in enumerate(squares, start=1):
        batch[k, 0, top : top + PATCH, left : left + PATCH] = BASELINE
    probabilities = predict(batch).astype(np.float64)
    digit = int(probabilities[0].argmax())
    drops = probabilities[0, digit] - probabilities[1:, digit]
    total = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float64)
    for (top, left), drop in zip(squares, drops, strict=True):
        total[top : top + PATCH, left : left + PATCH] += drop
    return Sensitivity(probabilities[0], digit, total / COVERAGE, len(squares))
