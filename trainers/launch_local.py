"""`python -m trainers.launch_local`: runs a multi-worker training as local processes.

    python -m trainers.launch_local --num_workers=2 -- <flags of every worker>
    python -m trainers.launch_local --num_workers=2 --log_dir=runs/mw/logs -- \
        --strategy=multi_worker --model_dir=runs/mw

Everything after `--` goes, unchanged, to each worker (by default `python -m
keras_meta.cli.train_maml`), which gets its own TF_CONFIG; worker 0 is the chief. --log_dir
also writes each worker's output to <log_dir>/worker-<i>.log.

A thin wrapper, like the other trainers; everything lives in `keras_meta.cli.launch_local`.
"""

from keras_meta.cli.launch_local import *  # noqa: F401,F403
from keras_meta.cli.launch_local import console_main

if __name__ == "__main__":
    console_main()
