"""Optimizee families: the functions a learned optimizer is meta-trained and tested on.

An optimizee family is a small object with, for a stateless integer seed `seed` (shape [2])
that names one function and a step index `step`:

    init_params(seed) -> list of tensors (theta_0)
    function_losses(params, seed, step) -> [num_functions] losses at `step` (its mini-batch)
    loss(params, seed, step) -> scalar, the sum of `function_losses`
    eval_losses(params, seed) -> [num_functions] losses used to report results
    num_functions, dtype, get_config() and from_config(config)

`loss` sums over the functions of a vectorised family so that each coordinate's gradient is
that of its own function, the scale an optimizer would see when run on it alone. Every method
is a pure function of tensors (stateless seeds, no variables), so it runs inside `tf.function`
and has second derivatives.

Registered families (`OPTIMIZEES`): random quadratics, the paper's 20-unit sigmoid MLP on 8x8
digits (whose width, depth and activation are options: the test "shifts" of Andrychowicz et
al. 2016) and a small convnet on the same digits. `RandomScaling` wraps any of them with
random per-coordinate rescaling (Lv et al. 2017).
"""

from keras_meta.learned_optimizer.optimizees.conv_digits import ConvDigitsOptimizee
from keras_meta.learned_optimizer.optimizees.mlp_digits import MLPDigitsOptimizee
from keras_meta.learned_optimizer.optimizees.quadratic import QuadraticOptimizee
from keras_meta.learned_optimizer.optimizees.random_scaling import RandomScaling

OPTIMIZEES = {"quadratic": QuadraticOptimizee, "mlp_digits": MLPDigitsOptimizee,
              "conv_digits": ConvDigitsOptimizee}
OPTIMIZEE_NAMES = tuple(OPTIMIZEES)


def get_optimizee(name, **kwargs):
    """An optimizee family by name (one of `OPTIMIZEE_NAMES`), built with `kwargs`."""
    if name not in OPTIMIZEES:
        raise ValueError(f"Unknown optimizee {name!r}; expected one of {OPTIMIZEE_NAMES}.")
    return OPTIMIZEES[name](**kwargs)


def optimizee_name(optimizee):
    """The registry name (a key of `OPTIMIZEES`) of the family `optimizee` is an instance of."""
    for name, cls in OPTIMIZEES.items():
        if type(optimizee) is cls:
            return name
    raise ValueError(f"{type(optimizee).__name__} is not a registered optimizee family; "
                     f"expected an instance of one of {OPTIMIZEE_NAMES}.")


__all__ = ["ConvDigitsOptimizee", "MLPDigitsOptimizee", "OPTIMIZEES", "OPTIMIZEE_NAMES",
           "QuadraticOptimizee", "RandomScaling", "get_optimizee", "optimizee_name"]
