"""`ServingConfig`: what an exported SavedModel expects and does, saved beside it as JSON."""

import dataclasses
import json
import os
from typing import Optional

from keras_meta._checks import check_int, check_one_of
from keras_meta.layers import BATCH_NORM_MODES

KINDS = ("few_shot", "adapted")
PROBLEMS = ("classification", "regression")
CONFIG_ASSET = "keras_meta_serving_config.json"

# How batch norm normalizes in each export, written into the config for whoever serves it.
SERVING_BATCH_NORM = {
    ("few_shot", "transductive"): "query-batch statistics, as MAML.adapt_and_predict "
                                  "(one request = one task; do not batch requests)",
    ("few_shot", "per_step"): "batch statistics of the request's query set in the last "
                              "step's slot, as MAML.adapt_and_predict",
    ("few_shot", "none"): "none",
    ("adapted", "transductive"): "frozen: statistics of the support set after adaptation "
                                 "(independent of the serving batch)",
    ("adapted", "per_step"): "frozen: running statistics of the query slot (training=False)",
    ("adapted", "none"): "none",
}


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """Describes one exported model: its kind, shapes, adaptation and preprocessing.

    Written as `assets.extra/keras_meta_serving_config.json` in every export, so a server
    operator or client can see what to send without reading the graph.

    Args:
        kind: `"few_shot"` (adaptation inside the graph) or `"adapted"` (fixed weights).
        problem: `"classification"` (images in, class probabilities out) or `"regression"`
            (feature vectors in, `predictions` out).
        num_ways: classes per task (classification), fixed by the model's output layer.
        num_shots: support examples per class if fixed at export, `None` when any count
            (at least one per class) is accepted.
        inner_steps: inner SGD steps run inside the graph (few-shot) or before export (adapted).
        inner_lr: the inner learning rate (its initial value when `learn_inner_lr` is set).
        learn_inner_lr: `None` or the learned-rate mode of the MAML model.
        batch_norm: the backbone's batch-norm mode (`"transductive"`, `"per_step"`, `"none"`).
        preprocessing: `ImagePreprocessing.get_config()` applied in the graph, or `None`.
        client_input_shape: per-example input shape the signatures accept (e.g. `[105, 105,
            3]` client images, or `[1]` sinusoid inputs).
        model_input_shape: per-example input shape of the backbone after preprocessing.
        signatures: signature name -> `{"inputs": {name: dtype}, "outputs": {name: dtype},
            "input_shapes": {name: shape}}` (shapes as declared, `None` for a free dimension:
            `[None, 105, 105, 3]` images, `[None]` labels or encoded files).
        jit_compile: whether an XLA-compiled signature (`serving_xla`) was exported.
        support_set_size: examples the adapted model was adapted on (adapted kind only).
        task_family: the run's task family, when exported from a run's config.

    Example:

    >>> config = ServingConfig(kind="few_shot", problem="classification", num_ways=5,
    ...                        inner_steps=3, inner_lr=0.4, batch_norm="transductive")
    >>> ServingConfig.from_config(config.get_config()) == config
    True
    """

    kind: str
    problem: str
    num_ways: Optional[int] = None
    num_shots: Optional[int] = None
    inner_steps: int = 1
    inner_lr: float = 0.01
    learn_inner_lr: Optional[str] = None
    batch_norm: str = "none"
    preprocessing: Optional[dict] = None
    client_input_shape: Optional[tuple] = None
    model_input_shape: Optional[tuple] = None
    signatures: dict = dataclasses.field(default_factory=dict)
    jit_compile: bool = False
    support_set_size: Optional[int] = None
    task_family: Optional[str] = None

    def __post_init__(self):
        for name in ("client_input_shape", "model_input_shape"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(d) for d in value))
        check_one_of("kind", self.kind, KINDS)
        check_one_of("problem", self.problem, PROBLEMS)
        check_one_of("batch_norm", self.batch_norm, BATCH_NORM_MODES)
        if self.problem == "classification" and (
                not isinstance(self.num_ways, int) or self.num_ways < 2):
            raise ValueError(
                f"A classification export needs num_ways >= 2; got {self.num_ways!r}.")
        check_int("num_shots", self.num_shots, allow_none=True)
        check_int("inner_steps", self.inner_steps, minimum=0)

    @property
    def serving_batch_norm(self):
        """How batch norm normalizes in this export, in words."""
        return SERVING_BATCH_NORM[(self.kind, self.batch_norm)]

    def get_config(self):
        config = dataclasses.asdict(self)
        for name in ("client_input_shape", "model_input_shape"):
            if config[name] is not None:
                config[name] = list(config[name])
        config["serving_batch_norm"] = self.serving_batch_norm
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("serving_batch_norm", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"Unknown ServingConfig fields {unknown}; known: {sorted(known)}.")
        return cls(**config)

    def to_json(self):
        return json.dumps(self.get_config(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls.from_config(json.loads(text))


def read_serving_config(saved_model_dir):
    """The `ServingConfig` saved with an export."""
    with open(os.path.join(saved_model_dir, "assets.extra", CONFIG_ASSET)) as f:
        return ServingConfig.from_config(json.load(f))
