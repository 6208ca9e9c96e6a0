"""Learned optimizer vs tuned SGD, NAG, RMSprop and Adam on held-out functions.

For each task family: meta-train an `LSTMOptimizer` (resuming from `--model_dir/<task>` if a
checkpoint exists), tune each baseline's learning rate by grid search on the meta-training
functions at each horizon, then run every optimizer on held-out functions for 100 and 200
steps (the learned optimizer was trained for 100). Writes `results.json`, `results.md` and one
loss-curve PNG per family to `--output_dir`.

    python -m benchmarks.learned_optimizer --quadratic_iterations=1500 --mlp_iterations=500
"""

import dataclasses
import json
import math
import os
import shlex
import sys
import time

import numpy as np
from absl import app, flags, logging

BASELINES = ("SGD", "NAG", "RMSprop", "Adam")
HORIZONS = (100, 200)


@dataclasses.dataclass(frozen=True)
class _FamilySetup:
    name: str
    iterations: int
    meta_lr: float
    train_task: object
    heldout_task: object
    tune_seeds: tuple
    heldout_seeds: tuple


def _runner(rule_factory, task, num_steps):
    import tensorflow as tf
    from keras_meta.learned_optimizer import optimizee_trajectory

    @tf.function
    def run(seed, lr):
        return optimizee_trajectory(rule_factory(lr), task, seed, num_steps)

    def evaluate(seeds, lr=1.0):
        curves, finals = [], []
        for s in seeds:
            losses, final = run(tf.constant(s, tf.int64), tf.constant(lr, task.dtype))
            curves.append(losses.numpy())
            finals.append(final.numpy())
        # Functions of a vectorised family become separate rows.
        return np.concatenate(curves, axis=1).T, np.concatenate(finals)

    return evaluate


def _score(finals):
    finals = np.where(np.isfinite(finals), finals, np.inf)
    return float(np.mean(finals))


def _mean_ci(values):
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    return float(values.mean()), float(half)


def _benchmark_family(setup, model_dir, output_dir, lr_grid):
    from keras_meta.core.update_rules import hand_designed_rule
    from keras_meta.training import LearnedOptimizerTrainConfig, train_learned_optimizer

    config = LearnedOptimizerTrainConfig(optimizee=setup.name, num_meta_iterations=setup.iterations,
                                         meta_lr=setup.meta_lr, log_every=100,
                                         checkpoint_every=250)
    result = train_learned_optimizer(config, os.path.join(model_dir, setup.name))
    rule = result["lstm_optimizer"]
    # Wall clock of the whole meta-training, summed over resumed runs.
    clock_path = os.path.join(model_dir, setup.name, "wall_clock.json")
    clock = {"seconds": 0.0}
    if os.path.exists(clock_path):
        with open(clock_path) as f:
            clock = json.load(f)
    clock["seconds"] += result["seconds"]
    clock["iterations"] = result["iteration"]
    with open(clock_path, "w") as f:
        json.dump(clock, f)

    rows, curves = {}, {}
    for horizon in HORIZONS:
        learned = _runner(lambda lr: rule, setup.heldout_task, horizon)
        curve, finals = learned(setup.heldout_seeds)
        rows[("LSTM (learned)", horizon)] = {"finals": finals, "lr": None}
        curves[("LSTM (learned)", horizon)] = curve
        for name in BASELINES:
            factory = lambda lr, name=name: hand_designed_rule(name, lr)  # noqa: E731
            tune = _runner(factory, setup.train_task, horizon)
            scores = [_score(tune(setup.tune_seeds, lr)[1]) for lr in lr_grid]
            best = float(lr_grid[int(np.argmin(scores))])
            if best in (lr_grid[0], lr_grid[-1]):
                logging.warning("%s on %s: best lr %.3g is at the edge of the grid.",
                                name, setup.name, best)
            curve, finals = _runner(factory, setup.heldout_task, horizon)(setup.heldout_seeds,
                                                                           best)
            rows[(name, horizon)] = {"finals": finals, "lr": best}
            curves[(name, horizon)] = curve
    _plot(setup.name, curves, os.path.join(output_dir, f"learned_optimizer_{setup.name}.png"))
    return rows, clock


def _plot(name, curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, horizon), curve in curves.items():
        if horizon != max(HORIZONS):
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            ax.plot(np.nanmean(np.where(np.isfinite(curve), curve, np.nan), axis=0), label=label)
    ax.axvline(min(HORIZONS), color="gray", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizee step")
    ax.set_ylabel("mean loss on held-out functions")
    ax.set_title(f"{name}: learned (trained for {min(HORIZONS)} steps) vs tuned baselines")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def define_flags():
    if "quadratic_iterations" in flags.FLAGS:
        return
    flags.DEFINE_integer("quadratic_iterations", 1500, "Meta-iterations on quadratics.")
    flags.DEFINE_integer("mlp_iterations", 500, "Meta-iterations on the digits MLP.")
    flags.DEFINE_float("quadratic_meta_lr", 3e-3, "Adam learning rate on phi (quadratics).")
    flags.DEFINE_float("mlp_meta_lr", 1e-3, "Adam learning rate on phi (digits MLP).")
    flags.DEFINE_integer("num_heldout_quadratics", 100, "Held-out quadratics.")
    flags.DEFINE_integer("num_heldout_mlps", 20, "Held-out MLP functions (init + batches).")
    flags.DEFINE_integer("num_tune_functions", 4, "Training functions per lr-grid point "
                         "(x8 quadratics each).")
    flags.DEFINE_list("families", ["quadratic", "mlp_digits"], "Task families to run.")
    flags.DEFINE_string("model_dir", "/tmp/l2l_benchmark", "Meta-training checkpoints.")
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where tables and plots go.")


def main(argv):
    del argv
    from keras_meta.learned_optimizer.optimizees import MLPDigitsOptimizee, QuadraticOptimizee

    f = flags.FLAGS
    os.makedirs(f.output_dir, exist_ok=True)
    lr_grid = np.logspace(-4, 1, 16)
    setups = {
        # Tuning uses the meta-training functions themselves: seeds (0, i), 8 quadratics each.
        "quadratic": _FamilySetup(
            "quadratic", f.quadratic_iterations, f.quadratic_meta_lr,
            QuadraticOptimizee(num_functions=8), QuadraticOptimizee(num_functions=f.num_heldout_quadratics),
            tuple((0, i) for i in range(f.num_tune_functions)), ((10_000, 0),)),
        "mlp_digits": _FamilySetup(
            "mlp_digits", f.mlp_iterations, f.mlp_meta_lr,
            MLPDigitsOptimizee(split="train"), MLPDigitsOptimizee(split="heldout"),
            tuple((0, i) for i in range(f.num_tune_functions)),
            tuple((10_000, i) for i in range(f.num_heldout_mlps))),
    }
    command = "python -m benchmarks.learned_optimizer " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    report = {"command": command, "families": {}}
    lines = [f"Command: `{command}`", ""]
    for family in f.families:
        if family not in setups:
            raise app.UsageError(
                f"Flag --families got {family!r}; allowed values: {', '.join(setups)}.")
        start = time.perf_counter()
        rows, clock = _benchmark_family(setups[family], f.model_dir, f.output_dir, lr_grid)
        elapsed = time.perf_counter() - start
        n = len(next(iter(rows.values()))["finals"])
        lines += [f"## {family} ({n} held-out functions; meta-training {clock['iterations']} "
                  f"iterations, {clock['seconds']:.0f} s wall clock; benchmark total "
                  f"{elapsed:.0f} s)", "",
                  "| optimizer | lr @100/@200 | final loss @100: mean (95% CI), median "
                  "| final loss @200: mean (95% CI), median "
                  "| learned − this, paired mean (95% CI) @100 / @200 "
                  "| learned better (share of functions) @100 / @200 |",
                  "|---|---|---|---|---|---|"]
        family_report = {"meta_training_seconds": clock["seconds"],
                         "meta_iterations": clock["iterations"], "rows": {}}
        for label in ["LSTM (learned)", *BASELINES]:
            cells, diffs, wins = [], [], []
            for horizon in HORIZONS:
                finals = rows[(label, horizon)]["finals"]
                learned = rows[("LSTM (learned)", horizon)]["finals"]
                mean, half = _mean_ci(finals)
                cells.append(f"{mean:.4g} ± {half:.2g}, {np.median(finals):.3g}")
                entry = {"mean": mean, "ci95": half, "median": float(np.median(finals)),
                         "lr": rows[(label, horizon)]["lr"]}
                if label in BASELINES:
                    d_mean, d_half = _mean_ci(learned - finals)
                    diffs.append(f"{d_mean:+.3g} ± {d_half:.2g}")
                    wins.append(f"{np.mean(learned < finals):.0%}")
                    entry.update(paired_difference=d_mean, paired_ci95=d_half,
                                 learned_better_share=float(np.mean(learned < finals)))
                else:
                    diffs.append("–")
                    wins.append("–")
                family_report["rows"][f"{label}@{horizon}"] = entry
            lrs = "/".join("–" if rows[(label, h)]["lr"] is None else
                           f"{rows[(label, h)]['lr']:.2g}" for h in HORIZONS)
            lines.append(f"| {label} | {lrs} | {cells[0]} | {cells[1]} | {' / '.join(diffs)} "
                         f"| {' / '.join(wins)} |")
        lines.append("")
        report["families"][family] = family_report
    with open(os.path.join(f.output_dir, "results.json"), "w") as out:
        json.dump(report, out, indent=2)
    with open(os.path.join(f.output_dir, "results.md"), "w") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    define_flags()
    app.run(main)
