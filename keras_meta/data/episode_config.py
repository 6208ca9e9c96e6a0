"""Shape of an N-way K-shot episode stream."""

import dataclasses

from keras_meta._checks import check_int


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """What each meta-batch of classification episodes looks like.

    Args:
        num_ways: N, classes per episode.
        num_shots: K, support images per class.
        num_queries: Q, query images per class (disjoint from the support images).
        meta_batch_size: episodes per meta-batch (a static dimension).
        num_episodes: a fixed number of episodes (e.g. 600 test tasks), a multiple of
            `meta_batch_size`; `None` for an endless stream.

    Example:

    >>> EpisodeConfig(num_ways=5, num_shots=1, num_queries=15, meta_batch_size=32).examples_per_class
    16
    """

    num_ways: int = 5
    num_shots: int = 1
    num_queries: int = 15
    meta_batch_size: int = 32
    num_episodes: int | None = None

    def __post_init__(self):
        for name in ("num_ways", "num_shots", "num_queries", "meta_batch_size"):
            check_int(f"EpisodeConfig.{name}", getattr(self, name))
        check_int("EpisodeConfig.num_episodes", self.num_episodes, allow_none=True)
        if self.num_episodes is not None:
            n = self.num_episodes
            if n % self.meta_batch_size:
                raise ValueError(
                    f"EpisodeConfig.num_episodes={n} is not a multiple of meta_batch_size="
                    f"{self.meta_batch_size}: {n % self.meta_batch_size} episodes would be "
                    "dropped (meta-batches keep a static size). Pick a meta_batch_size that "
                    f"divides {n}.")

    @property
    def examples_per_class(self):
        """Images drawn per class: support plus query."""
        return self.num_shots + self.num_queries

    @property
    def num_meta_batches(self):
        """Meta-batches in a fixed stream, `None` when endless."""
        return None if self.num_episodes is None else self.num_episodes // self.meta_batch_size

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)
