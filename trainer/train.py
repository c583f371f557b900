"""``fit()``: a step's training, epoch after epoch, keeping the best (the blocks are in
trainer/loop.py, the CUDA-graph path in trainer/graphs.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from trainer.data import Split
from trainer.graphs import graph_trainer
from trainer.loop import evaluate, make_ema, make_optimizer, make_scheduler, train_one_epoch
from trainer.resume import restore, snapshot
from trainer.steps import Recipe, get_step
from volume import EpochMetrics


class Watch(Protocol):
    """What ``fit()`` tells as it goes (trainer/progress.py writes it to the volume)."""

    def epoch_started(self, epoch: int, history: list[EpochMetrics]) -> None: ...

    def batch(self, done: int, total: int) -> None: ...

    def epoch_ended(self, history: list[EpochMetrics]) -> None: ...


@dataclass
class FitResult:
    epochs: list[EpochMetrics]
    best_epoch: int  # 1-based
    best_state: dict[str, torch.Tensor]  # the weights of the best epoch, on the CPU
    cuda_graphs: bool = False  # whether the training steps ran as CUDA graphs (trainer/graphs.py)

    @property
    def best(self) -> EpochMetrics:
        return self.epochs[self.best_epoch - 1]


def build(slug: str, recipe: Recipe, device: torch.device) -> nn.Module:
    """The step's model with its first weights drawn from ``recipe.seed``: what ``fit()``
    trains. Here, not in the CLI, so that the code that decides a run's numbers is in the
    modules trainer/resume.py hashes, and a change to the command line leaves results main's."""
    torch.manual_seed(recipe.seed)
    return get_step(slug).build().to(device)


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
    watch: Watch | None = None,
) -> FitResult:
    """Train for ``recipe.epochs`` epochs, testing after each; keep the best by test accuracy.

    A later epoch must beat the best strictly, so ties keep the earlier checkpoint. After each
    epoch, ``save`` (if given) gets everything needed to go on from there (trainer/resume.py);
    ``resume``, such a snapshot, continues a run after the last epoch it completed. With
    ``cuda_graphs`` each training and test step is captured once and replayed (on CUDA, for
    SGD recipes; otherwise one line says why and this loop runs as it is). Under
    ``recipe.ema`` the average is what is tested and kept; the log line adds the raw weights'
    test accuracy, to show what the average adds. ``watch``, if given, hears of each epoch's
    start and end and of every training batch.
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
        graphed = graph_trainer(model, train, test, recipe, optimizer, scheduler, name, log, ema)
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        start = time.perf_counter()
        desc = f"{name} {epoch}/{recipe.epochs}"
        on_batch = watch.batch if watch is not None else None
        if watch is not None:
            watch.epoch_started(epoch, history)
        if graphed is None:
            train_loss, train_acc = train_one_epoch(
                model, train, optimizer, scheduler, recipe, progress, desc, ema, on_batch
            )
            test_loss, test_acc = evaluate(tested, test)
        else:
            train_loss, train_acc = graphed.train_one_epoch(progress, desc, on_batch)
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
        if watch is not None:
            watch.epoch_ended(history)
    return FitResult(history, best_epoch, best_state, graphed is not None and graphed.graphed)
