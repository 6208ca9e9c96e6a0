"""`LearnedOptimizerTrainConfig`: the settings of a learned-optimizer meta-training run."""

import dataclasses
import math

from keras_meta._checks import is_finite_number, is_int
from keras_meta.learned_optimizer.optimizees import OPTIMIZEE_NAMES


@dataclasses.dataclass(frozen=True)
class LearnedOptimizerTrainConfig:
    """Everything a learned-optimizer meta-training run needs; each field is one flag.

    Args:
        optimizee: the optimizee family, one of `OPTIMIZEE_NAMES`.
        num_steps: T, optimizee steps per function.
        unroll_length: truncated-BPTT segment length (divides `num_steps`).
        num_meta_iterations: total meta-iterations (functions); a resumed run stops there too.
        meta_lr: Adam learning rate on phi.
        first_order: hold the optimizee gradients constant (the paper; default). `False`
            gives the exact meta-gradient through them.
        hidden_size, num_layers: LSTM size.
        output_scale: the LSTM output scale (0.1 in the paper).
        num_functions: quadratics optimised side by side per meta-iteration.
        seed: seed of phi's initialisation and of the training functions.
        log_every: iterations between progress lines and summaries.
        checkpoint_every: iterations between checkpoints (one is also written at the end).
    """

    optimizee: str = "quadratic"
    num_steps: int = 100
    unroll_length: int = 20
    num_meta_iterations: int = 1000
    meta_lr: float = 3e-3
    first_order: bool = True
    hidden_size: int = 20
    num_layers: int = 2
    output_scale: float = 0.1
    num_functions: int = 8
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 200

    def __post_init__(self):
        if self.optimizee not in OPTIMIZEE_NAMES:
            raise ValueError(f"Flag --optimizee got {self.optimizee!r}; allowed values: "
                             f"{', '.join(OPTIMIZEE_NAMES)}.")
        for name in ("num_steps", "unroll_length", "hidden_size", "num_layers",
                     "num_functions", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"Flag --{name} got {value!r}; allowed values: integers >= 1.")
        if not is_int(self.num_meta_iterations) or self.num_meta_iterations < 0:
            raise ValueError(f"Flag --num_meta_iterations got {self.num_meta_iterations!r}; "
                             "allowed values: integers >= 0.")
        if self.num_steps % self.unroll_length:
            raise ValueError(
                f"Flag --unroll_length got {self.unroll_length}; allowed values: divisors of "
                f"--num_steps={self.num_steps}.")
        if not (is_finite_number(self.meta_lr) and self.meta_lr > 0):
            raise ValueError(f"Flag --meta_lr got {self.meta_lr!r}; allowed values: finite "
                             "floats > 0.")
        if not (isinstance(self.output_scale, (int, float)) and math.isfinite(self.output_scale)
                and self.output_scale > 0):
            raise ValueError(f"Flag --output_scale got {self.output_scale!r}; allowed values: "
                             "finite floats > 0.")
