"""The training loop: ``train_one_epoch()``, ``evaluate()``, and ``fit()`` keeping the best."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from trainer.data import Split, batches
from trainer.resume import restore, snapshot
from trainer.steps import Recipe
from volume import EpochMetrics

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
) -> tuple[float, float]:
    """One pass over ``data``; returns (mean loss, accuracy %) on the augmented batches.
    ``ema``, if given, is updated after every optimizer step."""
    model.train()
    loss_sum = torch.zeros((), device=data.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=data.labels.device)
    per_batch = recipe.schedule == "onecycle"
    steps = -(-len(data) // recipe.batch_size)
    loop = batches(data, recipe.batch_size, True, recipe.rotation, recipe.translate)
    bar = tqdm(loop, total=steps, desc=description, disable=not progress, leave=False)
    for x, y in bar:
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


@dataclass
class FitResult:
    epochs: list[EpochMetrics]
    best_epoch: int  # 1-based
    best_state: dict[str, torch.Tensor]  # the weights of the best epoch, on the CPU
    cuda_graphs: bool = False  # whether the training steps ran as CUDA graphs (trainer/graphs.py)

    @property
    def best(self) -> EpochMetrics:
        return self.epochs[self.best_epoch - 1]


def fit(
    model: nn.Module,
    train: Split,
    test: Split,
    recipe: Recipe,
    progress: bool = True,
    name: str = "",
    log: bool = True,
    resume: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    cuda_graphs: bool = False,
) -> FitResult:
    """Train for ``recipe.epochs`` epochs, testing after each; keep the best by test accuracy.

    A later epoch must beat the best strictly, so ties keep the earlier checkpoint. After each
    epoch, ``save`` (if given) gets everything needed to go on from there (trainer/resume.py);
    ``resume``, such a snapshot, continues a run after the last epoch it completed. With
    ``cuda_graphs`` each training and test step is captured once and replayed (on CUDA, for
    SGD recipes; otherwise one line says why and this loop runs as it is). Under
    ``recipe.ema`` the average is what is tested and kept; the log line adds the raw weights'
    test accuracy, to show what the average adds.
    """
    optimizer = make_optimizer(model, recipe)
    steps_per_epoch = -(-len(train) // recipe.batch_size)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)
    ema = make_ema(model, recipe)
    tested = model if ema is None else ema.module  # the weights that are tested and kept
    history: list[EpochMetrics] = []
    best_epoch, best_state = 0, dict[str, torch.Tensor]()
    if resume is not None:
        history, best_epoch, best_state = restore(resume, model, optimizer, scheduler, ema)
    graphed = None
    if cuda_graphs:  # after restoring: the graph takes over the optimizer's buffers and step
        from trainer.graphs import graph_trainer  # it builds on this module

        graphed = graph_trainer(model, train, test, recipe, optimizer, scheduler, name, log, ema)
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        start = time.perf_counter()
        desc = f"{name} {epoch}/{recipe.epochs}"
        if graphed is None:
            train_loss, train_acc = train_one_epoch(
                model, train, optimizer, scheduler, recipe, progress, desc, ema
            )
            test_loss, test_acc = evaluate(tested, test)
        else:
            train_loss, train_acc = graphed.train_one_epoch(progress, desc)
            test_loss, test_acc = graphed.evaluate()
        seconds = time.perf_counter() - start
        lr = optimizer.param_groups[0]["lr"]
        history.append(
            EpochMetrics(
                epoch=epoch,
                train_loss=round(train_loss, 6),
                train_accuracy=round(train_acc, 4),
                test_loss=round(test_loss, 6),
                test_accuracy=round(test_acc, 4),
                lr=lr,
                seconds=round(seconds, 3),
            )
        )
        if not best_state or test_acc > history[best_epoch - 1].test_accuracy:
            best_epoch = epoch
            best_state = {k: v.detach().cpu().clone() for k, v in tested.state_dict().items()}
        if save is not None:  # before the epoch's line: a logged epoch is never lost
            save(snapshot(model, optimizer, scheduler, history, best_epoch, best_state, ema))
        if log:
            raw = f" (raw weights {evaluate(model, test)[1]:.2f}%)" if ema is not None else ""
            tqdm.write(
                f"{name} epoch {epoch:2d}: train loss {train_loss:.4f} acc {train_acc:.2f}% | "
                f"test loss {test_loss:.4f} acc {test_acc:.2f}%{raw} | lr {lr:.5f} | "
                f"{seconds:.1f}s"
            )
    return FitResult(history, best_epoch, best_state, graphed is not None and graphed.graphed)
