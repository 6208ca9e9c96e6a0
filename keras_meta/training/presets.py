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

# MAML++ (Antoniou et al. 2019, "How to train your MAML") from keras-meta's pieces, each
# as the paper and its experiment configs (HowToTrainYourMAMLPytorch, experiment_config/
# omniglot_maml++_*) set it: per-step batch norm (BNRS + BNWB: `batch_norm="per_step"`),
# per-layer per-step learned inner rates from 0.1 (LSLR: `learn_inner_lr="per_step"`), 5 inner
# steps in training and at test, the multi-step loss annealed over the first 20 epochs of 500
# iterations (MSL), cosine annealing of Adam's 1e-3 down to 1e-5 (CA), meta-batch 8 (5-way)
# and 16 (20-way), 1 query per class. Derivative-order annealing (DA) is available
# (`first_order_iterations`); their Omniglot configs train second order throughout
# (first_order_to_second_order_epoch = -1), and so does this preset. Differences kept: our
# conv4 downsamples with strided convolutions (the MAML paper's Omniglot network), theirs
# with max-pooling; and 60,000 iterations, the MAML paper's length, not their 125,000.
_MAML_PLUS_PLUS_5WAY = _OMNIGLOT_5WAY.replace(
    batch_norm="per_step", learn_inner_lr="per_step", inner_lr=0.1, inner_steps=5,
    eval_inner_steps=(5,), multi_step_loss=True, multi_step_loss_anneal_iterations=10000,
    meta_lr_schedule="cosine", meta_lr_min=1e-5, meta_batch_size=8)

# MAML paper section 5.2 / appendix A.1 (mini-ImageNet): the 4-block network with 32 filters
# and 2x2 max-pooling, flattened; 5 inner steps of alpha 0.01 in training, 10 at test;
# meta-batch 4 (1-shot) and 2 (5-shot); 15 queries per class; 60k iterations; 84x84 RGB.
# The class split is Ravi & Larochelle's (the standard mini-ImageNet split); the images are
# the user's (`--dataset=folder:PATH` of mini-ImageNet's, or ImageNet's, class folders by
# WordNet id), as there is no TFDS build of mini-ImageNet.
_MINI_IMAGENET_5WAY_1SHOT = MAMLTrainConfig(
    task_family="images", class_split="mini_imagenet", image_size=84, image_channels=3,
    backbone="conv4", conv4_downsample="maxpool", conv4_filters=32, num_ways=5, num_shots=1,
    num_queries=15, eval_num_shots=None, eval_num_queries=15, inner_lr=0.01, inner_steps=5,
    eval_inner_steps=(10,), meta_batch_size=4, num_iterations=60000, eval_every=1000,
    checkpoint_every=250, log_every=50)
# CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018): the MAML mini-ImageNet
# settings at 32x32, as MAML baselines on them are run (e.g. Bertinetto et al.'s MAML
# baseline, and MetaOptNet's tables), over TFDS cifar100 with the published class splits.
_CIFAR_FS_5WAY_1SHOT = _MINI_IMAGENET_5WAY_1SHOT.replace(
    dataset="tfds:cifar100", class_split="cifar_fs", image_size=32)
# CUB-200-2011 with Chen et al.'s (2019) 100/50/50 class split, at mini-ImageNet's settings
# (84x84, conv4 with max-pooling), as their MAML baseline.
_CUB_5WAY_1SHOT = _MINI_IMAGENET_5WAY_1SHOT.replace(
    dataset="tfds:caltech_birds2011", class_split="cub")


def _five_shot(config):
    # The MAML paper's 5-shot mini-ImageNet meta-batch is 2.
    return config.replace(num_shots=5, meta_batch_size=2)


# A sinusoid meta-iteration takes 0.5-2 ms on a 2-core CPU, so the default period of 1,000
# iterations saved every second or two, and a save costs 20-45 ms of TensorFlow's Python
# (2-5% of the run; benchmarks/trainer_loop.py). Every 5,000 iterations, with validation, is
# every 3-10 s: a kill loses seconds, and the saves cost under 1%.
_SINUSOID = MAMLTrainConfig(checkpoint_every=5000)

PRESETS = {
    # Finn et al. 2017, section 5.1: K=10, alpha 0.01, 25 tasks, Adam 1e-3, 70k iterations;
    # evaluated 5-shot after 1, 5 and 10 steps. The paper meta-trains through 1 inner step
    # ("sinusoid_one_step"). That objective never pays for curvature above 2/alpha, where
    # more steps diverge: at its meta-learned initialisation the support loss's top Hessian
    # eigenvalue exceeds 2/alpha on 559 of 600 test tasks, and 10-step adaptation diverges on
    # some (README, "Sinusoid regression"). So the preset meta-trains through 5 steps, with
    # the query loss after step 1 and after step 5 weighted equally: the step that is
    # evaluated alone, and the steps that expose an unstable direction.
    "sinusoid": _SINUSOID.replace(inner_steps=5, multi_step_loss=True,
                                  multi_step_loss_weights=(0.5, 0.0, 0.0, 0.0, 0.5)),
    "sinusoid_one_step": _SINUSOID,
    "omniglot_5way_1shot": _OMNIGLOT_5WAY,
    "omniglot_5way_5shot": _OMNIGLOT_5WAY.replace(num_shots=5, num_queries=5),
    "omniglot_20way_1shot": _OMNIGLOT_20WAY,
    "omniglot_20way_5shot": _OMNIGLOT_20WAY.replace(num_shots=5, num_queries=5),
    # The heavier query counts of keras-meta's first round (15 per class at 5-way, 5 at
    # 20-way), kept by name for comparison; not the papers' protocol.
    "omniglot_5way_1shot_15queries": _OMNIGLOT_5WAY.replace(num_queries=15),
    "omniglot_5way_5shot_15queries": _OMNIGLOT_5WAY.replace(num_shots=5, num_queries=15),
    "omniglot_20way_1shot_5queries": _OMNIGLOT_20WAY.replace(num_queries=5),
    "maml_plus_plus_omniglot_5way_1shot": _MAML_PLUS_PLUS_5WAY,
    "maml_plus_plus_omniglot_20way_1shot": _MAML_PLUS_PLUS_5WAY.replace(
        num_ways=20, meta_batch_size=16),
    "mini_imagenet_5way_1shot": _MINI_IMAGENET_5WAY_1SHOT,
    "mini_imagenet_5way_5shot": _five_shot(_MINI_IMAGENET_5WAY_1SHOT),
    "cifar_fs_5way_1shot": _CIFAR_FS_5WAY_1SHOT,
    "cifar_fs_5way_5shot": _five_shot(_CIFAR_FS_5WAY_1SHOT),
    "fc100_5way_1shot": _CIFAR_FS_5WAY_1SHOT.replace(class_split="fc100"),
    "fc100_5way_5shot": _five_shot(_CIFAR_FS_5WAY_1SHOT.replace(class_split="fc100")),
    "cub_5way_1shot": _CUB_5WAY_1SHOT,
    "cub_5way_5shot": _five_shot(_CUB_5WAY_1SHOT),
    # Any folder of class subfolders (or TFDS image dataset): --dataset=folder:PATH; the
    # CIFAR-FS settings at 84x84 are a sound start for natural images.
    "images_5way_1shot": _MINI_IMAGENET_5WAY_1SHOT.replace(class_split=None),
}

DEFAULT_PRESET_FOR_TASK_FAMILY = {"sinusoid": "sinusoid", "omniglot": "omniglot_5way_1shot",
                                  "images": "images_5way_1shot"}


def get_preset(name):
    """A named preset (`PRESETS`); raises a `ValueError` listing the names for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
    return PRESETS[name]
