"""SavedModel export for TF Serving: few-shot (inner loop in the graph) and adapted models."""

from keras_meta.export.exporter import export_adapted, export_few_shot, read_serving_config
from keras_meta.export.freeze import freeze_batch_norm
from keras_meta.export.layout import next_version, write_models_config
from keras_meta.export.local import predict_local
from keras_meta.export.serving_config import ServingConfig

__all__ = ["ServingConfig", "export_adapted", "export_few_shot", "freeze_batch_norm",
           "next_version", "predict_local", "read_serving_config", "write_models_config"]
