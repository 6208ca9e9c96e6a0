"""`Preset`: meta-learned weights that ship with the package, with what produced them.

A preset directory holds three things:

- `preset.json`: what the weights are and where they come from: the training command, the
  commit it ran at, the run's full `MAMLTrainConfig`, the 600-task test result of exactly
  these weights, and the sha256 of every weights file;
- `model.json`: the `MAML`'s Keras config (`MAML.get_config()`), to rebuild it without the
  training package;
- `weights.index` and `weights.data-00000-of-00001`: a `tf.train.Checkpoint(model=maml)`.

This module only finds, reads and verifies them (stdlib only), so that every layer may use
it: `MAML.from_preset` rebuilds the model, `keras-meta-export --preset` exports it.
"""

import dataclasses
import hashlib
import json
import os

PRESETS_DIR = os.path.dirname(os.path.abspath(__file__))
PRESET_FILE = "preset.json"
MODEL_FILE = "model.json"
WEIGHTS_PREFIX = "weights"
FORMAT_VERSION = 1


class PresetError(ValueError):
    """A preset that does not exist, is incomplete, or whose files do not match their sha256."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_presets():
    """Names of the presets shipped with keras-meta, sorted."""
    return sorted(name for name in os.listdir(PRESETS_DIR)
                  if os.path.isfile(os.path.join(PRESETS_DIR, name, PRESET_FILE)))


@dataclasses.dataclass(frozen=True)
class Preset:
    """A verified preset: its directory and what `preset.json` says about it.

    Args:
        name: the preset's name (its directory's name).
        directory: where its files are.
        description: one line for people.
        train_config: the `MAMLTrainConfig` of the run, as a dict (`MAMLTrainConfig.to_dict`).
        model_config: the `MAML`'s Keras config.
        command: the command that trained the weights.
        commit: the keras-meta commit the run was trained at.
        iteration: the meta-iteration of the shipped checkpoint.
        result: the test result of exactly these weights (metric, mean, ci95, num_tasks, ...).
        sha256: file name -> sha256 of each weights file.

    Example:

    >>> preset = Preset.load("omniglot_5way_1shot")
    >>> preset.result["mean"], preset.result["ci95"]
    """

    name: str
    directory: str
    description: str
    train_config: dict
    model_config: dict
    command: str
    commit: str
    iteration: int
    result: dict
    sha256: dict

    @property
    def weights_prefix(self):
        """The checkpoint prefix to restore (`tf.train.Checkpoint(model=maml).restore`)."""
        return os.path.join(self.directory, WEIGHTS_PREFIX)

    @classmethod
    def load(cls, name_or_dir):
        """The preset shipped under `name_or_dir`, or the preset directory at that path.

        Every weights file is hashed and compared with `preset.json` first: a file that was
        changed, truncated or swapped raises `PresetError` naming it, before any weight is read.
        """
        if not isinstance(name_or_dir, str) or not name_or_dir:
            raise PresetError(f"A preset is a name ({list_presets()}) or a directory; got "
                              f"{name_or_dir!r}.")
        if os.path.isdir(name_or_dir):
            directory = os.path.abspath(name_or_dir)
        elif os.sep in name_or_dir or name_or_dir not in list_presets():
            raise PresetError(f"Unknown preset {name_or_dir!r}: expected one of "
                              f"{list_presets()} or a preset directory.")
        else:
            directory = os.path.join(PRESETS_DIR, name_or_dir)
        info_path = os.path.join(directory, PRESET_FILE)
        try:
            with open(info_path) as f:
                info = json.load(f)
            with open(os.path.join(directory, MODEL_FILE)) as f:
                model_config = json.load(f)
        except FileNotFoundError as error:
            raise PresetError(f"{directory} is not a complete preset: {error.filename} is "
                              f"missing (expected {PRESET_FILE}, {MODEL_FILE} and the "
                              f"{WEIGHTS_PREFIX}.* checkpoint files).") from None
        except json.JSONDecodeError as error:
            raise PresetError(f"{info_path} or {MODEL_FILE} beside it is not valid JSON: "
                              f"{error}.") from None
        if info.get("format_version") != FORMAT_VERSION:
            raise PresetError(f"{info_path} has format_version {info.get('format_version')!r}; "
                              f"this keras-meta reads format_version {FORMAT_VERSION}.")
        preset = cls(name=info["name"], directory=directory, description=info["description"],
                     train_config=info["train_config"], model_config=model_config,
                     command=info["command"], commit=info["commit"],
                     iteration=int(info["iteration"]), result=info["result"],
                     sha256=dict(info["sha256"]))
        preset.verify()
        return preset

    def verify(self):
        """Raises `PresetError` unless every listed file exists and matches its sha256 (the
        model config included), and the checkpoint's files are all listed."""
        listed = set(self.sha256)
        if MODEL_FILE not in listed or f"{WEIGHTS_PREFIX}.index" not in listed:
            raise PresetError(f"{self.directory}/{PRESET_FILE} must list the sha256 of "
                              f"{MODEL_FILE} and {WEIGHTS_PREFIX}.index; it lists "
                              f"{sorted(listed)}.")
        present = {n for n in os.listdir(self.directory) if n.startswith(WEIGHTS_PREFIX + ".")}
        unlisted = sorted(present - listed)
        if unlisted:
            raise PresetError(f"{self.directory} has weights files that {PRESET_FILE} does not "
                              f"vouch for: {unlisted}.")
        for file_name, expected in sorted(self.sha256.items()):
            path = os.path.join(self.directory, file_name)
            if not os.path.isfile(path):
                raise PresetError(f"Preset {self.name!r}: {path} is missing.")
            actual = sha256_of(path)
            if actual != expected:
                raise PresetError(
                    f"Preset {self.name!r}: {path} has sha256 {actual}, but {PRESET_FILE} "
                    f"says {expected}. The file was changed or damaged; reinstall keras-meta "
                    "or re-create the preset.")
