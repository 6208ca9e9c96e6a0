"""SavedModel export for TF Serving, and the client side.

* `few_shot`: `export_few_shot`, the inner loop inside the graph (one request = one task).
* `adapted`: `export_adapted`, one task's adapted network, batchable.
* `from_run`: `export_from_model_dir`, a training run's directory exported from its config;
  `export_from_preset`, a pretrained preset.
* `preset_writer`: `write_preset`, a run's weights packaged as a pretrained preset.
* `signatures`, `validation`: what a signature accepts; requests checked in the graph.
* `image_bytes`: `serving_bytes`, encoded image files decoded in the graph; reading files.
* `archive`, `layout`, `warmup`: writing versions in TF Serving's layout, warmup records.
* `freeze`: batch norm frozen for batchable serving.
* `serving_config`: `ServingConfig`, saved beside every export.
* `client`, `local`: REST/gRPC requests, and answers from a SavedModel on disk.
"""

from keras_meta.export.adapted import export_adapted
from keras_meta.export.client import ServingError, predict_request, request
from keras_meta.export.few_shot import export_few_shot
from keras_meta.export.freeze import freeze_batch_norm
from keras_meta.export.from_run import export_from_model_dir, export_from_preset, restore_maml
from keras_meta.export.preset_writer import write_preset
from keras_meta.export.layout import next_version, write_models_config
from keras_meta.export.local import predict_local
from keras_meta.export.serving_config import ServingConfig, read_serving_config

__all__ = ["ServingConfig", "ServingError", "export_adapted", "export_few_shot",
           "export_from_model_dir", "export_from_preset", "freeze_batch_norm", "next_version", "predict_local",
           "predict_request", "read_serving_config", "request", "restore_maml",
           "write_models_config", "write_preset"]
