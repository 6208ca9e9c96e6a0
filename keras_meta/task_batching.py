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
* transductive batch norm takes its moments per task, with the same plain ops as
  `MetaBatchNormalization` (exact second derivatives).

Because the tasks' losses are independent, the gradient of their *sum* with respect to the
stacked parameters is each task's own gradient, so one `tape.gradient` gives all `T` inner
gradients. Nothing is approximated: the result equals the loop over tasks to float rounding
(tested in float64).

Only the layers listed in `unsupported_layers` are covered, in a single chain of layers (a
`Sequential` model, or a functional model without branches). `MAML(task_batching="auto")`
checks the model with `unsupported_layers` and falls back to the per-task loop otherwise.
"""

import keras
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from keras_meta.layers.meta_batch_normalization import MetaBatchNormalization

# Activation layouts inside a batched call.
_TASK_MAJOR = "task_major"  # [T, N, ...features]
_GROUPED = "grouped"  # [N, H, W, T * C]: tasks folded into channels (convolutional part)
# Fused batch norm in the grouped layout (off only to measure what it brings).
_FUSED_BATCH_NORM = True


def _chain(model):
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


def _layer_problem(layer):
    """Why `layer` cannot run task-batched (a string), or None when it can."""
    name = f"{type(layer).__name__} {layer.name!r}"
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return f"{name} is quantized or uses LoRA"
    # Exact types: a subclass may override `call`, which the batched form would ignore.
    if type(layer) is keras.layers.Dense:
        return None
    if type(layer) is keras.layers.Conv2D:
        if layer.data_format != "channels_last":
            return f"{name} is channels_first"
        if layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1):
            return f"{name} is grouped or dilated"
        return None
    if type(layer) is MetaBatchNormalization:
        if layer.mode != "transductive":
            return (f"{name} has mode={layer.mode!r} (running statistics are updated task after "
                    "task, which only the loop reproduces)")
        if layer._axis != len(layer._reduction_axes):
            return f"{name} normalizes axis {layer.axis}, not the last (channels-last) axis"
        return None
    if type(layer) in (keras.layers.ReLU, keras.layers.Activation, keras.layers.Flatten,
                       keras.layers.MaxPooling2D, keras.layers.AveragePooling2D):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return f"{name} is channels_first"
        return None
    return f"{name} has no task-batched implementation"


def unsupported_layers(model):
    """Reasons why `model` cannot run task-batched; an empty list when it can.

    Example:

    >>> unsupported_layers(keras_meta.models.conv4(5))
    []
    """
    if not isinstance(model, keras.Model):
        return [f"{type(model).__name__} is not a keras.Model"]
    layers = _chain(model)
    if layers is None:
        return [f"model {model.name!r} is not a single chain of layers (branches or several "
                "inputs/outputs)"]
    problems = [p for p in (_layer_problem(l) for l in layers) if p]
    if model.non_trainable_variables:
        problems.append(f"model {model.name!r} has non-trainable state")
    return problems


def _to_task_major(x, layout, num_tasks):
    if layout == _TASK_MAJOR:
        return x
    n, h, w, tc = x.shape
    x = tf.reshape(x, [-1, h, w, num_tasks, tc // num_tasks])
    return tf.transpose(x, [3, 0, 1, 2, 4])


def _to_grouped(x, layout, num_tasks):
    if layout == _GROUPED:
        return x
    if x.shape.rank != 5:
        raise ValueError(
            f"A task-batched convolution needs images [tasks, batch, height, width, channels]; "
            f"got shape {x.shape}.")
    _, _, h, w, c = x.shape
    x = tf.transpose(x, [1, 2, 3, 0, 4])
    return tf.reshape(x, [-1, h, w, num_tasks * c])


def _per_task(value, rank, dtype):
    """A per-task vector `[T, F]` shaped to broadcast over `[T, N, ..., F]` of `rank`."""
    value = tf.cast(value, dtype)
    return tf.reshape(value, [value.shape[0]] + [1] * (rank - 2) + [value.shape[-1]])


def _dense(layer, params, x, layout, num_tasks, conv=None):
    x = _to_task_major(x, layout, num_tasks)
    kernel = tf.cast(params[0], x.dtype)
    if x.shape.rank == 3:
        y = tf.matmul(x, kernel)
    else:
        y = tf.einsum("tn...i,tio->tn...o", x, kernel)
    if layer.use_bias:
        y = y + _per_task(params[1], y.shape.rank, y.dtype)
    if layer.activation is not None:
        y = layer.activation(y)
    return y, _TASK_MAJOR


def grouped_convolution_available(dtype):
    """Whether TensorFlow can differentiate a grouped convolution of `dtype` here.

    On CPU only the oneDNN kernels (float32, bfloat16) have grouped-convolution gradients, and
    only outside XLA; cuDNN and TPUs have them for every float type. Elsewhere the patch
    (im2col) form is used, which is slower but made of ops that differentiate to any order on
    any device.
    """
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        # cuDNN and the TPU compiler both have native grouped convolutions.
        return True
    # XLA's CPU backend lowers a grouped convolution to a slow generic loop (about 50x slower
    # than oneDNN on the Omniglot network), so compiled CPU code takes the patch form.
    if control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()):
        return False
    return tf.as_dtype(dtype) in (tf.float32, tf.bfloat16)


def _conv2d(layer, params, x, layout, num_tasks, conv="auto"):
    kernel = tf.cast(params[0], x.dtype)  # [T, kh, kw, C, O]
    if conv == "auto":
        conv = "grouped" if grouped_convolution_available(x.dtype) else "patches"
    if conv == "grouped":
        y, layout = _grouped_conv2d(layer, kernel, x, layout, num_tasks)
    elif conv == "patches":
        y, layout = _patches_conv2d(layer, kernel, x, layout, num_tasks)
    else:
        raise ValueError(f"conv must be 'auto', 'grouped' or 'patches'; got {conv!r}.")
    if layer.use_bias:
        bias = tf.cast(params[1], y.dtype)  # [T, O]
        if layout == _GROUPED:
            y = y + tf.reshape(bias, [-1])
        else:
            y = y + _per_task(bias, y.shape.rank, y.dtype)
    if layer.activation is not None:
        y = layer.activation(y)
    return y, layout


def _grouped_conv2d(layer, kernel, x, layout, num_tasks):
    x = _to_grouped(x, layout, num_tasks)
    _, kh, kw, c, o = kernel.shape
    # [kh, kw, C, T * O]: output channel t * O + j belongs to task t, and TensorFlow's grouped
    # convolution feeds it input channels t * C ... t * C + C - 1, task t's own.
    kernel = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, c, num_tasks * o])
    y = tf.nn.conv2d(x, kernel, strides=layer.strides, padding=layer.padding.upper())
    return y, _GROUPED


def _output_size_and_padding(size, kernel, stride, padding):
    if padding == "valid":
        return (size - kernel) // stride + 1, (0, 0)
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def _patches_conv2d(layer, kernel, x, layout, num_tasks):
    x = _to_task_major(x, layout, num_tasks)
    _, kh, kw, c, o = kernel.shape
    _, n, h, w, _ = x.shape
    sh, sw = layer.strides
    oh, pad_h = _output_size_and_padding(h, kh, sh, layer.padding)
    ow, pad_w = _output_size_and_padding(w, kw, sw, layer.padding)
    images = tf.pad(tf.reshape(x, [-1, h, w, c]), [[0, 0], pad_h, pad_w, [0, 0]])
    # Strided slices, one per kernel tap, in the kernel's (row, column, channel) order: plain
    # ops whose derivatives of every order exist on every device and dtype.
    patches = tf.concat(
        [images[:, dy:dy + (oh - 1) * sh + 1:sh, dx:dx + (ow - 1) * sw + 1:sw, :]
         for dy in range(kh) for dx in range(kw)], axis=-1)
    patches = tf.reshape(patches, [num_tasks, -1, kh * kw * c])
    y = tf.matmul(patches, tf.reshape(kernel, [num_tasks, kh * kw * c, o]))
    return tf.reshape(y, [num_tasks, -1, oh, ow, o]), _TASK_MAJOR


def _batch_norm(layer, params, x, layout, num_tasks, conv=None):
    # Statistics in at least float32, as the layer itself does.
    compute = keras.backend.result_type(x.dtype, "float32")
    x = tf.cast(x, compute)
    rank = x.shape.rank
    if layout == _GROUPED:
        n, h, w, tc = x.shape
        channels = tc // num_tasks
        x = tf.reshape(x, [-1, h, w, num_tasks, channels])
        axes = [0, 1, 2]

        def vector(v):
            return tf.reshape(tf.cast(v, compute), [1, 1, 1, num_tasks, channels])
    else:
        if layer._axis != rank - 2:  # the layer's axis counts without the task axis
            raise ValueError(
                f"Task-batched batch norm supports channels-last features only; layer "
                f"{layer.name!r} normalizes axis {layer.axis}.")
        axes = list(range(1, rank - 1))

        def vector(v):
            return _per_task(v, rank, compute)
    params = list(params)
    gamma = params.pop(0) if layer.scale else None
    beta = params.pop(0) if layer.center else None
    # (The fused kernel refuses an epsilon below 1.001e-5; such layers take the plain ops.)
    if (_FUSED_BATCH_NORM and layout == _GROUPED and compute == tf.float32
            and layer.epsilon >= 1.001e-5):
        # In the grouped layout each (task, channel) pair is its own channel, so TensorFlow's
        # fused batch norm computes exactly the per-task statistics, in one pass forward and
        # one backward (3x faster than the plain ops on the query set). Its first derivative
        # is the full batch-norm backward, and its registered second derivative is built from
        # plain ops, so the meta-gradient stays exact (tested against the plain-op form).
        scale = tf.ones([tc], compute) if gamma is None else tf.reshape(
            tf.cast(gamma, compute), [tc])
        offset = tf.zeros([tc], compute) if beta is None else tf.reshape(
            tf.cast(beta, compute), [tc])
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            tf.reshape(x, [-1, h, w, tc]), scale, offset, epsilon=layer.epsilon,
            is_training=True)
        return tf.cast(y, layer.compute_dtype), layout
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    centred = x - mean
    variance = tf.reduce_mean(tf.square(centred), axis=axes, keepdims=True)
    inv = tf.math.rsqrt(variance + layer.epsilon)
    if gamma is not None:
        inv = inv * vector(gamma)
    y = centred * inv
    if beta is not None:
        y = y + vector(beta)
    if layout == _GROUPED:
        y = tf.reshape(y, [-1, h, w, tc])
    return tf.cast(y, layer.compute_dtype), layout


def _flatten(layer, params, x, layout, num_tasks, conv=None):
    x = _to_task_major(x, layout, num_tasks)
    return tf.reshape(x, [num_tasks, -1, _product(x.shape[2:])]), _TASK_MAJOR


def _product(dims):
    out = 1
    for d in dims:
        out *= d
    return out


def _pool(layer, params, x, layout, num_tasks, conv=None):
    pool = tf.nn.max_pool2d if isinstance(layer, keras.layers.MaxPooling2D) else tf.nn.avg_pool2d
    args = (layer.pool_size, layer.strides, layer.padding.upper())
    if layout == _GROUPED:
        # Pooling acts on each channel alone, so all tasks pool at once in this layout.
        return pool(x, *args), _GROUPED
    t, n, h, w, c = x.shape
    y = pool(tf.reshape(x, [-1, h, w, c]), *args)
    return tf.reshape(y, [t, -1] + y.shape.as_list()[1:]), _TASK_MAJOR


def _elementwise(layer, params, x, layout, num_tasks, conv=None):
    return layer.call(x), layout


def _handler(layer):
    if isinstance(layer, keras.layers.Dense):
        return _dense
    if isinstance(layer, keras.layers.Conv2D):
        return _conv2d
    if isinstance(layer, MetaBatchNormalization):
        return _batch_norm
    if isinstance(layer, keras.layers.Flatten):
        return _flatten
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        return _pool
    return _elementwise


def batched_functional_call(model, params, x, *, conv="auto"):
    """Calls `model` for `T` tasks at once, each with its own parameters.

    Args:
        model: a built Keras model for which `unsupported_layers(model)` is empty.
        params: one tensor per `model.trainable_variables`, each with a leading task axis:
            `[T] + variable.shape`.
        x: inputs with a leading task axis, `[T, N] + input_shape`.
        conv: how convolutions run: `"grouped"` (one grouped convolution; needs float32 or
            bfloat16 on CPU), `"patches"` (strided slices and one batched matmul; any dtype
            and device), or `"auto"` (grouped where `grouped_convolution_available`).

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
    layout = _TASK_MAJOR
    for layer in _chain(model):
        # As Keras' autocasting does: each layer computes in its own dtype.
        if x.dtype.is_floating and x.dtype != layer.compute_dtype:
            x = tf.cast(x, layer.compute_dtype)
        layer_params = [params[index[id(v)]] for v in layer.trainable_variables]
        x, layout = _handler(layer)(layer, layer_params, x, layout, num_tasks, conv=conv)
    return _to_task_major(x, layout, num_tasks)


def per_task_loss(loss_fn, y_true, y_pred):
    """The mean loss of each task, `[T]`, for batched `y_true` / `y_pred` with a task axis.

    Equals `scalar_loss(loss_fn, y_true[t], y_pred[t])` for every `t` (no sample weights).
    """
    # The unreduced `call`: a Keras `Loss` object's own mean would also divide by the number
    # of replicas under a tf.distribute strategy. Losses are computed in at least float32.
    fn = loss_fn.call if isinstance(loss_fn, keras.losses.Loss) else loss_fn
    if isinstance(loss_fn, keras.losses.Loss):
        y_pred = tf.cast(y_pred, loss_fn.dtype)
    elif y_pred.dtype in (tf.float16, tf.bfloat16):
        y_pred = tf.cast(y_pred, tf.float32)
    values = fn(y_true, y_pred)
    if values.shape.rank is None or values.shape.rank < 1:
        raise ValueError(
            f"The task loss must return per-example values to batch tasks; got shape "
            f"{values.shape}.")
    if values.shape.rank == 1:
        return values
    return tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
