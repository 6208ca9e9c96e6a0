"""Optimizee families for meta-training learned optimizers.

A task family is a small object with, for a stateless integer seed `seed` (shape [2]) that
names one function and a step index `step`:

    init_params(seed) -> list of tensors (theta_0)
    function_losses(params, seed, step) -> [num_functions] losses at `step` (its mini-batch)
    loss(params, seed, step) -> scalar, the sum of `function_losses`
    eval_losses(params, seed) -> [num_functions] losses used to report results

`loss` sums over the functions of a vectorised family so that each coordinate's gradient is
that of its own function, the scale an optimizer would see when run on it alone.
"""

from keras_meta.tasks.mlp_digits import MLPDigitsTask
from keras_meta.tasks.quadratic import QuadraticTask

TASK_NAMES = ("quadratic", "mlp_digits")


def get_task(name, **kwargs):
    """A task family by name (one of `TASK_NAMES`)."""
    if name == "quadratic":
        return QuadraticTask(**kwargs)
    if name == "mlp_digits":
        return MLPDigitsTask(**kwargs)
    raise ValueError(f"Unknown task {name!r}; expected one of {TASK_NAMES}.")


__all__ = ["MLPDigitsTask", "QuadraticTask", "TASK_NAMES", "get_task"]
