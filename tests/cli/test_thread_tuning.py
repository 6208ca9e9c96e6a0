"""`--tune_threads`: the run's step timed in child processes under each thread setting."""

import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf
from absl import flags

from keras_meta.cli import thread_tuning, threads
from keras_meta.maml import task_batching_autotune
from keras_meta.training.presets import get_preset

TINY = get_preset("sinusoid_one_step").replace(meta_batch_size=2, task_batching="batched")


def _flags(*argv):
    fv = flags.FlagValues()
    threads.define_flags(fv)
    thread_tuning.define_flags(fv)
    fv(["program", *argv])
    return fv


def _measuring_env(cache_dir):
    """This environment with measuring on, its own cache, and no pool sizes given."""
    env = {k: v for k, v in os.environ.items()
           if k not in (threads.INTRA_OP_ENV, threads.INTER_OP_ENV, thread_tuning.RESTARTED_ENV)}
    env.update({task_batching_autotune.AUTOTUNE_ENV: "1",
                task_batching_autotune.CACHE_DIR_ENV: str(cache_dir)})
    return env


def test_a_setting_far_behind_in_the_first_round_is_not_timed_again():
    times = {thread_tuning.DEFAULTS: [10.0], "one intra-op thread": [5.0], "oneDNN": [6.0],
             "oneDNN, one intra-op thread": [6.4]}
    assert thread_tuning._out_of_the_running("oneDNN, one intra-op thread", times)  # 1.28x
    assert not thread_tuning._out_of_the_running("oneDNN", times)  # 1.2x: within reach
    assert not thread_tuning._out_of_the_running("one intra-op thread", times)
    # The defaults are the reference the choice is made against: always timed twice.
    assert not thread_tuning._out_of_the_running(thread_tuning.DEFAULTS, times)


def test_the_timing_stops_where_the_children_left_would_outlast_the_run():
    # 300 iterations of 7 ms (2.1 s) against 3 children of 10 s: stop; 70,000: go on.
    assert thread_tuning.over_budget([10.0], 3, 300, 7.0) == (
        "the 3 children left (about 30 s) would take longer than this run (about 2.1 s)")
    assert thread_tuning.over_budget([10.0], 3, 70000, 7.0) is None
    # The quickest child so far predicts the rest (the first also prepares the data).
    assert thread_tuning.over_budget([134.0, 24.0], 2, 100, 300.0) == (
        "the 2 children left (about 48 s) would take longer than this run (about 30 s)")
    assert thread_tuning.over_budget([134.0, 24.0], 2, 200, 300.0) is None
    assert thread_tuning.over_budget([10.0], 3, 300, 7.0, budget=10).endswith(
        "would take longer than 10 times this run (about 2.1 s)")
    assert thread_tuning.over_budget([10.0], 3, 300, 7.0, budget=20) is None
    assert thread_tuning.over_budget([10.0], 3, 300, 7.0, budget=0) is None
    assert thread_tuning.over_budget([10.0], 0, 300, 7.0) is None
    assert thread_tuning.run_iterations(TINY.replace(num_iterations=300)) == 300
    from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig
    assert thread_tuning.run_iterations(LearnedOptimizerTrainConfig(
        optimizee="quadratic", num_meta_iterations=7)) == 7
    # An entry that stopped early serves runs no longer than its own, under a budget.
    stopped = {"choice": thread_tuning.DEFAULTS, "stopped_early": "...", "run_iterations": 300}
    assert thread_tuning._covers(stopped, 300, 1.0) and thread_tuning._covers(stopped, 2, 1.0)
    assert not thread_tuning._covers(stopped, 301, 1.0)
    assert not thread_tuning._covers(stopped, 2, 0.0)
    assert thread_tuning._covers({"choice": thread_tuning.DEFAULTS}, 10**9, 0.0)


@pytest.mark.slow
def test_a_short_run_stops_timing_after_the_first_child_and_keeps_the_defaults(tmp_path):
    env = _measuring_env(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "keras_meta.cli.train_maml", "--preset=sinusoid_one_step",
         "--num_iterations=2", "--meta_batch_size=2", "--eval_every=0", "--num_eval_tasks=2",
         "--eval_inner_steps=1", "--task_batching=batched", f"--model_dir={tmp_path / 'run'}"],
        env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("[threads]")]
    most = 2 * len(thread_tuning.candidates())
    assert lines[1].startswith(f"[threads] 1/{most} {thread_tuning.DEFAULTS}: "), lines
    assert re.match(rf"\[threads\] timing stopped: the {most - 1} children left \(about "
                    r"[\d.]+ s\) would take longer than this run \(about [\d.]+ s\); "
                    r"choosing from what was measured", lines[2]), lines
    assert lines[3].startswith(f"[threads] {thread_tuning.DEFAULTS} ("), lines
    ((_, entry),) = json.loads((tmp_path / "cache" / thread_tuning.CACHE_FILE).read_text()).items()
    assert entry["choice"] == thread_tuning.DEFAULTS and entry["run_iterations"] == 2
    assert [k for k, v in entry["rounds"].items() if v] == [thread_tuning.DEFAULTS], entry


def test_onednn_is_tried_only_where_it_is_off_and_not_given(monkeypatch):
    from keras_meta.maml.task_batching_autotune import onednn_enabled

    monkeypatch.delenv(thread_tuning.RESTARTED_ENV, raising=False)
    monkeypatch.delenv(thread_tuning.ONEDNN_ENV, raising=False)
    import platform
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert ("oneDNN" in thread_tuning.candidates()) == (x86 and onednn_enabled() is False)
    # Given by the user, either way: kept as given, and part of the timings' key.
    key = thread_tuning.cache_key(TINY)
    monkeypatch.setenv(thread_tuning.ONEDNN_ENV, "0")
    assert list(thread_tuning.candidates()) == list(thread_tuning.CANDIDATES)
    assert thread_tuning.cache_key(TINY) != key
    # Set by the tuner's own restart: the choice among all four, under the first start's key.
    monkeypatch.setenv(thread_tuning.ONEDNN_ENV, "1")
    monkeypatch.setenv(thread_tuning.RESTARTED_ENV, "1")
    assert thread_tuning.cache_key(TINY) == key
    assert ("oneDNN" in thread_tuning.candidates()) == x86


def test_the_cache_key_follows_the_step_not_the_runs_length():
    key = thread_tuning.cache_key(TINY)
    assert thread_tuning.cache_key(TINY.replace(num_iterations=7, seed=3, log_every=1)) == key
    assert thread_tuning.cache_key(TINY.replace(inner_steps=2)) != key
    assert thread_tuning.cache_key(TINY.replace(meta_batch_size=4)) != key
    assert thread_tuning.cache_key(TINY.replace(jit_compile=True)) != key
    from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig

    optimizer = LearnedOptimizerTrainConfig(optimizee="quadratic")
    assert thread_tuning.cache_key(optimizer) == thread_tuning.cache_key(
        LearnedOptimizerTrainConfig(optimizee="quadratic", num_meta_iterations=3, seed=9))
    assert thread_tuning.cache_key(optimizer) != thread_tuning.cache_key(
        LearnedOptimizerTrainConfig(optimizee="quadratic", hidden_size=7))


def test_nothing_is_measured_where_the_pools_are_given_or_measuring_is_off(monkeypatch,
                                                                           tmp_path):
    monkeypatch.setenv(task_batching_autotune.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(threads.INTRA_OP_ENV, raising=False)
    monkeypatch.delenv(threads.INTER_OP_ENV, raising=False)
    lines = []
    monkeypatch.setenv(task_batching_autotune.AUTOTUNE_ENV, "0")
    assert thread_tuning.tune_threads(TINY, _flags(), log=lines.append) is None
    monkeypatch.setenv(task_batching_autotune.AUTOTUNE_ENV, "1")
    assert thread_tuning.tune_threads(TINY, _flags("--notune_threads"), log=lines.append) is None
    assert thread_tuning.tune_threads(TINY, _flags("--intra_op_threads=2"),
                                      log=lines.append) is None
    monkeypatch.setenv(threads.INTER_OP_ENV, "1")
    assert thread_tuning.tune_threads(TINY, _flags(), log=lines.append) is None
    monkeypatch.delenv(threads.INTER_OP_ENV)
    assert thread_tuning.tune_threads(TINY.replace(strategy="mirrored"), _flags(),
                                      log=lines.append) is None
    assert lines == [] and not os.listdir(tmp_path)


def test_a_cached_choice_that_can_no_longer_take_effect_is_said_not_hidden(monkeypatch,
                                                                           tmp_path):
    monkeypatch.setenv(task_batching_autotune.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(task_batching_autotune.AUTOTUNE_ENV, "1")
    monkeypatch.delenv(threads.INTRA_OP_ENV, raising=False)
    monkeypatch.delenv(threads.INTER_OP_ENV, raising=False)
    (tmp_path / thread_tuning.CACHE_FILE).write_text(json.dumps({
        thread_tuning.cache_key(TINY): {
            "choice": "one intra-op thread", "measured_at": "then",
            "ms_per_iteration": {"TensorFlow's defaults": 2.0, "one intra-op thread": 1.0}}}))
    tf.constant(1.0) + 1.0  # this process's runtime has started
    lines = []
    running = tf.config.threading.get_intra_op_parallelism_threads()
    if running == 1:
        pytest.skip("this process already runs one intra-op thread")
    assert thread_tuning.tune_threads(TINY, _flags(), log=lambda m, **_: lines.append(m)) is None
    assert lines == ["[threads] one intra-op thread was faster, but TensorFlow's runtime had "
                     "already started in this process; its defaults are kept."]


def test_each_child_measures_task_batching_and_gets_only_its_own_pool_sizes(monkeypatch):
    # A child that did not measure would be timed in a form its run never takes (the full
    # batched pass instead of the autotuner's chunks, with oneDNN): the comparison would be
    # biased. So measuring must reach the child as the parent has it.
    monkeypatch.setenv(task_batching_autotune.AUTOTUNE_ENV, "1")
    monkeypatch.setenv(threads.INTER_OP_ENV, "3")
    monkeypatch.setenv(thread_tuning.RESTARTED_ENV, "1")
    monkeypatch.setenv(thread_tuning.ONEDNN_ENV, "0")  # set by a restart, not by the user
    for label, setting in thread_tuning.candidates().items():
        environ = thread_tuning.child_environ(setting)
        assert environ[task_batching_autotune.AUTOTUNE_ENV] == "1", label
        assert threads.INTER_OP_ENV not in environ, label
        assert thread_tuning.RESTARTED_ENV not in environ, label
        assert environ.get(threads.INTRA_OP_ENV) == setting.get(threads.INTRA_OP_ENV), label
        if thread_tuning._onednn_tried():  # x86: the restart marker makes oneDNN a candidate
            assert environ.get(thread_tuning.ONEDNN_ENV) == setting.get(
                thread_tuning.ONEDNN_ENV), label


def test_a_child_that_fails_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="the timing process failed .*No such file"):
        thread_tuning._time_in_child("/nonexistent/config.json", {}, 0.1, 300)
    config = tmp_path / "config.json"
    config.write_text("{}")
    with pytest.raises(RuntimeError, match="trainer 'Other': expected 'MAMLTrainConfig' or"):
        thread_tuning._time_in_child(str(config), {}, 0.1, 300, trainer="Other")


# Heavy: the tuner is the MAML trainer's (tested end to end above); this checks its wiring
# into the other trainer.
@pytest.mark.slow
@pytest.mark.heavy
def test_the_learned_optimizer_trainer_tunes_its_threads_too(tmp_path):
    from keras_meta.maml.task_batching_autotune import onednn_enabled

    env = _measuring_env(tmp_path / "cache")
    # oneDNN's state given as this process runs it: the two thread settings are timed, not
    # the oneDNN ones too. Those, and the restart they take, are the MAML trainer's test below;
    # here they would double the child processes (each a TensorFlow start) for no new path.
    env[thread_tuning.ONEDNN_ENV] = "1" if onednn_enabled() else "0"
    done = subprocess.run(
        [sys.executable, "-m", "keras_meta.cli.train_learned_optimizer", "--optimizee=quadratic",
         "--num_steps=4", "--unroll_length=2", "--num_meta_iterations=2", "--hidden_size=4",
         "--num_layers=1", "--num_functions=2", "--log_every=1", "--checkpoint_every=1",
         "--eval_shifts=", "--tune_threads_budget=0", f"--model_dir={tmp_path / 'run'}"],
        env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (entry,) = json.loads((tmp_path / "cache" / thread_tuning.CACHE_FILE).read_text()).values()
    assert sorted(entry["rounds"]) == sorted(thread_tuning.CANDIDATES), entry
    assert f"[threads] {entry['choice']} (" in done.stdout, done.stdout[-2000:]


@pytest.mark.slow
def test_the_trainer_times_both_settings_once_then_reuses_the_timings(tmp_path):
    env = _measuring_env(tmp_path / "cache")
    command = [sys.executable, "-m", "keras_meta.cli.train_maml", "--preset=sinusoid_one_step",
               "--num_iterations=2", "--meta_batch_size=2", "--eval_every=0",
               "--num_eval_tasks=2", "--eval_inner_steps=1", "--task_batching=batched"]
    # Two iterations are far shorter than the children: every setting is timed only without
    # the budget (the short run's stop is the test below).
    command.append("--tune_threads_budget=0")
    outputs = []
    for run in ("a", "b"):
        done = subprocess.run([*command, f"--model_dir={tmp_path / run}"], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append([line for line in done.stdout.splitlines()
                        if line.startswith("[threads]")])
    path = tmp_path / "cache" / thread_tuning.CACHE_FILE
    cache = json.loads(path.read_text())
    ((key, entry),) = cache.items()
    settings = thread_tuning.candidates()
    assert entry["choice"] in settings
    # Two rounds each, except a setting left out of the second for being far behind.
    assert all(len(v) in (1, 2) and all(t > 0 for t in v) for v in entry["rounds"].values())
    assert len(entry["rounds"][thread_tuning.DEFAULTS]) == 2
    assert sorted(entry["rounds"]) == sorted(settings)
    first, second = outputs
    # A progress line per child, in the order they ran, with the time the cache keeps.
    progress = [line for line in first if re.match(r"\[threads\] \d+/\d+ ", line)]
    assert len(progress) == sum(len(v) for v in entry["rounds"].values()), first
    for index, line in enumerate(progress, 1):
        assert line.startswith(f"[threads] {index}/{2 * len(settings)} "), line
    head = f"[threads] 1/{2 * len(settings)} {thread_tuning.DEFAULTS}: "
    assert progress[0].startswith(head), first
    shown = float(progress[0][len(head):].split(" ms", 1)[0])
    assert shown == pytest.approx(entry["rounds"][thread_tuning.DEFAULTS][0], abs=1e-3), first
    first = [line for line in first if line not in progress]
    # A choice of oneDNN starts the program again (TensorFlow reads the switch when it
    # starts), where the cached choice is applied.
    restarts = thread_tuning.ONEDNN_ENV in settings[entry["choice"]]
    assert first[0].startswith("[threads] timing this run's step"), first
    assert first[1].startswith(f"[threads] {entry['choice']} (") and "measured in" in first[1]
    assert len(first) == (3 if restarts else 2), first
    assert len(second) == (2 if restarts else 1), second
    assert second[-1] == f"[threads] {entry['choice']} (" + second[-1].split(" (", 1)[1]
    assert "cached timings" in second[-1], second
    if "oneDNN" not in settings:
        return  # oneDNN is on by default here (or not x86): nothing to restart for
    # Forced: the cached choice is oneDNN, so the trainer starts again with it, and the run's
    # record says that oneDNN ran.
    cache[key]["choice"] = "oneDNN"
    path.write_text(json.dumps(cache))
    done = subprocess.run([*command, f"--model_dir={tmp_path / 'c'}"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("[threads]")]
    assert len(lines) == 2 and "starts again with TF_ENABLE_ONEDNN_OPTS=1" in lines[0], lines
    assert lines[1].startswith("[threads] oneDNN (") and "cached timings" in lines[1], lines
    records = [json.loads(line) for line in (tmp_path / "c" / "history.jsonl").read_text()
               .splitlines()]
    (start,) = [r for r in records if r.get("event") == "start"]
    assert start["onednn"] is True and start["intra_op_threads"] == 0, start


def test_a_negative_budget_is_refused_by_the_parser_and_zero_means_no_limit():
    with pytest.raises(flags.IllegalFlagValueError, match="tune_threads_budget"):
        _flags("--tune_threads_budget=-0.5")
    assert _flags("--tune_threads_budget=0").tune_threads_budget == 0.0
    assert _flags().tune_threads_budget == thread_tuning.BUDGET
