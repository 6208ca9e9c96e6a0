"""What a run directory remembers, so that nothing exported or reported differs from what
produced the weights.

* **The config travels with every checkpoint**, as a string tensor inside it (`RUN_CONFIG_KEY`).
  An exporter reads the config of the very checkpoint it exports; `config.json` beside the
  checkpoints is a copy written atomically, and only after a checkpoint was saved.
* **Resuming checks the changes.** Settings that only steer the run (`RESUME_MAY_CHANGE`: the
  number of iterations, the outer learning rate, logging and evaluation periods, speed
  options) may change on resume, and are applied for real; any other change is refused,
  naming every field and both values. Every start and every accepted change is appended to
  `history.jsonl`.
* **Corrupt checkpoints are skipped**, newest first, with a warning naming the bad files,
  which are moved into `corrupt/`; when no intact checkpoint is left, the run refuses.
* **Leftovers of a killed write** (`checkpoint.tmp*`, `*_temp*`, and `write_atomically`'s
  `<file>.tmp-<pid>` beside `config.json`) are removed on the next start.
"""

import datetime
import glob
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from keras_meta.training.config import MAMLTrainConfig

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.jsonl"
# The checkpoint key of the run config saved inside every checkpoint.
RUN_CONFIG_KEY = "run_config/.ATTRIBUTES/VARIABLE_VALUE"

# Settings that steer a run without changing what its variables mean: they may change on
# resume. Everything else (the task family and its sizes, the inner loop, the seed, the
# meta-batch, the serving inputs...) shapes the weights or the episode stream and is refused.
RESUME_MAY_CHANGE = (
    "num_iterations", "meta_lr", "eval_every", "num_val_tasks", "num_eval_tasks",
    "eval_num_shots", "eval_num_queries", "checkpoint_every", "log_every", "data_dir",
    "omniglot_source_dir", "jit_compile", "strategy", "tpu", "worker_timeout_seconds",
    "task_batching",
    "recompute_inner_steps", "task_chunk_size", "steps_per_execution", "mixed_precision",
    "fused_batch_norm",
)


def write_atomically(path, text):
    """Writes `text` to `path` so that a reader sees the old file or the new one, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_config_file(path):
    """The `MAMLTrainConfig` in a `config.json`, or a `ValueError` naming the file."""
    try:
        with open(path) as f:
            values = json.load(f)
        return MAMLTrainConfig.from_dict(values)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a valid run config ({error}). Restore it from the "
                         "run's checkpoint or use a new model_dir.") from None


def config_of_checkpoint(checkpoint_path):
    """The `MAMLTrainConfig` saved inside a checkpoint, or `None` for a checkpoint without one."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    if not reader.has_tensor(RUN_CONFIG_KEY):
        return None
    text = reader.get_tensor(RUN_CONFIG_KEY)
    return MAMLTrainConfig.from_dict(json.loads(text.decode() if isinstance(text, bytes)
                                                else text))


def is_intact(checkpoint_path):
    """Whether every tensor of a checkpoint can be read back (a truncated file cannot)."""
    try:
        reader = tf.train.load_checkpoint(checkpoint_path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
        return True
    except (tf.errors.OpError, IndexError, ValueError, OSError):
        return False


def resume_changes(saved, config):
    """`{field: (saved, new)}` of the changes from `saved` to `config`.

    Raises:
        ValueError: a field outside `RESUME_MAY_CHANGE` changed (all such fields are named,
            with both values), or mixed precision changed to or from `mixed_float16`, whose
            loss scale lives in the optimizer's checkpoint.
    """
    # Compared as JSON: a config read back from a checkpoint has lists where a new one may
    # have tuples (image sizes, shapes), which are the same settings.
    old, new = json.loads(saved.to_json()), json.loads(config.to_json())
    changes = {k: (old[k], new[k]) for k in new if old.get(k) != new[k]}
    refused = {k: v for k, v in changes.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ValueError(
            f"Cannot resume with other settings for {sorted(refused)} ({details}): they shape "
            f"the weights or the episodes. Only {list(RESUME_MAY_CHANGE)} may change on "
            "resume. Use the saved settings, or a new model_dir.")
    if "mixed_precision" in changes and "mixed_float16" in changes["mixed_precision"]:
        a, b = changes["mixed_precision"]
        raise ValueError(
            f"Cannot resume with mixed_precision: saved {a!r}, now {b!r}. Only mixed_float16 "
            "keeps a loss scale in the optimizer's checkpoint: resume with the saved setting, "
            "or use a new model_dir.")
    return changes


def append_history(model_dir, event, iteration, **details):
    """Appends one event (`start`, `resume`, `diverged`, `corrupt_checkpoint`, ...) to the run's
    history, with the time and the iteration."""
    record = {"event": event, "iteration": int(iteration),
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    record.update(details)
    with open(os.path.join(model_dir, HISTORY_FILE), "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")
    return record


def read_history(model_dir):
    """The run's history events, oldest first (empty for a run without one)."""
    path = os.path.join(model_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# What a kill inside `write_atomically` leaves beside the file it replaces (its pid differs
# on every run, so no later write overwrites it).
ATOMIC_WRITE_LEFTOVERS = "*.tmp-*"


def remove_leftovers(checkpoint_dir,
                     patterns=("checkpoint.tmp*", "*_temp*", ATOMIC_WRITE_LEFTOVERS)):
    """Removes what a kill during a checkpoint write leaves behind; returns what was removed.

    `patterns` (globs in `checkpoint_dir`) default to TensorFlow's temporary checkpoint files;
    a run directory itself is cleaned with `patterns=(ATOMIC_WRITE_LEFTOVERS,)` only.
    """
    removed = []
    for pattern in patterns:
        for path in glob.glob(os.path.join(checkpoint_dir, pattern)):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(path)
    return removed


def _set_aside(checkpoint_path):
    """Moves a checkpoint's files into `<its dir>/corrupt/`; returns the new folder."""
    folder = os.path.join(os.path.dirname(checkpoint_path), "corrupt")
    os.makedirs(folder, exist_ok=True)
    for path in glob.glob(checkpoint_path + ".*"):
        shutil.move(path, os.path.join(folder, os.path.basename(path)))
    return folder


def intact_checkpoints(directory, warn=print, set_aside=True):
    """The checkpoints listed in `directory` that can be read, newest first.

    Unreadable ones are moved into `corrupt/` with a warning naming them, and the directory's
    state file is rewritten without them, so that neither this run nor a later one trips over
    them again. With `set_aside=False` (a worker that only reads the chief's run directory)
    nothing is moved or rewritten. Returns `(intact, corrupt)` lists of checkpoint prefixes.
    """
    state = tf.train.get_checkpoint_state(directory)
    if state is None:
        return [], []
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    good, bad = [], []
    # get_checkpoint_state has already joined relative entries with `directory`.
    for path in reversed(listed):
        (good if is_intact(path) else bad).append(path)
    if bad and set_aside:
        for path in bad:
            folder = _set_aside(path)
            warn(f"[warning] checkpoint {path} is corrupt (unreadable); moved it to {folder}; "
                 f"using {good[0] if good else 'no checkpoint'} instead", flush=True)
        kept = list(reversed(good))
        if kept:
            tf.compat.v1.train.update_checkpoint_state(directory, kept[-1],
                                                       all_model_checkpoint_paths=kept)
        else:
            os.remove(os.path.join(directory, "checkpoint"))
    return good, bad
