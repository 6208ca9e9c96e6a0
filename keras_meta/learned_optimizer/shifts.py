"""The generalization suite's shifts: the test families of Andrychowicz et al. (2016), 3.2-3.4.

A learned rule is meta-trained on one family, the base: the paper's 20-unit sigmoid MLP on
8x8 digits for 100 steps. A user who puts it into `model.fit` is always somewhere else. Each
`Shift` names one such place, as a change of the base family and of the horizon:

    base        the training family and horizon (held-out images and functions)
    horizon_2x  200 steps            horizon_5x  500 steps
    hidden_40   40 hidden units      two_layers  two hidden layers of 20
    relu        ReLU activations (the paper's rule failed here)
    conv        a small convnet on the same digits (the paper's CIFAR experiment, in small)
"""

import dataclasses
from typing import Any, Mapping

from keras_meta.learned_optimizer.optimizees import get_optimizee


@dataclasses.dataclass(frozen=True)
class Shift:
    """One test family: the optimizee and horizon that differ from meta-training.

    Args:
        name: short name (a flag value).
        description: what changed, in words.
        optimizee: registry name of the test family (`keras_meta.learned_optimizer.optimizees`).
        overrides: constructor arguments of the test family that differ from the base's.
        horizon_factor: test steps as a multiple of the training horizon.

    Example:

    >>> SHIFTS["relu"].optimizee_for("heldout")
    <MLPDigitsOptimizee ...>   # 20 ReLU units
    >>> SHIFTS["horizon_5x"].horizon(100)
    500
    """

    name: str
    description: str
    optimizee: str = "mlp_digits"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    horizon_factor: int = 1

    def optimizee_for(self, split, dtype="float32"):
        """The test family on `split` ("train" to tune baselines on, "heldout" to report)."""
        return get_optimizee(self.optimizee, split=split, dtype=dtype, **dict(self.overrides))

    def horizon(self, training_steps):
        return self.horizon_factor * training_steps


SHIFTS = {
    shift.name: shift for shift in (
        Shift("base", "the training family: 20 sigmoid units, the training horizon"),
        Shift("horizon_2x", "2x the training horizon", horizon_factor=2),
        Shift("horizon_5x", "5x the training horizon", horizon_factor=5),
        Shift("hidden_40", "40 hidden units", overrides={"hidden_units": 40}),
        Shift("two_layers", "two hidden layers of 20 units", overrides={"hidden_units": (20, 20)}),
        Shift("relu", "ReLU instead of sigmoid activations", overrides={"activation": "relu"}),
        Shift("conv", "a convnet (3x3x8, pool, 3x3x16, pool, dense) with ReLU",
              optimizee="conv_digits"),
    )
}
SHIFT_NAMES = tuple(SHIFTS)
# The five network shifts, as opposed to the horizon ones.
NETWORK_SHIFTS = ("horizon_5x", "hidden_40", "two_layers", "relu", "conv")


def get_shift(name):
    """The `Shift` called `name` (one of `SHIFT_NAMES`)."""
    if name not in SHIFTS:
        raise ValueError(f"Unknown shift {name!r}; expected one of {SHIFT_NAMES}.")
    return SHIFTS[name]
