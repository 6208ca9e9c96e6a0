"""`python -m trainers.train_maml`: the same program as `keras-meta-train` (`keras_meta.cli.train_maml`).

Kept as a thin wrapper so that the documented `python -m` commands keep working from a
checkout; everything lives in `keras_meta.cli.train_maml`.
"""

from keras_meta.cli.train_maml import *  # noqa: F401,F403
from keras_meta.cli.train_maml import console_main

if __name__ == "__main__":
    console_main()
