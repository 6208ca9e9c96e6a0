"""`LearnedOptimizer`: a trained `LSTMOptimizer` as an ordinary Keras 3 optimizer."""

import keras
import tensorflow as tf

from keras_meta.learned_optimizer.lstm_optimizer import LSTMOptimizer


@keras.saving.register_keras_serializable(package="keras_meta")
class LearnedOptimizer(keras.optimizers.Optimizer):
    """Applies a (meta-trained) `LSTMOptimizer` to any Keras model in `fit()`.

    Every model variable gets `2 * num_layers` optimizer variables holding the LSTM hidden and
    cell state of each of its coordinates ([size, hidden_size] each), created in `build`. They
    are optimizer variables, so `model.save(...)`/`keras.models.load_model` and
    `tf.train.Checkpoint` save and restore them together with phi (the LSTM weights, kept
    frozen here: they are not model variables).

    Args:
        lstm_optimizer: the `LSTMOptimizer` (phi). Its `use_loss_feature` must be off: Keras
            optimizers are not given the loss value.
        learning_rate: a multiplier on the LSTM's updates (1.0 applies them as trained).
        name: optimizer name.
        **kwargs: other `keras.optimizers.Optimizer` arguments (e.g. `clipnorm`).

    Example:

    >>> rule = LSTMOptimizer()            # e.g. meta-trained with MetaOptimizerTrainer
    >>> model.compile(optimizer=LearnedOptimizer(rule), loss="mse")
    >>> model.fit(x, y, epochs=5)
    """

    def __init__(self, lstm_optimizer, learning_rate=1.0, name="learned_optimizer", **kwargs):
        if isinstance(lstm_optimizer, dict):
            lstm_optimizer = keras.saving.deserialize_keras_object(lstm_optimizer)
        if not isinstance(lstm_optimizer, LSTMOptimizer):
            raise TypeError(
                f"LearnedOptimizer needs an LSTMOptimizer; got {type(lstm_optimizer).__name__}.")
        if lstm_optimizer.use_loss_feature:
            raise ValueError(
                "LearnedOptimizer cannot drive an LSTMOptimizer with use_loss_feature=True: "
                "Keras optimizers do not receive the loss value."
            )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.lstm_optimizer = lstm_optimizer

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        rule = self.lstm_optimizer
        self._lstm_states = []
        for variable in var_list:
            size = 1
            for dim in variable.shape:
                size *= int(dim)
            per_layer = []
            for layer in range(rule.num_layers):
                pair = tuple(
                    self.add_variable(
                        shape=(size, rule.hidden_size), dtype=rule.variable_dtype,
                        name=f"{variable.path.replace('/', '_')}_lstm{layer}_{kind}",
                    )
                    for kind in ("h", "c")
                )
                per_layer.append(pair)
            self._lstm_states.append(tuple(per_layer))

    def update_step(self, gradient, variable, learning_rate):
        rule = self.lstm_optimizer
        slots = self._lstm_states[self._get_variable_index(variable)]
        state = tuple((h.value, c.value) for h, c in slots)
        features = rule.features(tf.reshape(gradient, [-1]))
        updates, new_state = rule.coordinate_step(features, state)
        for (h_var, c_var), (h, c) in zip(slots, new_state):
            self.assign(h_var, h)
            self.assign(c_var, c)
        step = tf.cast(learning_rate, updates.dtype) * updates
        self.assign_add(variable, tf.cast(tf.reshape(step, tf.shape(variable)), variable.dtype))

    def get_config(self):
        config = super().get_config()
        config["lstm_optimizer"] = keras.saving.serialize_keras_object(self.lstm_optimizer)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["lstm_optimizer"] = keras.saving.deserialize_keras_object(
            config["lstm_optimizer"], custom_objects=custom_objects)
        return super().from_config(config, custom_objects=custom_objects)
