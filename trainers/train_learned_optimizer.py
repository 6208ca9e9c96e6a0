"""`python -m trainers.train_learned_optimizer`: the same program as `keras-meta-train-optimizer` (`keras_meta.cli.train_learned_optimizer`).

Kept as a thin wrapper so that the documented `python -m` commands keep working from a
checkout; everything lives in `keras_meta.cli.train_learned_optimizer`.
"""

from keras_meta.cli.train_learned_optimizer import *  # noqa: F401,F403
from keras_meta.cli.train_learned_optimizer import console_main

if __name__ == "__main__":
    console_main()
