"""`export_adapted`: one task's adapted network, with frozen batch norm, as a batchable model.

Signatures: classification `images` `[n, H, W, C]` -> `probabilities`, `logits`, `classes`;
regression `inputs` `[n, *x_shape]` -> `predictions`. `serving_default` takes uint8 images,
`serving_float` float32 in [0, 1], `serving_xla` (with `jit_compile=True`) is compiled by XLA.
Answers are independent of the rest of the batch, so TF Serving may batch requests.

The inputs are declared as `[None, H, W, C]` (what `saved_model_cli` and TF Serving's metadata
show); the graph still checks the shape a request really has, since TF Serving does not.
`serving_bytes` (classification) takes `images` as a `[n]` string tensor of encoded JPEG, PNG,
GIF or BMP files of any size (over REST, `{"b64": "<base64>"}` each), decoded and preprocessed
one by one in the graph; a truncated or foreign file is named with its index.
"""

import numpy as np
import tensorflow as tf

from keras_meta.export import validation
from keras_meta.export.archive import write_archive
from keras_meta.export.freeze import batch_norm_mode, freeze_batch_norm
from keras_meta.export.image_bytes import decode_images
from keras_meta.export.serving_config import ServingConfig
from keras_meta.export.signatures import (DTYPE_NAMES, check_maml, check_support_labels,
                                          classification_outputs, image_dtypes, input_spec,
                                          io_spec, labels_for_loss)
from keras_meta.training.config import MAMLTrainConfig


def export_adapted(maml, config_or_preprocessing, support_images, support_labels, base_dir,
                   model_name, version=None, *, client_image_shape=None, inner_steps=None,
                   jit_compile=False, float_signature=True, bytes_signature=True,
                   warmup=True):
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
        bytes_signature: also export `serving_bytes` (encoded JPEG/PNG/GIF/BMP files, decoded
            and preprocessed in the graph; classification only).
        warmup: write warmup requests for batch sizes 1 and 8.

    Returns:
        The path of the version directory.

    Example:

    >>> path = export_adapted(maml, train_config, support_images, support_labels,
    ...                       "/tmp/serving", "omniglot_adapted")
    >>> tf.saved_model.load(path).signatures["serving_default"](images=q)["probabilities"]
    """
    check_maml(maml)
    model = maml.model
    support_images = np.asarray(support_images)
    support_labels = np.asarray(support_labels)
    if client_image_shape is None and config_or_preprocessing is not None and \
            not isinstance(config_or_preprocessing, MAMLTrainConfig):
        client_image_shape = support_images.shape[1:]
    problem, prep, client, task_family = io_spec(config_or_preprocessing, model, client_image_shape)
    steps = maml.eval_inner_steps if inner_steps is None else inner_steps
    num_ways = int(model.output_shape[-1]) if problem == "classification" else None
    if tuple(support_images.shape[1:]) != tuple(client):
        raise ValueError(f"support_images has examples of shape {support_images.shape[1:]}; "
                         f"expected {tuple(client)}.")
    if problem == "classification":
        check_support_labels(support_labels, len(support_images), num_ways)
        support_x = prep(support_images)
        support_y = labels_for_loss(maml, tf.constant(support_labels, tf.int32), num_ways)
    else:
        support_x = tf.constant(support_images, tf.float32)
        support_y = tf.constant(support_labels, tf.float32)
    adapted = maml.adapt(support_x, support_y, steps)
    served = freeze_batch_norm(adapted, support_x, slot=steps)
    config = ServingConfig(
        kind="adapted", problem=problem, num_ways=num_ways, inner_steps=steps,
        inner_lr=maml.inner_lr, learn_inner_lr=maml.learn_inner_lr,
        batch_norm=batch_norm_mode(model), preprocessing=prep.get_config() if prep else None,
        client_input_shape=client, model_input_shape=model.input_shape[1:],
        jit_compile=bool(jit_compile), support_set_size=int(len(support_images)),
        task_family=task_family)

    def compute(x):
        return served(x, training=False)

    core = tf.function(compute, autograph=False)
    core_xla = tf.function(compute, autograph=False, jit_compile=True) if jit_compile else None

    def make(core_fn, dtype, input_name):
        dname = DTYPE_NAMES[dtype]

        def serve(x):
            chain = validation.Chain()
            x = validation.validate_batch(chain, x, input_name, client, dname)
            if prep is None:
                return {"predictions": tf.cast(core_fn(chain.guard(x)), tf.float32)}
            if dtype != tf.uint8:
                validation.validate_float_range(chain, x, input_name)
            return classification_outputs(core_fn(prep(chain.guard(x))))

        return tf.function(serve, autograph=False,
                           input_signature=[input_spec(dtype, input_name, client)])

    def serve_bytes(images):
        chain = validation.Chain()
        x = decode_images(chain, images, "images", client[-1], prep)
        return classification_outputs(core(chain.guard(x)))

    if problem == "regression":
        endpoints = {"serving_default": make(core, tf.float32, "inputs")}
        if core_xla is not None:
            endpoints["serving_xla"] = make(core_xla, tf.float32, "inputs")
    else:
        endpoints = {name: make(core, dtype, "images")
                     for name, dtype in image_dtypes(float_signature)}
        if core_xla is not None:
            endpoints["serving_xla"] = make(core_xla, tf.uint8, "images")
        if bytes_signature:
            endpoints["serving_bytes"] = tf.function(
                serve_bytes, autograph=False, input_signature=[input_spec(tf.string, "images")])
    run_config = config_or_preprocessing if isinstance(
        config_or_preprocessing, MAMLTrainConfig) else None
    objects = {"track": [served], "collections": {},
               "output_shape": tuple(int(d) for d in model.output_shape[1:])}
    return write_archive(objects, endpoints, core_xla or core, "adapted_model", config, base_dir,
                  model_name, version, warmup, run_config)
