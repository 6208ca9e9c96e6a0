"""The end of a multi-worker run when a peer does not reach it: run by both workers of a
local cluster (`python -m trainers.launch_local --program=tests/training/multi_worker_ending.py
-- RUN_DIR [LEAVER]`).

The worker LEAVER (`1`, the default, or `0`, the chief) leaves as soon as the cluster has
formed; the other ends as the trainer ends (`loop._finish_together`). A chief left alone must
warn and return, not fail a run whose results are whole; a non-chief left alone must fail with
a message that sends the user to the chief's output.
"""

import sys
import time

from keras_meta.training import loop
from keras_meta.training.cluster import ClusterError, cluster_role, start_multi_worker

TIMEOUT_S = 5


def main(run_dir, leaver="1"):
    role = cluster_role()
    start_multi_worker(role, timeout_seconds=TIMEOUT_S)
    if str(role.worker_index) == leaver:
        print(f"[ending] {role.name} left without waiting", flush=True)
        return
    start = time.monotonic()
    try:
        loop._finish_together(role, TIMEOUT_S, run_dir, print)
    except ClusterError as error:
        print(f"[ending] {role.name} raised after {time.monotonic() - start:.1f} s: {error}",
              flush=True)
        sys.exit(3)
    print(f"[ending] {role.name} returned after {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
