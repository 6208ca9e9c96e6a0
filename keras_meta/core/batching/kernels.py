"""Task-batched kernels of the Keras layers the batched call covers.

Each kernel takes `(layer, params, x, layout, num_tasks, conv)`, where `params` are the
layer's trainable parameters with a leading task axis, and returns `(y, layout)`. They are
registered by exact layer type (`support.register_batched_kernel`): a subclass may override
`call`, which the batched form would silently ignore.
"""

import functools

import keras
import tensorflow as tf

from keras_meta.core.batching.batched_matmul import (accelerator_present, batched_matmul,
                                                      xla_on_cpu)
from keras_meta.core.batching.layouts import (GROUPED, TASK_MAJOR, per_task, to_grouped,
                                               to_task_major)
from keras_meta.core.batching.shared_start import SHARED_OPTION, shared_conv2d, shared_matmul
from keras_meta.core.batching.support import register_batched_kernel


def _dense(layer, params, x, layout, num_tasks, conv=None, options=None):
    x = to_task_major(x, layout, num_tasks)
    kernel = tf.cast(params[0], x.dtype)
    if (options or {}).get(SHARED_OPTION):
        rows = x.shape[1:-1]
        y = shared_matmul(tf.reshape(x, [num_tasks, -1, x.shape[-1]]), kernel)
        y = tf.reshape(y, [num_tasks] + rows.as_list() + [kernel.shape[-1]])
    elif x.shape.rank == 3:
        y = batched_matmul(x, kernel)
    else:
        y = tf.einsum("tn...i,tio->tn...o", x, kernel)
    if layer.use_bias:
        y = y + per_task(params[1], y.shape.rank, y.dtype)
    if layer.activation is not None:
        y = layer.activation(y)
    return y, TASK_MAJOR


def grouped_convolution_available(dtype):
    """Whether TensorFlow can differentiate a grouped convolution of `dtype` here.

    On CPU only the oneDNN kernels (float32, bfloat16) have grouped-convolution gradients, and
    only outside XLA; cuDNN and TPUs have them for every float type. Elsewhere the patch
    (im2col) form is used, which is slower but made of ops that differentiate to any order on
    any device.
    """
    if accelerator_present():
        # cuDNN and the TPU compiler both have native grouped convolutions.
        return True
    # XLA's CPU backend lowers a grouped convolution to a slow generic loop (about 50x slower
    # than oneDNN on the Omniglot network), so compiled CPU code takes the patch form.
    if xla_on_cpu():
        return False
    dtype = tf.as_dtype(dtype)
    return dtype in (tf.float32, tf.bfloat16) and cpu_grouped_gradients(dtype.name)


def convolutions_fall_back_to_patches(model):
    """Whether `model`'s task-batched convolutions would run as patches on this CPU, outside
    XLA, for want of grouped-convolution gradients (oneDNN off).

    There the patch form is the only batched one, and it was about 5x slower than the per-task
    loop on Omniglot 5w1s (4.36 against 0.92 s per meta-iteration, an AVX2 AMD EPYC), so
    `task_batching="auto"` without measuring takes the loop.
    """
    if accelerator_present() or xla_on_cpu():
        return False
    convolutions = [layer for layer in model._flatten_layers(include_self=False)
                    if isinstance(layer, keras.layers.Conv2D)]
    return bool(convolutions) and not any(
        grouped_convolution_available(layer.compute_dtype) for layer in convolutions)


@functools.cache
def cpu_grouped_gradients(dtype_name):
    """Whether this process's CPU kernels differentiate a grouped convolution of `dtype_name`.

    Only oneDNN's kernels do, and TensorFlow turns oneDNN on by default only on some CPUs
    (AVX-512 or AMX ones; `TF_ENABLE_ONEDNN_OPTS` overrides it): on an AVX2-only CPU, such
    as many AMD EPYCs, Eigen's kernels refuse the gradient when the step first runs. So this
    asks the kernels themselves, once per process and dtype, on a grouped convolution of a
    few numbers.
    """
    with tf.init_scope():  # eager, even while a step is being traced
        try:
            with tf.device("CPU:0"):
                x = tf.ones([1, 3, 3, 2], dtype_name)
                kernel = tf.ones([1, 1, 1, 2], dtype_name)
                dy = tf.ones([1, 3, 3, 2], dtype_name)
                tf.raw_ops.Conv2DBackpropInput(input_sizes=[1, 3, 3, 2], filter=kernel,
                                               out_backprop=dy, strides=[1, 1, 1, 1],
                                               padding="VALID")
                tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[1, 1, 1, 2],
                                                out_backprop=dy, strides=[1, 1, 1, 1],
                                                padding="VALID")
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.NotFoundError):
            return False
    return True


def _conv2d(layer, params, x, layout, num_tasks, conv="auto", options=None):
    kernel = tf.cast(params[0], x.dtype)  # [T, kh, kw, C, O]
    if conv == "auto":
        conv = "grouped" if grouped_convolution_available(x.dtype) else "patches"
    if conv not in ("grouped", "patches"):
        raise ValueError(f"conv must be 'auto', 'grouped' or 'patches'; got {conv!r}.")
    # Not in XLA on a CPU: its float32 convolution there was no faster than the patch form on
    # conv4 (5w1s, second order) and lost precision in second-order MAML (relative error 1.4e-4
    # against float64, where every other form gave 1e-5 to 2e-5).
    if (options or {}).get(SHARED_OPTION) and not xla_on_cpu():
        y, layout = _shared_conv2d(layer, kernel, x, layout, num_tasks, conv)
    elif conv == "grouped":
        y, layout = _grouped_conv2d(layer, kernel, x, layout, num_tasks)
    else:
        y, layout = _patches_conv2d(layer, kernel, x, layout, num_tasks)
    if layer.use_bias:
        bias = tf.cast(params[1], y.dtype)  # [T, O]
        if layout == GROUPED:
            y = y + tf.reshape(bias, [-1])
        else:
            y = y + per_task(bias, y.shape.rank, y.dtype)
    if layer.activation is not None:
        y = layer.activation(y)
    return y, layout


def _grouped_conv2d(layer, kernel, x, layout, num_tasks):
    x = to_grouped(x, layout, num_tasks)
    _, kh, kw, c, o = kernel.shape
    # [kh, kw, C, T * O]: output channel t * O + j belongs to task t, and TensorFlow's grouped
    # convolution feeds it input channels t * C ... t * C + C - 1, task t's own.
    kernel = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, c, num_tasks * o])
    y = tf.nn.conv2d(x, kernel, strides=layer.strides, padding=layer.padding.upper())
    return y, GROUPED


def _output_size_and_padding(size, kernel, stride, padding):
    if padding == "valid":
        return (size - kernel) // stride + 1, (0, 0)
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def _patches(layer, x, kernel_shape, num_tasks):
    """`x [T, N, H, W, C]` as patches `[T, N * oh * ow, kh * kw * C]`, and `(oh, ow)`."""
    kh, kw, c = kernel_shape
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
    return tf.reshape(patches, [num_tasks, -1, kh * kw * c]), (oh, ow)


def _patches_conv2d(layer, kernel, x, layout, num_tasks):
    x = to_task_major(x, layout, num_tasks)
    _, kh, kw, c, o = kernel.shape
    patches, (oh, ow) = _patches(layer, x, (kh, kw, c), num_tasks)
    y = tf.matmul(patches, tf.reshape(kernel, [num_tasks, kh * kw * c, o]))
    return tf.reshape(y, [num_tasks, -1, oh, ow, o]), TASK_MAJOR


def _shared_conv2d(layer, kernel, x, layout, num_tasks, conv):
    """Step 0 (every task has theta): one ordinary convolution; see `shared_start`."""
    x = to_task_major(x, layout, num_tasks)
    _, kh, kw, c, o = kernel.shape
    sh, sw = layer.strides
    padding = layer.padding.upper()

    def grouped_filter_gradient(x, dy):
        # Task t's kernel gradient pairs only its own images with its own output gradient:
        # the grouped convolution's filter gradient, in the tasks-in-channels layout.
        grads = tf.compat.v1.nn.conv2d_backprop_filter(
            to_grouped(x, TASK_MAJOR, num_tasks), [kh, kw, c, num_tasks * o],
            to_grouped(dy, TASK_MAJOR, num_tasks), [1, sh, sw, 1], padding)
        return tf.transpose(tf.reshape(grads, [kh, kw, c, num_tasks, o]), [3, 0, 1, 2, 4])

    def patches_filter_gradient(x, dy):
        patches, _ = _patches(layer, x, (kh, kw, c), num_tasks)
        grads = tf.matmul(patches, tf.reshape(dy, [num_tasks, -1, o]), transpose_a=True)
        return tf.reshape(grads, [num_tasks, kh, kw, c, o])

    y = shared_conv2d(x, kernel, [sh, sw], padding,
                      grouped_filter_gradient if conv == "grouped" else patches_filter_gradient)
    return y, TASK_MAJOR


def _flatten(layer, params, x, layout, num_tasks, conv=None):
    x = to_task_major(x, layout, num_tasks)
    return tf.reshape(x, [num_tasks, -1, _product(x.shape[2:])]), TASK_MAJOR


def _product(dims):
    out = 1
    for d in dims:
        out *= d
    return out


def _pool(layer, params, x, layout, num_tasks, conv=None):
    pool = tf.nn.max_pool2d if isinstance(layer, keras.layers.MaxPooling2D) else tf.nn.avg_pool2d
    args = (layer.pool_size, layer.strides, layer.padding.upper())
    if layout == GROUPED:
        # Pooling acts on each channel alone, so all tasks pool at once in this layout.
        return pool(x, *args), GROUPED
    t, n, h, w, c = x.shape
    y = pool(tf.reshape(x, [-1, h, w, c]), *args)
    return tf.reshape(y, [t, -1] + y.shape.as_list()[1:]), TASK_MAJOR


def _global_average_pool(layer, params, x, layout, num_tasks, conv=None):
    # As Keras' mean does: sum in at least float32 (a float16 sum can overflow), cast back.
    dtype = x.dtype
    x = tf.cast(x, keras.backend.result_type(dtype, "float32"))
    if layout == GROUPED:
        # A mean over height and width acts on each channel alone, so in the grouped layout
        # all tasks reduce at once, before the (then much smaller) move back to task-major.
        tc = x.shape[-1]
        y = tf.reduce_mean(x, axis=[1, 2])  # [N, T * C]
        y = tf.transpose(tf.reshape(y, [-1, num_tasks, tc // num_tasks]), [1, 0, 2])
    else:
        y = tf.reduce_mean(x, axis=[2, 3])  # [T, N, H, W, C] -> [T, N, C]
    if layer.keepdims:
        y = y[:, :, tf.newaxis, tf.newaxis, :]
    return tf.cast(y, dtype), TASK_MAJOR


def _elementwise(layer, params, x, layout, num_tasks, conv=None):
    return layer.call(x), layout


def _channels_last(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"{type(layer).__name__} {layer.name!r} is channels_first"
    return None


def _conv2d_problem(layer):
    name = f"{type(layer).__name__} {layer.name!r}"
    if layer.data_format != "channels_last":
        return f"{name} is channels_first"
    if layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1):
        return f"{name} is grouped or dilated"
    return None


register_batched_kernel(keras.layers.Dense, _dense)
register_batched_kernel(keras.layers.Conv2D, _conv2d, _conv2d_problem)
register_batched_kernel(keras.layers.Flatten, _flatten, _channels_last)
register_batched_kernel(keras.layers.MaxPooling2D, _pool, _channels_last)
register_batched_kernel(keras.layers.AveragePooling2D, _pool, _channels_last)
register_batched_kernel(keras.layers.GlobalAveragePooling2D, _global_average_pool,
                        _channels_last)
register_batched_kernel(keras.layers.ReLU, _elementwise, _channels_last)
register_batched_kernel(keras.layers.Activation, _elementwise, _channels_last)
