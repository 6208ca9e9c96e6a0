"""Optimizee families: the functions a learned optimizer is meta-trained and tested on.

An optimizee family is a small object with, for a stateless integer seed `seed` (shape [2])
that names one function and a step index `step`:

    init_params(seed) -> list of tensors (theta_0)
    function_losses(params, seed, step) -> [num_functions] losses at `step` (its mini-batch)
    loss(params, seed, step) -> scalar, the sum of `function_losses`
    eval_losses(params, seed) -> [num_functions] losses used to report results

`loss` sums over the functions of a vectorised family so that each coordinate's gradient is
that of its own function, the scale an optimizer would see when run on it alone.
"""

from keras_meta.learned_optimizer.optimizees.mlp_digits import MLPDigitsOptimizee
from keras_meta.learned_optimizer.optimizees.quadratic import QuadraticOptimizee

OPTIMIZEES = {"quadratic": QuadraticOptimizee, "mlp_digits": MLPDigitsOptimizee}
OPTIMIZEE_NAMES = tuple(OPTIMIZEES)


def get_optimizee(name, **kwargs):
    """An optimizee family by name (one of `OPTIMIZEE_NAMES`), built with `kwargs`."""
    if name not in OPTIMIZEES:
        raise ValueError(f"Unknown optimizee {name!r}; expected one of {OPTIMIZEE_NAMES}.")
    return OPTIMIZEES[name](**kwargs)


__all__ = ["MLPDigitsOptimizee", "OPTIMIZEES", "OPTIMIZEE_NAMES", "QuadraticOptimizee",
           "get_optimizee"]
