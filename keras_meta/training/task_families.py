"""What each task family contributes to a run: a model, its loss, episode streams, serving inputs.

A task family is the distribution tasks are drawn from (sinusoids, Omniglot characters). The
model and loss (`build_model`) need no data, so an exporter can rebuild a run's model from its
config alone; the episode streams (`build_task_family`) load the dataset.
"""

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from keras_meta.backbones import conv4, mlp, resnet12
from keras_meta.data.image_cache import machine_memory_bytes
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.data.omniglot import IMAGES_PER_CLASS as _OMNIGLOT_IMAGES_PER_CLASS
from keras_meta.data.omniglot import NUM_CLASSES as _OMNIGLOT_CLASSES
from keras_meta.data.sinusoid import sinusoid_episodes, sinusoid_tasks
from keras_meta.maml import MAML, MultiStepLossSchedule
from keras_meta.training.evaluation import eval_batch_size

# The images an Omniglot client sends (TFDS's 105x105 RGB) and how the model sees them.
_OMNIGLOT_CLIENT_IMAGE_SHAPE = (105, 105, 3)


@dataclasses.dataclass
class TaskFamilySpec:
    """A run's model, loss and three episode streams."""

    model: keras.Model
    loss_fn: object
    classification: bool
    # (start_index, shard=None) -> batched endless dataset; with shard=(worker, num_workers),
    # that worker's share of each meta-batch.
    train_dataset: callable
    val_dataset: callable  # () -> batched finite dataset, or None
    test_dataset: callable  # () -> batched finite dataset
    # Further test protocols the final test also reports: name -> () -> finite dataset.
    extra_test_datasets: dict = dataclasses.field(default_factory=dict)
    metadata: dict = dataclasses.field(default_factory=dict)
    # (first_index, count) -> the `count` training episodes from index `first_index` on,
    # stacked, computed by TF ops inside the caller's graph (both arguments may be tensors):
    # the same episodes `train_dataset` yields there. Only for families whose episodes are
    # pure functions of their index; None where they need tf.data (images).
    train_episodes_at: Optional[callable] = None


def default_image_preprocessing(config):
    """The family's own preprocessing of client images into model inputs (None: regression)."""
    if config.task_family == "omniglot":
        return ImagePreprocessing(image_size=(config.image_size, config.image_size), channels=1,
                                  invert=True)
    if config.task_family == "images":
        return ImagePreprocessing(image_size=(config.image_size, config.image_size),
                                  channels=config.image_channels, invert=config.invert_images)
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
    if config.task_family == "images":
        # Images of a folder or TFDS dataset come in many sizes: clients send them at the
        # model's, or encoded through `serving_bytes`, which resizes each in the graph.
        return (config.image_size, config.image_size, config.image_channels)
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
    if config.task_family in ("omniglot", "images"):
        size = (config.image_size, config.image_size)
        channels = 1 if config.task_family == "omniglot" else config.image_channels
        if config.backbone == "resnet12":
            model = resnet12(config.num_ways, input_shape=size + (channels,),
                             widths=config.resnet12_widths, batch_norm=config.batch_norm,
                             num_inner_steps=config.inner_steps)
        else:
            model = conv4(config.num_ways, input_shape=size + (channels,),
                          filters=config.conv4_filters, downsample=config.conv4_downsample,
                          pooling=config.pooling, batch_norm=config.batch_norm,
                          num_inner_steps=config.inner_steps)
        return model, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    raise ValueError(f"Unknown task_family {config.task_family!r}; expected one of "
                     f"{sorted(_BUILDERS)}.")


def _sinusoid(config):
    def train(start_index, shard=None):
        return sinusoid_episodes(config.num_shots, config.num_queries, config.meta_batch_size,
                                 seed=config.seed, start_index=start_index, shard=shard,
                                 stream=config.sinusoid_stream)

    def finite(seed_offset, num_tasks):
        return lambda: sinusoid_episodes(
            config.shots_at_eval, config.queries_at_eval, eval_batch_size(num_tasks),
            seed=config.seed + seed_offset, num_episodes=num_tasks,
            stream=config.sinusoid_stream)

    def episodes_at(first_index, count):
        # Stream 2 maps any contiguous range of indices to its episodes with one random op,
        # as `train` does per meta-batch (see `sinusoid_tasks`).
        indices = tf.cast(first_index, tf.int64) + tf.range(count, dtype=tf.int64)
        episodes = sinusoid_tasks(config.seed, indices, config.num_shots, config.num_queries)[0]
        # A Python `count` is a static meta-batch size, which the batched step needs.
        static = count if isinstance(count, int) else None
        return tf.nest.map_structure(lambda x: tf.ensure_shape(x, [static] + x.shape[1:]),
                                     episodes)

    return dict(classification=False, train_dataset=train,
                val_dataset=finite(1_000_003, config.num_val_tasks),
                test_dataset=finite(2_000_003, config.num_eval_tasks),
                train_episodes_at=episodes_at if config.sinusoid_stream == 2 else None)


def _classification_streams(config, splits, extra_groups=None, augmentation=None):
    """Train / validation / test episode streams of `config` over `splits` (`MetaSplits`)."""
    from keras_meta.data import EpisodeConfig, EpisodeSampler

    def sampler(split, shots, queries, meta_batch, num_episodes=None, class_groups=None,
                augment=None):
        return EpisodeSampler(splits[split], EpisodeConfig(
            num_ways=config.num_ways, num_shots=shots, num_queries=queries,
            meta_batch_size=meta_batch, num_episodes=num_episodes), class_groups=class_groups,
            augmentation=augment)

    train_sampler = sampler("train", config.num_shots, config.num_queries,
                            config.meta_batch_size, augment=augmentation)

    def finite(split, seed_offset, num_tasks, class_groups=None):
        s = sampler(split, config.shots_at_eval, config.queries_at_eval,
                    eval_batch_size(num_tasks), num_tasks, class_groups)
        return lambda: s.dataset(seed=config.seed + seed_offset)

    extra = {name: finite("test", offset, config.num_eval_tasks, groups)
             for name, (offset, groups) in (extra_groups or {}).items()}
    # A split without validation classes (Lake et al.'s) means no model selection, rather
    # than selecting on the test classes.
    val = finite("validation", 1_000_003, config.num_val_tasks) if "validation" in splits else None
    return dict(classification=True,
                train_dataset=lambda start, shard=None: train_sampler.dataset(
                    seed=config.seed, start=start, shard=shard),
                val_dataset=val, test_dataset=finite("test", 2_000_003, config.num_eval_tasks),
                extra_test_datasets=extra,
                metadata={"preprocessing": splits["train"].preprocessing.get_config(),
                          "splits": {k: v.num_classes for k, v in splits.items()}})


def _check_split_sizes(config, splits):
    """Episodes each split can give, checked once the data is known, in the config's terms."""
    from keras_meta.data.data_error import DataError

    shots, queries = _eval_size_fields(config)
    for name, source in splits.items():
        if source.num_classes < config.num_ways:
            raise DataError(
                f"Invalid num_ways={config.num_ways}: the {name} split of {config.dataset} has "
                f"{source.num_classes} class{'es' if source.num_classes != 1 else ''} "
                f"({source.class_names[:5] if source.class_names else ''}); expected at most "
                "as many ways as every split has classes (or another class_split).")
        k, q = ((config.num_shots, config.num_queries) if name == "train"
                else (getattr(config, shots), getattr(config, queries)))
        if k + q > source.min_count:
            fewest = int(source.counts.argmin())
            label = source.class_names[fewest] if source.class_names else fewest
            raise DataError(
                f"Invalid {queries if name != 'train' else 'num_queries'}={q}: {name} episodes "
                f"take {k} support + {q} query = {k + q} distinct images per class, and class "
                f"{label!r} of {config.dataset} has {source.min_count}; expected shots + "
                "queries <= the smallest class's images.")


def _images(config):
    """Any TFDS image dataset or folder of class subfolders, split by `config.class_split`."""
    from keras_meta.data import MetaSplits
    from keras_meta.data.augmentation import augmentation
    from keras_meta.data.class_splits import class_split
    from keras_meta.data.image_classes import image_classes, image_meta_splits

    group_key, wanted = config.group_key, None
    if config.class_split is not None:
        split = class_split(config.class_split)
        group_key = group_key or split.group_key
        if config.dataset.startswith("folder:"):
            # A folder may hold far more classes than the split (ImageNet's 1000 folders for
            # mini-ImageNet's 100): decode only the split's.
            wanted = [e.name for entries in split.sections.values() for e in entries if e.name]
    source = image_classes(
        config.dataset, config.image_size, config.image_channels, invert=config.invert_images,
        split=config.tfds_split, image_key=config.image_key, label_key=config.label_key,
        group_key=group_key, data_dir=config.data_dir, cache_dir=config.cache_dir,
        in_memory={"auto": "auto", "memory": True, "mapped": False}[config.image_cache],
        download=config.tfds_download, only_classes=wanted)
    splits = image_meta_splits(source, config.class_split, seed=config.seed)
    if config.rotations > 1:
        splits = MetaSplits({k: v.with_rotations(config.rotations) for k, v in splits.items()})
    _check_split_sizes(config, splits)
    streams = _classification_streams(config, splits, augmentation=augmentation(
        config.augmentation, config.image_size))
    streams["metadata"].update(dataset=config.dataset, cache=source.info.get("cache"),
                               cache_bytes=source.info.get("bytes"),
                               cache_seconds=source.info.get("seconds"),
                               skipped_files=[p for p, _ in
                                              source.info.get("skipped_files") or []],
                               corrupt_files=source.info.get("corrupt_files") or [],
                               # Which classes each split holds: a resume must see the same.
                               class_names={k: [str(n) for n in (v.class_names or v.class_ids)]
                                            for k, v in splits.items()})
    return streams


def _omniglot(config):
    """Omniglot N-way K-shot with the MAML protocol (or Lake et al.'s split), offline if possible."""
    from keras_meta.data import omniglot_splits
    from keras_meta.data.omniglot import alphabet_class_groups, omniglot_alphabets

    size = (config.image_size, config.image_size)
    splits = omniglot_splits(
        data_dir=config.data_dir, source_dir=config.omniglot_source_dir or "default",
        protocol=config.omniglot_protocol, image_size=size, rotations=True)
    extra = {}
    if config.eval_within_alphabet:
        # Lake et al.: every test task's characters from one alphabet, upright.
        test = splits["test"]
        groups = alphabet_class_groups(
            test.class_ids, omniglot_alphabets(config.data_dir,
                                               config.omniglot_source_dir or "default"),
            rotations=test.rotations)
        extra["within_alphabet"] = (3_000_003, groups)
    return _classification_streams(config, splits, extra_groups=extra)


_BUILDERS = {"sinusoid": _sinusoid, "omniglot": _omniglot, "images": _images}
TASK_FAMILIES = tuple(_BUILDERS)

# Config fields that only some task families use (the others apply to every family): a flag
# that sets one of them for another family is refused by the trainer instead of ignored.
_IMAGE_FAMILIES = ("omniglot", "images")
FAMILIES_OF_FIELD = {
    "num_ways": _IMAGE_FAMILIES,
    "batch_norm": _IMAGE_FAMILIES,
    "fused_batch_norm": _IMAGE_FAMILIES,
    "image_size": _IMAGE_FAMILIES,
    "pooling": _IMAGE_FAMILIES,
    "data_dir": _IMAGE_FAMILIES,
    "omniglot_protocol": ("omniglot",),
    "sinusoid_stream": ("sinusoid",),
    "eval_within_alphabet": ("omniglot",),
    "omniglot_source_dir": ("omniglot",),
    **{field: ("images",) for field in (
        "image_channels", "backbone", "conv4_downsample", "conv4_filters", "resnet12_widths",
        "dataset", "class_split", "tfds_split", "image_key", "label_key", "group_key",
        "invert_images", "rotations", "augmentation", "cache_dir", "image_cache",
        "tfds_download")},
}


def families_using(field):
    """The task families whose runs use config `field`."""
    return FAMILIES_OF_FIELD.get(field, TASK_FAMILIES)


@dataclasses.dataclass(frozen=True)
class MemoryPart:
    """One part of `memory_estimate`: what it is, its bytes, the config fields it grows with."""

    what: str
    bytes: int
    fields: tuple


# Widths of the layer outputs of `build_model`'s networks (mlp() is 1-40-40-1; conv4 has 64
# filters and stride-2 "same" convolutions on Omniglot), for the activation estimate.
_MLP_OUTPUT_WIDTHS = (40, 40, 1)
_CONV4_FILTERS = 64


def _conv4_activations_per_image(image_size, filters=_CONV4_FILTERS, maxpool=False):
    total, side = 0, image_size
    for _ in range(4):
        if maxpool:
            total += side * side * filters  # the convolution's output, before its pool
            side //= 2
        else:
            side = -(-side // 2)
        total += side * side * filters
    return total + side * side * filters  # plus the dense layer's input at most


def _resnet12_activations_per_image(image_size, widths):
    total, side = 0, image_size
    for width in widths:
        total += 4 * side * side * width  # three convolutions and the shortcut
        side //= 2
        total += side * side * width
    return total


def _activations_per_image(config):
    if config.task_family == "images" and config.backbone == "resnet12":
        return _resnet12_activations_per_image(config.image_size, config.resnet12_widths)
    maxpool = config.task_family == "images" and config.conv4_downsample == "maxpool"
    filters = (config.conv4_filters if config.task_family == "images" and config.conv4_filters
               else (32 if maxpool else _CONV4_FILTERS))
    return _conv4_activations_per_image(config.image_size, filters, maxpool)


def _eval_size_fields(config):
    return ("eval_num_shots" if config.eval_num_shots is not None else "num_shots",
            "eval_num_queries" if config.eval_num_queries is not None else "num_queries")


def memory_estimate(config):
    """A rough lower bound of the memory a run of `config` holds at once; loads nothing.

    Counts the data the run keeps in memory (Omniglot's decoded images), the larger of one
    training and one evaluation meta-batch of episodes (float32), and the activations of one
    forward pass over the tasks that run together, each layer's output once (the inner steps
    and the second-order backward pass need several times that). A real run needs more; a
    config over this bound cannot run at all.

    Returns:
        A list of `MemoryPart`s.
    """
    act_bytes = 2 if config.mixed_precision else 4
    shots, queries = _eval_size_fields(config)
    if config.task_family == "sinusoid":
        example_bytes = 2 * 4  # x and y, float32
        act_per_example = sum(_MLP_OUTPUT_WIDTHS)
        per_task = lambda k, q: k + q  # noqa: E731
        kind, unit, extra, data = "sinusoid", "points", (), []
    else:
        side = config.image_size
        channels = config.image_channels if config.task_family == "images" else 1
        example_bytes = side * side * channels * 4 + 4  # a float32 image, its int32 label
        act_per_example = _activations_per_image(config)
        per_task = lambda k, q: config.num_ways * (k + q)  # noqa: E731
        unit, extra = "images", ("num_ways", "image_size")
        if config.task_family == "omniglot":
            # The decoded characters (uint8), and all four turns of them in the samplers.
            kind = "Omniglot"
            data = [MemoryPart("the decoded Omniglot images (uint8, and their 4 rotations)",
                               5 * _OMNIGLOT_CLASSES * _OMNIGLOT_IMAGES_PER_CLASS * side * side,
                               ("image_size",))]
        else:
            # A cache larger than memory is memory-mapped, so the data is no lower bound.
            kind, data = "image", []
    batch = config.meta_batch_size
    together = 1 if config.task_batching == "loop" else min(
        config.task_chunk_size or batch, batch)
    train_examples = per_task(config.num_shots, config.num_queries)
    train = [
        MemoryPart(f"one meta-batch of {kind} training episodes ({batch} tasks x "
                   f"{train_examples} {unit})", batch * train_examples * example_bytes,
                   ("meta_batch_size", "num_shots", "num_queries") + extra),
        MemoryPart(f"the activations of one forward pass over {together} task"
                   + ("s" if together > 1 else ""),
                   together * train_examples * act_per_example * act_bytes,
                   ("meta_batch_size", "num_shots", "num_queries") + extra),
    ]
    eval_batch = max(eval_batch_size(config.num_val_tasks), eval_batch_size(config.num_eval_tasks))
    eval_examples = per_task(config.shots_at_eval, config.queries_at_eval)
    evaluation = [
        MemoryPart(f"one meta-batch of {kind} evaluation episodes ({eval_batch} tasks x "
                   f"{eval_examples} {unit})", eval_batch * eval_examples * example_bytes,
                   (shots, queries) + extra),
        MemoryPart("the activations of one forward pass over 1 task",
                   eval_examples * act_per_example * act_bytes, (shots, queries) + extra),
    ]
    heavier = max(train, evaluation, key=lambda parts: sum(p.bytes for p in parts))
    return data + heavier


def _gib(num_bytes):
    return f"{num_bytes / 2**30:.1f} GiB"


def check_fits_in_memory(config, available_bytes=None):
    """Refuses, before anything is built, sizes whose data cannot fit in this machine's memory.

    Compares `memory_estimate(config)` (a lower bound) with `available_bytes` (default:
    `machine_memory_bytes()`; no check when unknown).

    Returns:
        The estimate in bytes.

    Raises:
        ValueError: naming the largest size field and every size the estimate grows with, the
            estimate by part and the memory there is.
    """
    parts = memory_estimate(config)
    need = sum(p.bytes for p in parts)
    available = machine_memory_bytes() if available_bytes is None else available_bytes
    if available is None or need <= available:
        return need
    fields = list(dict.fromkeys(f for p in parts for f in p.fields))
    biggest = max(parts, key=lambda p: p.bytes)
    lead = max(biggest.fields, key=lambda f: getattr(config, f))
    sizes = ", ".join(f"{f}={getattr(config, f)!r}" for f in fields)
    details = "; ".join(f"{p.what}: {_gib(p.bytes)}" for p in parts)
    raise ValueError(
        f"Invalid {lead}={getattr(config, lead)!r}: too large for this machine's memory. A "
        f"{config.task_family} run with {sizes} needs at least {_gib(need)} at once ({details}), "
        f"and this machine has {_gib(available)}. Expected sizes whose data fit in memory.")


def check_before_run(config, available_bytes=None):
    """What a run checks before it loads or builds anything: sizes the data can give
    (`config.validate_episode_sizes()`) and sizes that fit in memory (`check_fits_in_memory`).

    Returns the memory estimate in bytes; raises `ValueError` naming the field otherwise.
    """
    config.validate_episode_sizes()
    return check_fits_in_memory(config, available_bytes)


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


def build_maml(config, model, loss_fn, compile=True):
    """The `MAML` of a run around `model`, compiled with the run's outer optimizer unless
    `compile=False` (then it holds the model's variables only, as a preset does)."""
    weights = None
    if config.multi_step_loss and config.inner_steps > 0:
        weights = (list(config.multi_step_loss_weights or
                        [1.0 / config.inner_steps] * config.inner_steps)
                   if not config.multi_step_loss_anneal_iterations else
                   MultiStepLossSchedule(config.inner_steps,
                                         config.multi_step_loss_anneal_iterations))
    maml = MAML(model, inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                task_batching=config.task_batching,
                recompute_inner_steps=config.recompute_inner_steps or False,
                task_chunk_size=config.task_chunk_size or None,
                fused_batch_norm=config.fused_batch_norm,
                eval_inner_steps=config.eval_inner_steps[0], first_order=config.first_order,
                learn_inner_lr=config.learn_inner_lr, multi_step_loss_weights=weights,
                loss=loss_fn)
    if not compile:
        return maml
    maml.compile(optimizer=keras.optimizers.Adam(meta_learning_rate(config)),
                 jit_compile=config.jit_compile)
    return maml


def meta_learning_rate(config):
    """The outer Adam's learning rate: `meta_lr`, or its cosine schedule (MAML++: from
    `meta_lr` down to `meta_lr_min` over the run's `num_iterations`)."""
    if config.meta_lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            config.meta_lr, decay_steps=config.num_iterations,
            alpha=config.meta_lr_min / config.meta_lr)
    return config.meta_lr
