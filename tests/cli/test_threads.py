"""`--intra_op_threads` and `--inter_op_threads`: they size TensorFlow's pools, or are refused."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from absl import app, flags

from keras_meta.cli import threads
from keras_meta.maml import task_batching_autotune

# A fresh process: the flags parsed as a program parses them, applied, then TensorFlow started.
_CHILD = r"""
import collections, json, os, sys
from absl import flags
from keras_meta.cli import train_maml, threads
from keras_meta.maml import task_batching_autotune
import tensorflow as tf

fv = flags.FlagValues()
train_maml.define_flags(fv)
fv(["train_maml", *sys.argv[1:]])
line = threads.apply_thread_flags(fv)
x = tf.random.normal([64, 64])
(x @ x).numpy()
names = collections.Counter(open(f"/proc/self/task/{t}/comm").read().strip()
                            for t in os.listdir("/proc/self/task"))
print(json.dumps({"line": line, "names": names,
                  "intra": tf.config.threading.get_intra_op_parallelism_threads(),
                  "inter": tf.config.threading.get_inter_op_parallelism_threads(),
                  "machine": task_batching_autotune.machine_description()}))
"""


def _child(*argv, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in (threads.INTRA_OP_ENV, threads.INTER_OP_ENV)}
    environ.update(env)
    proc = subprocess.run([sys.executable, "-c", _CHILD, *argv], env=environ,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _flags(*argv):
    fv = flags.FlagValues()
    threads.define_flags(fv)
    fv(["program", *argv])
    return fv


@pytest.mark.slow
def test_the_flags_size_the_pools_that_tensorflow_starts_with():
    sized = _child("--intra_op_threads=1", "--inter_op_threads=3")
    assert (sized["intra"], sized["inter"]) == (1, 3)
    assert sized["line"] == ("[threads] TensorFlow runs intra-op threads: 1 (--intra_op_threads), "
                             "inter-op threads: 3 (--inter_op_threads)")
    # The timings cache is keyed on what runs, so the autotuner sees the flags too.
    machine = sized["machine"]
    assert (machine["intra_op_threads"], machine["inter_op_threads"]) == (1, 3)
    # The runtime's inter-op pool ("Compute") really has the asked-for size.
    assert sized["names"].get("tf_Compute") == 3, sized["names"]
    default = _child()
    assert default["line"] is None and (default["intra"], default["inter"]) == (0, 0)


def test_without_flags_a_variable_is_reported_and_left_to_tensorflow(monkeypatch):
    monkeypatch.delenv(threads.INTER_OP_ENV, raising=False)
    monkeypatch.setenv(threads.INTRA_OP_ENV, "1")
    assert threads.apply_thread_flags(_flags()) == (
        "[threads] TensorFlow runs intra-op threads: 1 ($TF_NUM_INTRAOP_THREADS)")
    monkeypatch.delenv(threads.INTRA_OP_ENV)
    assert threads.apply_thread_flags(_flags()) is None


def test_a_flag_and_a_variable_that_disagree_are_refused(monkeypatch):
    monkeypatch.setenv(threads.INTRA_OP_ENV, "2")
    with pytest.raises(app.UsageError, match=r"--intra_op_threads=1 and "
                       r"TF_NUM_INTRAOP_THREADS=2 ask for different sizes"):
        threads.apply_thread_flags(_flags("--intra_op_threads=1"))


def test_a_flag_that_comes_after_tensorflow_started_is_refused_not_ignored(monkeypatch):
    monkeypatch.delenv(threads.INTRA_OP_ENV, raising=False)
    monkeypatch.delenv(threads.INTER_OP_ENV, raising=False)
    tf.constant(1.0) + 1.0  # the runtime starts, with this process's sizes
    running = tf.config.threading.get_inter_op_parallelism_threads()
    wanted = running + 5
    with pytest.raises(app.UsageError, match=rf"--inter_op_threads={wanted}: TensorFlow's "
                       "runtime already started in this process .* run the program in a new "
                       "process"):
        threads.apply_thread_flags(_flags(f"--inter_op_threads={wanted}"))
    assert tf.config.threading.get_inter_op_parallelism_threads() == running


def test_negative_sizes_are_refused_by_the_parser():
    with pytest.raises(flags.IllegalFlagValueError, match="intra_op_threads"):
        _flags("--intra_op_threads=-1")


def test_every_program_that_trains_takes_the_flags():
    from keras_meta.cli import demo, train_maml

    for module in (train_maml, demo):
        fv = flags.FlagValues()
        module.define_flags(fv)
        assert {"intra_op_threads", "inter_op_threads"} <= set(fv), module.__name__
