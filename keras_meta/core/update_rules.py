"""Inner-loop update rules: how adaptation turns gradients into new parameters.

An update rule is anything with two methods, both pure functions of tensors:

    init_state(params) -> state
    apply(grads, params, state, *, step, loss) -> (new_params, new_state)

`step` is the Python index of the inner step (0-based), `loss` the support loss at `params`
(a scalar tensor), `state` any nest of tensors. Plain SGD (the MAML paper) is `SGDRule`; the
learned `LSTMOptimizer` follows the same protocol, so either can drive `adapt`.
"""

import tensorflow as tf


class SGDRule:
    """theta' = theta - lr * grad, with one learning rate, one per variable, or one per step.

    Args:
        learning_rate: a scalar (float or scalar tensor/variable); a list with one entry per
            parameter (each a scalar, or a tensor of the parameter's shape as in Meta-SGD); or a
            list of such lists, one per inner step (MAML++ per-step, per-layer rates).

    Per-step rates exist for the inner steps that were trained (MAML's `inner_steps`).
    Adaptation with more steps than that (e.g. evaluation with 10 steps after training with
    1) reuses the LAST step's rates for every step past it, as MAML++ does: step `k` uses
    `learning_rate[min(k, len(learning_rate) - 1)]`.

    Example:

    >>> rule = SGDRule(0.1)
    >>> new, _ = rule.apply([tf.ones([2])], [tf.zeros([2])], (), step=0, loss=None)
    >>> new[0].numpy()
    array([-0.1, -0.1], dtype=float32)
    """

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate

    def init_state(self, params):
        return ()

    def rate(self, step, index, num_params):
        lr = self.learning_rate
        if isinstance(lr, (list, tuple)):
            if lr and isinstance(lr[0], (list, tuple)):
                if step < 0:
                    raise ValueError(f"Inner step must be >= 0; got {step}.")
                # Past the trained steps, the last step's rates (MAML++).
                lr = lr[min(step, len(lr) - 1)]
            if len(lr) != num_params:
                raise ValueError(
                    f"Got {len(lr)} per-variable learning rates for {num_params} parameters."
                )
            lr = lr[index]
        return lr

    def apply(self, grads, params, state, *, step, loss=None):
        n = len(params)
        new_params = [
            p - _as_dtype(self.rate(step, i, n), p.dtype) * g
            for i, (p, g) in enumerate(zip(params, grads))
        ]
        return new_params, state


def _as_dtype(value, dtype):
    # A Python float goes straight to `dtype`: tf.cast would round it through float32 first,
    # which shows up as a 1e-8 relative error in float64 meta-gradients.
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype=dtype)
    return tf.cast(value, dtype)
