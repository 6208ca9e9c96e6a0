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
import jax.extend  # noqa: F401  (jax.extend.backend, for --serve's raw runs)
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


def serve(call, params, state, steps, episode=None):
    """Times blocks of calls on request, for a caller taking turns with this process.

    One command per stdin line, one JSON line back:
    - `CALLS SETTLE [SIDE]`: the milliseconds per meta-iteration of CALLS timed calls after
      SETTLE untimed ones. SIDE `jax` (default) is the jitted step as users call it; with one
      step per call, `jax_raw` is its compiled module run through the runtime's own
      `execute`, and `loaded` the module given by `load`, run the same way.
    - `export DIR` (one step per call): writes this step's module as `jax.export` serializes
      it (`DIR/jax_step.mlir`) and its inputs (`DIR/jax_step_inputs.npz`, params and Adam
      state first), and answers with its calling convention and output shapes.
    - `load HLO_PROTO HLO_TEXT`: compiles another framework's XLA module (a serialized
      HloModuleProto, with its text for the parameters' shapes and input/output aliases).
    - `quit`.

    A command it cannot do (unknown, a missing file, a side not loaded) is answered with
    `{"error": REASON}`, and it goes on serving.

    While the caller runs its own block, this process waits on stdin and computes nothing.
    """
    runs = {"jax": None}
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        try:
            answer = _answer(words, runs, params, state, episode, steps, call)
        except (ValueError, KeyError, OSError) as error:
            # A command this process cannot do is answered, and it keeps serving.
            answer = {"error": f"{line.strip()!r}: {error}"}
        else:
            if "state" in answer:
                params, state = answer.pop("state")
        print(json.dumps(answer), flush=True)


def _answer(words, runs, params, state, episode, steps, call):
    """One command's answer (see `serve`); a timed block of `jax` hands back the new state
    under "state"."""
    if words[0] == "export" and len(words) == 2:
        return _export(params, state, episode, words[1])
    if words[0] == "load" and len(words) == 3:
        runs["loaded"] = _raw_run(*_compile_hlo(words[1], words[2]))
        return {"loaded": True}
    if not (2 <= len(words) <= 3 and words[0].isdigit() and words[1].isdigit()):
        raise ValueError("expected 'CALLS SETTLE [SIDE]', 'export DIR', 'load HLO_PROTO "
                         "HLO_TEXT' or 'quit'")
    calls, settle = int(words[0]), int(words[1])
    side = words[2] if len(words) > 2 else "jax"
    if side == "jax_raw" and side not in runs:
        runs[side] = _raw_run(*_compile_own(params, state, episode))
    if side == "jax":
        def run():
            nonlocal params, state
            params, state, loss = call(params, state)
            loss.block_until_ready()
    elif runs.get(side) is None:
        raise ValueError(f"no side {side!r}: expected 'jax', 'jax_raw'"
                         + (" or 'loaded'" if "loaded" in runs else " ('loaded' after 'load')"))
    else:
        run = runs[side]
    for _ in range(settle):
        run()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    seconds = time.perf_counter() - start
    answer = {"ms_per_iteration": seconds / calls / steps * 1e3}
    if side == "jax":
        answer["state"] = (params, state)
    return answer


def _export(params, state, episode, directory):
    exported = jax.export.export(one_step, platforms=["cpu"])(params, state, episode)
    leaves = jax.tree_util.tree_leaves((params, state, episode))
    with open(f"{directory}/jax_step.mlir", "wb") as f:
        f.write(exported.mlir_module_serialized)
    np.savez(f"{directory}/jax_step_inputs.npz", *[np.asarray(x) for x in leaves])
    return {"version": exported.calling_convention_version,
            "state_leaves": len(jax.tree_util.tree_leaves((params, state))),
            "outputs": [[list(a.shape), str(a.dtype)] for a in exported.out_avals]}


def _compile_own(params, state, episode):
    """This step's module and inputs for `_raw_run`: its outputs' first leaves are the next
    call's params and state, as the jitted call hands them back."""
    from jax._src.lib import xla_client

    lowered = one_step.lower(params, state, episode)
    backend = jax.extend.backend.get_backend()
    executable = backend.compile_and_load(
        lowered.as_text(), xla_client.DeviceList(tuple(backend.devices()[:1])),
        xla_client.CompileOptions())
    inputs = [jax.device_put(np.asarray(x))
              for x in jax.tree_util.tree_leaves((params, state, episode))]
    count = len(jax.tree_util.tree_leaves((params, state)))
    return executable, inputs, [(k, k) for k in range(count)]


def _compile_hlo(proto_path, text_path):
    """A serialized HloModuleProto compiled by this JAX's XLA, with inputs of its parameters'
    shapes (0.01 for floats, 1 for integers: the arithmetic, not the values, is timed) and
    the output -> parameter pairs its input/output aliases name."""
    import re

    from jax._src.lib import xla_client

    with open(text_path) as f:
        text = f.read()
    entry = next((line for line in text.splitlines() if line.startswith("ENTRY")), None)
    if entry is None:
        raise ValueError(f"{text_path} has no ENTRY line; expected the HLO text of "
                         f"{proto_path}'s module")
    kinds = {"f32": np.float32, "s64": np.int64, "s32": np.int32}
    inputs = []
    with jax.enable_x64(True):  # its step counter is int64, which JAX keeps only under x64
        for dtype, dims in re.findall(r"arg\d+\.\d+: ([a-z0-9]+)\[([0-9,]*)\]", entry):
            if dtype not in kinds:
                raise ValueError(f"{text_path}: a parameter of type {dtype}; expected one of "
                                 f"{sorted(kinds)}")
            shape = [int(d) for d in dims.split(",") if d]
            value = 0.01 if dtype.startswith("f") else 1
            inputs.append(jax.device_put(np.full(shape, value, kinds[dtype])))
    aliases = [(int(k), int(p)) for k, p in re.findall(
        r"\{(\d+)\}: \((\d+), \{\}, may-alias\)", text.splitlines()[0])]
    with open(proto_path, "rb") as f:
        module = xla_client._xla.mlir.hlo_to_stablehlo(f.read())
    backend = jax.extend.backend.get_backend()
    executable = backend.compile_and_load(
        module, xla_client.DeviceList(tuple(backend.devices()[:1])), xla_client.CompileOptions())
    return executable, inputs, aliases


def _raw_run(executable, inputs, aliases):
    """One call of `executable` through the runtime's `execute`, its updated state fed back."""
    def run():
        outputs = executable.execute(inputs)
        for output, parameter in aliases:
            inputs[parameter] = outputs[output]
        outputs[0].block_until_ready()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="Outer steps per call.")
    parser.add_argument("--repeats", type=int, default=300, help="Timed calls.")
    parser.add_argument("--min_seconds", type=float, default=0.0,
                        help="Keep timing past --repeats until the timed calls add up to this.")
    parser.add_argument("--warmup", type=int, default=20, help="Untimed calls after compiling.")
    parser.add_argument("--name", default=None, help="The row's name (meta_step.py sets it).")
    parser.add_argument("--serve", action="store_true",
                        help="After compiling and --warmup calls, print READY, then answer "
                             "one command per stdin line with one JSON line (`serve`'s "
                             "docstring: timed blocks, export, load, quit).")
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
        serve(call, params, state, args.steps, episode if args.steps == 1 else None)
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
