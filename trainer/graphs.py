"""CUDA graphs for the training loop: each training and test step captured once, then replayed.

At batch 32 an eager epoch of the final step is 1,875 small steps, each a few dozen kernels
launched one at a time from Python, and an H200 sits 80 % idle or more (README, Performance).
Captured in a CUDA graph, a whole step (gathering and augmenting the batch from the images
already on the GPU, forward, loss, backward, the SGD update with BatchNorm's running statistics,
the learning rate of the schedule) is one launch. ``fit(..., cuda_graphs=True)`` uses it;
``python -m trainer run --graphs on`` asks for it. The plain loop (trainer/loop.py) is the
reference, and everything here is checked against it on the CPU (tests/trainer/test_graphs.py);
the capture itself only on a GPU (``bench/train_steps.py --compare-graphs``), which it has not
met yet: that is why ``--graphs`` is off by default.

What a graph needs that the plain loop does not have:

- Static inputs. A batch is named by its indices into the split held on the device;
  ``StaticBatches`` copies the indices ``batches()`` would take into one buffer per batch size,
  and the graph gathers, normalises and augments (``trainer.data.batch``) from that buffer.
- One graph per batch size: the partial last batch (60,000 % 128 = 96 images) has its own, so
  that BatchNorm and the mean loss see exactly the batches the plain loop makes.
- No host syncs. ``torch.optim.SGD`` applies a tensor learning rate as ``alpha=-lr``, a float
  read from the device; ``sgd_update`` is the same update in ``torch._foreach`` ops with the
  learning rate and momentum as device tensors, and ``schedule_table`` precomputes both for
  every step of the run (OneCycle cycles the momentum too) by stepping the real scheduler, so
  the graph indexes them with a step counter on the device.
- Random numbers: the augmentation's ``torch.rand`` and Dropout draw from the default CUDA
  generator, which PyTorch makes graph-safe (each replay advances its Philox offset, so every
  replay draws new numbers); the epoch's shuffle (``torch.randperm``) runs outside the graphs.

Before capturing, each step is warmed up three times on a side stream (PyTorch's recipe for
capturing a whole network); the warm-up trains for real, so what it wrote and the random numbers
it drew are put back. A step that cannot be captured runs eagerly, with one line on stderr
saying why.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from trainer.data import Split, batch
from trainer.loop import TEST_BATCH_SIZE, evaluate, make_optimizer, make_scheduler, train_one_epoch
from trainer.steps import Recipe

WARMUP_STEPS = 3  # PyTorch's capture recipe warms a step up on a side stream before capturing it


def why_not(recipe: Recipe, device: torch.device) -> str | None:
    """Why ``recipe`` cannot train under CUDA graphs on ``device``, or None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if recipe.optimizer != "sgd":
        return f"no capturable update for the {recipe.optimizer!r} optimizer here (SGD only)"
    return None


def schedule_table(recipe: Recipe, steps_per_epoch: int) -> tuple[list[float], list[float]]:
    """The learning rate and momentum of every optimizer step of a run, then those after it.

    Entry k is what the plain loop's SGD uses at its k-th step (0-based) of the whole run; the
    last entry is what it leaves behind, which ``fit()`` logs as the last epoch's lr. Made by
    stepping the real scheduler on a stand-in optimizer exactly as ``train_one_epoch`` steps it
    (OneCycle every batch, StepLR every epoch), so it follows them exactly on any torch version.
    """
    # A parameter of zeros, not nn.Linear: making one would draw from the RNG and reshuffle.
    stand_in = make_optimizer(nn.ParameterList([nn.Parameter(torch.zeros(1))]), recipe)
    scheduler = make_scheduler(stand_in, recipe, steps_per_epoch)
    stand_in.step()  # no gradients, no change: tells the scheduler its optimizer stepped first
    per_batch = recipe.schedule == "onecycle"
    group = stand_in.param_groups[0]
    lrs, momenta = [], []
    for _ in range(recipe.epochs):
        for _ in range(steps_per_epoch):
            lrs.append(float(group["lr"]))
            momenta.append(float(group.get("momentum", 0.0)))
            if scheduler is not None and per_batch:
                scheduler.step()
        if scheduler is not None and not per_batch:
            scheduler.step()
    lrs.append(float(group["lr"]))
    momenta.append(float(group.get("momentum", 0.0)))
    return lrs, momenta


@torch.no_grad()
def sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor],
    lr: Tensor,
    momentum: Tensor,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """``torch.optim.SGD``'s step (no dampening), with ``lr`` and ``momentum`` 0-d tensors on
    the parameters' device: nothing is read back to the host, so a CUDA graph can capture it.

    The order of operations is torch's own multi-tensor SGD's (``_multi_tensor_sgd``), each
    ``alpha=`` float made a product with a tensor, as torch itself does for a tensor learning
    rate under ``torch.compile``. ``buffers`` start at zero where torch clones the first
    gradient: ``momentum * 0 + g`` is ``g`` exactly.
    """
    if weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, grads)
    if nesterov:
        grads = list(torch._foreach_add(grads, torch._foreach_mul(buffers, momentum)))
    else:
        grads = buffers
    torch._foreach_add_(params, torch._foreach_mul(grads, -lr))


class StaticBatches:
    """The graph path's batch iterator: for each step, the indices that ``batches()`` takes (the
    same ``randperm`` draw when shuffling), copied into the one buffer kept for that batch size.
    The buffers never move, so a graph captured reading one reads every later batch of its size.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device) -> None:
        self.n, self.batch_size, self.device = n, batch_size, device
        sizes = {min(batch_size, n), n % batch_size or min(batch_size, n)}
        # Zeros, not empty: a warm-up step before the first batch must gather real images.
        self.buffers = {s: torch.zeros(s, dtype=torch.long, device=device) for s in sizes}

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def epoch(self, shuffle: bool) -> Iterator[Tensor]:
        """One pass: yields the buffer just filled with the next batch's indices."""
        order = (
            torch.randperm(self.n, device=self.device)
            if shuffle
            else torch.arange(self.n, device=self.device)
        )
        for start in range(0, self.n, self.batch_size):
            chunk = order[start : start + self.batch_size]
            buffer = self.buffers[len(chunk)]
            buffer.copy_(chunk)
            yield buffer


def _capture(step: Callable[[], None], undo_warmup: Callable[[], None]) -> Callable[[], None]:
    """``step`` warmed up on a side stream (PyTorch's whole-network capture recipe), what the
    warm-up did undone, then captured in a CUDA graph; returns the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    undo_warmup()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


class GraphTrainer:
    """``train_one_epoch()`` and ``evaluate()`` of the plain loop for one model and recipe, each
    batch size's step captured once (on the first call) and replayed.

    It takes over ``optimizer`` and ``scheduler`` where they are (their momentum buffers and
    step count: a fresh run or a resumed one) and leaves them after every epoch where the plain
    loop would have (the lr ``fit()`` logs, a checkpoint of them). With ``capture=False`` the
    same steps run directly, one call each: how the CPU tests check them against the plain loop.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Split,
        test: Split,
        recipe: Recipe,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        capture: bool = True,
        name: str = "",
        log: bool = True,
        ema: AveragedModel | None = None,
    ) -> None:
        self.model, self.train, self.test, self.recipe = model, train, test, recipe
        # The weight average is updated after each replay, outside the graph: a few foreach
        # kernels and one sync a step (its decay is read on the host), against a graph's
        # dozens of launches saved. The test step runs on what fit() tests and keeps.
        self.ema = ema
        self.tested = model if ema is None else ema.module
        self.optimizer, self.scheduler = optimizer, scheduler
        self.capture, self.name, self.log = capture, name, log
        device = train.labels.device
        self.train_batches = StaticBatches(len(train), recipe.batch_size, device)
        self.test_batches = StaticBatches(len(test), TEST_BATCH_SIZE, device)
        self.steps_per_epoch = len(self.train_batches)
        self.per_batch = recipe.schedule == "onecycle"
        self.done = self._steps_done()  # optimizer steps already taken, by either loop
        dtype = next(model.parameters()).dtype
        self.counter = torch.full((1,), self.done, dtype=torch.long, device=device)
        self.params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        # The momentum buffers are the optimizer's own (made if it has none yet): the graph
        # updates them in place, so the optimizer's state is always the graph's.
        self.buffers = []
        for p in self.params:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self.buffers.append(state["momentum_buffer"])
        # The schedule (made on first use, so that an epoch's time includes it, as the plain
        # loop's scheduler steps are in its epochs), and every step's loss, for checks.
        self._lrs: list[float] = []
        self._momenta: list[float] = []
        self.lrs = self.momenta = torch.zeros(0, dtype=dtype, device=device)
        total = recipe.epochs * self.steps_per_epoch
        self.step_losses = torch.zeros(total, dtype=dtype, device=device)
        self.train_loss = torch.zeros((), device=device)
        self.train_correct = torch.zeros((), dtype=torch.long, device=device)
        self.test_loss = torch.zeros((), device=device)
        self.test_correct = torch.zeros((), dtype=torch.long, device=device)
        # Filled on first use: batch size -> its step (a graph's replay); {} = run eagerly.
        self._train_steps: dict[int, Callable[[], None]] | None = None
        self._test_steps: dict[int, Callable[[], None]] | None = None

    @property
    def graphed(self) -> bool:
        """Whether the training steps run as captured CUDA graphs."""
        return self.capture and bool(self._train_steps)

    def _make_schedule(self) -> None:
        if not self._lrs:
            self._lrs, self._momenta = schedule_table(self.recipe, self.steps_per_epoch)
            self.lrs = torch.tensor(self._lrs, dtype=self.lrs.dtype, device=self.lrs.device)
            self.momenta = torch.tensor(self._momenta, dtype=self.lrs.dtype, device=self.lrs.device)

    def _steps_done(self) -> int:
        if self.scheduler is None:
            return 0  # a constant learning rate: the position in the table does not matter
        count = self.scheduler.last_epoch
        return count if self.per_batch else count * self.steps_per_epoch

    def _train_step(self, indices: Tensor) -> None:
        r = self.recipe
        self.model.zero_grad(set_to_none=True)
        x, y = batch(self.train, indices, r.rotation, r.translate, r.scale, r.brightness)
        output = self.model(x)
        # The plain loop's loss (train_one_epoch says why cross_entropy of log-probabilities).
        loss = F.cross_entropy(output, y, label_smoothing=r.label_smoothing)
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        assert len(grads) == len(self.params), "every parameter must get a gradient"
        lr = self.lrs.index_select(0, self.counter).view(())
        momentum = self.momenta.index_select(0, self.counter).view(())
        sgd_update(self.params, grads, self.buffers, lr, momentum, r.weight_decay, r.nesterov)
        self.step_losses.index_copy_(0, self.counter, loss.detach().view(1))
        self.counter += 1
        self.train_loss += loss.detach() * len(y)
        self.train_correct += (output.argmax(1) == y).sum()

    @torch.no_grad()
    def _test_step(self, indices: Tensor) -> None:
        x, y = batch(self.test, indices)
        output = self.tested(x)
        self.test_loss += F.nll_loss(output, y, reduction="sum")
        self.test_correct += (output.argmax(1) == y).sum()

    def _state(self) -> list[Tensor]:
        """Every tensor a step writes that outlives it: what a warm-up must leave unchanged."""
        return [
            *self.model.state_dict().values(),  # parameters and BatchNorm statistics
            *self.buffers,
            self.counter,
            self.step_losses,
            self.train_loss,
            self.train_correct,
            self.test_loss,
            self.test_correct,
        ]

    def _prepare(
        self, step: Callable[[Tensor], None], batches: StaticBatches, what: str
    ) -> dict[int, Callable[[], None]]:
        """Each batch size's step bound to its buffer and, when capturing, captured; {} (and
        one line on stderr) when a capture fails, after undoing what it did."""
        steps = {size: partial(step, buffer) for size, buffer in batches.buffers.items()}
        if not self.capture:
            return dict(steps)
        # The warm-up trains for real: undo it (the tensors it wrote, the random numbers it
        # drew), so that the run is the one the plain loop would make.
        state = self._state()
        saved = [t.clone() for t in state]
        cuda = self.train.labels.is_cuda
        rng = torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None

        def undo() -> None:
            with torch.no_grad():
                for t, s in zip(state, saved, strict=True):
                    t.copy_(s)
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1])

        start = time.perf_counter()
        try:
            graphs = {size: _capture(fn, undo) for size, fn in steps.items()}
        except Exception as e:  # any failure to capture: the plain loop still trains
            undo()
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            print(
                f"cuda graphs: {self.name}: the {what} step runs eagerly: could not capture it "
                f"({type(e).__name__}: {reason})",
                file=sys.stderr,
            )
            return {}
        if self.log:
            sizes = " and ".join(str(s) for s in sorted(graphs, reverse=True))
            print(
                f"cuda graphs: {self.name}: captured the {what} step (batches of {sizes}) in "
                f"{time.perf_counter() - start:.2f} s",
                file=sys.stderr,
            )
        return graphs

    def train_one_epoch(
        self,
        progress: bool = True,
        description: str = "",
        on_batch: Callable[[int, int], None] | None = None,
    ) -> tuple[float, float]:
        """One pass over the training split; returns (mean loss, accuracy %), as the plain
        loop's ``train_one_epoch`` does (``on_batch`` too)."""
        self.model.train()
        if self._train_steps is None:
            self._make_schedule()
            self._train_steps = self._prepare(self._train_step, self.train_batches, "training")
        if not self._train_steps:
            return train_one_epoch(
                self.model, self.train, self.optimizer, self.scheduler, self.recipe, progress,
                description, self.ema, on_batch,
            )  # fmt: skip
        self.train_loss.zero_()
        self.train_correct.zero_()
        loop = self.train_batches.epoch(shuffle=True)
        bar = tqdm(
            loop, total=self.steps_per_epoch, desc=description, disable=not progress, leave=False
        )
        for done, indices in enumerate(bar, start=1):
            self._train_steps[len(indices)]()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if on_batch is not None:
                on_batch(done, self.steps_per_epoch)
        self.done += self.steps_per_epoch
        self._leave_optimizer_where_the_plain_loop_would()
        n = len(self.train)
        return self.train_loss.item() / n, 100.0 * self.train_correct.item() / n

    def evaluate(self) -> tuple[float, float]:
        """(mean loss, accuracy %) on the test split in eval mode, as ``evaluate()`` returns."""
        self.tested.eval()
        if self._test_steps is None:
            self._test_steps = self._prepare(self._test_step, self.test_batches, "test")
        if not self._test_steps:
            return evaluate(self.tested, self.test)
        self.test_loss.zero_()
        self.test_correct.zero_()
        for indices in self.test_batches.epoch(shuffle=False):
            self._test_steps[len(indices)]()
        n = len(self.test)
        return self.test_loss.item() / n, 100.0 * self.test_correct.item() / n

    def _leave_optimizer_where_the_plain_loop_would(self) -> None:
        lr, momentum = self._lrs[self.done], self._momenta[self.done]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "momentum" in group:
                group["momentum"] = momentum
        if self.scheduler is not None:
            count = self.done if self.per_batch else self.done // self.steps_per_epoch
            self.scheduler.last_epoch = count
            self.scheduler._step_count = count + 1
            self.scheduler._last_lr = [lr for _ in self.optimizer.param_groups]


def graph_trainer(
    model: nn.Module,
    train: Split,
    test: Split,
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    name: str = "",
    log: bool = True,
    ema: AveragedModel | None = None,
) -> GraphTrainer | None:
    """A GraphTrainer for ``model``, or None (and one line on stderr saying why) when its
    recipe or device cannot train under CUDA graphs."""
    reason = why_not(recipe, train.labels.device)
    if reason is not None:
        print(f"cuda graphs: {name} trains eagerly: {reason}", file=sys.stderr)
        return None
    return GraphTrainer(model, train, test, recipe, optimizer, scheduler, True, name, log, ema)
