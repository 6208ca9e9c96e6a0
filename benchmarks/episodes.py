"""Throughput of the Omniglot episode pipeline (episodes/s and meta-batches/s).

MAML meta-training on this CPU consumes about 32 episodes per second, so the pipeline must
deliver well above that (target: >= 320 episodes/s) not to be the bottleneck.

Usage:
    python benchmarks/episodes.py [--data-dir DIR] [--source-dir DIR] [--meta-batches 200]
                                  [--rotate-in-graph]
"""

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_meta.data.episode_sampler import EpisodeConfig, EpisodeSampler  # noqa: E402
from keras_meta.data.omniglot import omniglot_splits  # noqa: E402

SETTINGS = (
    EpisodeConfig(num_ways=5, num_shots=1, num_queries=15, meta_batch_size=32),
    EpisodeConfig(num_ways=20, num_shots=1, num_queries=5, meta_batch_size=16),
)


def measure(sampler, meta_batches, warmup=5):
    iterator = iter(sampler.dataset(seed=0))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(meta_batches):
        next(iterator)
    return meta_batches / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: "
                        "$KERAS_META_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--source-dir", default="default",
                        help="local Omniglot zips (default: ../shared/data/omniglot)")
    parser.add_argument("--meta-batches", type=int, default=200)
    parser.add_argument("--rotate-in-graph", action="store_true",
                        help="turn images per episode instead of precomputing the 4 turns")
    args = parser.parse_args(argv)
    print("command:", shlex.join([os.path.basename(sys.executable)] + sys.argv))
    print(f"cpus: {os.cpu_count()}")
    start = time.perf_counter()
    train = omniglot_splits(args.data_dir, args.source_dir)["train"]
    print(f"load: {time.perf_counter() - start:.1f}s, {train}")
    for config in SETTINGS:
        sampler = EpisodeSampler(train, config, precompute_rotations=not args.rotate_in_graph)
        rate = measure(sampler, args.meta_batches)
        print(f"{config.num_ways}-way {config.num_shots}-shot {config.num_queries}-query, "
              f"meta-batch {config.meta_batch_size}: {rate * config.meta_batch_size:,.0f} "
              f"episodes/s, {rate:,.1f} meta-batches/s")


if __name__ == "__main__":
    main()
