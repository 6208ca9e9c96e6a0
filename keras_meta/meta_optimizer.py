"""Meta-training a learned optimizer by truncated backpropagation through optimization.

The meta-loss of one function is L(phi) = sum_{t=1..T} w_t f(theta_t), where theta_t comes from
running the `LSTMOptimizer` for t steps. The T steps are cut into segments of `unroll_length`
steps: phi gets an Adam update after each segment, and the gradient never flows across a
segment boundary (theta and the LSTM state are carried over as constants).

`unrolled_meta_loss` is the pure core (no variable is assigned); `MetaOptimizerTrainer` wraps
it in one `tf.function` per segment, traced once.
"""

import time

import keras
import tensorflow as tf

from keras_meta.meta_optimizer_config import MetaOptimizerConfig


def unrolled_meta_loss(rule, task, params, state, seed, start_step, weights, *,
                       second_order=False):
    """Runs one truncated segment of `len(weights)` optimizee steps.

    Args:
        rule: an update rule (`LSTMOptimizer`, or any object with `apply`).
        task: a task family (see `keras_meta.tasks`).
        params, state: theta and the rule's state at the start of the segment. Both enter as
            constants: no gradient flows back into an earlier segment.
        seed: the function's seed ([2] int tensor).
        start_step: index of the first step of the segment (selects the mini-batches).
        weights: w_t of the segment's steps, a Python sequence or a 1-D tensor of static length.
        second_order: keep the optimizee gradients differentiable (exact meta-gradient);
            otherwise they are held constant, as in the paper.

    Returns:
        `(meta_loss, losses, params, state)`: the weighted sum of f(theta_t) over the segment,
        the unweighted losses [K], and theta and the state after the segment.
    """
    weights = tf.convert_to_tensor(weights)
    length = weights.shape[0]
    if length is None or length < 1:
        raise ValueError(f"weights must have a static length >= 1; got shape {weights.shape}.")
    params = [tf.stop_gradient(p) for p in params]
    state = tf.nest.map_structure(tf.stop_gradient, state)
    start_step = tf.cast(start_step, tf.int64)
    losses = []
    for k in range(length):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            loss = task.loss(params, seed, start_step + k)
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if k > 0:
            # f(theta_k), k >= 1, is already computed here for the k-th gradient.
            losses.append(loss)
        rule_loss = loss
        if not second_order:
            grads = [tf.stop_gradient(g) for g in grads]
            rule_loss = tf.stop_gradient(loss)
        params, state = rule.apply(grads, params, state, step=k, loss=rule_loss)
        params = list(params)
    losses.append(task.loss(params, seed, start_step + length))
    losses = tf.stack(losses)
    meta_loss = tf.reduce_sum(tf.cast(weights, losses.dtype) * losses)
    return meta_loss, losses, params, state


def optimizee_trajectory(rule, task, seed, num_steps, params=None):
    """Runs `rule` on the functions named by `seed` for `num_steps` steps (no meta-gradient).

    Returns `(losses, eval_losses)`: the per-function mini-batch losses [num_steps + 1,
    num_functions] at theta_0..theta_T, and `task.eval_losses` at theta_T. Wrap it in a
    `tf.function` for speed; the step loop is a `tf.while_loop` there.
    """
    params = list(task.init_params(seed)) if params is None else list(params)
    state = rule.init_state(params)
    losses = tf.TensorArray(params[0].dtype, size=num_steps + 1)
    for t in tf.range(num_steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            per_function = task.function_losses(params, seed, t)
            loss = tf.reduce_sum(per_function)
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        losses = losses.write(t, per_function)
        params, state = rule.apply(grads, params, state, step=t, loss=loss)
        params = list(params)
    losses = losses.write(num_steps, task.function_losses(params, seed, num_steps))
    return losses.stack(), task.eval_losses(params, seed)


class MetaOptimizerTrainer:
    """Meta-trains the weights phi of an `LSTMOptimizer` on a task family with Adam.

    Each meta-iteration draws a new function (seed (config.seed, iteration)), runs the
    optimizee for `num_steps` steps in segments of `unroll_length`, and updates phi after each
    segment. Every segment runs one `tf.function` (loss, meta-gradient and Adam update in one
    graph), traced once for the whole run.

    Args:
        rule: the `LSTMOptimizer` to train (its trainable weights are phi).
        task: a task family object (`QuadraticTask`, `MLPDigitsTask`, ...).
        config: a `MetaOptimizerConfig`.

    Example:

    >>> rule = LSTMOptimizer()
    >>> trainer = MetaOptimizerTrainer(rule, QuadraticTask(num_functions=8),
    ...                                MetaOptimizerConfig(num_steps=100, unroll_length=20))
    >>> for _ in range(100):
    ...     average_loss = trainer.train_iteration()
    """

    def __init__(self, rule, task, config=MetaOptimizerConfig()):
        if not isinstance(config, MetaOptimizerConfig):
            raise TypeError(
                f"config must be a MetaOptimizerConfig; got {type(config).__name__}.")
        if not rule.trainable_variables:
            raise ValueError("The update rule has no trainable weights (phi) to meta-train.")
        self.rule = rule
        self.task = task
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
        variables = self.rule.trainable_variables
        with tf.GradientTape() as tape:
            meta_loss, losses, params, state = unrolled_meta_loss(
                self.rule, self.task, params, state, seed, start_step, weights,
                second_order=self.config.second_order)
        grads = tape.gradient(meta_loss, variables)
        self.meta_optimizer.apply_gradients(zip(grads, variables))
        return meta_loss, tf.reduce_mean(losses) / self.task.num_functions, params, state

    @property
    def tracing_count(self):
        """How many times the segment function was traced (1 after a normal run)."""
        return self._train_segment.experimental_get_tracing_count()

    def function_seed(self, iteration):
        """The seed naming the training function(s) of meta-iteration `iteration`."""
        return tf.constant([self.config.seed, int(iteration)], dtype=tf.int64)

    def train_iteration(self):
        """One meta-iteration (one function, T steps). Returns its mean loss over t = 1..T and functions."""
        seed = self.function_seed(self.iteration.numpy())
        params = self.task.init_params(seed)
        state = self.rule.init_state(params)
        total = 0.0
        for u, weights in enumerate(self._segment_weights):
            start = tf.constant(u * self.config.unroll_length, dtype=tf.int64)
            _, mean_loss, params, state = self._train_segment(params, state, seed, start,
                                                              weights)
            total += float(mean_loss)
        self.iteration.assign_add(1)
        return total / len(self._segment_weights)

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
