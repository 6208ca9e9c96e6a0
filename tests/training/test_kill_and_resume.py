"""SIGKILL the MAML trainer three times, once or more inside a checkpoint save, rerun the same
command after each kill, and check that the resumed run ends bit for bit where an
uninterrupted run of the same command ends.

How it works. Run A is the command run once to the end (in the background, alongside B).
Run B is the same command in another directory, run as a subprocess that is killed (SIGKILL:
no cleanup of any kind) three times and rerun after each kill; the fourth run finishes.
Then B's latest and best checkpoints must equal A's tensor for tensor, bit for bit (all but
`train_seconds`), and so must `eval_results.json` (but for times and the history, where B
must have one `resume` per kill); nothing temporary may be left in B.

The kill points come from a seeded `random.Random`, so they are reproducible (up to the
machine's timing): each kill waits for the first progress line `[train] iter N/40` (printed
after step N, before its checkpoint) with N at or beyond a drawn iteration, then kills

* "random": after a drawn delay of 0-50 ms;
* "checkpoint_write": as soon as TensorFlow's temporary files of a save (`ckpt-N_temp/` or
  `checkpoint.tmp*`) appear in `checkpoints/` or `best/`;
* "config_write": as soon as the temporary copy of `config.json` that every save writes
  (`config.json.tmp-<pid>`) appears in the run directory.

How we know a kill landed in a write: temporary items of the save are still on disk after the
killed process is dead (nothing else could remove them). At least one kill must leave
TensorFlow's own temporary checkpoint files behind (up to two extra kills try again if none
did), and the rerun must report removing every leftover. With `--checkpoint_every=1` every
step saves, so the watched items appear within milliseconds of the trigger line.
"""

import fnmatch
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NUM_ITERATIONS = 40
ARGS = [
    "--task_family=sinusoid", f"--num_iterations={NUM_ITERATIONS}", "--meta_batch_size=2",
    "--shots=5", "--queries=5", "--eval_every=10", "--num_val_tasks=4", "--num_eval_tasks=4",
    "--checkpoint_every=1", "--log_every=1", "--eval_inner_steps=1",
]
ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
       "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
KILL_POINTS_SEED = 1729
RUN_TIMEOUT_S = 150     # one run of the command (about 10 s here)
WRITE_WAIT_S = 15       # the longest wait for a watched write after the trigger line
PROGRESS = re.compile(r"^\[train\] iter (\d+)/")

# Temporary items of a save: TensorFlow's (in checkpoints/ and best/) and those of
# `run_state.write_atomically` (config.json beside the checkpoints, eval_results.json).
TF_TEMP = ("ckpt-*_temp*", "checkpoint.tmp*")
ATOMIC_TEMP = ("*.tmp-*",)
WATCHED = {
    "checkpoint_write": (("checkpoints", "best"), TF_TEMP),
    "config_write": (("",), ("config.json.tmp-*",)),
}


def _command(model_dir):
    return [sys.executable, "-m", "keras_meta.cli.train_maml", f"--model_dir={model_dir}", *ARGS]


def _temp_items(model_dir, subdirs=("", "checkpoints", "best"), patterns=TF_TEMP + ATOMIC_TEMP):
    found = []
    for sub in subdirs:
        try:
            names = os.listdir(os.path.join(model_dir, sub))
        except FileNotFoundError:
            continue
        found += [os.path.join(sub, n) for n in names
                  if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return found


def _pump(stream, lines):
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


class _Runs:
    """Runs the command, keeping every run's output for the failure message."""

    def __init__(self, tmp_path):
        self.tmp_path, self.records = tmp_path, []

    def tails(self):
        parts = []
        for r in self.records:
            stderr = Path(r["stderr"]).read_text(errors="replace")[-2500:]
            parts.append(f"===== {r['name']} (rc {r['rc']}) stdout tail:\n"
                         + "\n".join(r["stdout"][-25:]) + f"\n----- stderr tail:\n{stderr}")
        return "\n".join(parts)

    def _record(self, name):
        record = {"name": name, "stdout": [], "rc": None,
                  "stderr": str(self.tmp_path / f"{name}.stderr")}
        self.records.append(record)
        return record

    def start(self, name, model_dir):
        """Starts a run to completion in the background; `finish` waits for it."""
        record = self._record(name)
        record["stdout_file"] = str(self.tmp_path / f"{name}.stdout")
        with open(record["stdout_file"], "w") as stdout, open(record["stderr"], "w") as stderr:
            record["proc"] = subprocess.Popen(_command(model_dir), stdout=stdout, stderr=stderr,
                                              text=True, env=ENV, cwd=REPO)
        return record

    def finish(self, record):
        proc = record["proc"]
        try:
            record["rc"] = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            record["stdout"] = Path(record["stdout_file"]).read_text().splitlines()
        assert record["rc"] == 0, f"{record['name']} failed"
        return record

    def stop_all(self):
        for record in self.records:
            proc = record.get("proc")
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    def kill(self, name, model_dir, trigger, mode, rng):
        """Runs the command until the first progress line at iteration >= `trigger`, then kills
        it as `mode` says; returns the run's record with the temporary items left behind."""
        record = self._record(name)
        lines = queue.Queue()
        with open(record["stderr"], "w") as stderr:
            proc = subprocess.Popen(_command(model_dir), stdout=subprocess.PIPE, stderr=stderr,
                                    text=True, env=ENV, cwd=REPO)
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        seen = None
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
                if line is None:
                    raise AssertionError(f"{name} ended (rc {proc.wait(30)}) before iteration "
                                         f"{trigger}")
                record["stdout"].append(line)
                match = PROGRESS.match(line)
                if match and int(match.group(1)) >= trigger:
                    break
            if mode == "random":
                time.sleep(rng.uniform(0.0, 0.05))
            else:
                subdirs, patterns = WATCHED[mode]
                wait_until = time.monotonic() + WRITE_WAIT_S
                # A tight poll: the item lives for about a millisecond (TF) or an fsync.
                while (not seen and proc.poll() is None
                       and time.monotonic() < wait_until):
                    seen = _temp_items(model_dir, subdirs, patterns)
            proc.send_signal(signal.SIGKILL)
            record["rc"] = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        reader.join(timeout=30)
        while not lines.empty():
            line = lines.get()
            if line is not None:
                record["stdout"].append(line)
        assert record["rc"] == -signal.SIGKILL, f"{name} was not killed (rc {record['rc']})"
        assert mode == "random" or seen, f"{name}: no {mode} seen within {WRITE_WAIT_S} s"
        # The process is dead: what is left now was in the middle of being written.
        record.update(mode=mode, trigger=trigger, seen=seen, leftovers=_temp_items(model_dir),
                      last_iteration=max([int(m.group(1)) for m in
                                          map(PROGRESS.match, record["stdout"]) if m],
                                         default=0))
        return record


def _in_tf_write(killed):
    """Whether a kill left TensorFlow's temporary checkpoint items (it hit a save)."""
    return any(fnmatch.fnmatch(os.path.basename(item), p)
               for item in killed["leftovers"] for p in TF_TEMP)


def _tensors(checkpoint_dir):
    path = tf.train.latest_checkpoint(checkpoint_dir)
    assert path is not None, f"no checkpoint in {checkpoint_dir}"
    reader = tf.train.load_checkpoint(path)
    return os.path.basename(path), {name: np.asarray(reader.get_tensor(name))
                                    for name, _ in tf.train.list_variables(path)}


def _assert_same_checkpoint(dir_a, dir_b):
    name_a, a = _tensors(dir_a)
    name_b, b = _tensors(dir_b)
    assert name_a == name_b, f"latest checkpoints differ: {name_a} vs {name_b}"
    assert sorted(a) == sorted(b), "the checkpoints hold different variables"
    assert "run_config/.ATTRIBUTES/VARIABLE_VALUE" in a
    differ = []
    for name in sorted(a):
        if name.startswith("train_seconds/"):
            continue
        x, y = a[name], b[name]
        same = (x.dtype == y.dtype and x.shape == y.shape
                and (x.tobytes() == y.tobytes() if x.dtype != object
                     else np.array_equal(x, y)))
        if not same:
            differ.append(name if x.dtype == object or x.shape != y.shape else
                          f"{name} (max |diff| {np.max(np.abs(x.astype(float) - y)):.3g})")
    assert not differ, f"{dir_b}/{name_b} differs from the uninterrupted run in {differ}"


def _comparable_results(model_dir):
    with open(os.path.join(model_dir, "eval_results.json")) as f:
        results = json.load(f)
    history = results.pop("history")
    for key in ("train_seconds", "seconds_per_iteration", "time_breakdown", "eval_seconds"):
        results.pop(key)
    results["checkpoint"] = os.path.relpath(results["checkpoint"], model_dir)
    return results, history


def test_killed_and_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path):
    rng = random.Random(KILL_POINTS_SEED)
    modes = ["random", "checkpoint_write", "config_write"]
    rng.shuffle(modes)
    first = rng.randint(2, 8)
    triggers = [first, first + rng.randint(6, 12)]
    triggers.append(triggers[-1] + rng.randint(6, 12))    # at most 32 < NUM_ITERATIONS
    dir_a, dir_b = str(tmp_path / "a"), str(tmp_path / "b")
    runs = _Runs(tmp_path)
    try:
        # The uninterrupted run goes alongside the killed ones (it only shares the CPUs).
        uninterrupted = runs.start("A", dir_a)
        killed = [runs.kill(f"B{i + 1}", dir_b, trigger, mode, rng)
                  for i, (trigger, mode) in enumerate(zip(triggers, modes))]
        # The "checkpoint_write" kill races the end of the write it saw (it has always landed
        # so far); should it lose, up to two more kills try again.
        while not any(map(_in_tf_write, killed)) and len(killed) < 5:
            trigger = min(killed[-1]["last_iteration"] + 2, NUM_ITERATIONS - 2)
            killed.append(runs.kill(f"B{len(killed) + 1}", dir_b, trigger, "checkpoint_write",
                                    rng))
        final = runs.finish(runs.start(f"B{len(killed) + 1}", dir_b))
        runs.finish(uninterrupted)
        for k in killed:
            print(f"{k['name']}: {k['mode']} kill after iteration {k['trigger']} (last progress "
                  f"line: {k['last_iteration']}); seen {k['seen']}; left {k['leftovers']}")

        # Each rerun resumed, and removed what the kill before it left mid-write.
        for before, after in zip(killed, killed[1:] + [final]):
            assert any("[train] resumed from" in line for line in after["stdout"]), after["name"]
            for item in before["leftovers"]:
                assert any(line.startswith(f"[train] removed {os.path.join(dir_b, item)}")
                           for line in after["stdout"]), f"{after['name']} kept {item}"
        mid_write = [k for k in killed if k["leftovers"]]
        in_tf_write = [k for k in killed if _in_tf_write(k)]
        print(f"{len(mid_write)} of {len(killed)} kills landed mid-write, {len(in_tf_write)} "
              "inside TensorFlow's checkpoint write")
        assert in_tf_write, "no kill landed inside a checkpoint write"

        for sub in ("checkpoints", "best"):
            _assert_same_checkpoint(os.path.join(dir_a, sub), os.path.join(dir_b, sub))
        results_a, history_a = _comparable_results(dir_a)
        results_b, history_b = _comparable_results(dir_b)
        assert results_b == results_a
        # Validations are recorded too (and re-recorded after a resume): starts and resumes.
        history_a = [e for e in history_a if e["event"] in ("start", "resume")]
        history_b = [e for e in history_b if e["event"] in ("start", "resume")]
        assert [e["event"] for e in history_a] == ["start"]
        assert [e["event"] for e in history_b] == ["start"] + ["resume"] * len(killed)
        resumed_at = [e["iteration"] for e in history_b[1:]]
        assert resumed_at == sorted(resumed_at) and resumed_at[0] >= 1
        for event in history_b[1:]:
            assert event["checkpoint"].endswith(f"ckpt-{event['iteration']}")

        left = [os.path.join(root, n) for root, dirs, files in os.walk(dir_b)
                for n in dirs + files if any(fnmatch.fnmatch(n, p) for p in TF_TEMP + ATOMIC_TEMP)]
        assert not left, f"temporary files left in the resumed run: {left}"
    except (AssertionError, subprocess.TimeoutExpired, queue.Empty) as error:
        runs.stop_all()
        pytest.fail(f"{type(error).__name__}: {error}\n{runs.tails()}")
    finally:
        runs.stop_all()
