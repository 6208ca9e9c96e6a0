"""Task-batched fast-weights calls: every task of a meta-batch in one pass of the network.

After the first inner step each task has its own parameters, so a meta-batch of `T` tasks is
`T` small networks. Running them one after the other (`functional_call` in a Python loop) makes
`T` copies of every op in the graph, each on a handful of images, and leaves most of the CPU or
GPU idle. Here the `T` networks run as one:

* parameters carry a leading task axis `[T, ...]` (at the start all tasks share theta, so the
  meta-learned parameters are broadcast; the gradient of a broadcast is a sum, which is exactly
  the meta-gradient's sum over tasks);
* a dense layer is one batched matmul `[T, N, i] x [T, i, o]`;
* a convolution is one *grouped* convolution: the activations are kept in a "tasks in
  channels" layout `[N, H, W, T * C]` and the kernels `[T, kh, kw, C, O]` become
  `[kh, kw, C, T * O]` with `T` groups, so task `t`'s images meet only task `t`'s kernel;
* transductive batch norm takes its moments per task (its kernel is registered by
  `keras_meta.layers`, next to `MetaBatchNormalization`; exact second derivatives).

Because the tasks' losses are independent, the gradient of their *sum* with respect to the
stacked parameters is each task's own gradient, so one `tape.gradient` gives all `T` inner
gradients. Nothing is approximated: the result equals the loop over tasks to float rounding
(tested in float64).

Only layers with a registered kernel (`support.register_batched_kernel`) are covered, in a
single chain of layers (a `Sequential` model, or a functional model without branches). `MAML(task_batching="auto")`
checks the model with `unsupported_layers` and falls back to the per-task loop otherwise.
"""

import types

import tensorflow as tf

from keras_meta.core.batching.layouts import TASK_MAJOR, to_task_major
from keras_meta.core.batching.support import call_kernel, chain_of_layers, unsupported_layers


def batched_functional_call(model, params, x, *, conv="auto", kernel_options=None):
    """Calls `model` for `T` tasks at once, each with its own parameters.

    Args:
        model: a built Keras model for which `unsupported_layers(model)` is empty.
        params: one tensor per `model.trainable_variables`, each with a leading task axis:
            `[T] + variable.shape`.
        x: inputs with a leading task axis, `[T, N] + input_shape`.
        conv: how convolutions run: `"grouped"` (one grouped convolution; needs float32 or
            bfloat16 on CPU), `"patches"` (strided slices and one batched matmul; any dtype
            and device), or `"auto"` (grouped where `grouped_convolution_available`).
        kernel_options: `None` or a dict of per-call options for the registered kernels
            that take an `options` keyword (`support.register_batched_kernel`); the core
            only passes it on. Keys a kernel does not know are ignored by it. E.g.
            `{"fused_batch_norm": False}` makes `MetaBatchNormalization`'s kernel use plain
            ops instead of TensorFlow's fused batch norm.

    Returns:
        The outputs `[T, N] + output_shape`; task `t`'s slice equals
        `functional_call(model, [p[t] for p in params], x[t])`.
    """
    problems = unsupported_layers(model)
    if problems:
        raise ValueError("This model cannot run task-batched: " + "; ".join(problems) + ".")
    params = list(params)
    variables = model.trainable_variables
    if len(params) != len(variables):
        raise ValueError(
            f"batched_functional_call got {len(params)} parameter tensors for model "
            f"{model.name!r}, which has {len(variables)} trainable variables.")
    num_tasks = x.shape[0]
    if num_tasks is None:
        raise ValueError(f"The task axis of the inputs must be static; got shape {x.shape}.")
    for i, (p, v) in enumerate(zip(params, variables)):
        if tuple(p.shape) != (num_tasks,) + tuple(v.shape):
            raise ValueError(
                f"Parameter {i} ({v.path}) has shape {tuple(p.shape)}; expected "
                f"{(num_tasks,) + tuple(v.shape)} ([tasks] + the variable's shape).")
    index = {id(v): i for i, v in enumerate(variables)}
    options = types.MappingProxyType(dict(kernel_options or {}))
    layout = TASK_MAJOR
    for layer in chain_of_layers(model):
        # As Keras' autocasting does: each layer computes in its own dtype.
        if x.dtype.is_floating and x.dtype != layer.compute_dtype:
            x = tf.cast(x, layer.compute_dtype)
        layer_params = [params[index[id(v)]] for v in layer.trainable_variables]
        x, layout = call_kernel(layer, layer_params, x, layout, num_tasks, conv=conv,
                                options=options)
    return to_task_major(x, layout, num_tasks)
