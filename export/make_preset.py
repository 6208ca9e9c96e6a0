"""`python -m export.make_preset`: the same program as `keras_meta.cli.make_preset`.

Kept as a thin wrapper so that the documented `python -m` commands work from a checkout.
"""

from keras_meta.cli.make_preset import *  # noqa: F401,F403
from keras_meta.cli.make_preset import console_main

if __name__ == "__main__":
    console_main()
