"""trainer/graphs.py on the CPU: each piece a CUDA graph uses, against its twin in the plain loop.

The capture itself needs a GPU (`bench/train_steps.py --compare-graphs` checks it there). Here
the same steps run uncaptured (`GraphTrainer(capture=False)`), and a capture is either faked
(one that works: the step itself) or made to fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.trainer.test_train import trainer_cli
from trainer import graphs
from trainer.cli import use_cuda_graphs
from trainer.data import MNIST, Split, batch, batches, read_mnist_folder
from trainer.graphs import GraphTrainer, StaticBatches, schedule_table, sgd_update, why_not
from trainer.loop import evaluate, make_ema, make_optimizer, make_scheduler, train_one_epoch
from trainer.steps import PLAIN, TINY, Recipe, all_steps, get_step
from trainer.train import fit

FINAL = get_step("scheduler").recipe  # OneCycle, Nesterov, batch 32, augmentation, weight average


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> MNIST:
    return read_mnist_folder(mnist_dir)


def noise(n: int, seed: int = 0) -> Split:
    """Random images and labels: enough for code paths that need no learning."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    return Split(images, torch.randint(0, 10, (n,), generator=g))


def linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(1))


@pytest.mark.parametrize(
    ("recipe", "images"),
    [
        (replace(FINAL, epochs=3), 100),  # OneCycle per batch, momentum cycled; a partial batch
        (replace(FINAL, epochs=1), 320),  # 10 steps: make_scheduler's one-step warm-up case
        (replace(PLAIN, schedule="step", step_size=1, gamma=0.5, epochs=3), 300),  # per epoch
        (replace(PLAIN, epochs=2), 300),  # constant
        (replace(PLAIN, weight_decay=1e-4, nesterov=True, epochs=2), 300),
    ],
    ids=["onecycle", "onecycle-10-steps", "steplr", "constant", "constant-nesterov-wd"],
)
def test_schedule_table_is_what_the_plain_loops_sgd_sees(recipe: Recipe, images: int) -> None:
    torch.manual_seed(0)
    model, data = linear(), noise(images)
    optimizer = make_optimizer(model, recipe)
    steps_per_epoch = -(-images // recipe.batch_size)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)
    seen: list[tuple[float, float]] = []
    group = optimizer.param_groups[0]
    optimizer.register_step_pre_hook(lambda *_: seen.append((group["lr"], group["momentum"])))
    for _ in range(recipe.epochs):
        train_one_epoch(model, data, optimizer, scheduler, recipe, progress=False)
    lrs, momenta = schedule_table(recipe, steps_per_epoch)
    assert len(seen) == recipe.epochs * steps_per_epoch
    assert list(zip(lrs, momenta, strict=True)) == [*seen, (group["lr"], group["momentum"])]
    if recipe.schedule == "onecycle":
        assert len(set(momenta)) > 2  # OneCycle cycles the momentum too: the graph must follow


def test_schedule_table_draws_no_random_numbers() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    schedule_table(FINAL, 10)
    assert torch.equal(torch.rand(3), expected)  # else the graph path would shuffle differently


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
@pytest.mark.parametrize("foreach", [False, True], ids=["torch-cpu-default", "torch-foreach"])
def test_sgd_update_is_torch_sgd(nesterov: bool, weight_decay: float, foreach: bool) -> None:
    torch.manual_seed(0)
    shapes = [(10, 1, 3, 3), (14, 10, 3, 3), (14,), (10, 16, 1, 1)]
    theirs = [torch.randn(s, requires_grad=True) for s in shapes]
    ours = [p.detach().clone() for p in theirs]
    buffers = [torch.zeros_like(p) for p in ours]
    sgd = torch.optim.SGD(
        theirs, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay, foreach=foreach
    )
    for k in range(100):
        lr, momentum = 0.065 * (1 + k) / 100, 0.95 - 0.1 * k / 100  # as OneCycle moves both
        for group in sgd.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        sgd.step()
        sgd_update(
            ours, grads, buffers, torch.tensor(lr), torch.tensor(momentum), weight_decay, nesterov
        )
        # Not bitwise: torch folds lr and momentum into `alpha=` (one rounding), we multiply
        # by a tensor first. A few float32 ulps a step, not growing.
        tolerance = 1e-6 if k == 0 else 1e-5
        for p, q in zip(theirs, ours, strict=True):
            torch.testing.assert_close(q, p.detach(), rtol=tolerance, atol=tolerance)
    for p, buffer in zip(theirs, buffers, strict=True):
        torch.testing.assert_close(buffer, sgd.state[p]["momentum_buffer"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("n", "batch_size", "shuffle", "augmented"),
    [
        (100, 32, True, True),  # three full batches and a partial one of 4
        (96, 32, True, False),  # no partial batch
        (20, 32, True, True),  # one batch, smaller than batch_size
        (100, 32, False, False),  # the test pass's order
    ],
)
def test_static_batches_are_the_batches_of_batches(
    n: int, batch_size: int, shuffle: bool, augmented: bool
) -> None:
    data = noise(n)
    rotation, translate = (5.0, 0.03) if augmented else (0.0, 0.0)
    torch.manual_seed(3)
    expected = list(batches(data, batch_size, shuffle, rotation, translate))
    torch.manual_seed(3)
    static = StaticBatches(n, batch_size, torch.device("cpu"))
    buffers: dict[int, int] = {}
    got = []
    for indices in static.epoch(shuffle):
        assert buffers.setdefault(len(indices), indices.data_ptr()) == indices.data_ptr()
        got.append(batch(data, indices, rotation, translate))  # what the graph does with it
    assert len(got) == len(expected) == len(static)
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)  # bitwise: the same random draws
    assert sorted(buffers) == sorted({min(batch_size, n), n % batch_size or min(batch_size, n)})


def run_epochs(
    model: nn.Module,
    train: Split,
    test: Split,
    recipe: Recipe,
    loops: list[str],
    capture: bool = False,
    name: str = "",
) -> tuple[list[tuple[float, ...]], torch.optim.Optimizer, object]:
    """Train ``model`` one epoch per entry of ``loops``, each "plain" or "graph" (one
    GraphTrainer taking over wherever the plain loop left the optimizer and scheduler)."""
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, -(-len(train) // recipe.batch_size))
    ema = make_ema(model, recipe)
    trainer = None
    out = []
    for loop in loops:
        if loop == "plain":
            trained = train_one_epoch(
                model, train, optimizer, scheduler, recipe, progress=False, ema=ema
            )
            tested = evaluate(model if ema is None else ema.module, test)
        else:
            if trainer is None:
                trainer = GraphTrainer(
                    model, train, test, recipe, optimizer, scheduler, capture, name, ema=ema
                )
            trained, tested = trainer.train_one_epoch(progress=False), trainer.evaluate()
        out.append((*trained, *tested, optimizer.param_groups[0]["lr"]))
    return out, optimizer, scheduler


def assert_same_run(
    got: list[tuple[float, ...]], expected: list[tuple[float, ...]], images: tuple[int, int]
) -> None:
    """Equal but for float rounding in the SGD update: losses within 1e-4 (relative), at most
    one image's verdict flipped, the logged lr exact."""
    for ours, theirs in zip(got, expected, strict=True):
        assert ours[0] == pytest.approx(theirs[0], rel=1e-4)
        assert abs(ours[1] - theirs[1]) <= 100.0 / images[0] + 1e-9
        assert ours[2] == pytest.approx(theirs[2], rel=1e-4)
        assert abs(ours[3] - theirs[3]) <= 100.0 / images[1] + 1e-9
        assert ours[4] == theirs[4]


# The steps the graph path would train on a GPU: tiny's Adam has no capturable update here,
# so on CUDA it trains in the plain loop (test_why_not says so).
GRAPHED = [s.slug for s in all_steps() if why_not(s.recipe, torch.device("cuda")) is None]


@pytest.mark.slow
@pytest.mark.parametrize("slug", GRAPHED)
def test_the_graph_path_trains_as_the_plain_loop(mnist: MNIST, slug: str) -> None:
    """Every step's own recipe (BatchNorm, Dropout, OneCycle, augmentation, weight average),
    two epochs of 130 images: partial batches in both splits, the same random draws in the same
    order. At a tenth of the recipe's learning rate: at the full one the separable steps'
    first updates amplify float rounding (our SGD update against torch's) to 2e-3 in ten steps,
    on one thread or two; at a tenth the two loops stay 1e-7 apart."""
    step = get_step(slug)
    recipe = replace(step.recipe, epochs=2, lr=step.recipe.lr / 10)
    train, test = mnist.train.head(130), mnist.test.head(50)
    runs = []
    for loop in ("plain", "graph"):
        torch.manual_seed(11)
        model = step.build()
        history, optimizer, scheduler = run_epochs(model, train, test, recipe, [loop] * 2)
        runs.append((history, model, optimizer, scheduler))
    (plain, plain_model, plain_opt, plain_sched), (graph, model, opt, sched) = runs
    assert_same_run(graph, plain, (len(train), len(test)))
    for (name, ours), theirs in zip(
        model.state_dict().items(), plain_model.state_dict().values(), strict=True
    ):
        # BatchNorm makes the weights before it sensitive: 1e-5 apart after 4 steps.
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4, msg=name)
    # The optimizer and scheduler are left where the plain loop leaves them.
    assert opt.state_dict()["param_groups"] == plain_opt.state_dict()["param_groups"]
    if plain_sched is not None:
        assert sched.state_dict() == plain_sched.state_dict()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "recipe",
    [replace(FINAL, epochs=3), replace(PLAIN, schedule="step", step_size=1, epochs=3)],
    ids=["onecycle", "steplr"],
)
def test_the_graph_path_takes_over_from_the_plain_loop_and_hands_back(
    mnist: MNIST, recipe: Recipe
) -> None:
    """Plain, graph, plain again (a resumed run, a fallback): the same three epochs as plain."""
    step = get_step("scheduler")
    train, test = mnist.train.head(100), mnist.test.head(50)
    runs = []
    for loops in (["plain"] * 3, ["plain", "graph", "plain"]):
        torch.manual_seed(4)
        runs.append(run_epochs(step.build(), train, test, recipe, loops)[0])
    assert_same_run(runs[1], runs[0], (len(train), len(test)))


def test_step_losses_are_the_losses_of_the_steps(mnist: MNIST) -> None:
    recipe = replace(FINAL, epochs=1)
    train, test = mnist.train.head(100), mnist.test.head(50)
    torch.manual_seed(2)
    model = get_step("scheduler").build()
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, 4)
    trainer = GraphTrainer(model, train, test, recipe, optimizer, scheduler, capture=False)
    loss, _ = trainer.train_one_epoch(progress=False)
    sizes = torch.tensor([32, 32, 32, 4], dtype=torch.float32)
    assert trainer.step_losses.shape == (4,) and bool((trainer.step_losses > 0).all())
    assert (trainer.step_losses * sizes).sum().item() / 100 == pytest.approx(loss, rel=1e-6)


def test_each_step_uses_its_own_entry_of_the_schedule(
    mnist: MNIST, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[tuple[float, float]] = []

    def recording(*args: Any) -> None:
        used.append((args[3].item(), args[4].item()))
        sgd_update(*args)

    monkeypatch.setattr(graphs, "sgd_update", recording)
    recipe = replace(FINAL, epochs=2)
    train, test = mnist.train.head(100), mnist.test.head(50)
    run_epochs(get_step("scheduler").build(), train, test, recipe, ["plain", "graph"])
    lrs, momenta = schedule_table(recipe, 4)
    as_float32 = torch.tensor([lrs[4:8], momenta[4:8]]).T.tolist()  # what the graph holds
    assert used == [tuple(pair) for pair in as_float32]  # the graph took over at step 4


def failing_capture(step: Callable[[], None], undo: Callable[[], None]) -> Callable[[], None]:
    """A capture that warms up (training for real, drawing random numbers), then fails."""
    step()
    step()
    raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def fake_capture(step: Callable[[], None], undo: Callable[[], None]) -> Callable[[], None]:
    """A capture that works: warms up, undoes it, and 'replays' by calling the step."""
    step()
    undo()
    return step


def test_a_step_that_cannot_be_captured_trains_eagerly_and_says_why_once(
    mnist: MNIST, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(graphs, "_capture", failing_capture)
    recipe = replace(get_step("dropout").recipe, epochs=1)  # Dropout: random numbers in the step
    train, test = mnist.train.head(150), mnist.test.head(50)
    runs = []
    for loop in ("plain", "graph"):
        torch.manual_seed(8)
        model = get_step("dropout").build()
        runs.append(run_epochs(model, train, test, recipe, [loop], True, "dropout"))
    assert runs[1][0] == runs[0][0]  # bitwise: the warm-up was undone, then the plain loop ran
    lines = capsys.readouterr().err.splitlines()
    for what in ("training", "test"):
        expected = (
            f"cuda graphs: dropout: the {what} step runs eagerly: could not capture it (RuntimeError: "
            "operation not permitted when stream is capturing)"
        )
        assert lines.count(expected) == 1, lines
    assert len(lines) == 2, lines


def test_fit_with_cuda_graphs_on_the_cpu_says_why_and_runs_the_plain_loop(
    mnist: MNIST, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = replace(get_step("gap").recipe, epochs=1)
    results = []
    for cuda_graphs in (False, True):
        torch.manual_seed(1)
        model = get_step("gap").build()
        train, test = mnist.train.head(150), mnist.test.head(50)
        results.append(
            fit(model, train, test, recipe, False, "gap", False, cuda_graphs=cuda_graphs)
        )
    plain, asked = ([e.model_copy(update={"seconds": 0}) for e in r.epochs] for r in results)
    assert asked == plain and not results[1].cuda_graphs
    assert capsys.readouterr().err.splitlines() == [
        "cuda graphs: gap trains eagerly: CUDA graphs need a CUDA device, not cpu"
    ]


def test_fit_trains_through_the_graph_path_when_capture_works(
    mnist: MNIST, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(graphs, "why_not", lambda recipe, device: None)
    monkeypatch.setattr(graphs, "_capture", fake_capture)
    recipe = replace(get_step("batchnorm").recipe, epochs=2)
    train, test = mnist.train.head(150), mnist.test.head(50)
    results = []
    for cuda_graphs in (False, True):
        torch.manual_seed(1)
        model = get_step("batchnorm").build()
        results.append(
            fit(model, train, test, recipe, False, "batchnorm", True, cuda_graphs=cuda_graphs)
        )
    plain, graphed = results
    assert graphed.cuda_graphs and not plain.cuda_graphs
    assert_same_run(
        [(e.train_loss, e.train_accuracy, e.test_loss, e.test_accuracy, e.lr) for e in graphed.epochs],
        [(e.train_loss, e.train_accuracy, e.test_loss, e.test_accuracy, e.lr) for e in plain.epochs],
        (len(train), len(test)),
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "cuda graphs: batchnorm: captured the training step (batches of 128 and 22)" in err
    assert "cuda graphs: batchnorm: captured the test step (batches of 50)" in err


@pytest.mark.parametrize(
    ("recipe", "device", "reason"),
    [
        (FINAL, "cuda", None),
        (PLAIN, "cuda", None),
        (FINAL, "cpu", "CUDA graphs need a CUDA device, not cpu"),
        (replace(PLAIN, optimizer="adam"), "cuda", "no capturable update for the 'adam'"),
        (TINY, "cuda", "no capturable update for the 'adam'"),
    ],
)
def test_why_not(recipe: Recipe, device: str, reason: str | None) -> None:
    found = why_not(recipe, torch.device(device))
    assert found == reason if reason is None else (found or "").startswith(reason)


@pytest.mark.parametrize(
    ("mode", "device", "expected"),
    [("off", "cuda", False), ("auto", "cuda", True), ("auto", "cpu", False), ("on", "cuda", True)],
)
def test_graphs_flag(mode: str, device: str, expected: bool) -> None:
    assert use_cuda_graphs(mode, torch.device(device)) is expected


@pytest.mark.slow  # starts a process
def test_graphs_on_without_a_gpu_is_a_clear_error() -> None:
    result = trainer_cli("run", "--steps", "gap", "--device", "cpu", "--graphs", "on")
    assert result.returncode != 0
    assert "error: --graphs on needs a CUDA GPU; use --graphs auto or off" in result.stderr
