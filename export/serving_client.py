"""`python -m export.serving_client`: the same program as `keras-meta-client` (`keras_meta.cli.serving_client`).

Kept as a thin wrapper so that the documented `python -m` commands keep working from a
checkout; everything lives in `keras_meta.cli.serving_client`.
"""

from keras_meta.cli.serving_client import *  # noqa: F401,F403
from keras_meta.cli.serving_client import console_main

if __name__ == "__main__":
    console_main()
