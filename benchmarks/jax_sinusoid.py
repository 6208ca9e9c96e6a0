r"""The JAX reference for `benchmarks/meta_step.py`'s sinusoid rows: MAML with vmap and one jit.

    python benchmarks/jax_sinusoid.py [--steps=1] [--repeats=300 --warmup=20]

Issue 17 measures keras-meta's sinusoid meta-iteration against JAX: the same MLP (1-40-40-1,
ReLU), 25 tasks of 10 support and 10 query points, one inner SGD step of 0.01 with exact second
order, and Adam 1e-3 on the mean query MSE, written the way JAX users write it: the per-task
adaptation `vmap`-ped over the meta-batch and the whole outer step under one `jax.jit`.
`--steps=N` runs N outer steps per call over N stacked meta-batches (`lax.scan`), as
keras-meta's `steps_per_execution` does. `--serve` times blocks of calls on request, for
`benchmarks/sinusoid_vs_jax.py`, which takes turns with it from keras-meta's process.

This file imports no TensorFlow, so that `meta_step.py` can run it under any interpreter that
has JAX (`--jax_python`); JAX is not a dependency of keras-meta. It prints one `ROW {json}`
line in `meta_step.py`'s format.
"""

import argparse
import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

WIDTHS = (1, 40, 40, 1)
META_BATCH, SHOTS, QUERIES = 25, 10, 10
INNER_LR, META_LR = 0.01, 1e-3
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7  # Keras' Adam defaults, as the TF rows use


def init_params(key):
    """Glorot-uniform kernels and zero biases, as Keras' Dense initialises them."""
    params = []
    for fan_in, fan_out in zip(WIDTHS[:-1], WIDTHS[1:]):
        key, sub = jax.random.split(key)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params.append((jax.random.uniform(sub, (fan_in, fan_out), jnp.float32, -limit, limit),
                       jnp.zeros((fan_out,), jnp.float32)))
    return params


def forward(params, x):
    for i, (kernel, bias) in enumerate(params):
        x = x @ kernel + bias
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def mse(params, x, y):
    return jnp.mean((forward(params, x) - y) ** 2)


def task_query_loss(params, support_x, support_y, query_x, query_y):
    # The inner gradient is differentiated again by the outer grad: exact second order.
    grads = jax.grad(mse)(params, support_x, support_y)
    adapted = jax.tree_util.tree_map(lambda p, g: p - INNER_LR * g, params, grads)
    return mse(adapted, query_x, query_y)


def meta_loss(params, episode):
    losses = jax.vmap(task_query_loss, in_axes=(None, 0, 0, 0, 0))(params, *episode)
    return jnp.mean(losses)


def adam_update(params, grads, state):
    m, v, t = state
    t = t + 1
    m = jax.tree_util.tree_map(lambda m, g: BETA_1 * m + (1 - BETA_1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v, g: BETA_2 * v + (1 - BETA_2) * g * g, v, grads)
    tf = t.astype(jnp.float32)
    rate = META_LR * jnp.sqrt(1 - BETA_2 ** tf) / (1 - BETA_1 ** tf)
    params = jax.tree_util.tree_map(lambda p, m, v: p - rate * m / (jnp.sqrt(v) + EPSILON),
                                    params, m, v)
    return params, (m, v, t)


def outer_step(carry, episode):
    params, state = carry
    loss, grads = jax.value_and_grad(meta_loss)(params, episode)
    params, state = adam_update(params, grads, state)
    return (params, state), loss


@jax.jit
def one_step(params, state, episode):
    (params, state), loss = outer_step((params, state), episode)
    return params, state, loss


@jax.jit
def many_steps(params, state, episodes):
    (params, state), losses = jax.lax.scan(outer_step, (params, state), episodes)
    return params, state, losses[-1]


def sinusoid_meta_batches(rng, count):
    """`count` meta-batches (support_x, support_y, query_x, query_y), stacked on axis 0."""
    amplitude = rng.uniform(0.1, 5.0, (count, META_BATCH, 1, 1))
    phase = rng.uniform(0.0, np.pi, (count, META_BATCH, 1, 1))
    x = rng.uniform(-5.0, 5.0, (count, META_BATCH, SHOTS + QUERIES, 1))
    y = amplitude * np.sin(x - phase)
    return tuple(jnp.asarray(a, jnp.float32) for a in (x[:, :, :SHOTS], y[:, :, :SHOTS],
                                                       x[:, :, SHOTS:], y[:, :, SHOTS:]))


def serve(call, params, state, steps):
    """Times blocks of calls on request: one `CALLS SETTLE` line in, one JSON line out.

    The caller takes turns with this process, so that a drift of the machine hits both; while
    it runs its own block, this one waits on stdin and computes nothing.
    """
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        calls, settle = int(words[0]), int(words[1])
        for _ in range(settle):
            params, state, loss = call(params, state)
            loss.block_until_ready()
        start = time.perf_counter()
        for _ in range(calls):
            params, state, loss = call(params, state)
            loss.block_until_ready()
        seconds = time.perf_counter() - start
        print(json.dumps({"ms_per_iteration": seconds / calls / steps * 1e3,
                          "loss": float(loss)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="Outer steps per call.")
    parser.add_argument("--repeats", type=int, default=300, help="Timed calls.")
    parser.add_argument("--min_seconds", type=float, default=0.0,
                        help="Keep timing past --repeats until the timed calls add up to this.")
    parser.add_argument("--warmup", type=int, default=20, help="Untimed calls after compiling.")
    parser.add_argument("--name", default=None, help="The row's name (meta_step.py sets it).")
    parser.add_argument("--serve", action="store_true",
                        help="After compiling and --warmup calls, print READY, then answer each "
                             "stdin line `CALLS SETTLE` with one JSON line: the milliseconds "
                             "per meta-iteration of CALLS timed calls after SETTLE untimed ones.")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1; got {args.steps}.")
    if args.min_seconds < 0:
        parser.error(f"--min_seconds must be 0 or more; got {args.min_seconds}.")

    params = init_params(jax.random.PRNGKey(0))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = (zeros, zeros, jnp.zeros((), jnp.int32))
    batches = sinusoid_meta_batches(np.random.default_rng(0), args.steps)
    if args.steps == 1:
        episode = tuple(a[0] for a in batches)
        call = lambda p, s: one_step(p, s, episode)  # noqa: E731
    else:
        call = lambda p, s: many_steps(p, s, batches)  # noqa: E731

    start = time.perf_counter()
    params, state, loss = call(params, state)
    loss.block_until_ready()
    first_call = time.perf_counter() - start
    for _ in range(args.warmup):
        params, state, loss = call(params, state)
    loss.block_until_ready()
    if args.serve:
        serve(call, params, state, args.steps)
        return
    times, timed = [], 0.0
    while len(times) < args.repeats or timed < args.min_seconds:
        start = time.perf_counter()
        params, state, loss = call(params, state)
        loss.block_until_ready()
        seconds = time.perf_counter() - start
        timed += seconds
        times.append(seconds / args.steps)
    if not np.isfinite(float(loss)):
        raise SystemExit(f"The JAX reference's meta-loss is {float(loss)}: not a valid timing.")
    median = float(np.median(times))
    row = {"config": args.name or f"jax_sinusoid_{args.steps}_per_call", "median_s": median,
           "min_s": float(np.min(times)), "max_s": float(np.max(times)),
           "first_call_s": first_call,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_before_step_mib": None, "tensor_peak_mib": None, "gflop": None,
           "gflops_per_s": None, "choice": None, "tuning_s": None,
           "jax_version": jax.__version__, "jax_device": str(jax.devices()[0]), "times": times}
    print("ROW " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
