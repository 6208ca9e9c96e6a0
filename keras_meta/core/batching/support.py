"""Which models can run task-batched: a single chain of layers that all have a batched kernel.

The kernels are kept in a registry keyed by the *exact* layer type. The core registers the
Keras layers it covers (`kernels.py`); a layer defined higher up (e.g. `MetaBatchNormalization`
in `keras_meta.layers`) registers its own kernel next to its definition, so the core never
imports the layers built on top of it.
"""

import inspect

import keras

# exact layer type -> (kernel, problem, takes_options); problem(layer) is None or why that
# instance cannot run; takes_options: whether the kernel accepts the `options` keyword.
_KERNELS = {}


def _takes_options(kernel):
    try:
        parameters = inspect.signature(kernel).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: the basic signature
        return False
    return any(p.name == "options" or p.kind == inspect.Parameter.VAR_KEYWORD
               for p in parameters)


def register_batched_kernel(layer_type, kernel, problem=None):
    """Registers `kernel` as the task-batched form of layers of exactly `layer_type`.

    Args:
        layer_type: a `keras.layers.Layer` subclass (subclasses of it are not covered).
        kernel: `kernel(layer, params, x, layout, num_tasks, conv) -> (y, layout)`, with
            `params` the layer's trainable parameters, each with a leading task axis. A
            kernel that also takes an `options` keyword receives the call's kernel options
            (a read-only mapping, possibly empty; see `batched_functional_call`), e.g.
            `MetaBatchNormalization`'s reads `options.get("fused_batch_norm")`.
        problem: optional `problem(layer) -> str | None`, why an instance cannot run batched
            (a configuration the kernel does not cover).

    Example:

    >>> register_batched_kernel(MyScale, lambda layer, p, x, layout, t, conv: (x * 2, layout))
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, keras.layers.Layer)):
        raise TypeError(f"layer_type must be a keras Layer class; got {layer_type!r}.")
    _KERNELS[layer_type] = (kernel, problem, _takes_options(kernel))


def kernel_for(layer):
    """The registered kernel of `layer`'s exact type."""
    return _KERNELS[type(layer)][0]


def call_kernel(layer, params, x, layout, num_tasks, *, conv, options):
    """Runs `layer`'s kernel; `options` (a mapping) goes only to kernels that take it."""
    kernel, _, takes_options = _KERNELS[type(layer)]
    if takes_options:
        return kernel(layer, params, x, layout, num_tasks, conv=conv, options=options)
    return kernel(layer, params, x, layout, num_tasks, conv=conv)


def chain_of_layers(model):
    """The model's layers in call order if they form one unbranched chain, else None."""
    if isinstance(model, keras.Sequential):
        return [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    if not hasattr(model, "_operations") or len(model.inputs or ()) != 1 or len(model.outputs) != 1:
        return None
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    previous = model.inputs[0]
    for layer in layers:
        try:
            inputs = layer.input
        except (AttributeError, ValueError):  # a layer called more than once
            return None
        if inputs is not previous:
            return None
        previous = layer.output
    return layers if previous is model.outputs[0] else None


def layer_problem(layer):
    """Why `layer` cannot run task-batched (a string), or None when it can."""
    name = f"{type(layer).__name__} {layer.name!r}"
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return f"{name} is quantized or uses LoRA"
    entry = _KERNELS.get(type(layer))
    if entry is None:
        return f"{name} has no task-batched implementation"
    problem = entry[1]
    return problem(layer) if problem is not None else None


def unsupported_layers(model):
    """Reasons why `model` cannot run task-batched; an empty list when it can.

    Example:

    >>> unsupported_layers(keras_meta.backbones.conv4(5))
    []
    """
    if not isinstance(model, keras.Model):
        return [f"{type(model).__name__} is not a keras.Model"]
    layers = chain_of_layers(model)
    if layers is None:
        return [f"model {model.name!r} is not a single chain of layers (branches or several "
                "inputs/outputs)"]
    problems = [p for p in (layer_problem(l) for l in layers) if p]
    if model.non_trainable_variables:
        problems.append(f"model {model.name!r} has non-trainable state")
    return problems
