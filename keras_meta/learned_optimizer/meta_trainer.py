"""`MetaOptimizerTrainer`: who applies the learned optimizer's meta-gradient, and when.

What is learned is the rule (`LSTMOptimizer` or `MLPOptimizer`, phi); what it is applied to is an optimizee
family; how the meta-gradient is computed is truncated backpropagation
(`truncated_bptt.segment_meta_gradients`); this class applies it with Adam after each
segment.
"""

import time

import keras
import tensorflow as tf

from keras_meta.learned_optimizer.meta_optimizer_config import MetaOptimizerConfig
from keras_meta.learned_optimizer.truncated_bptt import segment_meta_gradients


class MetaOptimizerTrainer:
    """Meta-trains the weights phi of a learned rule on an optimizee family with Adam.

    Each meta-iteration draws a new function (seed (config.seed, iteration)), runs the
    optimizee for `num_steps` steps in segments of `unroll_length`, and updates phi after each
    segment. Every segment runs one `tf.function` (loss, meta-gradient and Adam update in one
    graph), traced once for the whole run.

    Args:
        rule: the `LSTMOptimizer` or `MLPOptimizer` to train (its trainable weights are phi).
        optimizee: an optimizee family (`QuadraticOptimizee`, `MLPDigitsOptimizee`, ...).
        config: a `MetaOptimizerConfig`.

    Example:

    >>> rule = LSTMOptimizer()
    >>> trainer = MetaOptimizerTrainer(rule, QuadraticOptimizee(num_functions=8),
    ...                                MetaOptimizerConfig(num_steps=100, unroll_length=20))
    >>> for _ in range(100):
    ...     average_loss = trainer.train_iteration()
    """

    def __init__(self, rule, optimizee, config=MetaOptimizerConfig()):
        if not isinstance(config, MetaOptimizerConfig):
            raise TypeError(
                f"config must be a MetaOptimizerConfig; got {type(config).__name__}.")
        if not rule.trainable_variables:
            raise ValueError("The update rule has no trainable weights (phi) to meta-train.")
        self.rule = rule
        self.optimizee = optimizee
        self.config = config
        self.meta_optimizer = keras.optimizers.Adam(
            learning_rate=config.meta_lr, global_clipnorm=config.meta_clipnorm)
        self.meta_optimizer.build(rule.trainable_variables)
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="meta_iteration")
        weights = config.weights()
        k = config.unroll_length
        self._segment_weights = [
            tf.constant(weights[i:i + k], dtype=rule.variable_dtype)
            for i in range(0, config.num_steps, k)
        ]
        self._train_segment = tf.function(self._train_segment_impl)

    def _train_segment_impl(self, params, state, seed, start_step, weights):
        meta_loss, losses, grads, params, state = segment_meta_gradients(
            self.rule, self.optimizee, params, state, seed, start_step, weights,
            first_order=self.config.first_order)
        self.meta_optimizer.apply_gradients(zip(grads, self.rule.trainable_variables))
        return meta_loss, tf.reduce_mean(losses) / self.optimizee.num_functions, params, state

    @property
    def tracing_count(self):
        """How many times the segment function was traced (1 after a normal run)."""
        return self._train_segment.experimental_get_tracing_count()

    def function_seed(self, iteration):
        """The seed naming the training function(s) of meta-iteration `iteration`."""
        return tf.constant([self.config.seed, int(iteration)], dtype=tf.int64)

    def train_iteration(self):
        """One meta-iteration (one function, T steps; fewer early in a horizon curriculum).

        Returns its mean loss over t = 1..T and functions.
        """
        seed = self.function_seed(self.iteration.numpy())
        params = self.optimizee.init_params(seed)
        state = self.rule.init_state(params)
        total = 0.0
        segments = self._segment_weights[:self.config.num_segments(self.iteration.numpy())]
        for u, weights in enumerate(segments):
            start = tf.constant(u * self.config.unroll_length, dtype=tf.int64)
            _, mean_loss, params, state = self._train_segment(params, state, seed, start,
                                                              weights)
            total += float(mean_loss)
        self.iteration.assign_add(1)
        return total / len(segments)

    def train(self, num_iterations, callback=None):
        """Runs `num_iterations` meta-iterations; `callback(iteration, loss, seconds)` after each.

        Returns the list of per-iteration mean losses.
        """
        history = []
        for _ in range(num_iterations):
            start = time.perf_counter()
            loss = self.train_iteration()
            history.append(loss)
            if callback is not None:
                callback(int(self.iteration.numpy()), loss, time.perf_counter() - start)
        return history
