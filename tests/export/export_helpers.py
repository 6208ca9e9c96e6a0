"""Tiny conv4 MAML models and their exports, shared by the export tests (built once)."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_meta as km  # noqa: E402
from keras_meta.data.image_preprocessing import ImagePreprocessing  # noqa: E402
from keras_meta.export import export_adapted, export_few_shot  # noqa: E402

WAYS = 3
SHOTS = 2
STEPS = 2
# Client images bigger than the model's and in colour, so resizing and greyscale run in-graph.
CLIENT = (12, 12, 3)
PREP = ImagePreprocessing(image_size=(8, 8), channels=1, invert=True)


def make_maml(batch_norm, seed=3):
    # Seed 3: without batch norm, some tiny initialisations output ~0 logits for every input,
    # which would hide whether adaptation ran.
    keras.utils.set_random_seed(seed)
    base = km.backbones.conv4(WAYS, input_shape=(8, 8, 1), filters=4, batch_norm=batch_norm,
                           num_inner_steps=STEPS)
    if batch_norm == "per_step":
        # Non-trivial running statistics, different per slot, so that using the wrong slot or
        # batch statistics would show.
        rng = np.random.default_rng(seed)
        for v in base.non_trainable_variables:
            shape = tuple(v.shape)
            value = rng.uniform(0.5, 2.0, shape) if "variance" in v.path else rng.normal(
                0, 0.3, shape)
            v.assign(value.astype(np.float32))
    return km.MAML(base, inner_lr=0.5, inner_steps=STEPS,
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def make_task(seed=0, shots=SHOTS, queries=5):
    """uint8 client images whose classes differ in brightness, so adaptation has signal."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(WAYS, dtype=np.int32), shots)
    query_labels = rng.integers(0, WAYS, queries).astype(np.int32)

    def images(lbls):
        base = 40 + 70 * lbls[:, None, None, None]
        return np.clip(base + rng.integers(0, 60, (len(lbls),) + CLIENT), 0, 255).astype(np.uint8)

    return images(labels), labels, images(query_labels), query_labels


def reference_logits(maml, support, labels, query):
    """What the library itself answers, eagerly: MAML.adapt_and_predict on preprocessed images."""
    return maml.adapt_and_predict(PREP(support), tf.constant(labels), PREP(query)).numpy()


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """Lazily built exports, keyed by (kind, batch_norm, jit_compile): each built once."""
    base_dir = str(tmp_path_factory.mktemp("serving"))
    cache = {}

    def get(kind, batch_norm, jit_compile=False):
        key = (kind, batch_norm, jit_compile)
        if key not in cache:
            maml = make_maml(batch_norm)
            name = f"{kind}_{batch_norm}" + ("_xla" if jit_compile else "")
            if kind == "few_shot":
                path = export_few_shot(maml, PREP, base_dir, name, client_image_shape=CLIENT,
                                       jit_compile=jit_compile)
            else:
                support, labels, _, _ = make_task()
                path = export_adapted(maml, PREP, support, labels, base_dir, name,
                                      jit_compile=jit_compile)
            cache[key] = (maml, path)
        return cache[key]

    get.base_dir = base_dir
    return get


def run_client_cli(argv, capsys):
    """`keras-meta-client` in this process with `argv`; returns the JSON it printed."""
    import json

    from absl import flags

    from keras_meta.cli import serving_client as serving_client_cli

    flag_values = flags.FlagValues()
    serving_client_cli.define_flags(flag_values)
    flag_values(["client", *argv])
    original = serving_client_cli.FLAGS
    serving_client_cli.FLAGS = flag_values
    try:
        serving_client_cli.main(["client"])
    finally:
        serving_client_cli.FLAGS = original
    return json.loads(capsys.readouterr().out)
