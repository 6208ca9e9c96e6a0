"""Writes an export: the SavedModel, its serving config, the run config and warmup records,
staged and moved into `<base_dir>/<model_name>/<version>` in one step."""

import os

import keras
import tensorflow as tf

from keras_meta.export import layout
from keras_meta.export.serving_config import CONFIG_ASSET, ServingConfig
from keras_meta.export.signatures import signature_summary
from keras_meta.export.warmup import warmup_requests, write_warmup


def write_archive(archive_objects, endpoints, compute_fn, alias, config, base_dir, model_name, version,
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
    signatures = {name: signature_summary(fn) for name, fn in endpoints.items()}
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
            write_warmup(path, model_name, warmup_requests(
                config.kind, config.problem, signatures, config.client_input_shape,
                config.num_ways, config.num_shots, archive_objects["output_shape"]))
    layout.write_models_config(base_dir, model_name)
    return os.path.join(model_base, str(version))


def archive_objects(maml, model):
    collections = {}
    if maml.inner_lrs is not None:
        flat = tf.nest.flatten(maml.inner_lrs)
        collections["inner_learning_rates"] = list(flat)
    track = [model]
    if maml.update_rule is not None and isinstance(maml.update_rule, keras.layers.Layer):
        track.append(maml.update_rule)
    return {"track": track, "collections": collections,
            "output_shape": tuple(int(d) for d in model.output_shape[1:])}
