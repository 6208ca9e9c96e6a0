"""`MetaOptimizerConfig`: the settings of learned-optimizer meta-training."""

import dataclasses
from typing import Optional, Tuple

from keras_meta._checks import check_int


@dataclasses.dataclass(frozen=True)
class MetaOptimizerConfig:
    """How an `LSTMOptimizer` is meta-trained (Andrychowicz et al. 2016).

    Args:
        num_steps: T, optimizee steps per function (100 in the paper).
        unroll_length: steps per truncated-BPTT segment; phi is updated after each segment.
            Must divide `num_steps` (every segment then has the same graph, traced once).
        meta_lr: Adam learning rate on phi.
        first_order: hold the optimizee's gradients constant, the paper's assumption (the
            default). `False` differentiates through them (the exact meta-gradient).
        loss_weights: w_t for t = 1..T, or `None` for all ones.
        meta_clipnorm: optional global-norm clipping of the meta-gradient.
        seed: base seed; meta-iteration i trains on the function named by (seed, i).
        curriculum_iterations: a curriculum on the horizon (0: none). Meta-iteration i runs
            `num_segments(i)` segments, one at i = 0, one more every
            `curriculum_iterations / num_unrolls` iterations, all of them from then on: the
            rule first learns to make progress, then to keep making it (as in Metz et al.
            2019's unroll-length curricula).
    """

    num_steps: int = 100
    unroll_length: int = 20
    meta_lr: float = 1e-3
    first_order: bool = True
    loss_weights: Optional[Tuple[float, ...]] = None
    meta_clipnorm: Optional[float] = None
    seed: int = 0
    curriculum_iterations: int = 0

    def __post_init__(self):
        for name in ("num_steps", "unroll_length"):
            check_int(f"MetaOptimizerConfig.{name}", getattr(self, name))
        if self.num_steps % self.unroll_length:
            raise ValueError(
                f"MetaOptimizerConfig.unroll_length ({self.unroll_length}) must divide "
                f"num_steps ({self.num_steps})."
            )
        if not self.meta_lr > 0:
            raise ValueError(f"MetaOptimizerConfig.meta_lr must be > 0; got {self.meta_lr!r}.")
        if self.loss_weights is not None:
            weights = tuple(float(w) for w in self.loss_weights)
            if len(weights) != self.num_steps:
                raise ValueError(
                    f"MetaOptimizerConfig.loss_weights needs num_steps ({self.num_steps}) "
                    f"weights; got {len(weights)}."
                )
            object.__setattr__(self, "loss_weights", weights)
        check_int("MetaOptimizerConfig.curriculum_iterations", self.curriculum_iterations,
                  minimum=0)
        if self.meta_clipnorm is not None and not self.meta_clipnorm > 0:
            raise ValueError(
                f"MetaOptimizerConfig.meta_clipnorm must be > 0 or None; got {self.meta_clipnorm!r}.")

    @property
    def num_unrolls(self):
        return self.num_steps // self.unroll_length

    def num_segments(self, iteration):
        """Segments (of `unroll_length` steps) that meta-iteration `iteration` runs."""
        if not self.curriculum_iterations:
            return self.num_unrolls
        return min(self.num_unrolls,
                   1 + (int(iteration) * self.num_unrolls) // self.curriculum_iterations)

    def weights(self):
        """w_1..w_T as a tuple of floats."""
        return self.loss_weights if self.loss_weights is not None else (1.0,) * self.num_steps
