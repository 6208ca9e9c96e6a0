"""`LearnedOptimizer`: a meta-trained update rule as an ordinary Keras 3 optimizer."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_meta")
class LearnedOptimizer(keras.optimizers.Optimizer):
    """Applies a meta-trained update rule (`LSTMOptimizer`, `MLPOptimizer`) to any Keras model.

    Every model variable gets the rule's per-coordinate state (an `LSTMOptimizer`'s hidden and
    cell states, an `MLPOptimizer`'s accumulators) as optimizer variables, created in `build`
    with the shapes `rule.init_state` gives for that variable. They are optimizer variables, so
    `model.save(...)`/`keras.models.load_model` and `tf.train.Checkpoint` save and restore them
    together with phi (the rule's weights, kept frozen here: they are not model variables),
    and the state carries over from one `fit` call to the next.

    Args:
        rule: the update rule (phi): an `LSTMOptimizer` or `MLPOptimizer`, or any Keras layer
            with `init_state(params)` and `updates(grads, params, state, step=)`. An
            `LSTMOptimizer` must have `use_loss_feature` off: Keras optimizers are not given
            the loss value.
        learning_rate: a multiplier on the rule's updates (1.0 applies them as trained).
        name: optimizer name.
        lstm_optimizer: the former name of `rule`, still accepted.
        **kwargs: other `keras.optimizers.Optimizer` arguments (e.g. `clipnorm`).

    Example:

    >>> rule = MLPOptimizer()            # e.g. meta-trained with MetaOptimizerTrainer
    >>> model.compile(optimizer=LearnedOptimizer(rule), loss="mse")
    >>> model.fit(x, y, epochs=5)
    >>> LearnedOptimizer.from_file("rule.keras")   # a rule saved with save_rule
    """

    def __init__(self, rule=None, learning_rate=1.0, name="learned_optimizer", *,
                 lstm_optimizer=None, **kwargs):
        if rule is not None and lstm_optimizer is not None:
            raise ValueError("Give the update rule once: as rule= (lstm_optimizer= is its old "
                             "name), not both.")
        rule = lstm_optimizer if rule is None else rule
        if isinstance(rule, dict):
            rule = keras.saving.deserialize_keras_object(rule)
        check_learned_rule(rule, "LearnedOptimizer")
        if getattr(rule, "use_loss_feature", False):
            raise ValueError(
                "LearnedOptimizer cannot drive an LSTMOptimizer with use_loss_feature=True: "
                "Keras optimizers do not receive the loss value."
            )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rule = rule

    @property
    def lstm_optimizer(self):
        """The update rule (the name this attribute had when the LSTM was the only rule)."""
        return self.rule

    @classmethod
    def from_file(cls, path, **kwargs):
        """A `LearnedOptimizer` driving the rule saved in the `.keras` file `path` (`save_rule`)."""
        from keras_meta.learned_optimizer.rule_files import load_rule

        return cls(load_rule(path), **kwargs)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        rule = self.rule
        self._rule_states = []
        self._rule_state_structures = []
        for variable in var_list:
            # The rule says what state one variable needs; only its shapes are used here.
            template = rule.init_state([tf.zeros(variable.shape, dtype=rule.variable_dtype)])
            leaves = tf.nest.flatten(template)
            slots = [
                self.add_variable(shape=tuple(leaf.shape), dtype=leaf.dtype,
                                  name=f"{variable.path.replace('/', '_')}_state{i}")
                for i, leaf in enumerate(leaves)
            ]
            self._rule_states.append(slots)
            self._rule_state_structures.append(template)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        slots = self._rule_states[index]
        state = tf.nest.pack_sequence_as(self._rule_state_structures[index],
                                         [slot.value for slot in slots])
        (delta,), new_state = self.rule.updates(
            [gradient], [tf.convert_to_tensor(variable)], state, step=self.iterations)
        for slot, value in zip(slots, tf.nest.flatten(new_state)):
            self.assign(slot, value)
        step = tf.cast(learning_rate, delta.dtype) * delta
        self.assign_add(variable, tf.cast(step, variable.dtype))

    def get_config(self):
        config = super().get_config()
        config["rule"] = keras.saving.serialize_keras_object(self.rule)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        # Files written before MLPOptimizer existed name the rule "lstm_optimizer".
        rule = config.pop("rule", None) or config.pop("lstm_optimizer", None)
        config["rule"] = keras.saving.deserialize_keras_object(rule, custom_objects=custom_objects)
        return super().from_config(config, custom_objects=custom_objects)


def check_learned_rule(rule, where):
    """Raises `TypeError` unless `rule` is a Keras layer following the update-rule protocol."""
    if not (isinstance(rule, keras.layers.Layer) and callable(getattr(rule, "init_state", None))
            and callable(getattr(rule, "updates", None))):
        raise TypeError(
            f"{where} needs a learned update rule (LSTMOptimizer, MLPOptimizer, or a Keras layer "
            f"with init_state() and updates()); got {type(rule).__name__}.")
    return rule
