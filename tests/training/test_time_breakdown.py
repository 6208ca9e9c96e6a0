"""`TimeBreakdown`: what is counted, when, and that the parts add up to the window."""

import os
import re
import subprocess
import sys
import time

import pytest

from keras_meta.training.time_breakdown import PARTS, TimeBreakdown, describe


def test_nothing_before_the_window_opens_is_counted():
    breakdown = TimeBreakdown()
    assert not breakdown.started and breakdown.summary(10) is None
    with breakdown.measure("steps"):
        time.sleep(0.02)  # the first call, tracing
    breakdown.start(1)
    assert breakdown.started and breakdown.seconds["steps"] == 0.0
    # No iteration ran inside the window yet.
    assert breakdown.summary(1) is None


def test_add_counts_from_its_reading_only_inside_the_window():
    breakdown = TimeBreakdown()
    before = time.perf_counter()
    breakdown.add("steps", before)  # no window yet
    breakdown.start(0)
    breakdown.add("steps", before)  # began before the window opened
    assert breakdown.seconds["steps"] == 0.0
    began = time.perf_counter()
    time.sleep(0.02)
    breakdown.add("steps", began)
    assert 0.02 <= breakdown.seconds["steps"] < 1.0
    with pytest.raises(ValueError, match="Unknown part 'step'"):
        breakdown.add("step", began)


def test_parts_add_up_to_the_window():
    breakdown = TimeBreakdown()
    breakdown.start(3)
    with breakdown.measure("steps"):
        time.sleep(0.02)
    with breakdown.measure("checkpoints"):
        time.sleep(0.01)
    time.sleep(0.01)  # the loop's own work
    figures = breakdown.summary(13)
    assert figures["iterations"] == 10
    assert figures["steps_seconds"] >= 0.02 and figures["checkpoints_seconds"] >= 0.01
    assert figures["validation_seconds"] == 0.0 and figures["other_seconds"] >= 0.01
    assert sum(figures[f"{part}_seconds"] for part in PARTS + ("other",)) == pytest.approx(
        figures["window_seconds"])
    assert figures["seconds_per_iteration"] == pytest.approx(figures["window_seconds"] / 10)
    line = describe(figures)
    assert line.startswith("10 iterations after the first call in ") and "validation 0.0%" in line


def test_a_body_that_raises_is_still_counted():
    breakdown = TimeBreakdown()
    breakdown.start(0)
    with pytest.raises(KeyError):
        with breakdown.measure("validation"):
            time.sleep(0.01)
            raise KeyError("x")
    assert breakdown.seconds["validation"] >= 0.01


def test_unknown_part_is_refused():
    with pytest.raises(ValueError, match="Unknown part 'data'; expected one of"):
        with TimeBreakdown().measure("data"):
            pass


def test_trainer_loop_benchmark_runs_and_refuses_partial_calls():
    # benchmarks/trainer_loop.py on a tiny run: both sides timed, the trainer's parts shown.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "benchmarks", "trainer_loop.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, script, "--rounds=1", "--iterations=20"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"round 0: bare step [0-9.]+ ms, trainer [0-9.]+ ms \([+-][0-9.]+%\)",
                     done.stdout)
    assert "trainer's window, median share per part: steps " in done.stdout
    refused = subprocess.run([sys.executable, script, "--iterations=15",
                              "--steps_per_execution=10"],
                             capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert refused.returncode != 0
    assert "--iterations=15 must be a multiple of --steps_per_execution=10" in (
        refused.stdout + refused.stderr)
