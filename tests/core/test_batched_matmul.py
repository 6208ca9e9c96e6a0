"""`batched_matmul`: tf.matmul's products and derivatives, in XLA's faster form on a CPU.

Under XLA on a CPU a contraction over the rows (a transposed first operand) runs on a
transpose materialized behind an optimization barrier; everywhere else it is `tf.matmul`.
Checked in float64 against `tf.matmul` to third order inside one compiled function, in the
graph (the barrier is there only under XLA), and through a whole MAML meta-gradient against
the per-task loop.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.backbones import mlp
from keras_meta.core.batching.batched_matmul import batched_matmul

SHAPES = {  # (transpose_a, transpose_b): shapes of a and b
    (False, False): ((3, 5, 4), (3, 4, 2)),
    (True, False): ((3, 5, 4), (3, 5, 2)),
    (False, True): ((3, 5, 4), (3, 2, 4)),
}


def derivatives(matmul, a, b, weights):
    """The value and three orders of derivatives of a non-linear function of the product."""
    with tf.GradientTape() as third:
        third.watch([a, b])
        with tf.GradientTape() as second:
            second.watch([a, b])
            with tf.GradientTape() as first:
                first.watch([a, b])
                c = matmul(a, b)
                value = tf.reduce_sum(tf.sin(c) * weights)
            ga, gb = first.gradient(value, [a, b])
            norm = tf.reduce_sum(ga * ga * ga) + tf.reduce_sum(tf.sin(gb))
        ha, hb = second.gradient(norm, [a, b])
        cubic = tf.reduce_sum(tf.tanh(ha)) + tf.reduce_sum(hb * hb)
    return [c, ga, gb, ha, hb] + third.gradient(cubic, [a, b])


@pytest.mark.parametrize("transposes", sorted(SHAPES))
def test_compiled_products_and_three_orders_of_derivatives_equal_tf_matmul(transposes):
    transpose_a, transpose_b = transposes
    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.normal(size=s)) for s in SHAPES[transposes])
    weights = tf.constant(rng.normal(size=tf.matmul(a, b, transpose_a=transpose_a,
                                                    transpose_b=transpose_b).shape))

    def ours(a, b):
        return batched_matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    def theirs(a, b):
        return tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    compiled = tf.function(lambda a, b: derivatives(ours, a, b, weights), jit_compile=True)
    reference = tf.function(lambda a, b: derivatives(theirs, a, b, weights), jit_compile=True)
    for x, y in zip(compiled(a, b), reference(a, b)):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-11, atol=1e-12)


def barriers(fn, *args, jit_compile):
    graph = tf.function(fn, jit_compile=jit_compile).get_concrete_function(*args).graph
    return sum(op.type == "XlaOptimizationBarrier" for op in graph.get_operations())


def test_the_barrier_is_built_under_xla_only_and_only_for_contractions_over_rows():
    x, dy = tf.ones([3, 5, 4]), tf.ones([3, 5, 2])
    kernel = tf.ones([3, 4, 2])

    def kernel_gradient(x, dy):
        return batched_matmul(x, dy, transpose_a=True)

    def forward(x, kernel):
        return batched_matmul(x, kernel)

    assert barriers(kernel_gradient, x, dy, jit_compile=True) == 1
    assert barriers(kernel_gradient, x, dy, jit_compile=False) == 0
    assert barriers(forward, x, kernel, jit_compile=True) == 0


def test_both_transposes_are_refused():
    with pytest.raises(ValueError, match="not both"):
        batched_matmul(tf.ones([2, 3, 3]), tf.ones([2, 3, 3]), transpose_a=True,
                       transpose_b=True)


@pytest.mark.parametrize("first_order", [False, True])
def test_compiled_batched_meta_gradient_equals_the_per_task_loop_in_float64(first_order):
    # The sinusoid MLP batched under XLA (every dense kernel gradient through batched_matmul)
    # against the per-task loop in the default runtime: the same meta-gradient to float64
    # rounding, two inner steps so that later steps' per-task kernels are covered too.
    keras.utils.set_random_seed(0)
    base = mlp((8, 8), dtype="float64")
    rng = np.random.default_rng(3)
    data = km.Episode(*(tf.constant(rng.normal(size=(4, n, 1))) for n in (6, 6, 5, 5)))
    results = {}
    for mode, jit in (("loop", False), ("batched", True)):
        maml = km.MAML(base, inner_lr=0.1, inner_steps=2, loss="mse", task_batching=mode,
                       first_order=first_order, dtype="float64")
        results[mode] = tf.function(maml.meta_gradients, jit_compile=jit)(data)
    np.testing.assert_allclose(results["batched"][0].numpy(), results["loop"][0].numpy(),
                               rtol=1e-12)
    for a, b in zip(results["loop"][1], results["batched"][1]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-13)
