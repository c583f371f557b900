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
from dataclasses import dataclass
from pathlib import Path

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
    def best_train(self) -> tuple[float, int]:
        best = max(self.metrics.epochs, key=lambda e: (e.train_accuracy, -e.epoch))
        return best.train_accuracy, best.epoch

    @property
    def gap(self) -> float:
        """Train minus test accuracy at the best epoch, in percentage points."""
        best = self.metrics.epochs[self.metrics.best_epoch - 1]
        return best.train_accuracy - best.test_accuracy


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


def load_runs(runs: Path) -> dict[str, list[Run]]:
    """Every run under ``runs``, by step in the seed's order, seeds ascending."""
    found: dict[str, list[Run]] = {}
    for info in STEPS:
        for folder in sorted((runs / info.slug).glob("seed-*")):
            metrics = Metrics.model_validate_json((folder / METRICS_FILE).read_bytes())
            summary = Summary.model_validate_json((folder / SUMMARY_FILE).read_bytes())
            found.setdefault(info.slug, []).append(Run(metrics.provenance.seed, metrics, summary))
        if info.slug in found:
            found[info.slug].sort(key=lambda r: r.seed)
    return found


def main_run(runs: list[Run]) -> Run:
    """The run a step's section shows: the one trained with the recipe's own seed, else the first."""
    return next((r for r in runs if r.seed == r.metrics.recipe.get("seed")), runs[0])


def pct(value: float) -> str:
    return f"{value:.2f}"


def analysis(run: Run, previous: Run | None) -> list[str]:
    m = run.metrics
    best = m.epochs[m.best_epoch - 1]
    lines = [
        f"Best test accuracy {pct(m.best_test_accuracy)} % at epoch {m.best_epoch} of {len(m.epochs)}."
    ]
    gap = run.gap
    if gap > OVERFIT_GAP:
        verdict = "over-fitting: the model fits the training set better than it generalises"
    elif gap < 0:
        verdict = (
            "no over-fitting: test accuracy is above train accuracy (training batches are "
            "augmented or dropped out; the test set is not)"
        )
    else:
        verdict = "no significant over-fitting"
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
        lines.append("The best epoch is the last: more epochs would likely still help.")
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


def plot_params(runs: dict[str, list[Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for step, step_runs in runs.items():
        run = main_run(step_runs)
        ax.scatter(run.metrics.params, run.metrics.best_test_accuracy)
        ax.annotate(
            f"{run.metrics.number}. {step}", (run.metrics.params, run.metrics.best_test_accuracy)
        )
    ax.set(xscale="log", xlabel="parameters", ylabel="best test accuracy (%)")
    ax.set_title("Accuracy against size, every step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def comparison_table(runs: dict[str, list[Run]]) -> list[str]:
    """The side-by-side table; the README carries the same one."""
    lines = [
        "| # | step | params | epochs | best train % (epoch) | best test % (epoch) | last 3 test % | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for step, step_runs in runs.items():
        run = main_run(step_runs)
        m = run.metrics
        train, train_epoch = run.best_train
        lines.append(
            f"| {m.number} | `{step}` | {m.params:,} | {len(m.epochs)} | {pct(train)} ({train_epoch}) "
            f"| {pct(m.best_test_accuracy)} ({m.best_epoch}) | {' / '.join(pct(a) for a in run.last3)} "
            f"| {len(step_runs)} |"
        )
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
            f"(std {statistics.stdev(bests):.2f}); every seed's last 3 epochs >= 99.40 %: "
            f"{'yes' if all(min(r.last3) >= 99.4 for r in step_runs) else 'no'}."
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
        out += ["### Objective:", "", m.objective, ""]
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
    keys = ["epochs", "batch_size", "optimizer", "lr", "schedule", "rotation", "translate", "seed"]
    return ", ".join(f"{k} {recipe[k]}" for k in keys if k in recipe)


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
