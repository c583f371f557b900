"""``python -m trainer report``: the step report, computed from published metrics alone.

    python -m trainer report --collect models      # copy the volume's current versions in, then write
    python -m trainer report                       # rewrite reports/REPORT.md and the plots

Runs live in ``reports/runs/<step>/seed-<n>/`` as the ``metrics.json`` and ``summary.json`` the
trainer published. Every number in the report is read or computed from those files; the same
files give the same report, byte for byte.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.resume import code_hashes
from trainer.steps import Recipe, get_step
from volume import (
    METRICS_FILE,
    STEPS,
    SUMMARY_FILE,
    Metrics,
    Summary,
    read_current,
    read_index,
)

REPORT_FILE = "REPORT.md"
OVERFIT_GAP = 0.5  # percentage points of train over test accuracy that we call over-fitting
UNDERFIT_GAP = 0.1  # points of test over train accuracy that the analysis explains (less is noise)
ASSIGNMENT = (8_000, 99.4)  # the assignment's target: under 8,000 parameters, at least 99.4 %
# The seed's own results, where its author's numbers disagree with what its models can be.
SEED_CLAIMS = {
    "setup": "the seed says '> 5 M' parameters for this 593,200-parameter model",
    "gap": "the seed reports 99.99 % best test accuracy here; no run of ours comes near it",
}


@dataclass(frozen=True)
class Run:
    seed: int
    metrics: Metrics
    summary: Summary

    @property
    def last3(self) -> list[float]:
        return [e.test_accuracy for e in self.metrics.epochs[-3:]]

    @property
    def final(self) -> float:
        """The last epoch's test accuracy."""
        return self.metrics.epochs[-1].test_accuracy

    @property
    def best_train(self) -> tuple[float, int]:
        best = max(self.metrics.epochs, key=lambda e: (e.train_accuracy, -e.epoch))
        return best.train_accuracy, best.epoch

    @property
    def commit(self) -> str:
        """The commit that trained it, short, ``-dirty`` kept; ``?`` where none was recorded."""
        commit = self.metrics.provenance.git_commit or "?"
        return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")

    @property
    def older_code(self) -> str | None:
        """None when this run was trained by the code and the recipe main has now for its step
        (the hashes trainer/resume.py records) from a clean tree; else why it is not main's
        result."""
        recorded = self.metrics.provenance.code
        if not recorded:
            return f"trained at {self.commit}, before the trainer recorded its code's hashes"
        legacy = not all(h.startswith("ast:") for h in recorded.values())
        now = code_hashes(self.metrics.step, legacy)
        changed = sorted(k for k in now.keys() | recorded.keys() if now.get(k) != recorded.get(k))
        if changed:
            return f"trained at {self.commit}; main's {', '.join(changed)} differ"
        other = recipe_changes(self.metrics.step, self.metrics.recipe)
        if other:
            return f"trained at {self.commit} with {', '.join(other)}"
        if self.commit.endswith("-dirty"):
            return f"trained at {self.commit}: from uncommitted changes"
        return None

    @property
    def gap(self) -> float:
        """Train minus test accuracy at the best epoch, in percentage points."""
        best = self.metrics.epochs[self.metrics.best_epoch - 1]
        return best.train_accuracy - best.test_accuracy


def recipe_changes(step: str, recorded: dict[str, object]) -> list[str]:
    """How a run's recipe differs from the one main's catalogue has for its step, one phrase a
    field ("ema 0.999 where main has 0.9995"). The seed is each run's own. A field the run
    does not record is one added since, and its default is what the run trained with."""
    trained = asdict(Recipe()) | recorded
    return [
        f"{key} {trained[key]} where main has {value}"
        for key, value in asdict(get_step(step).recipe).items()
        if key != "seed" and trained[key] != value
    ]


def collect(volume: Path, runs: Path) -> list[str]:
    """Copy the current version of every published step into ``runs``; return what was copied."""
    copied = []
    for step in read_index(volume).steps:
        published = read_current(volume, step)
        if published is None:
            continue
        seed = published.metrics.provenance.seed
        target = runs / step / f"seed-{seed}"
        target.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, SUMMARY_FILE):
            shutil.copyfile(published.folder / name, target / name)
        copied.append(f"{step}/seed-{seed}")
    return copied


def load_run(folder: Path) -> Run:
    """One run's committed metrics and summary (a ``seed-N`` folder of ``collect``)."""
    metrics = Metrics.model_validate_json((folder / METRICS_FILE).read_bytes())
    summary = Summary.model_validate_json((folder / SUMMARY_FILE).read_bytes())
    return Run(metrics.provenance.seed, metrics, summary)


def load_runs(runs: Path) -> dict[str, list[Run]]:
    """Every run under ``runs``, by step in the seed's order, seeds ascending."""
    found: dict[str, list[Run]] = {}
    for info in STEPS:
        for folder in sorted((runs / info.slug).glob("seed-*")):
            found.setdefault(info.slug, []).append(load_run(folder))
        if info.slug in found:
            found[info.slug].sort(key=lambda r: r.seed)
    return found


def main_run(runs: list[Run]) -> Run:
    """The run a step's section shows: the one trained with the recipe's own seed, else the first."""
    return next((r for r in runs if r.seed == r.metrics.recipe.get("seed")), runs[0])


def pct(value: float) -> str:
    return f"{value:.2f}"


def why_test_is_higher(run: Run) -> str:
    """The causes, read from the run's recipe and layers, of test accuracy above train accuracy.

    The last is always true: train accuracy is counted batch by batch while the weights improve
    over the epoch, and the test pass runs once, after it, with the epoch's final weights.
    """
    recipe = run.metrics.recipe
    causes = []
    augmentation = []
    if recipe.get("rotation"):
        augmentation.append(f"rotated up to {recipe['rotation']} degrees")
    if recipe.get("translate"):
        augmentation.append(f"shifted up to {float(recipe['translate']):.0%} of their size")
    if recipe.get("scale"):
        augmentation.append(f"zoomed in or out by up to {float(recipe['scale']):.0%}")
    if recipe.get("brightness"):
        augmentation.append(f"brightened or dimmed by up to {float(recipe['brightness']):.0%}")
    if augmentation:
        causes.append(f"training images are {' and '.join(augmentation)}, test images are not")
    if any(row.type.startswith("Dropout") for row in run.summary.layers):
        causes.append("dropout is on while training and off while testing")
    if recipe.get("ema"):
        causes.append(
            "the tested weights are an average over the last steps' (recipe.ema), train "
            "accuracy is counted with the raw weights of each step"
        )
    final = "average" if recipe.get("ema") else "weights"
    causes.append(
        "train accuracy is averaged over an epoch of improving weights, test accuracy is "
        f"measured with the epoch's final {final}"
    )
    return "; ".join(causes)


def analysis(run: Run, previous: Run | None) -> list[str]:
    m = run.metrics
    best = m.epochs[m.best_epoch - 1]
    lines = [
        f"Best test accuracy {pct(m.best_test_accuracy)} % at epoch {m.best_epoch} of {len(m.epochs)}."
    ]
    # As printed, so a "-0.00" is never explained as a difference (+ 0.0 turns -0.0 into 0.0).
    gap = round(run.gap, 2) + 0.0
    if gap > OVERFIT_GAP:
        verdict = "over-fitting: the model fits the training set better than it generalises"
    elif gap <= -UNDERFIT_GAP:
        why = why_test_is_higher(run)
        verdict = f"no over-fitting: test accuracy is above train accuracy ({why})"
    else:
        verdict = "no significant over-fitting (train and test accuracy within half a point)"
    lines.append(
        f"Train-test gap at the best epoch: {gap:+.2f} points "
        f"(train {pct(best.train_accuracy)} %, test {pct(best.test_accuracy)} %): {verdict}."
    )
    tail = m.epochs[-3:]
    spread = max(e.test_accuracy for e in tail) - min(e.test_accuracy for e in tail)
    lines.append(
        f"Last {len(tail)} epochs' test accuracy: {', '.join(pct(e.test_accuracy) for e in tail)} "
        f"(spread {spread:.2f} points)."
    )
    if m.best_epoch == len(m.epochs) and len(m.epochs) > 1:
        if m.recipe.get("schedule") == "onecycle":
            lines.append(
                "The best epoch is the last, where OneCycle has annealed the learning rate to "
                "its smallest: the schedule ends the run, not a lack of epochs."
            )
        else:
            lines.append(
                "The best epoch is the last: test accuracy was still rising, so more epochs "
                "would likely still help."
            )
    if previous is not None:
        p = previous.metrics
        ratio = m.params / p.params
        lines.append(
            f"Against `{p.step}`: {m.params:,} params vs {p.params:,} ({ratio:.2f}x), best test "
            f"accuracy {m.best_test_accuracy - p.best_test_accuracy:+.2f} points, train-test gap "
            f"{gap - previous.gap:+.2f} points."
        )
    if m.step in SEED_CLAIMS:
        lines.append(f"The seed's numbers differ from ours: {SEED_CLAIMS[m.step]}; ours stand.")
    return lines


def rf_table(summary: Summary) -> list[str]:
    lines = ["| layer | output shape | receptive field | jump |", "|---|---|---|---|"]
    for row in summary.layers:
        if row.type in ("ReLU", "Dropout", "BatchNorm2d"):
            continue  # they do not change the receptive field
        shape = "x".join(str(d) for d in row.output_shape[1:])
        lines.append(f"| {row.name} | {shape} | {row.receptive_field} | {row.jump} |")
    return lines


def plot_step(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e.epoch for e in run.metrics.epochs]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.4))
    acc.plot(epochs, [e.train_accuracy for e in run.metrics.epochs], "o-", label="train")
    acc.plot(epochs, [e.test_accuracy for e in run.metrics.epochs], "o-", label="test")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{run.metrics.step}: accuracy")
    loss.plot(epochs, [e.train_loss for e in run.metrics.epochs], "o-", label="train")
    loss.plot(epochs, [e.test_loss for e in run.metrics.epochs], "o-", label="test")
    loss.set(xlabel="epoch", ylabel="loss", title=f"{run.metrics.step}: loss", yscale="log")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})  # no version stamp: reproducible bytes
    plt.close(fig)


def params_figure(runs: dict[str, list[Run]]):  # -> matplotlib Figure (imported lazily)
    """Best test accuracy against parameters, one labelled point per step, and the assignment's
    target as a shaded corner. Labels sit right of the points (left where another point is near
    on the right), spread apart vertically and joined to their points by a line, so steps of
    the same size (``batchnorm`` and ``dropout``) never overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [main_run(step_runs).metrics for step_runs in runs.values()]
    accuracies = [m.best_test_accuracy for m in shown] + [ASSIGNMENT[1]]
    low, high = min(accuracies) - 0.3, max(max(accuracies) + 0.15, ASSIGNMENT[1] + 0.3)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(ASSIGNMENT[1], color="tab:green", lw=1, ls="--")
    ax.axvline(ASSIGNMENT[0], color="tab:green", lw=1, ls="--")
    # The x axis starts here (the shaded corner runs from it to the target): at 1,000, or lower
    # where the smallest step's label, set left of its point, needs the room (tiny's 2,920).
    left = min(1_000, min(m.params for m in shown) / 4)
    ax.fill_between(
        [left, ASSIGNMENT[0]], ASSIGNMENT[1], 101, color="tab:green", alpha=0.12,
        label="the assignment: < 8,000 params, >= 99.4 %",
    )  # fmt: skip
    gap = (high - low) / 14  # the least height between two labels
    label_y = -float("inf")
    # In accuracy order, each label at its point's height or `gap` above the label below it.
    for m in sorted(shown, key=lambda m: m.best_test_accuracy):
        label_y = max(m.best_test_accuracy, label_y + gap)
        ax.scatter(m.params, m.best_test_accuracy, color="tab:blue", zorder=3)
        # Right of its point, or left where the next point to the right would sit in the text.
        nearest = min((o.params for o in shown if o.params > m.params), default=float("inf"))
        left_side = nearest < 3 * m.params
        ax.annotate(
            f"{m.number}. {m.step}", (m.params, m.best_test_accuracy),
            xytext=(m.params / 1.8 if left_side else m.params * 1.8, label_y), fontsize=9,
            va="center", ha="right" if left_side else "left",
            arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.8},
        )  # fmt: skip
    high = max(high, label_y + gap)
    ax.set(xscale="log", xlim=(left, 3_000_000), ylim=(low, high))
    ax.legend(loc="lower left", fontsize=8)
    ax.set(xlabel="parameters", ylabel="best test accuracy (%)")
    ax.set_title("Accuracy against size, every step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_params(runs: dict[str, list[Run]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = params_figure(runs)
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def comparison_table(runs: dict[str, list[Run]]) -> list[str]:
    """The side-by-side table; the README carries the same one. Where a step has several seeds,
    the last two columns say how they spread: the final epoch's test accuracy as mean ± std, and
    each seed's worst of its last 3 epochs."""
    lines = [
        "| # | step | params | epochs | best train % (epoch) | best test % (epoch) | last 3 test % "
        "| seeds | final epoch test %, mean ± std | min of last 3, each seed | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for step, step_runs in runs.items():
        run = main_run(step_runs)
        m = run.metrics
        train, train_epoch = run.best_train
        finals = [r.final for r in step_runs]
        spread = pct(finals[0])
        if len(finals) > 1:
            spread = f"{pct(statistics.mean(finals))} ± {statistics.stdev(finals):.2f}"
        lines.append(
            f"| {m.number} | `{step}` | {m.params:,} | {len(m.epochs)} | {pct(train)} ({train_epoch}) "
            f"| {pct(m.best_test_accuracy)} ({m.best_epoch}) | {' / '.join(pct(a) for a in run.last3)} "
            f"| {len(step_runs)} | {spread} "
            f"| {' / '.join(pct(min(r.last3)) for r in step_runs)} | {code_cell(step_runs)} |"
        )
    return lines


def code_cell(step_runs: list[Run]) -> str:
    """``main`` where every seed is main's code's result, else which seeds are older code."""
    older = [r for r in step_runs if r.older_code is not None]
    if not older:
        return "main"
    seeds = (
        "" if len(older) == len(step_runs) else f" (seed {', '.join(str(r.seed) for r in older)})"
    )
    return f"**older**{seeds}: {', '.join(sorted({r.commit for r in older}))}"


def provenance_lines(runs: dict[str, list[Run]]) -> list[str]:
    """Every run that main's code did not train, and why: the results above are theirs."""
    older = [(step, r) for step, rs in runs.items() for r in rs if r.older_code is not None]
    if not older:
        return [
            "Every run above was trained by main's code and recipe for its step, from a clean tree."
        ]
    lines = [
        f"{len(older)} of {sum(map(len, runs.values()))} runs above were not trained by the code "
        "and recipe main has now for their step (the code hashes, trainer/resume.py, and the "
        "recipe each run records): their figures are the older code's or recipe's, not yet "
        "reproduced by main's. Re-run one with the command in its metrics and "
        "`python -m trainer report --collect MODELS_DIR`.",
        "",
    ]
    lines += [f"* `{step}` seed {r.seed}: {r.older_code}." for step, r in older]
    return lines


def seeds_table(step_runs: list[Run]) -> list[str]:
    lines = [
        "| seed | best test % (epoch) | last 3 test % | min of last 3 | device | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for run in step_runs:
        m = run.metrics
        lines.append(
            f"| {run.seed} | {pct(m.best_test_accuracy)} ({m.best_epoch}) | "
            f"{' / '.join(pct(a) for a in run.last3)} | {pct(min(run.last3))} | "
            f"{m.provenance.device} | {m.provenance.wall_seconds / 60:.1f} min |"
        )
    bests = [r.metrics.best_test_accuracy for r in step_runs]
    if len(bests) > 1:
        lines.append(
            f"\nMean best test accuracy over {len(bests)} seeds: {statistics.mean(bests):.2f} % "
            f"(std {statistics.stdev(bests):.2f}); mean final-epoch test accuracy "
            f"{statistics.mean(r.final for r in step_runs):.2f} %; "
            f"every seed's last 3 epochs >= {pct(ASSIGNMENT[1])} %: "
            f"{'yes' if all(min(r.last3) >= ASSIGNMENT[1] for r in step_runs) else 'no'}."
        )
    return lines


def render(runs: dict[str, list[Run]]) -> str:
    out = ["# Assignment 7: the steps, trained", ""]
    out.append(
        "Generated by `python -m trainer report` from the metrics in `reports/runs/`; every "
        "number below is read or computed from them. Re-run a step with the command recorded "
        "in its metrics."
    )
    out += ["", "## All steps", "", *comparison_table(runs), ""]
    out += ["### Which code trained them", "", *provenance_lines(runs), ""]
    missing = [info.slug for info in STEPS if info.slug not in runs]
    if missing:
        out += [
            f"Not in this report yet (no full run committed): {', '.join(missing)}. Train with "
            "`python -m trainer run --steps STEP`, then `python -m trainer report --collect "
            "MODELS_DIR`.",
            "",
        ]
    out += ["![accuracy against parameters](plots/accuracy_vs_params.png)", ""]
    previous: Run | None = None
    for step, step_runs in runs.items():
        run = main_run(step_runs)
        m = run.metrics
        train, train_epoch = run.best_train
        out += [
            f"# {m.title}",
            "",
            "### Model Summary:",
            "```",
            run.summary.text.rstrip(),
            "```",
            "",
        ]
        out += [
            "Receptive field after each layer (in input pixels):",
            "",
            *rf_table(run.summary),
            "",
        ]
        # The catalogue's objective, not the one a run recorded: a step's text is mended with
        # its design (the runs are of the same model; their numbers are what they recorded).
        out += ["### Objective:", "", get_step(step).objective, ""]
        out += [
            "### Results:",
            f"* Total Parameters: {m.params:,}",
            f"* Best Training Accuracy: {pct(train)} (epoch {train_epoch})",
            f"* Best Test Accuracy: {pct(m.best_test_accuracy)} (epoch {m.best_epoch})",
            f"* Last 3 epochs' Test Accuracy: {' / '.join(pct(a) for a in run.last3)}",
            f"* Recipe: {recipe_line(m.recipe)}",
            f"* Run: `{m.provenance.command}` on {m.provenance.device}, "
            f"{m.provenance.wall_seconds / 60:.1f} min, torch {m.provenance.versions.get('torch', '?')}",
            "",
        ]
        if len(step_runs) > 1:
            out += ["Every seed:", "", *seeds_table(step_runs), ""]
        out += ["### Analysis:", *(f"* {line}" for line in analysis(run, previous)), ""]
        out += [f"![{step} curves](plots/{step}.png)", ""]
        previous = run
    return "\n".join(out)


def recipe_line(recipe: dict[str, object]) -> str:
    keys = ["epochs", "batch_size", "optimizer", "lr", "schedule", "rotation", "translate"]
    # Regularisers are named only where a recipe uses them: the steps differ by them alone.
    extra = ("scale", "brightness", "weight_decay", "label_smoothing", "ema")
    keys += [k for k in extra if recipe.get(k)]
    return ", ".join(f"{k} {recipe[k]}" for k in [*keys, "seed"] if k in recipe)


def write_report(reports: Path) -> Path:
    runs = load_runs(reports / "runs")
    if not runs:
        raise FileNotFoundError(
            f"no runs under {reports / 'runs'}: train, then `python -m trainer report --collect "
            "MODELS_DIR`"
        )
    plots = reports / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for step, step_runs in runs.items():
        plot_step(main_run(step_runs), plots / f"{step}.png")
    plot_params(runs, plots / "accuracy_vs_params.png")
    path = reports / REPORT_FILE
    path.write_text(render(runs))
    return path
