"""`export_few_shot`: the meta-learned initialisation with the inner loop inside the graph.

Signatures (names of `serving_default`'s inputs and outputs are the request's keys):

* few-shot, classification: `support_images` `[n_support, H, W, C]`, `support_labels`
  `[n_support]` int32 in `0..num_ways-1`, `query_images` `[n_query, H, W, C]` ->
  `probabilities` `[n_query, num_ways]` float32, `logits`, `classes` int64. Ways are fixed by the
  model; shots are dynamic (any count, at least one per class) unless `num_shots` is given;
  the query count is dynamic. One request is one task.
* few-shot, regression (sinusoid): `support_x` `[n, *x_shape]`, `support_y` `[n, *y_shape]`,
  `query_x` `[m, *x_shape]` -> `predictions`.
* adapted, classification: `images` `[n, H, W, C]` -> `probabilities`, `logits`, `classes`;
  regression: `inputs` -> `predictions`. Batch-independent (batch norm frozen).

`serving_default` takes images as uint8 (0..255), `serving_float` as float32 in [0, 1];
`serving_xla` (with `jit_compile=True`) is `serving_default` with the model part compiled by
XLA. `H, W, C` is the client's native image shape (e.g. Omniglot's 105x105x3); resizing,
greyscale conversion and inversion happen in the graph (`ImagePreprocessing`).

The signatures declare these shapes, with a free first dimension (`[None, H, W, C]`, labels
`[None]`), so `saved_model_cli show` and TF Serving's metadata endpoint tell a client what to
send. TF Serving does not hold a request to them, so the graph checks every input's real shape
(`validation`) and answers a wrong one with a message naming the input.

`serving_bytes` (classification) takes encoded image files instead: `support_images` and
`query_images` are `[n]` string tensors of JPEG, PNG, GIF or BMP files, each of any size,
with the same `support_labels`. The graph decodes each file to the client's channels and
preprocesses it on its own, then adapts and predicts as `serving_default` does; a file that is
none of these formats, or is truncated, is named with its input and index. Over REST each file
is sent as `{"b64": "<base64>"}` (`keras_meta.export.client`).
"""

import tensorflow as tf

from keras_meta.export import validation
from keras_meta.export.archive import archive_objects, write_archive
from keras_meta.export.freeze import batch_norm_mode
from keras_meta.export.image_bytes import decode_images
from keras_meta.export.serving_config import ServingConfig
from keras_meta.export.signatures import (DTYPE_NAMES, check_maml, classification_outputs,
                                          image_dtypes, input_spec, io_spec, labels_for_loss)
from keras_meta.training.config import MAMLTrainConfig


def few_shot_endpoints(maml, problem, prep, client, num_shots, steps, jit_compile,
                        float_signature, bytes_signature=True):
    model = maml.model
    num_ways = int(model.output_shape[-1])

    def compute(support_x, support_y, query_x):
        return maml.adapt_and_predict(support_x, support_y, query_x, steps=steps)

    core = tf.function(compute, autograph=False)
    core_xla = tf.function(compute, autograph=False, jit_compile=True) if jit_compile else None
    endpoints = {}

    if problem == "regression":
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
                input_spec(tf.float32, "support_x", x_shape),
                input_spec(tf.float32, "support_y", y_shape),
                input_spec(tf.float32, "query_x", x_shape)])

        endpoints["serving_default"] = make(core)
        if core_xla is not None:
            endpoints["serving_xla"] = make(core_xla)
        return endpoints, core_xla or core

    def make(core_fn, dtype):
        dname = DTYPE_NAMES[dtype]

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
            logits = core_fn(prep(s), labels_for_loss(maml, labels, num_ways), prep(q))
            return classification_outputs(logits)

        return tf.function(serve, autograph=False, input_signature=[
            input_spec(dtype, "support_images", client), input_spec(tf.int32, "support_labels"),
            input_spec(dtype, "query_images", client)])

    def serve_bytes(support_images, support_labels, query_images):
        chain = validation.Chain()
        s = decode_images(chain, support_images, "support_images", client[-1], prep)
        q = decode_images(chain, query_images, "query_images", client[-1], prep)
        labels = validation.validate_labels(chain, support_labels, tf.shape(s)[0], num_ways,
                                            num_shots)
        s, q, labels = chain.guard(s), chain.guard(q), chain.guard(labels)
        # The images are already preprocessed (each at its own size): the core as above.
        return classification_outputs(core(s, labels_for_loss(maml, labels, num_ways), q))

    for name, dtype in image_dtypes(float_signature):
        endpoints[name] = make(core, dtype)
    if bytes_signature:
        endpoints["serving_bytes"] = tf.function(serve_bytes, autograph=False, input_signature=[
            input_spec(tf.string, "support_images"), input_spec(tf.int32, "support_labels"),
            input_spec(tf.string, "query_images")])
    if core_xla is not None:
        endpoints["serving_xla"] = make(core_xla, tf.uint8)
    return endpoints, core_xla or core


def export_few_shot(maml, config_or_preprocessing, base_dir, model_name, version=None, *,
                    client_image_shape=None, num_shots=None, inner_steps=None,
                    jit_compile=False, float_signature=True, bytes_signature=True,
                    warmup=True):
    """Exports the meta-learned initialisation with the inner loop inside the graph.

    Each request is one task: the graph adapts to the request's support set for `inner_steps`
    steps with `MAML.adapt_and_predict` (the library's `adapt` and `functional_call`), then
    predicts the queries. Batch norm behaves exactly as in `adapt_and_predict`: transductive
    layers normalize with the query set's statistics, so requests must not be merged by a
    batching server; per-step layers (MAML++) predict from the query slot's running
    statistics, so each query's answer does not depend on the other queries.

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
        bytes_signature: also export `serving_bytes` (encoded JPEG/PNG/GIF/BMP files, decoded
            and preprocessed in the graph; classification only).
        warmup: write `assets.extra/tf_serving_warmup_requests`.

    Returns:
        The path of the version directory.

    Example:

    >>> path = export_few_shot(maml, ImagePreprocessing((28, 28), 1, invert=True),
    ...                        "/tmp/serving", "omniglot_5way", client_image_shape=(105, 105, 3))
    >>> tf.saved_model.load(path).signatures["serving_default"](
    ...     support_images=s, support_labels=y, query_images=q)["classes"]
    """
    check_maml(maml)
    model = maml.model
    problem, prep, client, task_family = io_spec(config_or_preprocessing, model, client_image_shape)
    steps = maml.eval_inner_steps if inner_steps is None else inner_steps
    config = ServingConfig(
        kind="few_shot", problem=problem,
        num_ways=int(model.output_shape[-1]) if problem == "classification" else None,
        num_shots=num_shots, inner_steps=steps, inner_lr=maml.inner_lr,
        learn_inner_lr=maml.learn_inner_lr, batch_norm=batch_norm_mode(model),
        preprocessing=prep.get_config() if prep else None, client_input_shape=client,
        model_input_shape=model.input_shape[1:], jit_compile=bool(jit_compile),
        task_family=task_family)
    endpoints, compute_fn = few_shot_endpoints(maml, problem, prep, client, num_shots, steps,
                                                jit_compile, float_signature, bytes_signature)
    run_config = config_or_preprocessing if isinstance(
        config_or_preprocessing, MAMLTrainConfig) else None
    return write_archive(archive_objects(maml, model), endpoints, compute_fn, "few_shot_model",
                  config, base_dir, model_name, version, warmup, run_config)
