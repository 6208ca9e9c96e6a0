"""`detect_accelerator` on the machine the tests run on."""

import glob

import pytest
import tensorflow as tf

from keras_meta.training import detect_accelerator


def test_reports_what_tensorflow_sees(capsys):
    name, strategy = detect_accelerator()
    printed = capsys.readouterr().out
    assert printed.startswith(f"Accelerator: {name} (")
    if tf.config.list_physical_devices("GPU"):
        assert name in ("GPU", "TPU")
    else:
        assert name in ("CPU", "TPU")
    if name != "TPU":
        # One replica: the notebooks' meta-batches are not split across devices.
        assert strategy.num_replicas_in_sync == 1
        assert not isinstance(strategy, tf.distribute.TPUStrategy)


def test_no_tpu_is_tried_without_a_sign_of_one(monkeypatch):
    for var in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(var, raising=False)
    if glob.glob("/dev/accel*"):
        pytest.skip("this machine has TPU devices")
    name, strategy = detect_accelerator(verbose=False)
    assert name in ("CPU", "GPU")
    assert strategy is tf.distribute.get_strategy()
    with strategy.scope():
        v = tf.Variable(1.0)
    assert v.numpy() == 1.0
