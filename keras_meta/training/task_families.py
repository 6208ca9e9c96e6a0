"""What each task family contributes to a run: a model, its loss, episode streams, serving inputs.

A task family is the distribution tasks are drawn from (sinusoids, Omniglot characters). The
model and loss (`build_model`) need no data, so an exporter can rebuild a run's model from its
config alone; the episode streams (`build_task_family`) load the dataset.
"""

import dataclasses

import keras

from keras_meta.backbones import conv4, mlp
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.data.sinusoid import sinusoid_episodes
from keras_meta.maml import MAML

# The images an Omniglot client sends (TFDS's 105x105 RGB) and how the model sees them.
_OMNIGLOT_CLIENT_IMAGE_SHAPE = (105, 105, 3)


@dataclasses.dataclass
class TaskFamilySpec:
    """A run's model, loss and three episode streams."""

    model: keras.Model
    loss_fn: object
    classification: bool
    train_dataset: callable  # start_index -> batched endless dataset
    val_dataset: callable  # () -> batched finite dataset, or None
    test_dataset: callable  # () -> batched finite dataset
    metadata: dict = dataclasses.field(default_factory=dict)


def _eval_batch(num_tasks):
    # A divisor of num_tasks keeps every task (fixed streams keep a static batch); at most 25.
    for b in range(min(25, num_tasks), 0, -1):
        if num_tasks % b == 0:
            return b
    return 1


def default_image_preprocessing(config):
    """The family's own preprocessing of client images into model inputs (None: regression)."""
    if config.task_family == "omniglot":
        return ImagePreprocessing(image_size=(config.image_size, config.image_size), channels=1,
                                  invert=True)
    return None


def image_preprocessing(config):
    """The run's `ImagePreprocessing`: the one saved in its config, else the family's."""
    if config.image_preprocessing is not None:
        return ImagePreprocessing.from_config(config.image_preprocessing)
    return default_image_preprocessing(config)


def client_image_shape(config):
    """(H, W, C) of the images clients send: the config's, else the family's native shape."""
    if config.client_image_shape is not None:
        return tuple(config.client_image_shape)
    if config.task_family == "omniglot":
        return _OMNIGLOT_CLIENT_IMAGE_SHAPE
    return None


def complete_config(config):
    """`config` with the serving inputs filled in from the task family where they are None."""
    if not config.classification:
        return config
    return config.replace(image_preprocessing=image_preprocessing(config).get_config(),
                          client_image_shape=client_image_shape(config))


def build_model(config):
    """`(model, loss_fn)` of the run; loads no data."""
    if config.task_family == "sinusoid":
        return mlp(name="sinusoid_mlp"), keras.losses.MeanSquaredError()
    if config.task_family == "omniglot":
        size = (config.image_size, config.image_size)
        model = conv4(config.num_ways, input_shape=size + (1,), batch_norm=config.batch_norm,
                      num_inner_steps=max(config.inner_steps, *config.eval_inner_steps))
        return model, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    raise ValueError(f"Unknown task_family {config.task_family!r}; expected one of "
                     f"{sorted(_BUILDERS)}.")


def _sinusoid(config):
    def train(start_index):
        return sinusoid_episodes(config.num_shots, config.num_queries, config.meta_batch_size,
                                 seed=config.seed, start_index=start_index)

    def finite(seed_offset, num_tasks):
        return lambda: sinusoid_episodes(
            config.shots_at_eval, config.queries_at_eval, _eval_batch(num_tasks),
            seed=config.seed + seed_offset, num_episodes=num_tasks)

    return dict(classification=False, train_dataset=train,
                val_dataset=finite(1_000_003, config.num_val_tasks),
                test_dataset=finite(2_000_003, config.num_eval_tasks))


def _omniglot(config):
    """Omniglot N-way K-shot with the MAML protocol (or Lake et al.'s split), offline if possible."""
    from keras_meta.data import EpisodeConfig, EpisodeSampler, omniglot_splits

    size = (config.image_size, config.image_size)
    splits = omniglot_splits(
        data_dir=config.data_dir, source_dir=config.omniglot_source_dir or "default",
        protocol=config.omniglot_protocol, image_size=size, rotations=True)

    def sampler(split, shots, queries, meta_batch, num_episodes=None):
        return EpisodeSampler(splits[split], EpisodeConfig(
            num_ways=config.num_ways, num_shots=shots, num_queries=queries,
            meta_batch_size=meta_batch, num_episodes=num_episodes))

    train_sampler = sampler("train", config.num_shots, config.num_queries, config.meta_batch_size)

    def finite(split, seed_offset, num_tasks):
        s = sampler(split, config.shots_at_eval, config.queries_at_eval,
                    _eval_batch(num_tasks), num_tasks)
        return lambda: s.dataset(seed=config.seed + seed_offset)

    # Lake et al.'s background/evaluation split has no validation characters: no model
    # selection then, rather than selecting on the test classes.
    val = finite("validation", 1_000_003, config.num_val_tasks) if "validation" in splits else None
    return dict(classification=True,
                train_dataset=lambda start: train_sampler.dataset(seed=config.seed, start=start),
                val_dataset=val, test_dataset=finite("test", 2_000_003, config.num_eval_tasks),
                metadata={"preprocessing": splits["train"].preprocessing.get_config(),
                          "splits": {k: v.num_classes for k, v in splits.items()}})


_BUILDERS = {"sinusoid": _sinusoid, "omniglot": _omniglot}
TASK_FAMILIES = tuple(_BUILDERS)


def build_task_family(config):
    """The `TaskFamilySpec` of `config.task_family`: episode streams, then model and loss.

    The data is loaded first and the global seed (`config.seed`) is set after it, right before
    the model is built: preparing a dataset may draw random numbers, and the same seed must
    give the same run whether or not this run prepared the data.
    """
    if config.task_family not in _BUILDERS:
        raise ValueError(f"Unknown task_family {config.task_family!r}; expected one of "
                         f"{sorted(_BUILDERS)}.")
    streams = _BUILDERS[config.task_family](config)
    keras.utils.set_random_seed(config.seed)
    model, loss_fn = build_model(config)
    return TaskFamilySpec(model=model, loss_fn=loss_fn, **streams)


def build_maml(config, model, loss_fn):
    """The compiled `MAML` of a run around `model`."""
    weights = [1.0 / config.inner_steps] * config.inner_steps if (
        config.multi_step_loss and config.inner_steps > 0) else None
    maml = MAML(model, inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                task_batching=config.task_batching,
                recompute_inner_steps=config.recompute_inner_steps or False,
                task_chunk_size=config.task_chunk_size or None,
                eval_inner_steps=config.eval_inner_steps[0], first_order=config.first_order,
                learn_inner_lr=config.learn_inner_lr, multi_step_loss_weights=weights,
                loss=loss_fn)
    maml.compile(optimizer=keras.optimizers.Adam(config.meta_lr), jit_compile=config.jit_compile)
    return maml
