"""Choosing TensorFlow's thread pools for a training run by timing its step, before it starts.

The pools' sizes can only be set before TensorFlow's first op (`threads.py`), so one process
cannot time both settings. `keras-meta-train` (`--tune_threads`, on by default) therefore
times the run's own training call (`keras_meta.training.step_timing`) in short child
processes, under TensorFlow's defaults and with one intra-op thread, taking turns (default,
one, one, default), and starts its own pools with the faster. One intra-op thread is chosen
only when it is at least `MARGIN` faster: the defaults are kept when the two are alike.

Why: on a 2-core CPU one thread per op ran the `sinusoid` preset's trainer (graph mode, five
inner steps) 2.1-2.7x faster (3.2-3.3 against 7.0-8.9 ms per iteration), while on the
Omniglot 5w1s preset the same session's measurement kept the defaults (153.8 against 164.7
ms); with more cores or bigger steps the defaults can win by more. The timings are cached per machine and per config (what shapes the step,
not the run's length), in `threads.json` beside the task-batching cache
(`$KERAS_META_CACHE_DIR`), so only a run's first start pays for them (about 10 s per child
process on the sinusoid). The measurement is skipped where the pools are already given
(`--intra_op_threads`, `--inter_op_threads` or their variables), with
`KERAS_META_AUTOTUNE=0`, and for distributed strategies.

Where TensorFlow leaves oneDNN off (its default on AVX2-only x86 CPUs, such as many AMD
EPYCs) and `TF_ENABLE_ONEDNN_OPTS` is not given, oneDNN is timed too, alone and with one
intra-op thread: only oneDNN has grouped-convolution gradients on CPU, so a convolutional
model's task-batched pass depends on it. TensorFlow reads that switch when it is imported,
which the trainers do before reading their flags, so a oneDNN choice starts the program again
with the variable set (`restart`). A setting more than `PRUNE` times slower than the fastest in
the first round is not timed in the second. With `task_batching="auto"` each child first
measures the task-batching forms under its setting, as the run will (the batched pass with
oneDNN, the loop without it, on that CPU), and times the fastest; the run under the chosen
setting then reads that measurement from the cache.

`keras-meta-train-optimizer` does the same with its meta-iteration (1.4-1.5x faster with one
intra-op thread on the quadratics here).

The timing stops early where the children still to run would take longer than the run they
tune (`--tune_threads_budget` times its iterations at the fastest time measured so far, each
child predicted to take as long as the quickest so far): a 300-iteration sinusoid run of
about 2 s spent 38 s in four children. The defaults are then kept (or the faster of what was
measured, by the same margin), and the cache records the run's length; a longer run times
the settings again.

The child process: `python -m keras_meta.cli.thread_tuning CONFIG_JSON MIN_SECONDS TRAINER`
(TRAINER: the config's class name) prints `{"ms_per_iteration": ...}` as its last line.
"""

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from keras_meta.cli import threads

# The setting that must beat TensorFlow's defaults by this factor to be chosen.
MARGIN = 1.05
# A setting this much slower than the fastest in the first round is not timed again: each
# child costs a data load and a trace (tens of seconds on the Omniglot preset).
PRUNE = 1.25
CACHE_FILE = "threads.json"
# The most the children still to run may take, as a multiple of the run's own time.
BUDGET = 1.0
CACHE_VERSION = 2
# Config fields that change how long a run is or what it logs, not its step: MAML's
# (`MAMLTrainConfig`) and the learned optimizer's (`LearnedOptimizerTrainConfig`).
_RUN_FIELDS = ("num_iterations", "eval_every", "num_val_tasks", "num_eval_tasks",
               "checkpoint_every", "log_every", "eval_inner_steps", "eval_num_shots",
               "eval_num_queries", "seed", "worker_timeout_seconds", "num_meta_iterations",
               "eval_shifts", "num_eval_functions")
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Set in the process this module restarts with oneDNN on: the variable is then the tuner's
# choice, not the user's.
RESTARTED_ENV = "KERAS_META_ONEDNN_CHOSEN"
DEFAULTS = "TensorFlow's defaults"
# label -> the variables a child is started with (the other pool keeps TensorFlow's size).
CANDIDATES = {DEFAULTS: {}, "one intra-op thread": {threads.INTRA_OP_ENV: "1"}}
# Tried too where TensorFlow leaves oneDNN off (its default on AVX2-only x86 CPUs): only
# oneDNN has grouped-convolution gradients on CPU, so the task-batched pass of a
# convolutional model depends on it (0.71 against 0.92 s per Omniglot 5w1s meta-iteration,
# chunks of 8 against the loop, on an AVX2 AMD EPYC), and its matmuls differ from Eigen's.
ONEDNN_CANDIDATES = {"oneDNN": {ONEDNN_ENV: "1"},
                     "oneDNN, one intra-op thread": {ONEDNN_ENV: "1", threads.INTRA_OP_ENV: "1"}}


def define_flags(flag_values=flags.FLAGS):
    """Defines `--tune_threads` (on by default)."""
    if "tune_threads" in flag_values:
        return
    flags.DEFINE_boolean(
        "tune_threads", True, "Before training, time this run's step with TensorFlow's "
        "default thread pools and with one intra-op thread (and with oneDNN, where TensorFlow "
        "leaves it off and TF_ENABLE_ONEDNN_OPTS is not given), in child processes, and start "
        "with the fastest (cached per machine and config). Off where --intra_op_threads or "
        "--inter_op_threads is given, with KERAS_META_AUTOTUNE=0, and for distributed "
        "strategies.", flag_values=flag_values)
    flags.DEFINE_float(
        "tune_threads_budget", BUDGET, "With --tune_threads: stop timing when the child "
        "processes still to run would take longer than this multiple of the run's own time "
        "(its iterations at the fastest time measured so far), and keep what was measured; "
        "0 times every setting whatever the run's length.", lower_bound=0.0,
        flag_values=flag_values)


def _machine():
    import tensorflow as tf

    from keras_meta.maml.task_batching_autotune import cpu_model

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "tensorflow": tf.__version__}


def _user_onednn():
    """`TF_ENABLE_ONEDNN_OPTS` as the user gave it ("" where unset or set by this module)."""
    if os.environ.get(RESTARTED_ENV):
        return ""
    return os.environ.get(ONEDNN_ENV, "").strip()


def _onednn_tried():
    """Whether oneDNN is one of the settings to time: x86, TensorFlow leaving it off by
    default here, and the user not deciding it."""
    from keras_meta.maml.task_batching_autotune import onednn_enabled

    if platform.machine().lower() not in ("x86_64", "amd64") or _user_onednn():
        return False
    return bool(os.environ.get(RESTARTED_ENV)) or onednn_enabled() is False


def candidates():
    """label -> variables: the settings this process's tuning times."""
    return {**CANDIDATES, **(ONEDNN_CANDIDATES if _onednn_tried() else {})}


def cache_key(config):
    """The key of `config`'s timings: the machine and every config field that shapes the step."""
    step = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUN_FIELDS}
    text = json.dumps({"version": CACHE_VERSION, "machine": _machine(),
                       "onednn_given": _user_onednn(), "trainer": type(config).__name__,
                       "config": step},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cache_path():
    from keras_meta.maml.task_batching_autotune import cache_path

    return os.path.join(os.path.dirname(cache_path()), CACHE_FILE)


def _read_cache(path):
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache, or a corrupt one: measured again and rewritten


def _write_cache(path, key, entry):
    cache = _read_cache(path)
    cache[key] = entry
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False,
                                     suffix=".tmp") as f:
        json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(f.name, path)


def child_environ(env):
    """The environment of the child that times the setting `env` (variable -> value): this
    process's, less the variables the candidates vary, plus `env`."""
    varied = (threads.INTRA_OP_ENV, threads.INTER_OP_ENV, RESTARTED_ENV) + (
        (ONEDNN_ENV,) if _onednn_tried() else ())
    environ = {k: v for k, v in os.environ.items() if k not in varied}
    # Measuring stays as it is here (on: tuning runs only where it is). With
    # task_batching="auto" the child then times the form the task-batching autotuner picks
    # under its own setting, and caches it for the run that takes that setting.
    environ.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    return environ


def _time_in_child(config_path, env, min_seconds, timeout, trainer="MAMLTrainConfig"):
    environ = child_environ(env)
    proc = subprocess.run([sys.executable, "-m", "keras_meta.cli.thread_tuning", config_path,
                           str(min_seconds), trainer], env=environ, capture_output=True, text=True,
                          timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the timing process failed ({last})")
    return float(json.loads(lines[-1])["ms_per_iteration"])


def run_iterations(config):
    """The iterations of the run `config` describes (MAML's or the learned optimizer's)."""
    return int(getattr(config, "num_iterations", None)
               or getattr(config, "num_meta_iterations", 0) or 0)


def over_budget(child_seconds, children_left, iterations, fastest_ms, budget=BUDGET):
    """Why the timing stops before the next child, or None where it goes on.

    Args:
        child_seconds: the wall times of the children run so far.
        children_left: how many are still to run.
        iterations: the run's iterations.
        fastest_ms: the fastest milliseconds per iteration measured so far.
        budget: the most the children left may take, as a multiple of the run's time; 0
            or None: no limit.

    Example:

    >>> over_budget([10.0], 3, 300, 7.0)
    'the 3 children left (about 30 s) would take longer than this run (about 2.1 s)'
    >>> over_budget([10.0], 3, 70000, 7.0) is None
    True
    """
    if not budget or not children_left or not child_seconds:
        return None
    rest = children_left * min(child_seconds)
    run = iterations * fastest_ms / 1e3
    if rest <= budget * run:
        return None
    scale = "" if budget == 1 else f" {budget:g} times"
    return (f"the {children_left} children left (about {_seconds(rest)}) would take longer "
            f"than{scale} this run (about {_seconds(run)})")


def _seconds(value):
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _covers(entry, iterations, budget):
    """Whether a cached entry timed enough for a run of `iterations` under `budget`: every
    planned child, or those a run at least as long affords."""
    if not entry.get("stopped_early"):
        return True
    return bool(budget) and iterations <= int(entry.get("run_iterations") or 0)


def _out_of_the_running(label, times):
    """Whether `label`'s first round was so much slower than the fastest's (`PRUNE`) that a
    second round cannot make it the choice; the defaults always get theirs (the reference)."""
    first = {k: v[0] for k, v in times.items() if v}
    return label != DEFAULTS and first[label] > PRUNE * min(first.values())


def tune_threads(config, flag_values=flags.FLAGS, log=print, min_seconds=1.0, timeout=900):
    """Times `config`'s step under each of `CANDIDATES` and sizes this process's pools.

    `config` is a `MAMLTrainConfig` or a `LearnedOptimizerTrainConfig`; the child times that
    trainer's call. Must run before TensorFlow's first op. Returns the chosen label, or None
    where nothing
    was measured (see the module docstring for when) or the measurement failed (the run then
    keeps TensorFlow's defaults, and says why).
    """
    import tensorflow as tf

    from keras_meta.maml.task_batching_autotune import autotune_enabled

    if (not flag_values.tune_threads or getattr(config, "strategy", "default") != "default"
            or not autotune_enabled()):
        return None
    if any(flag_values[name].value for name in ("intra_op_threads", "inter_op_threads")) or any(
            os.environ.get(env, "").strip() for env in (threads.INTRA_OP_ENV,
                                                        threads.INTER_OP_ENV)):
        return None  # given by the user: kept as given
    settings = candidates()
    path, key = _cache_path(), cache_key(config)
    entry = _read_cache(path).get(key)
    iterations = run_iterations(config)
    budget = flag_values.tune_threads_budget if "tune_threads_budget" in flag_values else BUDGET
    if isinstance(entry, dict) and entry.get("choice") in settings and not _covers(
            entry, iterations, budget):
        log(f"[threads] the cached timings stopped early for a run of "
            f"{entry.get('run_iterations')} iterations; timing again for this one", flush=True)
        entry = None
    if not (isinstance(entry, dict) and entry.get("choice") in settings):
        entry = None
        log(f"[threads] timing this run's step with {', with '.join(settings)}, in child "
            "processes (once per machine and config; --notune_threads skips it) ...",
            flush=True)
        started = time.perf_counter()
        times = {label: [] for label in settings}
        child_seconds, stopped = [], None
        try:
            with tempfile.TemporaryDirectory() as scratch:
                config_path = os.path.join(scratch, "config.json")
                with open(config_path, "w") as f:
                    json.dump(dataclasses.asdict(config), f)
                labels = list(settings)
                most, done = 2 * len(labels), 0
                planned = [(order, label) for order in (labels, labels[::-1])
                           for label in order]
                for index, (order, label) in enumerate(planned):
                    if stopped:
                        break
                    if order is not labels and _out_of_the_running(label, times):
                        continue
                    child_started = time.perf_counter()
                    times[label].append(_time_in_child(
                        config_path, settings[label], min_seconds, timeout,
                        type(config).__name__))
                    done += 1
                    # A child can take minutes (TensorFlow's start, the data, the
                    # task-batching measurement, the trace): a line per child.
                    child_seconds.append(time.perf_counter() - child_started)
                    log(f"[threads] {done}/{most} {label}: {times[label][-1]:.3f} ms per "
                        f"meta-iteration (this child: {child_seconds[-1]:.0f} s)",
                        flush=True)
                    # A second-round child is left out only once its setting's first
                    # round says so.
                    left = sum(1 for o, other in planned[index + 1:]
                               if o is labels or not times[other]
                               or not _out_of_the_running(other, times))
                    stopped = over_budget(child_seconds, left, iterations,
                                          min(v for vs in times.values() for v in vs),
                                          budget)
                    if stopped:
                        log(f"[threads] timing stopped: {stopped}; choosing from what "
                            f"was measured (--tune_threads_budget=0 times every "
                            f"setting)", flush=True)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as error:
            log(f"[threads] not tuned, TensorFlow's defaults kept: {error}", flush=True)
            return None
        medians = {label: statistics.median(values) for label, values in times.items()
                   if values}
        fastest = min(medians, key=medians.get)
        choice = fastest if medians[DEFAULTS] >= MARGIN * medians[fastest] else DEFAULTS
        entry = {"choice": choice, "ms_per_iteration": {k: round(v, 4) for k, v in
                                                        medians.items()},
                 "rounds": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
                 "machine": _machine(), "seconds": round(time.perf_counter() - started, 1),
                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if stopped:
            entry.update(stopped_early=stopped, run_iterations=iterations)
        _write_cache(path, key, entry)
        source = f"measured in {entry['seconds']:.0f} s"
    else:
        source = f"cached timings from {entry.get('measured_at', '?')}"
    choice = entry["choice"]
    timings = "; ".join(f"{k}: {v:.3f} ms" for k, v in entry["ms_per_iteration"].items())
    wanted = settings[choice].get(ONEDNN_ENV)
    if wanted and os.environ.get(ONEDNN_ENV) != wanted:
        if os.environ.get(RESTARTED_ENV):
            log(f"[threads] {choice} was faster, but the restarted process still runs without "
                "it; TensorFlow's defaults are kept.", flush=True)
            return None
        restart(choice, timings, source, log)
    try:
        for name, value in settings[choice].items():
            if name == ONEDNN_ENV:
                continue  # read when TensorFlow started: this process runs it (above)
            setter = (tf.config.threading.set_intra_op_parallelism_threads
                      if name == threads.INTRA_OP_ENV
                      else tf.config.threading.set_inter_op_parallelism_threads)
            setter(int(value))
    except RuntimeError:
        log(f"[threads] {choice} was faster, but TensorFlow's runtime had already started in "
            "this process; its defaults are kept.", flush=True)
        return None
    log(f"[threads] {choice} ({timings} per meta-iteration; {source})", flush=True)
    return choice


def restart(choice, timings, source, log=print):
    """Runs this program again from the start, in this process, with oneDNN on.

    TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported, and the trainers
    import it before their flags are read; so a choice of oneDNN takes a new start with the
    variable set (`os.execv`, same arguments), where the cached choice is then applied.
    """
    log(f"[threads] {choice} ({timings} per meta-iteration; {source}): TensorFlow reads "
        f"{ONEDNN_ENV} when it starts, so the program starts again with {ONEDNN_ENV}=1 ...",
        flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[ONEDNN_ENV] = "1"
    os.environ[RESTARTED_ENV] = "1"
    os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])


def _child_main(argv):
    from keras_meta.training import step_timing
    from keras_meta.training.config import MAMLTrainConfig
    from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig

    with open(argv[1]) as f:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in json.load(f).items()}
    if argv[3] == "MAMLTrainConfig":
        ms = step_timing.time_training_step(MAMLTrainConfig.from_dict(values),
                                            min_seconds=float(argv[2]))
    elif argv[3] == "LearnedOptimizerTrainConfig":
        ms = step_timing.time_learned_optimizer_iteration(
            LearnedOptimizerTrainConfig(**values), min_seconds=float(argv[2]))
    else:
        raise ValueError(f"trainer {argv[3]!r}: expected 'MAMLTrainConfig' or "
                         "'LearnedOptimizerTrainConfig'")
    print(json.dumps({"ms_per_iteration": ms}), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv)
