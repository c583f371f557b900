"""``python -m trainer``: train, summarise, export and list the steps of the assignment.

python -m trainer run --steps all                 # train every step, publish into $MODELS_DIR
python -m trainer run --steps gap --epochs 1 --limit 5000 --data-dir ../shared/datasets/mnist
python -m trainer run --steps all --resume        # go on where a killed run stopped
python -m trainer run --jobs 1 --threads 2        # one step at a time, two threads (see threads.py)
python -m trainer run --device cuda --graphs on   # each step captured in a CUDA graph (opt-in)
python -m trainer summary setup                   # the seed-style layer table
python -m trainer export gap                      # re-export a kept checkpoint, no training
python -m trainer ls                              # what the model volume holds
python -m trainer rollback gap                    # serve gap's previous kept version again

python -m trainer digit > digit.png               # a published sample test digit (a 7) as a PNG
python -m trainer report --collect models         # reports/REPORT.md from published runs
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from trainer import threads
from trainer.data import MNIST, DataError, Split, load_mnist
from trainer.export import ExportError, export_and_publish, load_checkpoint, save_checkpoint
from trainer.jobs import claimed, run_workers
from trainer.jobs import heading as step_heading
from trainer.plan import (
    longest_first,
    plan_lines,
    read_estimates,
    share_estimates,
    time_first_batches,
)
from trainer.progress import (
    EpochEstimate,
    Overall,
    Planned,
    StepReporter,
    Watches,
    finish_time,
)
from trainer.resume import (
    Fingerprint,
    ResumeError,
    load_state,
    published_differences,
    remove_state,
    save_state,
)
from trainer.steps import Recipe, count_params, get_step
from trainer.summary import summarize
from trainer.threads import cpu_cores
from trainer.train import build, fit
from volume import (
    STEP_SLUGS,
    STEPS,
    Metrics,
    Provenance,
    UnknownStepError,
    VolumeError,
    read_index,
    read_version,
    resolve_step,
)
from volume.versions import (
    Promotion,
    UnknownVersionError,
    kept_versions,
    make_current,
    previous_version,
    read_kept,
)


def parse_steps(text: str, as_given: bool = False) -> list[str]:
    """``all`` or a comma-separated list of slugs or numbers, in the seed's order (`as_given`:
    in the order given, as a --jobs worker takes them)."""
    if text.strip().lower() == "all":
        return list(STEP_SLUGS)
    chosen = [resolve_step(part) for part in text.split(",") if part.strip()]
    return list(dict.fromkeys(chosen)) if as_given else [s for s in STEP_SLUGS if s in chosen]


def step_at_index(index: int) -> list[str]:
    """The step at 0-based `index` of the catalogue: one pod of an Indexed Job trains one step,
    given its $(JOB_COMPLETION_INDEX)."""
    if not 0 <= index < len(STEP_SLUGS):
        raise UnknownStepError(
            f"step index {index}: the catalogue has {len(STEP_SLUGS)} steps, 0-"
            f"{len(STEP_SLUGS) - 1}; an Indexed Job's completions must be {len(STEP_SLUGS)}"
        )
    return [STEP_SLUGS[index]]


def at_least_one(text: str) -> int:
    """``--jobs`` and ``--threads``: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return value


class RecipeError(ValueError):
    pass


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set lr=0.1 --set nesterov=false`` as Recipe fields of the right type (nanoGPT's
    configurator, for one run): try a recipe change without editing the catalogue."""
    types = {f.name: type(getattr(Recipe(), f.name)) for f in fields(Recipe)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise RecipeError(f"--set {pair!r}: expected KEY=VALUE, KEY one of {', '.join(types)}")
        kind = types[key]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                overrides[key] = text.lower() in ("true", "1")
            else:
                overrides[key] = kind(text)
        except ValueError:
            raise RecipeError(f"--set {pair!r}: {key} takes a {kind.__name__}") from None
    return overrides


def pick_device(name: str) -> tuple[torch.device, str]:
    """The device `--device` names, and what to say of it."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but no CUDA GPU is visible; use --device auto")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if use_cuda:
        return torch.device("cuda"), f"cuda ({torch.cuda.get_device_name(0)})"
    return torch.device("cpu"), f"cpu ({'as asked' if name == 'cpu' else 'no CUDA GPU found'})"


def use_cuda_graphs(mode: str, device: torch.device) -> bool:
    """``--graphs``: off (the default until measured on a GPU), auto (on CUDA only), or on."""
    if mode == "on" and device.type != "cuda":
        raise SystemExit("error: --graphs on needs a CUDA GPU; use --graphs auto or off")
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def software_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def git_commit() -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        # A run from uncommitted code says so: its commit alone would not reproduce it.
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}-dirty" if commit and dirty else commit or None


def load_data(args: argparse.Namespace) -> MNIST:
    cache = Path(os.environ.get("MNIST_CACHE", Path.home() / ".cache" / "mnist"))
    return load_mnist(args.data_dir, cache)


def published_match(root: Path, wanted: Fingerprint) -> str | None:
    """A kept version of `wanted.step` whose run had the same recipe, code and data, the
    current one first (a run kept but not made current, as it tested worse, counts too)."""
    for kept in sorted(kept_versions(root, wanted.step), key=lambda k: not k.current):
        try:
            metrics = read_kept(root, wanted.step, kept.version).metrics
        except (VolumeError, UnknownVersionError):
            continue  # damaged or pruned: not a match
        if not published_differences(metrics, wanted):
            return kept.version
    return None


def epoch_saver(
    root: Path, wanted: Fingerprint, started: str, since: float
) -> Callable[[dict[str, Any]], None]:
    """What `fit` calls after each epoch: save the resume state, with the run's start and wall
    time so far (a resumed run's provenance counts the time of the runs before it)."""

    def save(snapshot: dict[str, Any]) -> None:
        extra = {"started_at": started, "wall_seconds": time.perf_counter() - since}
        save_state(root, wanted, snapshot, extra)

    return save


@dataclass
class Todo:
    """A step this run trains: its recipe, fingerprint and resume state (None: from epoch 1)."""

    slug: str
    recipe: Recipe
    wanted: Fingerprint
    state: dict[str, Any] | None


def heading(slug: str) -> str:
    return step_heading(get_step(slug).info.number, slug)


def cmd_run(args: argparse.Namespace) -> int:
    steps = (
        step_at_index(args.step_index)
        if args.step_index is not None
        else parse_steps(args.steps, as_given=args.claims is not None)
    )
    overrides = parse_overrides(args.set)
    device, device_words = pick_device(args.device)
    graphs = use_cuda_graphs(args.graphs, device)
    mnist = load_data(args)
    train, test = mnist.train.head(args.limit).to(device), mnist.test.head(args.limit).to(device)
    # What is left to train: with --resume, a step published from this recipe, code and data is
    # skipped, and one with a saved state goes on from it (another run's state is refused here,
    # before anything trains).
    todo: list[Todo] = []
    skipped: list[tuple[str, str]] = []
    for slug in steps:
        recipe = replace(get_step(slug).recipe, **overrides)
        if args.epochs is not None:
            recipe = replace(recipe, epochs=args.epochs)
        if args.seed is not None:
            recipe = replace(recipe, seed=args.seed)
        wanted = Fingerprint.of(slug, recipe, mnist.checksums, args.limit, device.type)
        published = published_match(args.out, wanted) if args.resume else None
        if published is not None:
            skipped.append((slug, published))
            continue
        state = load_state(args.out, wanted) if args.resume else None
        todo.append(Todo(slug, recipe, wanted, state))

    # Where the count is the policy's, a fifth of a second to see which cores other programs
    # keep busy (a --jobs worker is given its count).
    choice = threads.choose(
        cpu_cores(), len(todo), device.type, args.jobs, args.threads, busy=threads.busy_cores
    )
    torch.set_num_threads(choice.threads)
    ceiling = args.ceiling if args.as_job else choice.ceiling
    governor = (
        threads.Governor(choice.threads, ceiling, torch.set_num_threads, say)
        if ceiling is not None and device.type == "cpu"
        else None
    )

    def probe(slug: str) -> EpochEstimate:
        recipe = next(t.recipe for t in todo if t.slug == slug)
        return time_first_batches(slug, recipe, train, test, not args.quiet)

    if args.as_job:  # a worker of a --jobs run: the parent said all of this
        if args.claims is None:
            return train_steps(args, todo, train, test, mnist, device, graphs, {}, None, governor)
        estimates = share_estimates([t.slug for t in todo], args.claims, probe)
        order = [p.step for p in longest_first(planned(todo, estimates))]
        todo.sort(key=lambda t: order.index(t.slug))
        mine = claimed(todo, args.claims, lambda t: t.slug)
        return train_steps(
            args, mine, train, test, mnist, device, graphs, estimates, None, governor
        )
    say(f"threads: {choice.why}")
    say(f"device: {device_words}")
    say(f"data: {mnist.source} ({len(train)} train, {len(test)} test images)")
    for slug, version in skipped:
        say(f"{heading(slug)}: skipped: published version {version} was trained from this "
            "recipe, code and data")  # fmt: skip
    if not todo:
        return 0
    epochs = sorted({t.recipe.epochs for t in todo})
    say(f"plan: {len(todo)} step{'s' * (len(todo) != 1)} ({', '.join(t.slug for t in todo)}), "
        f"{'/'.join(map(str, epochs))} epochs each, on {device.type}, {choice.jobs} at a time "
        f"with {choice.threads} thread{'s' * (choice.threads != 1)} each; timing the first "
        f"batches of each step{' in the jobs' * (choice.jobs > 1)}...")  # fmt: skip
    if choice.jobs > 1:
        return train_in_workers(args, todo, choice)
    estimates = {t.slug: probe(t.slug) for t in todo}
    plan = planned(todo, estimates)
    total = show_plan(plan, choice.jobs)
    overall = Overall(args.out, plan, choice.jobs).start()
    try:
        code = train_steps(
            args, todo, train, test, mnist, device, graphs, estimates, overall, governor
        )
    finally:
        overall.stop()
    say(overall.done_line(total))
    return code


def planned(todo: list[Todo], estimates: dict[str, EpochEstimate]) -> list[Planned]:
    """The plan of `todo`: each step's epochs left and an epoch's estimated seconds."""
    return [
        Planned(
            t.slug,
            t.recipe.epochs,
            len(t.state["history"]) if t.state else 0,
            estimates[t.slug].seconds,
        )
        for t in todo
    ]


def show_plan(plan: list[Planned], jobs: int) -> float:
    """Print the plan; return its estimated seconds to the last step's end."""
    total = finish_time([], [p.seconds_left for p in plan], jobs)
    for line in plan_lines(plan, [], jobs, total):
        say(line)
    return total


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train_in_workers(args: argparse.Namespace, todo: list[Todo], choice: threads.Threads) -> int:
    """Train `todo` in `choice.jobs` worker processes that time the steps between them for the
    plan (printed here once they have), then take them in turn, the longest first; 0 when every
    step was trained, else 2 (the workers' lines say why)."""
    steps = [t.slug for t in todo]
    starts: dict[str, datetime] = {}  # each step's start, heard from its worker
    overall: Overall | None = None
    total = 0.0
    with tempfile.TemporaryDirectory(prefix="trainer-claims-") as claims:

        def plan_once_timed() -> None:
            nonlocal overall, total
            if overall is not None:
                return
            estimates = read_estimates(Path(claims), steps)
            if len(estimates) == len(steps):
                plan = longest_first(planned(todo, estimates))
                total = show_plan(plan, choice.jobs)
                overall = Overall(args.out, plan, choice.jobs, step_started=starts).start()

        argv = worker_command(args, steps, choice, Path(claims))
        try:
            codes = run_workers(
                argv,
                choice.jobs,
                steps,
                on_start=lambda step: starts.__setitem__(step, datetime.now(UTC)),
                while_running=plan_once_timed,
            )
        finally:
            if overall is not None:
                overall.stop()
        taken = {p.name for p in Path(claims).iterdir() if p.is_file()}
    for n, status in enumerate(codes, start=1):
        if status != 0:
            say(f"error: job {n} exited with status {status} (its lines above say why)")
    never = [s for s in steps if s not in taken]
    if never:
        say(f"error: not trained, every job stopped first: {', '.join(never)}")
    if overall is not None:
        say(overall.done_line(total))
    return 2 if never or any(codes) else 0


def worker_command(
    args: argparse.Namespace, steps: list[str], choice: threads.Threads, claims: Path
) -> list[str]:
    """The ``python -m trainer run`` of a worker of a --jobs run: this run's arguments, its
    steps in the order to take them and the folder of their claims."""
    argv = [sys.executable, "-m", "trainer", "run", "--steps", ",".join(steps), "--as-job"]
    argv += ["--claims", str(claims)]
    argv += ["--jobs", "1", "--threads", str(choice.threads), "--device", args.device]
    argv += ["--ceiling", str(choice.ceiling)] if choice.ceiling is not None else []
    argv += ["--graphs", args.graphs, "--out", str(args.out), "--keep", str(args.keep)]
    argv += ["--resume" if args.resume else "--fresh"]
    for flag, value in (("--epochs", args.epochs), ("--limit", args.limit), ("--seed", args.seed)):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--data-dir", str(args.data_dir)] if args.data_dir is not None else []
    for pair in args.set:
        argv += ["--set", pair]
    return argv + (["--quiet"] if args.quiet else [])


def shlex_command(argv: list[str] | None = None) -> str:
    """This process's command line, as its artifacts record it."""
    return "python -m trainer " + shlex.join(sys.argv[1:] if argv is None else argv)


def step_command(argv: list[str], slug: str) -> str:
    """What a --jobs worker records for `slug`: its command for that step alone, without the
    worker's claims (a temporary folder), so that it trains the step again as it is."""
    alone: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--steps":
            alone += [arg, slug]
            next(it, None)
        elif arg in ("--claims", "--ceiling"):
            next(it, None)
        elif arg != "--as-job":
            alone.append(arg)
    return shlex_command(alone)


def train_steps(
    args: argparse.Namespace,
    todo: Iterable[Todo],
    train: Split,
    test: Split,
    mnist: MNIST,
    device: torch.device,
    graphs: bool,
    estimates: dict[str, EpochEstimate],
    overall: Overall | None,
    governor: threads.Governor | None = None,
) -> int:
    """Train, export and publish each step of `todo` in this process, one after another (a
    --jobs worker's `todo` claims each step as it comes to it); `governor` keeps the thread
    count on the free cores."""
    versions, commit = software_versions(), git_commit()
    for t in todo:
        slug, recipe, wanted, state = t.slug, t.recipe, t.wanted, t.state
        step = get_step(slug)
        if overall is not None:
            overall.started(slug)
        if not args.resume:
            remove_state(args.out, slug)
        model = build(slug, recipe, device)
        if state is None:
            started, earlier = datetime.now(UTC).isoformat(timespec="seconds"), 0.0
            say(f"{heading(slug)}: {count_params(model):,} params")
        else:
            started, earlier = state["started_at"], state["wall_seconds"]
            done = len(state["history"])
            say(f"{heading(slug)}: resuming after epoch {done} of {recipe.epochs}")
        since = time.perf_counter() - earlier  # wall time counts the runs before a kill
        save = epoch_saver(args.out, wanted, started, since)
        reporter = StepReporter(args.out, slug, recipe.epochs, started, since, estimates.get(slug))
        bar = not args.quiet and sys.stderr.isatty()
        try:
            result = fit(
                model, train, test, recipe, bar, slug, not args.quiet,
                resume=state, save=save, cuda_graphs=graphs, watch=Watches(reporter, governor),
            )  # fmt: skip
            provenance = Provenance(
                command=step_command(sys.argv[1:], slug) if args.claims else shlex_command(),
                seed=recipe.seed,
                device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(0),
                versions=versions,
                data=mnist.checksums,
                limit=args.limit,
                started_at=started,
                wall_seconds=round(time.perf_counter() - since, 2),
                git_commit=commit,
                cuda_graphs=result.cuda_graphs,
                code=wanted.code,
            )
            metrics = Metrics(
                step=slug,
                number=step.info.number,
                title=step.info.title,
                objective=step.objective,
                params=count_params(model),
                recipe=asdict(recipe),
                epochs=result.epochs,
                best_epoch=result.best_epoch,
                best_test_accuracy=result.best.test_accuracy,
                provenance=provenance,
                verification={},
            )
            save_checkpoint(args.out, slug, result.best_state, {"metrics": metrics.model_dump()})
            promotion = Promotion(args.out, slug, result.best.test_accuracy, force=args.promote)
            version = export_and_publish(
                args.out, slug, result.best_state, metrics, test, args.keep, promotion
            )
        except KeyboardInterrupt:
            reporter.finish("stopped", message="interrupted; `run --resume` goes on from here")
            raise
        except Exception as e:
            reporter.finish("failed", message=f"{type(e).__name__}: {e}"[:500])
            raise
        reporter.finish("published", version=version)
        remove_state(args.out, slug)  # published: nothing left to resume
        say(
            f"published {slug} {version}: best test accuracy {result.best.test_accuracy:.2f}% "
            f"(epoch {result.best_epoch})"
        )
        say(promotion.message(version))
    return 0


def cmd_export(args: argparse.Namespace) -> None:
    mnist = load_data(args)
    for slug in parse_steps(args.steps):
        ckpt = load_checkpoint(args.out, slug)
        metrics = Metrics.model_validate(ckpt["metrics"])
        test = mnist.test.head(metrics.provenance.limit)
        promotion = Promotion(args.out, slug, metrics.best_test_accuracy, force=args.promote)
        version = export_and_publish(
            args.out, slug, ckpt["state_dict"], metrics, test, args.keep, promotion
        )
        print(f"published {slug} {version} from {ckpt['step']}'s kept checkpoint", file=sys.stderr)
        print(promotion.message(version), file=sys.stderr)


def cmd_summary(args: argparse.Namespace) -> None:
    slug = resolve_step(args.step)
    print(summarize(get_step(slug).build(), slug).text, end="")


def cmd_ls(args: argparse.Namespace) -> None:
    index = read_index(args.out)
    print(f"{'#':>2}  {'step':<10} {'params':>8} {'best test':>9}  version")
    for info in STEPS:
        entry = index.steps.get(info.slug)
        if entry is None:
            print(f"{info.number:>2}  {info.slug:<10} {'':>8} {'':>9}  (not published)")
            continue
        m = read_version(args.out, info.slug, entry).metrics
        print(
            f"{info.number:>2}  {info.slug:<10} {m.params:>8,} {m.best_test_accuracy:>8.2f}%  "
            f"{entry.version}"
        )


def cmd_rollback(args: argparse.Namespace) -> None:
    """Make a kept version of a step current: the one named, else the one before the current."""
    slug = resolve_step(args.step)
    version = args.version or previous_version(args.out, slug)
    before = make_current(args.out, slug, version)
    print(
        f"{slug}: {version} is current (was {before}); the service follows within its POLL_SECONDS",
        file=sys.stderr,
    )


def sample_digit_png(volume: Path, label: int, scale: int = 4) -> bytes:
    """The first published sample test digit of ``label`` as a PNG, dark ink on white as on
    paper, ``scale`` times MNIST's 28x28: a digit to try the service with, read from the model
    volume, so it is there however the trainer got MNIST (a folder or the download)."""
    from PIL import Image  # torchvision's dependency; only this command needs it

    index = read_index(volume)
    for slug in STEP_SLUGS:
        entry = index.steps.get(slug)
        samples = read_version(volume, slug, entry).samples if entry else None
        for digit in samples.digits if samples else []:
            if digit.label == label:
                image = Image.frombytes("L", (28, 28), digit.grey()).point(lambda v: 255 - v)
                buffer = io.BytesIO()
                image.resize((28 * scale, 28 * scale), Image.Resampling.NEAREST).save(
                    buffer, format="PNG"
                )
                return buffer.getvalue()
    raise VolumeError(
        f"no published step in {volume} holds a sample digit {label}: train a step first "
        "(python -m trainer run), then ask again"
    )


def cmd_digit(args: argparse.Namespace) -> None:
    if sys.stdout.isatty():
        # A PNG on a terminal is noise; in Docker a terminal also mangles it (add -T).
        raise SystemExit(
            "error: digit writes a PNG to standard output: redirect it to a file, e.g. "
            "`python -m trainer digit > digit.png` (with `docker compose run`, add -T)"
        )
    png = sample_digit_png(args.out, args.label)
    sys.stdout.buffer.write(png)
    sys.stdout.flush()


def cmd_report(args: argparse.Namespace) -> None:
    from trainer import report

    if args.collect is not None:
        for copied in report.collect(args.collect, args.reports / "runs"):
            print(f"collected {copied}", file=sys.stderr)
    try:
        path = report.write_report(args.reports)
    except FileNotFoundError as e:
        raise VolumeError(str(e)) from None
    print(f"wrote {path}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def volume_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--out",
            type=Path,
            default=Path(os.environ.get("MODELS_DIR", "models")),
            help="the model volume (default: $MODELS_DIR or ./models)",
        )

    def data_args(p: argparse.ArgumentParser) -> None:
        default = os.environ.get("MNIST_DIR")
        p.add_argument(
            "--data-dir",
            type=Path,
            default=Path(default) if default else None,
            help="folder with the four MNIST IDX files, .gz or raw (default: $MNIST_DIR, else "
            "download with torchvision into $MNIST_CACHE or ~/.cache/mnist)",
        )
        p.add_argument("--keep", type=int, default=3, help="published versions kept per step")
        p.add_argument(
            "--promote",
            action="store_true",
            help="make each new version current even where it tests worse than the version "
            "served (without it, such a version is kept beside it, not served)",
        )

    run = sub.add_parser("run", help="train steps, export and publish each")
    run.add_argument("--steps", default="all", help="all, or slugs/numbers: gap,scheduler or 6,7")
    run.add_argument(
        "--step-index",
        type=int,
        metavar="I",
        help="train only the step at 0-based position I, instead of --steps: an Indexed Job's "
        "$(JOB_COMPLETION_INDEX), one step per pod (k8s/trainer-steps-job.yaml)",
    )
    run.add_argument("--epochs", type=int, help="override every recipe's epochs")
    run.add_argument("--limit", type=int, help="train and test on the first N images only")
    run.add_argument("--seed", type=int, help="override every recipe's seed")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set lr=0.1 --set batch_size=32 (repeatable)",
    )
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    run.add_argument(
        "--graphs",
        choices=["off", "auto", "on"],
        default="off",
        help="capture each training and test step in a CUDA graph and replay it (on CUDA, SGD "
        "recipes; a step that cannot be captured trains eagerly and says why). Default off: "
        "not yet measured on a GPU; auto uses graphs only where CUDA is",
    )
    # The last of --resume and --fresh wins: `make train TRAIN_ARGS=--fresh` starts over.
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue each step from its last completed epoch (checkpoints/<step>.resume.pt) "
        "and skip steps whose published version has this recipe, code and data (what `make "
        "train`, `make demo` and the Docker image do)",
    )
    run.add_argument(
        "--fresh",
        dest="resume",
        action="store_false",
        help="start every step from its first epoch, discarding resume states (the default "
        "without --resume; the last of the two wins)",
    )
    run.add_argument(
        "--jobs",
        type=at_least_one,
        metavar="N",
        help="train N steps at once, one process each (default: on a CPU one per core, at most "
        "one per step; on CUDA 1)",
    )
    run.add_argument(
        "--threads",
        type=at_least_one,
        metavar="T",
        help="intra-op threads of each job (default: $OMP_NUM_THREADS, else the cores shared "
        "by the jobs)",
    )
    run.add_argument("--as-job", action="store_true", help=argparse.SUPPRESS)  # one of --jobs
    # A --jobs worker's claims: it takes the steps in the order given, each no other has taken.
    run.add_argument("--claims", type=Path, default=None, help=argparse.SUPPRESS)
    # A --jobs worker's thread count may follow the free cores up to this (threads.Governor).
    run.add_argument("--ceiling", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar, no epoch lines (the plan and the progress line stay)",
    )
    volume_args(run)
    data_args(run)
    run.set_defaults(func=cmd_run)

    export = sub.add_parser("export", help="re-export and publish kept checkpoints")
    export.add_argument("steps", help="all, or slugs/numbers")
    volume_args(export)
    data_args(export)
    export.set_defaults(func=cmd_export)

    summary = sub.add_parser("summary", help="print a step's torchsummary-style layer table")
    summary.add_argument("step", help="a slug or a number")
    summary.set_defaults(func=cmd_summary)

    rep = sub.add_parser("report", help="write reports/REPORT.md and plots from run metrics")
    rep.add_argument("--reports", type=Path, default=Path("reports"), help="default: ./reports")
    rep.add_argument(
        "--collect", type=Path, metavar="MODELS_DIR", help="first copy a volume's current runs in"
    )
    rep.set_defaults(func=cmd_report)

    ls = sub.add_parser("ls", help="list what the model volume holds")
    volume_args(ls)
    ls.set_defaults(func=cmd_ls)

    rollback = sub.add_parser(
        "rollback", help="make a kept version of a step current (default: the one before)"
    )
    rollback.add_argument("step", help="a slug or a number")
    rollback.add_argument(
        "version", nargs="?", help="a kept version (GET /steps/{step} lists them)"
    )
    volume_args(rollback)
    rollback.set_defaults(func=cmd_rollback)

    digit = sub.add_parser(
        "digit", help="write a published sample test digit as a PNG to standard output"
    )
    digit.add_argument(
        "--label", type=int, choices=range(10), default=7, metavar="0-9", help="default: 7"
    )
    volume_args(digit)
    digit.set_defaults(func=cmd_digit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (
        DataError, ExportError, VolumeError, UnknownStepError, UnknownVersionError, RecipeError,
        ResumeError,
    ) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last published versions are still in place", file=sys.stderr)
        return 130
    return code or 0
