"""`python -m export.export_saved_model`: the same program as `keras-meta-export` (`keras_meta.cli.export`).

Kept as a thin wrapper so that the documented `python -m` commands keep working from a
checkout; everything lives in `keras_meta.cli.export`.
"""

from keras_meta.cli.export import *  # noqa: F401,F403
from keras_meta.cli.export import console_main

if __name__ == "__main__":
    console_main()
