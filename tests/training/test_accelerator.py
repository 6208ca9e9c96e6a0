"""`detect_accelerator` and the TPU probing on the machine the tests run on (no TPU attached)."""

import glob
import threading
import time

import pytest
import tensorflow as tf

from keras_meta.training import accelerator, detect_accelerator

TPU_ENV_VARS = ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")
# Without a TPU, the resolver fails at once (no metadata server, no TPU name); a hang is a bug.
LIMIT_S = 30


@pytest.fixture
def no_tpu_signs(monkeypatch):
    """No TPU env vars; skips where TPU devices are attached."""
    if glob.glob("/dev/accel*"):
        pytest.skip("this machine has TPU devices")
    for var in TPU_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def connect_calls(monkeypatch):
    """The arguments `_tpu_strategy_if_present` passes to the (real) `connect_tpu`."""
    calls = []
    real = accelerator.connect_tpu

    def recording(tpu=None):
        calls.append(tpu)
        return real(tpu)

    monkeypatch.setattr(accelerator, "connect_tpu", recording)
    return calls


def _within(limit_s, fn, *args):
    """`fn(*args)`, failing the test (not hanging it) when it takes over `limit_s` seconds."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            outcome["error"] = e

    start = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"{fn.__name__}{args} still running after {limit_s} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], time.perf_counter() - start


def _expected_line():
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU", "Accelerator: CPU (no GPU or TPU found)\n"
    return "GPU", None  # the device names depend on the machine; checked by prefix


def test_reports_what_tensorflow_sees(no_tpu_signs, connect_calls, capsys):
    expected_name, expected_line = _expected_line()
    name, strategy = detect_accelerator()
    printed = capsys.readouterr().out
    assert name == expected_name
    if expected_line is not None:
        assert printed == expected_line
    else:
        assert printed.startswith("Accelerator: GPU (") and printed.count("\n") == 1
    # The default strategy itself: one replica, the meta-batch is not split across devices.
    assert strategy is tf.distribute.get_strategy()
    assert not isinstance(strategy, tf.distribute.TPUStrategy)
    assert strategy.num_replicas_in_sync == 1
    assert connect_calls == []  # no TPU was tried without a sign of one

    assert detect_accelerator(verbose=False) == (name, strategy)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("var, value", [("COLAB_TPU_ADDR", "10.0.0.2:8470"),
                                        ("TPU_NAME", "no-such-tpu"),
                                        ("TPU_ACCELERATOR_TYPE", "v4-8")])
def test_tpu_present_follows_the_env_vars(no_tpu_signs, var, value):
    assert accelerator._tpu_present() is False
    no_tpu_signs.setenv(var, value)
    assert accelerator._tpu_present() is True
    no_tpu_signs.setenv(var, "")  # set but empty is no sign
    assert accelerator._tpu_present() is False


@pytest.mark.parametrize("var, value, tpu", [("TPU_NAME", "no-such-tpu", None),
                                             ("COLAB_TPU_ADDR", "10.0.0.2:8470", None)])
def test_a_tpu_sign_without_a_tpu_falls_back_quickly(no_tpu_signs, connect_calls, capsys, var,
                                                     value, tpu):
    no_tpu_signs.setenv(var, value)
    strategy, seconds = _within(LIMIT_S, accelerator._tpu_strategy_if_present)
    assert strategy is None
    assert connect_calls == [tpu]  # the TPU was tried, its failure swallowed
    assert seconds < LIMIT_S

    (name, strategy), _ = _within(LIMIT_S, detect_accelerator)
    assert (name, strategy) == (_expected_line()[0], tf.distribute.get_strategy())
    assert capsys.readouterr().out.startswith(f"Accelerator: {name} (")


def test_connect_tpu_names_the_tpu_it_could_not_find(no_tpu_signs):
    with pytest.raises(RuntimeError, match=r"Could not find or initialise the TPU 'no-such-tpu'"):
        _within(LIMIT_S, accelerator.connect_tpu, "no-such-tpu")
