"""`MultiStepLossSchedule`: MAML++'s annealed weights of the query loss after each inner step.

Antoniou et al. 2019 (How to train your MAML, section 4, "multi-step loss optimization"):
the meta-loss is a weighted sum of the query losses after every inner step, starting with
equal weights and moving the weight onto the last step over the first part of training,
after which only the last step's loss remains. Early on, every step receives a direct
gradient, which stabilises training; at the end the objective is plain MAML's.
"""

import keras
import tensorflow as tf

from keras_meta._checks import check_int


@keras.saving.register_keras_serializable(package="keras_meta")
class MultiStepLossSchedule:
    """Per-step weights of the query losses as a function of the outer iteration.

    At iteration `t` with `p = t / anneal_iterations`, every step but the last has weight
    `max((1 - p) / S, min_fraction / S)` and the last `min(1 + p (S - 1), S - (S - 1)
    min_fraction) / S` (they sum to 1); from `t = anneal_iterations` on, the last step's
    weight is 1 and the others 0. MAML++'s Omniglot settings: `min_fraction=0.03` and
    annealing over the first 20 epochs of 500 iterations (their experiment configs).

    Args:
        num_steps: inner steps `S` of meta-training.
        anneal_iterations: outer iterations over which the weight moves onto the last step.
        min_fraction: the floor of a non-final weight during annealing, times `1 / S`.

    Example:

    >>> schedule = MultiStepLossSchedule(num_steps=5, anneal_iterations=10000)
    >>> schedule(0).numpy()          # [0.2, 0.2, 0.2, 0.2, 0.2]
    >>> schedule(10000).numpy()      # [0., 0., 0., 0., 1.]
    """

    def __init__(self, num_steps, anneal_iterations, min_fraction=0.03):
        check_int("num_steps", num_steps, minimum=1)
        check_int("anneal_iterations", anneal_iterations, minimum=1)
        if not 0.0 <= float(min_fraction) <= 1.0:
            raise ValueError(f"min_fraction must be in [0, 1]; got {min_fraction!r}.")
        self.num_steps = int(num_steps)
        self.anneal_iterations = int(anneal_iterations)
        self.min_fraction = float(min_fraction)

    def __call__(self, iteration):
        """The `[num_steps]` float32 weights at outer iteration `iteration` (a tensor or int)."""
        s = float(self.num_steps)
        progress = tf.cast(iteration, tf.float32) / float(self.anneal_iterations)
        floor = self.min_fraction / s
        earlier = tf.maximum((1.0 - progress) / s, floor)
        last = tf.minimum((1.0 + progress * (s - 1.0)) / s, 1.0 - (s - 1.0) * floor)
        annealing = tf.concat([tf.fill([self.num_steps - 1], earlier), [last]], axis=0)
        final_only = tf.one_hot(self.num_steps - 1, self.num_steps, dtype=tf.float32)
        return tf.where(progress < 1.0, annealing, final_only)

    def get_config(self):
        return {"num_steps": self.num_steps, "anneal_iterations": self.anneal_iterations,
                "min_fraction": self.min_fraction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
