"""Choosing how a meta-batch's tasks run by timing the candidates, as cuDNN autotunes.

Which form of the meta-step is fastest depends on the machine, not only on what the model
supports: on one 2-core CPU the all-tasks batched pass is 1.2x faster than the per-task
loop at second order, on another they tie, and chunks of tasks win where the batched pass's
activations overflow the cache. Every candidate computes the same meta-gradient (each path is
tested against the loop and against finite differences in float64), so the choice changes
only the speed and float32 rounding, never the mathematics.

`autotune_task_batching(maml, episodes)` traces each candidate's meta-gradient on one real
meta-batch, times them in interleaved rounds (so that a load change on the machine biases
none of them), and returns the fastest as a `TaskBatchingChoice` with every timing. Chunks
are timed only in the batch-norm form (fused or plain) that won on the full batched pass,
unless the two are within 10%, and not at all where the loop beat the full pass by more than
`LOOP_PRUNE` (`left_out`): tracing, not timing, is most of the measurement's cost. The
result is cached per machine and model signature in a JSON file
(`$KERAS_META_CACHE_DIR/task_batching.json`, default `~/.cache/keras_meta/`), so a run or a
resume on the same machine does not pay for the measurement again. `MAML.autotune` applies
the choice; `MAML(task_batching="batched" | "loop")` overrides it.

Tracing grows with the passes a candidate unrolls: one for the full batched pass, one per
chunk, one per task for the loop (on the sinusoid MLP, 25 tasks: 1.9 s, 3.2 s for chunks of 16,
6.5 s for 8, 12.2 s for 4, 38 s for the loop). A short run must not spend longer choosing its
step than running it, so a run that says how long it will be (`run_iterations`, as the
trainer does) gives the measurement a budget: `BUDGET_FRACTION` of the run at the fastest
step seen so far. What `"auto"` runs unmeasured is timed first, then the others in order of
their trace's cost; one whose trace, predicted per pass from those traced before, would
overrun what is left is not timed (`over_budget`). So a short run gets at least the rule from
before measuring. Such an entry is reused only for runs no longer than the one it was
measured for; a longer run measures again with its larger budget.
"""

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from typing import Optional

import keras
import tensorflow as tf

from keras_meta.core import batching
from keras_meta.data.episode import as_episode
from keras_meta.layers import MetaBatchNormalization

CACHE_DIR_ENV = "KERAS_META_CACHE_DIR"
# "0", "off" or "false" turns measuring off: "auto" then takes the batched pass whenever the
# model allows it (the rule before measuring existed).
AUTOTUNE_ENV = "KERAS_META_AUTOTUNE"
CACHE_FILE = "task_batching.json"
# TensorFlow's own variables for its thread pools' sizes, read when it starts.
INTRA_OP_ENV = "TF_NUM_INTRAOP_THREADS"
INTER_OP_ENV = "TF_NUM_INTEROP_THREADS"
# Bumped when what a cached entry means changes (the candidates or how they are timed).
# 2: the batched candidates run the shared first inner step (`MAML.shared_first_step`).
# 3: the fused batch norm's second derivative is a closed form (`layers/fused_batch_norm.py`).
# 4: under mixed_bfloat16 the fused batch norm takes bfloat16 activations without casts.
# 5: each candidate is timed as its concrete function returning two scalars (`timed_step`).
# 6: the fused batch norm's float32 second derivative runs on the fused kernels.
# 7: a shared first step's dense layer of width 1 takes its input gradient as a broadcast
#    multiply (`shared_start.shared_matmul`), not a matmul.
# 8: under XLA on a CPU, dense layers' per-task contractions over rows run on materialized
#    transposes (`batching/batched_matmul.py`).
CACHE_VERSION = 8
CHUNK_SIZES = (4, 8, 16)
# A batch-norm form whose full batched pass is slower than the other's by more than this
# factor (beyond run-to-run noise) is not timed in chunks.
PRUNE = 1.1
# Chunks are not timed where the loop beat every full batched pass by more than this factor:
# chunks ran at most 1.31x faster than the full pass (Omniglot 5w1s on a 2-core AVX2 EPYC: 0.88
# against 0.71 s per meta-iteration with oneDNN, 4.36 against 3.33 s as patches without it),
# so they cannot catch up. Without oneDNN the full pass takes 2-5x the loop's time there, and
# the chunks were six of the nine candidates to trace.
LOOP_PRUNE = 1.75
# Each timed round of a candidate lasts at least this long (several calls of a fast step).
MIN_ROUND_SECONDS = 0.05
# With `run_iterations`, the measurement may take this share of the run's own time (its
# iterations at the fastest step measured so far). For a 5,000-iteration sinusoid run (about
# 10 ms each, 25 tasks) the candidates' traces took 62 s against about 50 s of training; the
# full batched pass's was 2 s of it.
BUDGET_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class TaskBatchingChoice:
    """One way to run a meta-batch's tasks (see `MAML`'s `task_batching`).

    Args:
        task_batching: `"batched"` (all tasks, or chunks of them, in one pass) or `"loop"`.
        task_chunk_size: with `"batched"`, tasks per pass (`None`: all).
        fused_batch_norm: with `"batched"`, TensorFlow's fused batch norm (see `MAML`).

    Example:

    >>> TaskBatchingChoice("batched", 8, True).label
    'batched, chunks of 8'
    >>> TaskBatchingChoice("batched", None, False).label
    'batched (plain batch norm)'
    """

    task_batching: str
    task_chunk_size: Optional[int] = None
    fused_batch_norm: bool = True

    def __post_init__(self):
        if self.task_batching not in ("batched", "loop"):
            raise ValueError(f"task_batching must be 'batched' or 'loop'; got "
                             f"{self.task_batching!r}.")

    @property
    def label(self):
        if self.task_batching == "loop":
            return "loop"
        label = "batched" + (f", chunks of {self.task_chunk_size}" if self.task_chunk_size
                             else "")
        return label + ("" if self.fused_batch_norm else " (plain batch norm)")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value):
        return cls(**value)


def autotune_enabled():
    """Whether `"auto"` task batching measures (`KERAS_META_AUTOTUNE` is not 0/off/false)."""
    value = os.environ.get(AUTOTUNE_ENV, "1").strip().lower()
    if value in ("1", "on", "true", "yes", ""):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    # A typo must not silently pick either behaviour.
    raise ValueError(f"{AUTOTUNE_ENV}={os.environ[AUTOTUNE_ENV]!r} is not understood; expected "
                     "1/on/true/yes (measure) or 0/off/false/no (batched when possible).")


def _has_fused_batch_norm(model):
    return any(isinstance(layer, MetaBatchNormalization) and layer.mode == "transductive"
               for layer in model._flatten_layers(include_self=False))


def candidates(maml, meta_batch_size):
    """The `TaskBatchingChoice`s worth timing for `maml` on meta-batches of this size.

    The loop always; when the model can run task-batched, the batched pass over all tasks and
    in chunks of 4, 8 and 16 tasks (those smaller than the meta-batch), each with fused and
    plain batch norm when the model has transductive batch norm. An explicit
    `task_chunk_size` or `fused_batch_norm=False` of the model is kept, not varied.
    """
    out = [TaskBatchingChoice("loop", None, bool(maml.fused_batch_norm))]
    if maml._batching_problems():
        return out
    if maml.task_chunk_size is not None:
        chunks = [maml.task_chunk_size]
    else:
        chunks = [None] + [c for c in CHUNK_SIZES if c < meta_batch_size]
    fused = [True, False] if maml.fused_batch_norm and _has_fused_batch_norm(maml.model) \
        else [bool(maml.fused_batch_norm)]
    out += [TaskBatchingChoice("batched", c, f) for f in fused for c in chunks]
    return out


def cpu_model():
    """The CPU's model name (`/proc/cpuinfo`), else what `platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description():
    """What the timings depend on besides the model: CPU model and count, accelerators, thread
    pools, the CPU kernels' grouped-convolution gradients, TF."""
    cpu = cpu_model()
    accelerators = [d.device_type + ":" + (tf.config.experimental.get_device_details(d).get(
        "device_name", "") if d.device_type == "GPU" else "")
        for d in tf.config.list_physical_devices() if d.device_type != "CPU"]
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "accelerators": accelerators,
            "intra_op_threads": _threads(
                tf.config.threading.get_intra_op_parallelism_threads(), INTRA_OP_ENV),
            "inter_op_threads": _threads(
                tf.config.threading.get_inter_op_parallelism_threads(), INTER_OP_ENV),
            # Whether the grouped form exists here at all: TensorFlow's oneDNN switch
            # (`TF_ENABLE_ONEDNN_OPTS`, its default depending on the CPU) decides it.
            "cpu_grouped_gradients": batching.cpu_grouped_gradients("float32"),
            "onednn": onednn_enabled(),
            "tensorflow": tf.__version__}


def onednn_enabled():
    """Whether this process's TensorFlow runs oneDNN's CPU kernels (read once, when it started:
    `TF_ENABLE_ONEDNN_OPTS`, else its default for this CPU); None where it cannot say."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def _threads(configured, env):
    """TensorFlow's thread count as it runs: `tf.config.threading`'s, else the variable's.

    TensorFlow takes its pools' sizes from these variables at startup, but
    `tf.config.threading` still reports 0 (its default) then. The timings depend on them (on
    a 2-core CPU, one thread per op and two ops at a time took the Omniglot preset's trainer
    to 0.77-0.88 of its time, and changed the 20w1s choice), so timings made under other
    settings are not reused.
    """
    value = os.environ.get(env, "").strip()
    if configured or not value:
        return configured
    return int(value) if value.isdigit() else value  # TensorFlow's to judge; the key keeps it


def signature(maml, episodes, *, jit_compile=False, first_order=None):
    """A stable key for the timings: the model, the MAML settings, the shapes, the machine."""
    episodes = as_episode(episodes)
    model = maml.model
    description = {
        "version": CACHE_VERSION,
        "model": json.loads(json.dumps(model.get_config(), default=str)),
        "weights": [[list(v.shape), str(v.dtype)] for v in model.weights],
        "dtype_policy": keras.config.dtype_policy().name,
        "inner_steps": maml.inner_steps,
        "first_order": maml.first_order if first_order is None else bool(first_order),
        "learn_inner_lr": maml.learn_inner_lr,
        "multi_step": maml.multi_step_loss_weights is not None,
        "recompute": maml.recompute_inner_steps,
        "shared_first_step": maml.shared_first_step,
        "update_rule": type(maml.update_rule).__name__ if maml.update_rule is not None else None,
        "episodes": [[list(x.shape), x.dtype.name] for x in episodes],
        "jit_compile": bool(jit_compile),
        "machine": machine_description(),
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path():
    """The timings cache: `$KERAS_META_CACHE_DIR` or `~/.cache/keras_meta`, `task_batching.json`."""
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "keras_meta")
    return os.path.join(root, CACHE_FILE)


def _read_cache(path, log):
    try:
        with open(path) as f:
            entries = json.load(f)
        if not isinstance(entries, dict):
            raise ValueError(f"a JSON object was expected, got {type(entries).__name__}")
        return entries
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        # A damaged cache costs one measurement, never a wrong choice: it is measured again
        # and rewritten.
        log(f"[autotune] ignoring the unreadable timings cache {path} ({error}); measuring again")
        return {}


def _write_cache(path, key, entry, log):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        entries = _read_cache(path, lambda message: None)
        entries[key] = entry
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".task_batching.")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as error:
        log(f"[autotune] could not write the timings cache {path} ({error}); the choice "
            "holds for this process only")


def _cached_choice(entry, options):
    try:
        choice = TaskBatchingChoice.from_dict(entry["choice"])
    except (KeyError, TypeError, ValueError):
        return None
    # A cached choice the model can no longer take (e.g. an explicit chunk size) is measured anew.
    return choice if choice in options else None


def autotune_task_batching(maml, episodes, *, repeats=5, jit_compile=False, first_order=None,
                           use_cache=True, path=None, log=print, run_iterations=None):
    """Times every candidate's meta-gradient on `episodes` and returns the fastest.

    Args:
        maml: a compiled or uncompiled `MAML` (its task loss must be set).
        episodes: one meta-batch (a batched `Episode`), as training will see it.
        repeats: timed rounds; each round times every candidate once, in turn.
        jit_compile: time the candidates compiled with XLA, as a `jit_compile` trainer runs.
        first_order: the derivative order to time (default: the model's).
        use_cache: read and write the timings cache (`cache_path()`).
        path: the cache file (default `cache_path()`).
        log: where the progress and the result are printed (a `print`-like callable).
        run_iterations: the meta-iterations of the run the choice is for. Given, the
            measurement stays within `BUDGET_FRACTION` of the run's time (see the module
            docstring); None (the default) times every candidate.

    Returns:
        `(choice, report)`: the fastest `TaskBatchingChoice` and a dict with `timings`
        (label -> median seconds, or why that candidate was not timed or the error it
        raised), `cached`, `seconds` (the measurement's own cost), `key` and `over_budget`
        (the labels left out for the budget).

    Example:

    >>> choice, report = autotune_task_batching(maml, next(iter(train_dataset)))
    >>> maml.set_task_batching_choice(choice)
    """
    if maml.task_batching != "auto":
        raise ValueError(f"autotune_task_batching is for task_batching='auto'; this MAML has "
                         f"the fixed {maml.task_batching!r}.")
    episodes = as_episode(episodes)
    meta_batch = episodes.support_x.shape[0]
    if meta_batch is None:
        raise ValueError("autotune_task_batching needs a static meta-batch size; got "
                         f"support_x with shape {episodes.support_x.shape}.")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats!r}.")
    if run_iterations is not None and (isinstance(run_iterations, bool)
                                       or not isinstance(run_iterations, int)
                                       or run_iterations < 1):
        raise ValueError(f"run_iterations must be a positive int or None; got "
                         f"{run_iterations!r}.")
    options = candidates(maml, meta_batch)
    key = signature(maml, episodes, jit_compile=jit_compile, first_order=first_order)
    path = path or cache_path()
    if use_cache:
        entry = _read_cache(path, log).get(key)
        choice = _cached_choice(entry, options) if entry else None
        if choice is not None and not _covers(entry, run_iterations):
            log(f"[autotune] the cached timings left out {', '.join(entry['over_budget'])} "
                f"for a run of {entry.get('run_iterations')} iterations; measuring again for "
                f"this one ({run_iterations or 'no'} budget)")
            choice = None
        if choice is not None:
            log(f"[autotune] task batching: {choice.label} (cached timings from "
                f"{entry.get('measured_at', '?')}: {_describe(entry.get('timings', {}))})")
            return choice, {"timings": entry.get("timings", {}), "cached": True, "seconds": 0.0,
                            "key": key, "choice": choice.to_dict(),
                            "over_budget": list(entry.get("over_budget", []))}
    if len(options) == 1:
        return options[0], {"timings": {}, "cached": False, "seconds": 0.0, "key": key,
                            "choice": options[0].to_dict(), "over_budget": []}
    if not jit_compile and batching.convolutions_fall_back_to_patches(maml.model):
        log("[autotune] this TensorFlow has no grouped-convolution gradients on this CPU "
            "(oneDNN is off: its default on AVX2-only CPUs), so the batched pass runs its "
            "convolutions as patches, several times slower; TF_ENABLE_ONEDNN_OPTS=1, set "
            "before TensorFlow starts, turns oneDNN on")
    started = time.perf_counter()
    log(f"[autotune] timing {len(options)} ways to run a meta-batch of {meta_batch} tasks "
        f"({'; '.join(c.label for c in options)}) ...")
    previous = maml.task_batching_choice
    functions, errors, first_call, skipped, budget_skipped = {}, {}, {}, {}, []
    # One tf.function per candidate is the point here, not an accidental retrace.
    verbosity = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")
    try:
        # What "auto" runs unmeasured first (the full batched pass, or the loop where the
        # convolutions would fall back to patches), so that a budget that leaves out every
        # other candidate still gets the rule from before measuring; then the other full
        # batched pass, the loop, and chunks from the largest (fewest passes to trace).
        # Chunks are timed only in the batch-norm form that won on the full pass (a form
        # slower there by more than the noise is slower in chunks too), which saves a third
        # of the tracing with batch norm.
        unmeasured = _unmeasured(maml, options, jit_compile)
        options = sorted(options, key=lambda c: (c != unmeasured,
                                                 c.task_batching == "loop" or
                                                 c.task_chunk_size is not None,
                                                 c.task_chunk_size is not None,
                                                 -(c.task_chunk_size or 0)))
        warm = {}
        for choice in options:
            why = None if maml.task_chunk_size is not None else left_out(choice, warm)
            if why:
                skipped[choice] = why
                continue
            why = over_budget(choice, meta_batch, first_call, warm,
                              time.perf_counter() - started, run_iterations)
            if why:
                skipped[choice] = why
                budget_skipped.append(choice.label)
                continue
            maml.set_task_batching_choice(choice)
            t = time.perf_counter()
            try:
                # A fresh function per candidate: the model's settings are read when it traces.
                fn = timed_step(maml, episodes, first_order=first_order,
                                jit_compile=jit_compile)
                _run(fn, episodes)
                first_call[choice] = time.perf_counter() - t
                t = time.perf_counter()
                _run(fn, episodes)  # warm-up: the first call after tracing is slower
                warm[choice] = time.perf_counter() - t
            except (tf.errors.ResourceExhaustedError, tf.errors.InternalError,
                    tf.errors.UnimplementedError) as error:
                errors[choice] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                continue
            functions[choice] = fn
    finally:
        maml.set_task_batching_choice(previous)
        tf.get_logger().setLevel(verbosity)
    if not functions:
        raise RuntimeError("Every task-batching candidate failed: " + "; ".join(
            f"{c.label}: {e}" for c, e in errors.items()))
    times = {choice: [] for choice in functions}
    # A millisecond step is timed over several calls per round: one call's time is mostly
    # noise at that scale (and a wrong choice costs as much as a slow one).
    calls = {choice: max(1, math.ceil(MIN_ROUND_SECONDS / max(warm[choice], 1e-6)))
             for choice in functions}
    for _ in range(int(repeats)):
        for choice, fn in functions.items():
            t = time.perf_counter()
            for _ in range(calls[choice]):
                _run(fn, episodes)
            times[choice].append((time.perf_counter() - t) / calls[choice])
    medians = {choice: statistics.median(ts) for choice, ts in times.items()}
    best = min(medians, key=medians.get)
    timings = {c.label: round(m, 6) for c, m in medians.items()}
    timings.update({c.label: e for c, e in errors.items()})
    timings.update({c.label: e for c, e in skipped.items()})
    seconds = time.perf_counter() - started
    log(f"[autotune] task batching: {best.label} ({_describe(timings)}; measured in "
        f"{seconds:.0f} s, tracing included)")
    entry = {"choice": best.to_dict(), "timings": timings,
             "first_call_seconds": {c.label: round(s, 3) for c, s in first_call.items()},
             "repeats": int(repeats), "machine": machine_description(),
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if budget_skipped:
        entry.update(over_budget=budget_skipped, run_iterations=run_iterations)
    if use_cache:
        _write_cache(path, key, entry, log)
    return best, {"timings": timings, "cached": False, "seconds": seconds, "key": key,
                  "choice": best.to_dict(), "over_budget": budget_skipped}


def _unmeasured(maml, options, jit_compile):
    """The candidate `"auto"` takes without measuring: the full batched pass in the model's
    batch-norm form, or the loop where the batched pass cannot run or its convolutions would
    fall back to patches on this CPU (several times slower than the loop)."""
    batched = TaskBatchingChoice("batched", maml.task_chunk_size, bool(maml.fused_batch_norm))
    if batched not in options or (not jit_compile
                                  and batching.convolutions_fall_back_to_patches(maml.model)):
        return options[0]  # the loop
    return batched


def _covers(entry, run_iterations):
    """Whether a cached entry measured enough for a run of `run_iterations` (None: no budget):
    it timed every candidate, or it left some out for a run at least as long."""
    if not entry.get("over_budget"):
        return True
    measured_for = entry.get("run_iterations")
    return (run_iterations is not None and isinstance(measured_for, int)
            and run_iterations <= measured_for)


def left_out(choice, warm):
    """Why a chunk candidate need not be timed, from the full passes' warm-up times so far.

    Args:
        choice: the `TaskBatchingChoice` about to be timed.
        warm: `TaskBatchingChoice` -> seconds of the candidates' first call after tracing
            (the loop and the full batched passes come first).

    Returns:
        A reason starting "not timed:", or None where `choice` is to be timed: it is not a
        chunk size, or neither rule below applies. Chunks are left out in a batch-norm form
        whose full pass was more than `PRUNE` times the other form's, and all of them where
        the loop beat every full pass by more than `LOOP_PRUNE`.

    Example:

    >>> left_out(TaskBatchingChoice("batched", 8), {TaskBatchingChoice("loop"): 0.3,
    ...                                             TaskBatchingChoice("batched"): 0.9})
    'not timed: the loop was 3.00x faster than the full batched pass'
    """
    if choice.task_chunk_size is None:
        return None
    full = TaskBatchingChoice("batched", None, choice.fused_batch_norm)
    rival = TaskBatchingChoice("batched", None, not choice.fused_batch_norm)
    if full in warm and rival in warm and warm[full] > PRUNE * warm[rival]:
        return (f"not timed: {full.label} was {warm[full] / warm[rival]:.2f}x {rival.label} on "
                "the full pass")
    loop = [t for c, t in warm.items() if c.task_batching == "loop"]
    passes = [t for c, t in warm.items()
              if c.task_batching == "batched" and c.task_chunk_size is None]
    if loop and passes and min(passes) > LOOP_PRUNE * min(loop):
        return (f"not timed: the loop was {min(passes) / min(loop):.2f}x faster than the full "
                "batched pass")
    return None


def passes(choice, meta_batch):
    """How many task passes `choice` traces for a meta-batch of `meta_batch` tasks: its
    trace's cost, relative to the full batched pass's (the loop unrolls one per task)."""
    if choice.task_batching == "loop":
        return meta_batch
    return math.ceil(meta_batch / (choice.task_chunk_size or meta_batch))


def over_budget(choice, meta_batch, first_call, warm, spent, run_iterations,
                fraction=BUDGET_FRACTION):
    """Why `choice` is not traced within the measurement's budget, or None where it fits.

    Args:
        choice: the `TaskBatchingChoice` about to be traced.
        meta_batch: tasks per meta-batch.
        first_call: candidate -> seconds of its first call (trace included) so far.
        warm: candidate -> seconds of its first call after tracing, so far.
        spent: seconds the measurement has taken so far.
        run_iterations: the meta-iterations of the run the choice is for; None: no budget.
        fraction: the share of the run the measurement may take.

    Returns:
        A reason starting "not timed:", or None. The budget is `fraction` of `run_iterations`
        at the fastest call in `warm`; `choice`'s trace is predicted as the cheapest first
        call per pass traced so far (`passes`), times `passes(choice, meta_batch)`.

    Example:

    >>> full = TaskBatchingChoice("batched")
    >>> loop = TaskBatchingChoice("loop")
    >>> over_budget(loop, 25, {full: 2.0}, {full: 0.01}, 2.5, 5000).split(",")[0]
    'not timed: tracing it would take about 50 s'
    >>> over_budget(loop, 25, {full: 2.0}, {full: 0.01}, 2.5, 500000) is None
    True
    """
    if run_iterations is None or not warm:
        return None
    if not first_call:
        return None
    per_pass = min(s / passes(c, meta_batch) for c, s in first_call.items())
    fastest = min(warm.values())
    budget = fraction * run_iterations * fastest
    predicted = per_pass * passes(choice, meta_batch)
    left = budget - spent
    if predicted <= left:
        return None
    share = "a tenth" if fraction == 0.1 else f"{fraction:g}"
    return (f"not timed: tracing it would take about {_seconds(predicted)}, over the "
            f"{_seconds(max(left, 0))} left of the measurement's budget ({_seconds(budget)}: "
            f"{share} of this run's {run_iterations} iterations at {1e3 * fastest:.1f} ms)")


def _seconds(value):
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def timed_step(maml, episodes, *, first_order=None, jit_compile=False):
    """The concrete function that the autotuner times for `maml`'s current choice.

    It computes the meta-gradient of `episodes` and returns two scalars: the meta-loss and
    the sum of every gradient's entries. A training step's gradients never leave its graph
    (the optimizer consumes them there), so none leave this one. Returning them through a
    `tf.function` call cost about 0.6 ms per call more than the whole training step on a small
    model, where the candidates differ by less than that (XLA sinusoid, 2-core CPU, one process,
    7 interleaved rounds: 1.75-1.77 ms against 1.13-1.14 ms for the step; this form 1.11-1.37 ms).
    The sum depends on every gradient, so no part of the backward pass can be pruned from what
    is timed. The concrete function is looked up once, as a training loop calls its step.

    Args:
        maml: the `MAML` with the choice to time already set.
        episodes: the batched `Episode` that the calls will pass.
        first_order: the derivative order (default: the model's).
        jit_compile: compile with XLA.

    Returns:
        A concrete function of `episodes` returning `(meta_loss, gradient_sum)`.

    Example:

    >>> step = timed_step(maml, episodes)
    >>> meta_loss, gradient_sum = step(episodes)
    """
    def gradient_checksum(batch):
        meta_loss, grads = maml.meta_gradients(batch, first_order=first_order)[:2]
        total = tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads
                          if g is not None] or [tf.zeros([])])
        return meta_loss, total

    return tf.function(gradient_checksum, jit_compile=jit_compile).get_concrete_function(
        as_episode(episodes))


def _run(fn, episodes):
    # Reading the sum waits for the whole meta-gradient.
    fn(episodes)[1].numpy()


_OVER_BUDGET = re.compile(r"not timed: tracing it would take about ([\d.]+ s), over the "
                          r"[\d.]+ s left of the measurement's budget \((.*)\)$")


def _describe(timings):
    """`label: seconds` fastest first, then the candidates not timed or failed; those left out
    for the budget in one clause that states the budget once."""
    timed = sorted((v, k) for k, v in timings.items() if not isinstance(v, str))
    budget, over, failed = None, [], []
    for k, v in timings.items():
        match = _OVER_BUDGET.match(v) if isinstance(v, str) else None
        if match:
            budget = match.group(2)
            over.append(f"{k} (about {match.group(1)})")
        elif isinstance(v, str):
            failed.append(f"{k}: {v}")
    parts = [f"{k}: {v:.4f} s" for v, k in timed] + failed
    if over:
        parts.append(f"not traced within the measurement's budget ({budget}): "
                     + ", ".join(over))
    return "; ".join(parts)
