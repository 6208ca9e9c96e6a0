"""SavedModel exports of a MAML model for TF Serving: few-shot (adapt in the graph) and adapted.

Signatures (names of `serving_default`'s inputs and outputs are the request's keys):

* few-shot, classification: `support_images` `[n_support, H, W, C]`, `support_labels`
  `[n_support]` int32 in `0..num_ways-1`, `query_images` `[n_query, H, W, C]` ->
  `probabilities` `[n_query, num_ways]` float32, `logits`, `classes` int64. Ways are fixed by the
  model; shots are dynamic (any count, at least one per class) unless `num_shots` is given;
  the query count is dynamic. One request is one task.
* few-shot, regression (sinusoid): `support_x`, `support_y`, `query_x` -> `predictions`.
* adapted, classification: `images` `[n, H, W, C]` -> `probabilities`, `logits`, `classes`;
  regression: `inputs` -> `predictions`. Batch-independent (batch norm frozen).

`serving_default` takes images as uint8 (0..255), `serving_float` as float32 in [0, 1];
`serving_xla` (with `jit_compile=True`) is `serving_default` with the model part compiled by
XLA. `H, W, C` is the client's native image shape (e.g. Omniglot's 105x105x3); resizing,
greyscale conversion and inversion happen in the graph (`ImagePreprocessing`).
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_meta.configs import MAMLTrainConfig
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.export import layout, validation
from keras_meta.export.freeze import batch_norm_mode, freeze_batch_norm
from keras_meta.export.serving_config import CONFIG_ASSET, ServingConfig
from keras_meta.maml import MAML

# The native client images of each task's dataset and the preprocessing training applies.
TASK_IMAGES = {
    "omniglot": dict(client_image_shape=(105, 105, 3), channels=1, invert=True),
}
_DTYPE_NAMES = {tf.uint8: "uint8", tf.float32: "float32", tf.int32: "int32"}


def _io_spec(config_or_preprocessing, model, client_input_shape):
    """(task_type, preprocessing, client shape, task name) from what the caller gave."""
    model_shape = tuple(model.input_shape[1:])
    task = None
    prep = config_or_preprocessing
    if isinstance(prep, MAMLTrainConfig):
        task = prep.task
        if not prep.classification:
            prep = None
        else:
            images = TASK_IMAGES.get(prep.task)
            if images is None:
                raise ValueError(f"No image preprocessing is known for task {prep.task!r}; "
                                 "pass an ImagePreprocessing instead of the run config.")
            prep = ImagePreprocessing(image_size=(prep.image_size, prep.image_size),
                                      channels=images["channels"], invert=images["invert"])
            if client_input_shape is None:
                client_input_shape = images["client_image_shape"]
    elif isinstance(prep, dict):
        prep = ImagePreprocessing.from_config(prep)
    elif prep is not None and not isinstance(prep, ImagePreprocessing):
        raise TypeError(
            "config_or_preprocessing must be a MAMLTrainConfig, an ImagePreprocessing (or its "
            f"config dict), or None for regression; got {type(prep).__name__}.")
    if prep is None:
        if client_input_shape is not None and tuple(client_input_shape) != model_shape:
            raise ValueError(f"A regression export takes the model's inputs {model_shape}; got "
                             f"client_input_shape={tuple(client_input_shape)}.")
        return "regression", None, model_shape, task
    prepared = tuple(prep.image_size) + (prep.channels,)
    if prepared != model_shape:
        raise ValueError(f"The preprocessing produces images of shape {prepared} but the model "
                         f"takes {model_shape}.")
    client = tuple(client_input_shape) if client_input_shape is not None else prepared
    if len(client) != 3 or client[-1] not in (1, 3) or min(client) < 1:
        raise ValueError("client_input_shape must be (height, width, channels) with 1 or 3 "
                         f"channels; got {client}.")
    return "classification", prep, client, task


def _labels_for_loss(maml, labels, num_ways):
    """Sparse labels, or one-hot ones for a categorical (dense-label) loss."""
    loss = maml.task_loss
    name = getattr(loss, "name", None) or getattr(loss, "__name__", "")
    if isinstance(loss, keras.losses.CategoricalCrossentropy) or name == "categorical_crossentropy":
        return tf.one_hot(labels, num_ways)
    return labels


def _classification_outputs(logits):
    logits = tf.cast(logits, tf.float32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1)}


def _spec(dtype, name):
    # Unknown rank: a wrong-rank request reaches the in-graph check and gets its message.
    return tf.TensorSpec(shape=None, dtype=dtype, name=name)


def _check_maml(maml):
    if not isinstance(maml, MAML):
        raise TypeError(f"Expected a keras_meta.MAML; got {type(maml).__name__}.")
    if maml.task_loss is None:
        raise ValueError("The MAML model has no task loss; the in-graph inner loop needs one.")


def _image_dtypes(float_signature):
    return [("serving_default", tf.uint8)] + (
        [("serving_float", tf.float32)] if float_signature else [])


def _signature_summary(fn):
    concrete = fn.get_concrete_function()
    inputs = {spec.name: spec.dtype.name for spec in concrete.structured_input_signature[0]}
    outputs = {k: v.dtype.name for k, v in concrete.structured_outputs.items()}
    return {"inputs": inputs, "outputs": outputs}


# -- few-shot ---------------------------------------------------------------------------------

def _few_shot_endpoints(maml, task_type, prep, client, num_shots, steps, jit_compile,
                        float_signature):
    model = maml.model
    num_ways = int(model.output_shape[-1])

    def compute(support_x, support_y, query_x):
        return maml.adapt_and_predict(support_x, support_y, query_x, steps=steps)

    core = tf.function(compute, autograph=False)
    core_xla = tf.function(compute, autograph=False, jit_compile=True) if jit_compile else None
    endpoints = {}

    if task_type == "regression":
        x_shape = client
        y_shape = tuple(model.output_shape[1:])

        def make(core_fn):
            def serve(support_x, support_y, query_x):
                chain = validation.Chain()
                sx = validation.validate_batch(chain, support_x, "support_x", x_shape, "float32")
                sy = validation.validate_batch(chain, support_y, "support_y", y_shape, "float32")
                validation.validate_same_length(chain, sx, sy, "support_x", "support_y")
                qx = validation.validate_batch(chain, query_x, "query_x", x_shape, "float32")
                sx, sy, qx = chain.guard(sx), chain.guard(sy), chain.guard(qx)
                return {"predictions": tf.cast(core_fn(sx, sy, qx), tf.float32)}
            return tf.function(serve, autograph=False, input_signature=[
                _spec(tf.float32, "support_x"), _spec(tf.float32, "support_y"),
                _spec(tf.float32, "query_x")])

        endpoints["serving_default"] = make(core)
        if core_xla is not None:
            endpoints["serving_xla"] = make(core_xla)
        return endpoints, core_xla or core

    def make(core_fn, dtype):
        dname = _DTYPE_NAMES[dtype]

        def serve(support_images, support_labels, query_images):
            chain = validation.Chain()
            s = validation.validate_batch(chain, support_images, "support_images", client, dname)
            q = validation.validate_batch(chain, query_images, "query_images", client, dname)
            if dtype != tf.uint8:
                validation.validate_float_range(chain, s, "support_images")
                validation.validate_float_range(chain, q, "query_images")
            labels = validation.validate_labels(chain, support_labels, tf.shape(s)[0], num_ways,
                                                num_shots)
            s, q, labels = chain.guard(s), chain.guard(q), chain.guard(labels)
            # No static support size even with num_shots: a shape asserted to Grappler lets it
            # fold tf.shape(labels) into a constant and defeat the count checks above.
            logits = core_fn(prep(s), _labels_for_loss(maml, labels, num_ways), prep(q))
            return _classification_outputs(logits)

        return tf.function(serve, autograph=False, input_signature=[
            _spec(dtype, "support_images"), _spec(tf.int32, "support_labels"),
            _spec(dtype, "query_images")])

    for name, dtype in _image_dtypes(float_signature):
        endpoints[name] = make(core, dtype)
    if core_xla is not None:
        endpoints["serving_xla"] = make(core_xla, tf.uint8)
    return endpoints, core_xla or core


def _warmup_requests(kind, task_type, signatures, client, num_ways, num_shots, output_shape):
    """One small request per signature, with the signature's dtypes."""
    rng = np.random.default_rng(0)
    requests = []
    for name, summary in signatures.items():
        dtypes = summary["inputs"]
        if task_type == "regression":
            if kind == "few_shot":
                inputs = {"support_x": rng.normal(size=(5,) + client),
                          "support_y": rng.normal(size=(5,) + output_shape),
                          "query_x": rng.normal(size=(3,) + client)}
            else:
                inputs = {"inputs": rng.normal(size=(4,) + client)}
        else:
            def images(count):
                pixels = rng.integers(0, 256, size=(count,) + client, dtype=np.uint8)
                return pixels if dtypes.get("query_images", dtypes.get("images")) == "uint8" \
                    else (pixels / 255.0)
            if kind == "few_shot":
                labels = np.tile(np.arange(num_ways, dtype=np.int32), num_shots or 1)
                inputs = {"support_images": images(len(labels)), "support_labels": labels,
                          "query_images": images(num_ways)}
            else:
                inputs = {"images": images(1)}
                requests.append((name, {k: v.astype(dtypes[k]) for k, v in inputs.items()}))
                inputs = {"images": images(8)}
        requests.append((name, {k: np.asarray(v).astype(dtypes[k]) for k, v in inputs.items()}))
    return requests


def _write(archive_objects, endpoints, compute_fn, alias, config, base_dir, model_name, version,
           warmup, run_config):
    """Saves the archive into a staged version directory with its assets; returns the path."""
    layout.check_model_name(model_name)
    model_base = os.path.join(base_dir, model_name)
    version = layout.resolve_version(model_base, version)
    archive = keras.export.ExportArchive()
    for obj in archive_objects["track"]:
        archive.track(obj)
    for name, variables in archive_objects["collections"].items():
        archive.add_variable_collection(name, variables)
    for name, fn in endpoints.items():
        fn.get_concrete_function()
        archive.add_endpoint(name, fn)
    aliases = {alias: compute_fn}
    aliases.update({name: fn for name, fn in endpoints.items()})
    options = tf.saved_model.SaveOptions(function_aliases=aliases)
    signatures = {name: _signature_summary(fn) for name, fn in endpoints.items()}
    config = ServingConfig.from_config({**config.get_config(), "signatures": signatures})
    with layout.staged_version(model_base, version) as path:
        archive.write_out(path, options=options, verbose=False)
        extra = os.path.join(path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, CONFIG_ASSET), "w") as f:
            f.write(config.to_json())
        if run_config is not None:
            with open(os.path.join(extra, "train_config.json"), "w") as f:
                f.write(run_config.to_json())
        if warmup:
            layout.write_warmup(path, model_name, _warmup_requests(
                config.kind, config.task_type, signatures, config.client_input_shape,
                config.num_ways, config.num_shots, archive_objects["output_shape"]))
    layout.write_models_config(base_dir, model_name)
    return os.path.join(model_base, str(version))


def _archive_objects(maml, model):
    collections = {}
    if maml.inner_lrs is not None:
        flat = tf.nest.flatten(maml.inner_lrs)
        collections["inner_learning_rates"] = list(flat)
    track = [model]
    if maml.update_rule is not None and isinstance(maml.update_rule, keras.layers.Layer):
        track.append(maml.update_rule)
    return {"track": track, "collections": collections,
            "output_shape": tuple(int(d) for d in model.output_shape[1:])}


def export_few_shot(maml, config_or_preprocessing, base_dir, model_name, version=None, *,
                    client_image_shape=None, num_shots=None, inner_steps=None,
                    jit_compile=False, float_signature=True, warmup=True):
    """Exports the meta-learned initialisation with the inner loop inside the graph.

    Each request is one task: the graph adapts to the request's support set for `inner_steps`
    steps with `MAML.adapt_and_predict` (the library's `adapt` and `functional_call`), then
    predicts the queries. Batch norm behaves exactly as in `adapt_and_predict` (transductive:
    the query set's statistics), so requests must not be merged by a batching server.

    Args:
        maml: a `keras_meta.MAML` with its task loss.
        config_or_preprocessing: the run's `MAMLTrainConfig` (preprocessing and client image
            shape follow its task: Omniglot 105x105x3 uint8 -> 28x28x1 inverted), an
            `ImagePreprocessing` (or its config dict), or `None` for a regression model.
        base_dir: the TF Serving base directory; the export goes to
            `<base_dir>/<model_name>/<version>` and `<base_dir>/models.config` lists it.
        model_name: TF Serving model name.
        version: integer version; default the next free one.
        client_image_shape: `(H, W, C)` of the images clients send (default: the task's native
            shape, else the model's input shape).
        num_shots: require exactly this many shots per class (checked in the graph); default
            any number, at least one per class.
        inner_steps: inner steps in the graph (default `maml.eval_inner_steps`).
        jit_compile: also export `serving_xla`, with adaptation and prediction compiled by XLA.
        float_signature: also export `serving_float` (float32 images in [0, 1]).
        warmup: write `assets.extra/tf_serving_warmup_requests`.

    Returns:
        The path of the version directory.

    Example:

    >>> path = export_few_shot(maml, ImagePreprocessing((28, 28), 1, invert=True),
    ...                        "/tmp/serving", "omniglot_5way", client_image_shape=(105, 105, 3))
    >>> tf.saved_model.load(path).signatures["serving_default"](
    ...     support_images=s, support_labels=y, query_images=q)["classes"]
    """
    _check_maml(maml)
    model = maml.model
    task_type, prep, client, task = _io_spec(config_or_preprocessing, model, client_image_shape)
    steps = maml.eval_inner_steps if inner_steps is None else inner_steps
    config = ServingConfig(
        kind="few_shot", task_type=task_type,
        num_ways=int(model.output_shape[-1]) if task_type == "classification" else None,
        num_shots=num_shots, inner_steps=steps, inner_lr=maml.inner_lr,
        learn_inner_lr=maml.learn_inner_lr, batch_norm=batch_norm_mode(model),
        preprocessing=prep.get_config() if prep else None, client_input_shape=client,
        model_input_shape=model.input_shape[1:], jit_compile=bool(jit_compile), task=task)
    endpoints, compute_fn = _few_shot_endpoints(maml, task_type, prep, client, num_shots, steps,
                                                jit_compile, float_signature)
    run_config = config_or_preprocessing if isinstance(
        config_or_preprocessing, MAMLTrainConfig) else None
    return _write(_archive_objects(maml, model), endpoints, compute_fn, "few_shot_model",
                  config, base_dir, model_name, version, warmup, run_config)


# -- adapted ----------------------------------------------------------------------------------

def export_adapted(maml, config_or_preprocessing, support_images, support_labels, base_dir,
                   model_name, version=None, *, client_image_shape=None, inner_steps=None,
                   jit_compile=False, float_signature=True, warmup=True):
    """Adapts to one support set now and exports the adapted network as a batchable model.

    Batch norm is frozen (`freeze_batch_norm`): transductive layers keep the statistics they
    compute on the (preprocessed) support set after adaptation, per-step layers the running
    statistics of the query slot. Each query's answer is then independent of the rest of the
    batch, as TF Serving's request batching needs; it can differ from the transductive
    `adapt_and_predict`, which normalizes with the query batch's statistics.

    Args:
        maml: a `keras_meta.MAML` with its task loss.
        config_or_preprocessing: as for `export_few_shot`.
        support_images: the support set as a client has it (classification: `[n, H, W, C]`
            uint8 or float in [0, 1]; regression: model inputs).
        support_labels: class indices `[n]` (classification) or targets (regression).
        base_dir, model_name, version: as for `export_few_shot`.
        client_image_shape: `(H, W, C)` clients will send (default: the support images' shape).
        inner_steps: adaptation steps (default `maml.eval_inner_steps`).
        jit_compile: also export `serving_xla`, the network compiled by XLA.
        float_signature: also export `serving_float` (float32 images in [0, 1]).
        warmup: write warmup requests for batch sizes 1 and 8.

    Returns:
        The path of the version directory.

    Example:

    >>> path = export_adapted(maml, train_config, support_images, support_labels,
    ...                       "/tmp/serving", "omniglot_adapted")
    >>> tf.saved_model.load(path).signatures["serving_default"](images=q)["probabilities"]
    """
    _check_maml(maml)
    model = maml.model
    support_images = np.asarray(support_images)
    support_labels = np.asarray(support_labels)
    if client_image_shape is None and config_or_preprocessing is not None and \
            not isinstance(config_or_preprocessing, MAMLTrainConfig):
        client_image_shape = support_images.shape[1:]
    task_type, prep, client, task = _io_spec(config_or_preprocessing, model, client_image_shape)
    steps = maml.eval_inner_steps if inner_steps is None else inner_steps
    num_ways = int(model.output_shape[-1]) if task_type == "classification" else None
    if tuple(support_images.shape[1:]) != tuple(client):
        raise ValueError(f"support_images has examples of shape {support_images.shape[1:]}; "
                         f"expected {tuple(client)}.")
    if task_type == "classification":
        _check_support_labels(support_labels, len(support_images), num_ways)
        support_x = prep(support_images)
        support_y = _labels_for_loss(maml, tf.constant(support_labels, tf.int32), num_ways)
    else:
        support_x = tf.constant(support_images, tf.float32)
        support_y = tf.constant(support_labels, tf.float32)
    adapted = maml.adapt(support_x, support_y, steps)
    served = freeze_batch_norm(adapted, support_x, slot=steps)
    config = ServingConfig(
        kind="adapted", task_type=task_type, num_ways=num_ways, inner_steps=steps,
        inner_lr=maml.inner_lr, learn_inner_lr=maml.learn_inner_lr,
        batch_norm=batch_norm_mode(model), preprocessing=prep.get_config() if prep else None,
        client_input_shape=client, model_input_shape=model.input_shape[1:],
        jit_compile=bool(jit_compile), support_set_size=int(len(support_images)), task=task)

    def compute(x):
        return served(x, training=False)

    core = tf.function(compute, autograph=False)
    core_xla = tf.function(compute, autograph=False, jit_compile=True) if jit_compile else None

    def make(core_fn, dtype, input_name):
        dname = _DTYPE_NAMES[dtype]

        def serve(x):
            chain = validation.Chain()
            x = validation.validate_batch(chain, x, input_name, client, dname)
            if prep is None:
                return {"predictions": tf.cast(core_fn(chain.guard(x)), tf.float32)}
            if dtype != tf.uint8:
                validation.validate_float_range(chain, x, input_name)
            return _classification_outputs(core_fn(prep(chain.guard(x))))

        return tf.function(serve, autograph=False,
                           input_signature=[_spec(dtype, input_name)])

    if task_type == "regression":
        endpoints = {"serving_default": make(core, tf.float32, "inputs")}
        if core_xla is not None:
            endpoints["serving_xla"] = make(core_xla, tf.float32, "inputs")
    else:
        endpoints = {name: make(core, dtype, "images")
                     for name, dtype in _image_dtypes(float_signature)}
        if core_xla is not None:
            endpoints["serving_xla"] = make(core_xla, tf.uint8, "images")
    run_config = config_or_preprocessing if isinstance(
        config_or_preprocessing, MAMLTrainConfig) else None
    objects = {"track": [served], "collections": {},
               "output_shape": tuple(int(d) for d in model.output_shape[1:])}
    return _write(objects, endpoints, core_xla or core, "adapted_model", config, base_dir,
                  model_name, version, warmup, run_config)


def _check_support_labels(labels, num_support, num_ways):
    if labels.ndim != 1 or len(labels) != num_support:
        raise ValueError(f"support_labels must have shape [{num_support}] (one per support "
                         f"image); got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"support_labels must be integer class indices; got {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= num_ways:
        raise ValueError(f"support_labels must lie in 0..{num_ways - 1}; got {labels.tolist()}.")
    missing = sorted(set(range(num_ways)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"The support set has no example of class(es) {missing}; every class "
                         f"0..{num_ways - 1} needs at least one.")


def read_serving_config(saved_model_dir):
    """The `ServingConfig` saved with an export."""
    with open(os.path.join(saved_model_dir, "assets.extra", CONFIG_ASSET)) as f:
        return ServingConfig.from_config(json.load(f))
