"""The training loop's building blocks: the optimizer, schedule and weight average a recipe
asks for, one training epoch and one test pass. ``fit()`` (trainer/train.py) runs them epoch
after epoch; the CUDA-graph path (trainer/graphs.py) is checked against them and falls back to
them, so both import this module and it imports neither."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from trainer.data import Split, batches
from trainer.steps import Recipe

TEST_BATCH_SIZE = 1000  # the test pass's batch: no gradients, so as large as is convenient


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """OneCycle steps every batch; StepLR every epoch; "constant" has none."""
    if recipe.schedule == "onecycle":
        # OneCycleLR divides by the warm-up's length less one step, so a warm-up of exactly
        # one step (10 batches in all at pct_start 0.1: a smoke test on a subset) would divide
        # by zero; warm up for half a step instead, as every shorter run does.
        steps = recipe.epochs * steps_per_epoch
        pct_start = recipe.pct_start if recipe.pct_start * steps != 1 else 0.5 / steps
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=recipe.lr,
            epochs=recipe.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=pct_start,
            div_factor=recipe.div_factor,
            final_div_factor=recipe.final_div_factor,
        )
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, recipe.step_size, recipe.gamma)
    if recipe.schedule != "constant":
        raise ValueError(f"unknown schedule {recipe.schedule!r}")
    return None


def make_ema(model: nn.Module, recipe: Recipe) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights and BatchNorm statistics that
    ``recipe.ema`` asks for (torch's own ``AveragedModel``), or None.

    Its decay warms up as timm's ModelEmaV3 does, (1 + n) / (10 + n) after n updates until it
    reaches ``recipe.ema``: a constant 0.999 would keep a third of the first weights after a
    thousand steps, and a short run's average would be its random start."""
    if not recipe.ema:
        return None

    Tensors = tuple[torch.Tensor, ...] | list[torch.Tensor]

    def update(averaged: Tensors, current: Tensors, n: torch.Tensor | int) -> None:
        done = int(n)  # AveragedModel's count of updates so far
        get_ema_multi_avg_fn(min(recipe.ema, (1 + done) / (10 + done)))(averaged, current, n)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def train_one_epoch(
    model: nn.Module,
    data: Split,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    recipe: Recipe,
    progress: bool = True,
    description: str = "",
    ema: AveragedModel | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[float, float]:
    """One pass over ``data``; returns (mean loss, accuracy %) on the augmented batches.
    ``ema``, if given, is updated after every optimizer step; ``on_batch``, if given, is called
    after every batch with (batches done, batches in the epoch), reading nothing from the
    device (how ``fit()`` reports progress without a sync)."""
    model.train()
    loss_sum = torch.zeros((), device=data.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=data.labels.device)
    per_batch = recipe.schedule == "onecycle"
    steps = -(-len(data) // recipe.batch_size)
    r = recipe
    loop = batches(data, r.batch_size, True, r.rotation, r.translate, r.scale, r.brightness)
    bar = tqdm(loop, total=steps, desc=description, disable=not progress, leave=False)
    for done, (x, y) in enumerate(bar, start=1):
        optimizer.zero_grad(set_to_none=True)
        output = model(x)
        # The models return log-probabilities, and log_softmax of those is themselves, so
        # cross_entropy here is the course's nll_loss, with optional label smoothing.
        loss = F.cross_entropy(output, y, label_smoothing=recipe.label_smoothing)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        if scheduler is not None and per_batch:
            scheduler.step()
        # Accumulate on the device; a .item() per batch would sync the GPU every step.
        loss_sum += loss.detach() * len(y)
        correct += (output.argmax(1) == y).sum()
        if on_batch is not None:
            on_batch(done, steps)
    if scheduler is not None and not per_batch:
        scheduler.step()
    return loss_sum.item() / len(data), 100.0 * correct.item() / len(data)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Split, batch_size: int = TEST_BATCH_SIZE
) -> tuple[float, float]:
    """(mean loss, accuracy %) of ``model`` on ``data``, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=data.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=data.labels.device)
    for x, y in batches(data, batch_size, shuffle=False):
        output = model(x)
        loss_sum += F.nll_loss(output, y, reduction="sum")
        correct += (output.argmax(1) == y).sum()
    return loss_sum.item() / len(data), 100.0 * correct.item() / len(data)
