"""Configs that cannot run are refused by name, with what was received and what is expected,
before any data loads or any memory is taken.

Each test reproduces a probe that once failed late or not at all: --shots=1000000000 thrashed
memory for minutes and died in TensorFlow, --meta_lr=inf trained, --ways=500 on Omniglot failed
deep in the episode sampler, and Omniglot evaluation sizes were only checked after the data
loaded.
"""

import os
import time

import pytest

from keras_meta.training import task_families, train
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.presets import PRESETS

GiB = 2**30
OMNIGLOT = PRESETS["omniglot_5way_1shot"]


@pytest.mark.parametrize("field", ["inner_lr", "meta_lr"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_learning_rates_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"Invalid {field}={value!r}: expected a finite number"):
        MAMLTrainConfig(**{field: value})


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_the_learned_optimizer_refuses_a_non_finite_meta_lr(value):
    from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig

    with pytest.raises(ValueError, match=rf"Flag --meta_lr got {value!r}; allowed values: "
                                         r"finite floats > 0"):
        LearnedOptimizerTrainConfig(meta_lr=value)


def test_omniglot_ways_beyond_the_smallest_split_are_refused_by_the_config():
    assert OMNIGLOT.replace(num_ways=400).num_ways == 400
    with pytest.raises(ValueError, match=r"Invalid num_ways=401: expected at most 400 for "
                                         r"task_family='omniglot': the validation split of "
                                         r"omniglot_protocol='maml' has 400 classes \(100 "
                                         r"characters x 4 rotations\)"):
        OMNIGLOT.replace(num_ways=401)
    lake = OMNIGLOT.replace(omniglot_protocol="background_evaluation")
    assert lake.replace(num_ways=2636).num_ways == 2636
    with pytest.raises(ValueError, match=r"Invalid num_ways=2637: expected at most 2636 .*the "
                                         r"test split of omniglot_protocol="
                                         r"'background_evaluation' has 2636 classes"):
        lake.replace(num_ways=2637)


def test_omniglot_episodes_larger_than_a_character_are_refused_by_the_config():
    assert OMNIGLOT.replace(num_shots=5, num_queries=15).num_shots == 5
    with pytest.raises(ValueError, match=r"Invalid num_queries=16: expected at most 20 images "
                                         r"per class .*num_shots=5 \+ num_queries=16 = 21"):
        OMNIGLOT.replace(num_shots=5, num_queries=16)
    with pytest.raises(ValueError, match=r"Invalid num_shots=20: .*num_shots=20 \+ "
                                         r"num_queries=15 = 35"):
        OMNIGLOT.replace(num_shots=20, num_queries=15)


def test_omniglot_evaluation_sizes_are_checked_before_the_data_loads(tmp_path, monkeypatch):
    # Configs that only rebuild or export a model keep the dataclass's sinusoid evaluation
    # sizes (5 shots, 100 queries): `validate` accepts them, a run does not.
    export_only = MAMLTrainConfig(task_family="omniglot", num_ways=5, image_size=8)
    with pytest.raises(ValueError, match=r"Invalid eval_num_queries=100: expected at most 20 "
                                         r"images per class .*eval_num_shots=5 \+ "
                                         r"eval_num_queries=100 = 105"):
        export_only.validate_episode_sizes()
    loads = []
    monkeypatch.setitem(task_families._BUILDERS, "omniglot", lambda config: loads.append(1))
    with pytest.raises(ValueError, match=r"Invalid eval_num_queries=16: .*eval_num_shots=5 \+ "
                                         r"eval_num_queries=16 = 21"):
        train(OMNIGLOT.replace(eval_num_shots=5, eval_num_queries=16), str(tmp_path / "run"),
              verbose=False)
    with pytest.raises(ValueError, match=r"Invalid num_shots=15: .*num_shots=15 \+ "
                                         r"eval_num_queries=10 = 25"):
        OMNIGLOT.replace(num_shots=5, eval_num_queries=10).replace(
            num_shots=15, num_queries=5).validate_episode_sizes()
    assert not loads and not (tmp_path / "run").exists()


def test_real_configs_fit_even_a_small_machine():
    for name, config in PRESETS.items():
        if config.task_family == "images" and config.dataset is None:
            config = config.replace(dataset="folder:/the/users/images")  # theirs to give
        for available in (None, 4 * GiB):
            task_families.check_before_run(config, available_bytes=available)
    assert task_families.check_before_run(PRESETS["omniglot_20way_5shot"]) < 1 * GiB
    memory = task_families.machine_memory_bytes()
    assert memory is None or memory > GiB


def test_sizes_that_cannot_fit_in_memory_are_refused_naming_them():
    config = MAMLTrainConfig(num_shots=10**9)
    with pytest.raises(ValueError) as error:
        task_families.check_fits_in_memory(config, available_bytes=16 * GiB)
    message = str(error.value)
    assert message.startswith("Invalid num_shots=1000000000: too large for this machine's "
                              "memory. A sinusoid run with meta_batch_size=25, "
                              "num_shots=1000000000, num_queries=10 needs at least ")
    # One meta-batch alone: 25 tasks x (10**9 + 10) points x (x, y) float32 = 186.3 GiB.
    assert "one meta-batch of sinusoid training episodes (25 tasks x 1000000010 points): " \
           "186.3 GiB" in message
    assert "this machine has 16.0 GiB" in message
    # Images too: the decoded Omniglot characters grow with image_size squared.
    with pytest.raises(ValueError, match=r"Invalid image_size=2000: too large .*the decoded "
                                         r"Omniglot images"):
        task_families.check_fits_in_memory(OMNIGLOT.replace(image_size=2000),
                                           available_bytes=64 * GiB)
    # Evaluation episodes are counted with their own sizes.
    with pytest.raises(ValueError, match=r"Invalid eval_num_queries=10000000000: .*evaluation"):
        task_families.check_fits_in_memory(MAMLTrainConfig(eval_num_queries=10**10),
                                           available_bytes=64 * GiB)


def test_a_run_too_large_for_memory_is_refused_at_once(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"Invalid num_shots=1000000000: too large for this "
                                         r"machine's memory.* GiB"):
        train(MAMLTrainConfig(num_shots=10**9), str(tmp_path / "run"), verbose=False)
    assert time.perf_counter() - start < 10
    assert not os.path.exists(tmp_path / "run")


def test_fields_of_one_task_family_are_known():
    for field in ("omniglot_protocol", "omniglot_source_dir", "eval_within_alphabet"):
        assert task_families.families_using(field) == ("omniglot",)
    for field in ("num_ways", "batch_norm", "image_size", "data_dir", "pooling"):
        assert task_families.families_using(field) == ("omniglot", "images")
    for field in ("dataset", "class_split", "backbone", "augmentation", "resnet12_widths"):
        assert task_families.families_using(field) == ("images",)
    assert task_families.families_using("num_shots") == task_families.TASK_FAMILIES
