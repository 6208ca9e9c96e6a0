"""The papers' settings as named `MAMLTrainConfig` presets."""

from keras_meta.training.config import MAMLTrainConfig

# MAML paper section 5.2 / appendix A.1 (Omniglot): 5-way uses 1 step of alpha 0.4 (3 at test)
# and meta-batch 32; 20-way 5 steps of alpha 0.1 and meta-batch 16; 60k iterations.
# Queries: the paper's code (cbfinn/maml, main.py) draws 2K images per Omniglot class, K support
# and K query, in training; only mini-ImageNet trains on 15 queries per class. Training on K
# queries costs a third of the time per iteration of 15 at 5w1s on this 2-core CPU
# (benchmarks/results/omniglot_queries.md). At test the number of queries does not change the
# expected accuracy, only the width of its interval, so every Omniglot preset tests on the
# same 15 queries per class, over the paper's 600 tasks.
OMNIGLOT_EVAL_QUERIES = 15
_OMNIGLOT_5WAY = MAMLTrainConfig(
    task_family="omniglot", num_ways=5, num_shots=1, num_queries=1, eval_num_shots=None,
    eval_num_queries=OMNIGLOT_EVAL_QUERIES, inner_lr=0.4, inner_steps=1, eval_inner_steps=(3,),
    meta_batch_size=32, num_iterations=60000, eval_every=1000, checkpoint_every=250,
    log_every=50)
_OMNIGLOT_20WAY = _OMNIGLOT_5WAY.replace(num_ways=20, inner_lr=0.1, inner_steps=5,
                                         eval_inner_steps=(5,), meta_batch_size=16)

PRESETS = {
    # Finn et al. 2017, section 5.1: K=10, alpha 0.01, 1 step, 25 tasks, Adam 1e-3, 70k
    # iterations; evaluated 5-shot after 1, 5 and 10 steps.
    "sinusoid": MAMLTrainConfig(),
    "omniglot_5way_1shot": _OMNIGLOT_5WAY,
    "omniglot_5way_5shot": _OMNIGLOT_5WAY.replace(num_shots=5, num_queries=5),
    "omniglot_20way_1shot": _OMNIGLOT_20WAY,
    "omniglot_20way_5shot": _OMNIGLOT_20WAY.replace(num_shots=5, num_queries=5),
    # The heavier query counts of keras-meta's first round (15 per class at 5-way, 5 at
    # 20-way), kept by name for comparison; not the papers' protocol.
    "omniglot_5way_1shot_15queries": _OMNIGLOT_5WAY.replace(num_queries=15),
    "omniglot_5way_5shot_15queries": _OMNIGLOT_5WAY.replace(num_shots=5, num_queries=15),
    "omniglot_20way_1shot_5queries": _OMNIGLOT_20WAY.replace(num_queries=5),
}

DEFAULT_PRESET_FOR_TASK_FAMILY = {"sinusoid": "sinusoid", "omniglot": "omniglot_5way_1shot"}


def get_preset(name):
    """A named preset (`PRESETS`); raises a `ValueError` listing the names for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
    return PRESETS[name]
