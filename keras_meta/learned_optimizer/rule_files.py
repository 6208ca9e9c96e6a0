"""Learned update rules as `.keras` files: `save_rule`, `load_rule`, `read_rule_metadata`.

A rule file is an ordinary Keras archive (`keras.saving.save_model` of the rule layer: its
config and phi), so `keras.saving.load_model` reads it too. `save_rule` adds one member,
`keras_meta_rule.json`, with where the weights came from (the meta-training config and
iteration); Keras ignores it. `load_rule` checks what it reads, so a wrong file is an error that
names the file and what was expected, never a rule with other weights than the ones trained.
"""

import json
import os
import zipfile

import keras
import numpy as np

from keras_meta.learned_optimizer.learned_optimizer import check_learned_rule

METADATA_NAME = "keras_meta_rule.json"


def save_rule(rule, path, metadata=None):
    """Writes `rule` (config and phi) to the `.keras` file `path`, with optional `metadata`.

    Refuses non-finite weights: a rule file is only ever written from weights that can be
    used. The file is written beside `path` and renamed over it, so a reader never sees half
    a file and a good file is never replaced by a broken one.

    Args:
        rule: an `LSTMOptimizer`, `MLPOptimizer` or other learned update-rule layer.
        path: the destination, ending in `.keras`.
        metadata: a JSON-serializable dict stored in the archive (e.g. the meta-training
            config, its iteration and result).

    Example:

    >>> save_rule(MLPOptimizer(), "/tmp/rule.keras", metadata={"iteration": 0})
    >>> load_rule("/tmp/rule.keras")
    <MLPOptimizer ...>
    """
    check_learned_rule(rule, "save_rule")
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"save_rule writes .keras files; got path {path!r}.")
    bad = [w.name for w in rule.weights if not np.all(np.isfinite(w.numpy()))]
    if bad:
        raise FloatingPointError(
            f"Refusing to save a learned rule with non-finite weights {bad} to {path}.")
    partial = path + ".partial.keras"
    try:
        keras.saving.save_model(rule, partial)
        with zipfile.ZipFile(partial, "a") as archive:
            archive.writestr(METADATA_NAME, json.dumps(metadata or {}, indent=2, sort_keys=True))
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def read_rule_metadata(path):
    """The metadata dict `save_rule` stored in `path` (`{}` for a plain Keras archive)."""
    with _archive(path) as archive:
        if METADATA_NAME not in archive.namelist():
            return {}
        return json.loads(archive.read(METADATA_NAME))


def load_rule(path, expected_class=None):
    """The learned update rule saved in the `.keras` file `path`, checked.

    Args:
        path: a file written by `save_rule` (or `keras.saving.save_model` of a rule).
        expected_class: optional rule class (e.g. `LSTMOptimizer`); a file holding another
            rule is refused.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a `.keras` archive; it holds no learned rule, or another rule than
            `expected_class`; its weights do not fit its config (wrong shapes); or they are
            not finite.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"load_rule reads .keras files (written by save_rule); got path "
                         f"{path!r}.")
    with _archive(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except (KeyError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a Keras archive of a learned rule (config.json: "
                             f"{error}).") from None
    class_name = config.get("class_name") if isinstance(config, dict) else None
    if expected_class is not None and class_name != expected_class.__name__:
        raise ValueError(f"{path} holds a {class_name}; expected a {expected_class.__name__}.")
    _check_formula_version(path, config)
    try:
        rule = keras.saving.load_model(path, compile=False)
    except (ValueError, TypeError, KeyError, OSError) as error:
        first_line = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first_line[:4])
        raise ValueError(
            f"{path} could not be read as a {class_name or 'learned rule'}: its weights do not "
            f"fit its config ({detail[:600]}).") from None
    try:
        check_learned_rule(rule, f"load_rule({path!r})")
    except TypeError as error:
        raise ValueError(str(error)) from None
    bad = [w.name for w in rule.weights if not np.all(np.isfinite(w.numpy()))]
    if bad:
        raise ValueError(f"{path} holds non-finite weights {bad}; it cannot be used.")
    return rule


def _check_formula_version(path, config):
    """Refuses weights trained under another version of their rule's update formula."""
    cls = keras.saving.get_registered_object(config.get("registered_name") or "")
    current = getattr(cls, "FORMULA_VERSION", None)
    saved = (config.get("config") or {}).get("formula_version")
    if current is not None and saved is not None and saved != current:
        raise ValueError(
            f"{path} holds a {config.get('class_name')} trained with update formula version "
            f"{saved}; this keras-meta computes version {current}. Its weights would be applied "
            "with other math: retrain the rule.")


class _archive:
    def __init__(self, path):
        self.path = os.fspath(path)

    def __enter__(self):
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"No learned-rule file at {self.path}.")
        try:
            self.zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise ValueError(f"{self.path} is not a .keras archive (not a zip file); a learned "
                             "rule is saved with save_rule(rule, 'rule.keras').") from None
        return self.zip

    def __exit__(self, *exc):
        self.zip.close()
