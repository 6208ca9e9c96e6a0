"""`python -m trainers.demo`: the same program as `keras-meta-demo` (`keras_meta.cli.demo`).

Kept as a thin wrapper so that the documented `python -m` commands keep working from a
checkout; everything lives in `keras_meta.cli.demo`.
"""

from keras_meta.cli.demo import *  # noqa: F401,F403
from keras_meta.cli.demo import console_main

if __name__ == "__main__":
    console_main()
