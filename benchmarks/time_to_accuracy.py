r"""Validation accuracy against training minutes, from the runs' own histories.

    python benchmarks/time_to_accuracy.py \
        --runs="MAML 5w1s, 1 query=../runs/r2/o5w1s" \
        --seconds_per_iteration="MAML 5w1s, 1 query=0.196" \
        --output=benchmarks/results/omniglot_time_to_accuracy

Every validation a trainer runs is appended to its `history.jsonl` with the training seconds so
far (resumes included; an iteration validated again after a resume counts once, at its last
value). This script reads them, prints the minutes each run took to first reach each
`--targets` accuracy, and plots accuracy against minutes (PNG) with every run.

Runs that shared the machine with other work ran slower than they would alone. For a fair
axis, `--seconds_per_iteration` gives a run's cost measured alone (benchmarks/meta_step.py or
a short solo run); the run's iterations are then put on the time axis at that rate, and the
table says which axis each row used.
"""

import json
import os
import shlex
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "LABEL=MODEL_DIR pairs (commas separate runs).")
flags.DEFINE_list("curves", [], "LABEL=CSV pairs: validation curves recorded elsewhere "
                  "(columns iteration,accuracy; lines starting with # are comments). They need "
                  "--seconds_per_iteration.")
flags.DEFINE_list("seconds_per_iteration", [], "LABEL=SECONDS: put that run on an "
                  "iterations x seconds axis instead of its recorded wall clock.")
flags.DEFINE_list("targets", ["0.95", "0.97", "0.98", "0.99"], "Accuracies to report.")
flags.DEFINE_string("output", None, "Write OUTPUT.png and OUTPUT.md.")
flags.DEFINE_string("metric", "accuracy", "The validation metric recorded in the history.")


def validation_curve(model_dir, metric="accuracy"):
    """`[(iteration, train_seconds, value)]` of a run, in iteration order.

    A resume from iteration r forgets the validations recorded after r before it (they are
    re-run, and the re-run values are the ones of the weights the run continued from).
    """
    points = {}
    with open(os.path.join(model_dir, "history.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            event = json.loads(line)
            if event["event"] == "resume":
                points = {i: p for i, p in points.items() if i <= event["iteration"]}
            elif event["event"] == "val" and metric in event:
                points[event["iteration"]] = (event["train_seconds"], event[metric])
    return [(i, s, v) for i, (s, v) in sorted(points.items())]


def first_reaching(curve, target, seconds_per_iteration=None):
    """`(minutes, iteration)` at the first validation >= target, or None."""
    for iteration, seconds, value in curve:
        if value >= target:
            if seconds_per_iteration:
                seconds = iteration * seconds_per_iteration
            return seconds / 60, iteration
    return None


def _read_curve(path):
    """`[(iteration, accuracy)]` of a CSV with an `iteration,accuracy` header and # comments."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("iteration"):
                continue
            iteration, value = line.split(",")
            rows.append((float(iteration), float(value)))
    return rows


def _pairs(items, what):
    out = {}
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or not label or not value:
            raise app.UsageError(f"--{what}: expected LABEL=VALUE items; got {item!r}.")
        out[label] = value
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.runs and not FLAGS.curves:
        raise app.UsageError("--runs (LABEL=MODEL_DIR,...) or --curves is required.")
    runs = _pairs(FLAGS.runs or [], "runs")
    tables = _pairs(FLAGS.curves, "curves")
    rates = {k: float(v) for k, v in _pairs(FLAGS.seconds_per_iteration,
                                             "seconds_per_iteration").items()}
    unknown = sorted(set(rates) - set(runs) - set(tables))
    if unknown:
        raise app.UsageError(f"--seconds_per_iteration names runs not in --runs: {unknown}.")
    targets = [float(t) for t in FLAGS.targets]
    curves = {}
    for label, model_dir in runs.items():
        if not os.path.isfile(os.path.join(model_dir, "history.jsonl")):
            raise app.UsageError(f"{label}: {model_dir} has no history.jsonl (not a run).")
        curves[label] = validation_curve(model_dir, FLAGS.metric)
    for label, path in tables.items():
        if label not in rates:
            raise app.UsageError(f"--curves {label}: a table has no time axis; give "
                                 f"--seconds_per_iteration={label}=SECONDS.")
        rows = _read_curve(path)
        curves[label] = [(int(i), float("nan"), float(v)) for i, v in rows]

    lines = ["command: python " + " ".join(shlex.quote(a) for a in sys.argv), "",
             "| run | time axis | validations | last iteration | best | "
             + " | ".join(f"minutes (iteration) to {100 * t:g}%" for t in targets) + " |",
             "|---|---|---|---|---|" + "---|" * len(targets)]
    for label, curve in curves.items():
        rate = rates.get(label)
        axis = f"{rate:.3f} s/iteration alone" if rate else "recorded wall clock"
        cells = []
        for t in targets:
            hit = first_reaching(curve, t, rate)
            cells.append(f"{hit[0]:.1f} ({hit[1]})" if hit else "not reached")
        best = max((v for _, _, v in curve), default=float("nan"))
        last = curve[-1][0] if curve else 0
        lines.append(f"| {label} | {axis} | {len(curve)} | {last} | {100 * best:.2f}% | "
                     + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output + ".md", "w") as f:
            f.write(text + "\n")
        _plot(curves, rates, targets, FLAGS.output + ".png")
        print(f"wrote {FLAGS.output}.md and {FLAGS.output}.png")


def _plot(curves, rates, targets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curve in curves.items():
        rate = rates.get(label)
        minutes = [(i * rate if rate else s) / 60 for i, s, _ in curve]
        ax.plot(minutes, [100 * v for _, _, v in curve], marker=".", label=label)
    for t in targets:
        ax.axhline(100 * t, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel(f"validation {FLAGS.metric} (%)")
    ax.set_ylim(max(0, 100 * min(targets) - 15), 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    app.run(main)
