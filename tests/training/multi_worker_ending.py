"""The end of a multi-worker run when a peer does not reach it: run by both workers of a
local cluster (`python -m trainers.launch_local --program=tests/training/multi_worker_ending.py
-- RUN_DIR`).

Worker 1 leaves as soon as the cluster has formed; the chief then ends as the trainer ends
(`loop._finish_together`), which must warn and return, not fail a run whose results are whole.
"""

import sys
import time

from keras_meta.training import loop
from keras_meta.training.cluster import cluster_role, start_multi_worker

TIMEOUT_S = 5


def main(run_dir):
    role = cluster_role()
    start_multi_worker(role, timeout_seconds=TIMEOUT_S)
    if not role.is_chief:
        print(f"[ending] {role.name} left without waiting", flush=True)
        return
    start = time.monotonic()
    loop._finish_together(role, TIMEOUT_S, run_dir, print)
    print(f"[ending] {role.name} returned after {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
