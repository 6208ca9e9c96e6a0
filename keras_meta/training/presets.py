"""The papers' settings as named `MAMLTrainConfig` presets."""

from keras_meta.training.config import MAMLTrainConfig

# MAML paper section 5.2 / appendix A.1 (Omniglot): 5-way uses 1 step of alpha 0.4 (3 at test)
# and meta-batch 32; 20-way 5 steps of alpha 0.1 and meta-batch 16; 60k iterations.
_OMNIGLOT_5WAY = MAMLTrainConfig(
    task_family="omniglot", num_ways=5, num_shots=1, num_queries=15, eval_num_shots=None,
    eval_num_queries=None, inner_lr=0.4, inner_steps=1, eval_inner_steps=(3,),
    meta_batch_size=32, num_iterations=60000, eval_every=1000, checkpoint_every=250,
    log_every=50)
_OMNIGLOT_20WAY = _OMNIGLOT_5WAY.replace(num_ways=20, num_queries=5, inner_lr=0.1,
                                         inner_steps=5, eval_inner_steps=(5,),
                                         meta_batch_size=16)

PRESETS = {
    # Finn et al. 2017, section 5.1: K=10, alpha 0.01, 1 step, 25 tasks, Adam 1e-3, 70k
    # iterations; evaluated 5-shot after 1, 5 and 10 steps.
    "sinusoid": MAMLTrainConfig(),
    "omniglot_5way_1shot": _OMNIGLOT_5WAY,
    "omniglot_5way_5shot": _OMNIGLOT_5WAY.replace(num_shots=5),
    "omniglot_20way_1shot": _OMNIGLOT_20WAY,
    "omniglot_20way_5shot": _OMNIGLOT_20WAY.replace(num_shots=5),
}

DEFAULT_PRESET_FOR_TASK_FAMILY = {"sinusoid": "sinusoid", "omniglot": "omniglot_5way_1shot"}


def get_preset(name):
    """A named preset (`PRESETS`); raises a `ValueError` listing the names for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
    return PRESETS[name]
