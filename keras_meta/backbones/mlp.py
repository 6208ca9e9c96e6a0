"""`mlp`: the sinusoid-regression network of the MAML paper."""

import keras

from keras_meta._checks import check_int


def mlp(hidden=(40, 40), input_dim=1, output_dim=1, dtype=None, name="mlp"):
    """The sinusoid-regression network of MAML: input, ReLU hidden layers, linear output.

    Args:
        hidden: widths of the hidden ReLU layers (default 40-40, the MAML paper).
        input_dim: input features.
        output_dim: outputs (linear).
        dtype: layer dtype policy; default from Keras.
        name: model name.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = mlp()                    # 1-40-40-1
    >>> model.count_params()
    1761
    """
    check_int("input_dim", input_dim)
    check_int("output_dim", output_dim)
    hidden = tuple(hidden)
    for width in hidden:
        check_int("hidden width", width)
    inputs = keras.Input((input_dim,), dtype=dtype, name="inputs")
    x = inputs
    for i, width in enumerate(hidden):
        x = keras.layers.Dense(width, activation="relu", dtype=dtype, name=f"hidden{i}")(x)
    outputs = keras.layers.Dense(output_dim, dtype=dtype, name="output")(x)
    return keras.Model(inputs, outputs, name=name)
