"""TF Serving warmup records: one small request per signature, replayed when a version loads."""

import os

import numpy as np
import tensorflow as tf

from keras_meta.export.client import predict_request

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def warmup_requests(kind, problem, signatures, client, num_ways, num_shots, output_shape):
    """One small request per signature, with the signature's dtypes.

    `serving_bytes` gets PNG files of the client's image shape, so that its decoding and
    preprocessing are warmed up too.
    """
    rng = np.random.default_rng(0)
    requests = []
    for name, summary in signatures.items():
        dtypes = summary["inputs"]
        if problem == "regression":
            if kind == "few_shot":
                inputs = {"support_x": rng.normal(size=(5,) + client),
                          "support_y": rng.normal(size=(5,) + output_shape),
                          "query_x": rng.normal(size=(3,) + client)}
            else:
                inputs = {"inputs": rng.normal(size=(4,) + client)}
        else:
            image_dtype = dtypes.get("query_images", dtypes.get("images"))

            def images(count):
                pixels = rng.integers(0, 256, size=(count,) + client, dtype=np.uint8)
                if image_dtype == "string":
                    return _png_files(pixels)
                return pixels if image_dtype == "uint8" else (pixels / 255.0)
            if kind == "few_shot":
                labels = np.tile(np.arange(num_ways, dtype=np.int32), num_shots or 1)
                inputs = {"support_images": images(len(labels)), "support_labels": labels,
                          "query_images": images(num_ways)}
            else:
                inputs = {"images": images(1)}
                requests.append((name, {k: _as(v, dtypes[k]) for k, v in inputs.items()}))
                inputs = {"images": images(8)}
        requests.append((name, {k: _as(v, dtypes[k]) for k, v in inputs.items()}))
    return requests


def _png_files(pixels):
    files = np.empty(len(pixels), dtype=object)
    for i, image in enumerate(pixels):
        files[i] = tf.io.encode_png(image).numpy()
    return files


def _as(value, dtype_name):
    # Encoded files stay an object array of bytes (a fixed-width numpy string array would drop
    # trailing zero bytes).
    return value if dtype_name == "string" else np.asarray(value).astype(dtype_name)


def write_warmup(export_dir, model_name, requests):
    """Writes `(signature_name, inputs)` pairs as TF Serving warmup records; returns the path.

    TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord of
    `PredictionLog`s) when it loads the version, so the first real request does not pay for
    graph initialisation.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(
                    request=predict_request(model_name, inputs, signature_name)))
            writer.write(log.SerializeToString())
    return path


def read_warmup(path):
    """The `PredictionLog` records of a warmup file."""
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
