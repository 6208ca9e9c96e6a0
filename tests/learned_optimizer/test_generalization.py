"""The generalization suite's pieces: shifts, tuned baselines, and the statistics it reports."""

import math

import numpy as np
import pytest

from keras_meta.learned_optimizer import MLPOptimizer, generalization
from keras_meta.learned_optimizer.optimizees import (ConvDigitsOptimizee, MLPDigitsOptimizee,
                                                     QuadraticOptimizee)
from keras_meta.learned_optimizer.shifts import NETWORK_SHIFTS, SHIFT_NAMES, SHIFTS, get_shift


def test_every_shift_changes_one_thing_of_the_base_family():
    base = SHIFTS["base"].optimizee_for("heldout")
    assert isinstance(base, MLPDigitsOptimizee)
    assert (base.layer_units, base.activation) == ((20,), "sigmoid")
    assert [SHIFTS[n].horizon(100) for n in ("base", "horizon_2x", "horizon_5x")] == [100, 200, 500]
    assert SHIFTS["hidden_40"].optimizee_for("train").layer_units == (40,)
    assert SHIFTS["two_layers"].optimizee_for("train").layer_units == (20, 20)
    assert SHIFTS["relu"].optimizee_for("train").activation == "relu"
    assert isinstance(SHIFTS["conv"].optimizee_for("heldout"), ConvDigitsOptimizee)
    assert set(NETWORK_SHIFTS) <= set(SHIFT_NAMES) and len(NETWORK_SHIFTS) == 5
    # Held-out and tuning families read disjoint images.
    train, heldout = (SHIFTS["relu"].optimizee_for(s) for s in ("train", "heldout"))
    assert train.num_examples + heldout.num_examples == 1797
    with pytest.raises(ValueError, match="Unknown shift 'cifar'; expected one of"):
        get_shift("cifar")


def test_the_seeds_of_test_tuning_and_meta_training_functions_never_meet():
    heldout = set(generalization.heldout_seeds(50))
    tuning = set(generalization.tune_seeds(50))
    meta_training = {(seed, i) for seed in range(3) for i in range(5000)}
    assert len(heldout) == len(tuning) == 50
    assert not heldout & tuning and not heldout & meta_training and not tuning & meta_training


def test_summary_and_comparison_statistics():
    finals = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    summary = generalization.summarize(finals)
    assert summary["mean"] == 22.0 and summary["median"] == 3.0 and summary["diverged"] == 0
    assert summary["median_ci95"][0] <= 3.0 <= summary["median_ci95"][1]
    # The t interval of the mean, by hand: t(0.975, 4) = 2.776.
    half = 2.7764451 * np.std(finals, ddof=1) / math.sqrt(5)
    assert summary["mean_ci95"] == pytest.approx(half, rel=1e-6)

    diverged = generalization.summarize(np.array([1.0, np.nan, np.inf]))
    assert diverged["diverged"] == 2 and diverged["mean"] == np.inf

    reference = np.array([2.0, 1.0, 4.0, 5.0, 50.0])
    versus = generalization.compare(finals, reference)
    assert versus["wins"] == pytest.approx(0.6)  # lower on functions 0, 2 and 3
    assert versus["better_median"] and not versus["better_mean"]  # 3 < 4, but 22 > 12.4
    assert versus["paired_difference"] == pytest.approx(np.mean(finals - reference))
    # A diverged function counts as lost, never as a NaN that compares false both ways.
    assert generalization.compare(np.array([np.nan, 1.0]), np.array([5.0, 2.0]))["wins"] == 0.5


def test_tuning_picks_the_best_rate_and_counts_a_diverged_rate_as_worst():
    family = QuadraticOptimizee(dim=3, num_functions=2)
    grid = (1e-4, 1e-2, 1e3)
    best, scores = generalization.tune_learning_rate("SGD", family, 20,
                                                     generalization.tune_seeds(1), grid)
    assert best == 1e-2 and scores[2] == np.inf and scores[1] < scores[0]
    assert not generalization.at_grid_edge(best, grid) and generalization.at_grid_edge(1e3, grid)


def test_evaluate_shift_runs_learned_rules_and_tuned_baselines_on_the_same_functions():
    rule = MLPOptimizer(hidden_sizes=(4,), step_scale=0.03, seed=0)
    runs, tuning = generalization.evaluate_shift(
        {"learned": rule}, SHIFTS["horizon_2x"], 3, num_functions=2, baselines=("SGD", "Adam"),
        num_tune_functions=1, grid=(0.01, 0.1))
    assert set(runs) == {"learned", "SGD", "Adam"} and set(tuning) == {"SGD", "Adam"}
    for run in runs.values():
        assert run.finals.shape == (2,) and run.curves.shape == (2, 7)  # theta_0..theta_6
        assert np.all(np.isfinite(run.finals)) and run.seconds_per_step > 0
    assert runs["learned"].learning_rate is None and runs["Adam"].learning_rate in (0.01, 0.1)
    # Every optimizer starts each function from the same theta_0 on the same first batch.
    np.testing.assert_array_equal(runs["learned"].curves[:, 0], runs["SGD"].curves[:, 0])
