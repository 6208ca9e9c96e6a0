"""How a learned rule is judged off its training distribution: runs, tuned baselines, statistics.

Every optimizer, learned or hand-designed, runs through `optimizee_trajectory` on the same
held-out functions (seeds (10000, i), the held-out images) and is judged by the loss on the
whole held-out split after the last step. Hand-designed baselines get their learning rate
tuned by grid search *on the test family* (its training images, other seeds): the honest,
hard baseline. `compare` gives what the suite reports for a pair: the mean and median with
95% intervals, the paired difference and the share of functions where the first wins.
"""

import dataclasses
import math
import time
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from keras_meta.core.update_rules import hand_designed_rule
from keras_meta.learned_optimizer.truncated_bptt import optimizee_trajectory

HELDOUT_SEED = 10_000
TUNE_SEED = 20_000
DEFAULT_LR_GRID = tuple(float(x) for x in np.logspace(-4, 1, 21))


def heldout_seeds(num_functions):
    """The seeds of the held-out test functions (never used in meta-training or tuning)."""
    return tuple((HELDOUT_SEED, i) for i in range(num_functions))


def tune_seeds(num_functions):
    """The seeds baselines are tuned on (not the meta-training seeds (seed, i), nor held-out)."""
    return tuple((TUNE_SEED, i) for i in range(num_functions))


class TrajectoryRunner:
    """Runs one rule on one family for `num_steps` steps, traced once (the rate is a tensor).

    Args:
        make_rule: `learning_rate -> rule`; a learned rule ignores the rate.
        optimizee: the family to run on.
        num_steps: optimizee steps per function.
    """

    def __init__(self, make_rule, optimizee, num_steps):
        self.optimizee = optimizee
        self.num_steps = int(num_steps)

        @tf.function
        def run(seed, learning_rate):
            return optimizee_trajectory(make_rule(learning_rate), optimizee, seed, self.num_steps)

        self._run = run

    def __call__(self, seeds, learning_rate=1.0):
        """`(curves [functions, num_steps + 1], finals [functions])` over `seeds`."""
        curves, finals = [], []
        rate = tf.constant(learning_rate, self.optimizee.dtype)
        for seed in seeds:
            losses, final = self._run(tf.constant(seed, tf.int64), rate)
            curves.append(losses.numpy())
            finals.append(final.numpy())
        return np.concatenate(curves, axis=1).T, np.concatenate(finals)

    def seconds_per_step(self, seed, learning_rate=1.0, repeats=3):
        """Median wall-clock seconds per optimizee step (after tracing)."""
        rate = tf.constant(learning_rate, self.optimizee.dtype)
        seed = tf.constant(seed, tf.int64)
        self._run(seed, rate)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            losses, _ = self._run(seed, rate)
            losses.numpy()
            times.append(time.perf_counter() - start)
        return float(np.median(times)) / self.num_steps


def _score(finals):
    finals = np.where(np.isfinite(finals), finals, np.inf)
    return float(np.mean(finals))


def tune_learning_rate(name, optimizee, num_steps, seeds, grid=DEFAULT_LR_GRID):
    """The grid rate with the lowest mean final loss of baseline `name` on `seeds`.

    Returns `(best_rate, scores)`; `best_rate` at an end of the grid means the grid is too
    narrow, which `at_grid_edge` tells.
    """
    runner = TrajectoryRunner(lambda lr: hand_designed_rule(name, lr), optimizee, num_steps)
    scores = [_score(runner(seeds, lr)[1]) for lr in grid]
    return float(grid[int(np.argmin(scores))]), scores


def at_grid_edge(rate, grid=DEFAULT_LR_GRID):
    return rate in (grid[0], grid[-1])


@dataclasses.dataclass
class Run:
    """One optimizer on one test family: its final losses, curves, rate and speed."""

    finals: np.ndarray
    curves: np.ndarray
    learning_rate: float = None
    seconds_per_step: float = None


def evaluate_shift(learned_rules, shift, training_steps, *, num_functions=20, baselines=("Adam",),
                   num_tune_functions=4, grid=DEFAULT_LR_GRID, dtype="float32",
                   time_steps=True) -> Tuple[Dict[str, Run], Dict[str, list]]:
    """Runs learned rules and tuned baselines on one shift's held-out functions.

    Args:
        learned_rules: `{label: rule}`.
        shift: a `Shift` (`keras_meta.learned_optimizer.shifts`).
        training_steps: the horizon of meta-training (the shift multiplies it).
        num_functions: held-out functions.
        baselines: hand-designed rule names (`keras_meta.core.update_rules`) to tune and run.
        num_tune_functions: functions of the test family (training images) per grid point.
        grid: learning rates to tune over.
        time_steps: also measure seconds per step.

    Returns:
        `(runs, tuning)`: `{label: Run}` for every learned rule and baseline, and
        `{baseline: scores over grid}`.
    """
    steps = shift.horizon(training_steps)
    test_family = shift.optimizee_for("heldout", dtype=dtype)
    tune_family = shift.optimizee_for("train", dtype=dtype)
    seeds = heldout_seeds(num_functions)
    runs, tuning = {}, {}
    for label, rule in learned_rules.items():
        runner = TrajectoryRunner(lambda lr, rule=rule: rule, test_family, steps)
        curves, finals = runner(seeds)
        speed = runner.seconds_per_step(seeds[0]) if time_steps else None
        runs[label] = Run(finals, curves, None, speed)
    for name in baselines:
        best, scores = tune_learning_rate(name, tune_family, steps, tune_seeds(num_tune_functions),
                                          grid)
        tuning[name] = scores
        runner = TrajectoryRunner(lambda lr, name=name: hand_designed_rule(name, lr), test_family,
                                  steps)
        curves, finals = runner(seeds, best)
        speed = runner.seconds_per_step(seeds[0], best) if time_steps else None
        runs[name] = Run(finals, curves, best, speed)
    return runs, tuning


def _t_interval(values):
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2 or not np.all(np.isfinite(values)):
        return float(np.mean(values)), float("nan")
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean()), float(half)


def _median_interval(values, seed=0, resamples=2000):
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    with np.errstate(invalid="ignore"):  # diverged runs are inf; a median of infs is inf
        medians = np.median(values[idx], axis=1)
    return float(np.median(values)), float(np.quantile(medians, 0.025)), float(
        np.quantile(medians, 0.975))


def summarize(finals):
    """Mean with 95% t-interval, median with 95% bootstrap interval, diverged count."""
    finals = np.where(np.isfinite(finals), finals, np.inf)
    mean, half = _t_interval(finals)
    median, low, high = _median_interval(finals)
    return {"mean": mean, "mean_ci95": half, "median": median, "median_ci95": [low, high],
            "diverged": int(np.sum(~np.isfinite(finals)))}


def compare(finals, reference):
    """How `finals` does against `reference` on the same functions (lower is better)."""
    a = np.where(np.isfinite(finals), finals, np.inf)
    b = np.where(np.isfinite(reference), reference, np.inf)
    with np.errstate(invalid="ignore"):
        diff_mean, diff_half = _t_interval(a - b)
    a_sum, b_sum = summarize(a), summarize(b)
    return {
        "paired_difference": diff_mean, "paired_ci95": diff_half,
        "wins": float(np.mean(a < b)),
        "better_mean": bool(a_sum["mean"] < b_sum["mean"]),
        "better_median": bool(a_sum["median"] < b_sum["median"]),
    }
