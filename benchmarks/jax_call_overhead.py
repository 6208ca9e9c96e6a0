r"""The JAX side of `benchmarks/call_overhead.py`: what one jitted call costs per array it updates.

    python benchmarks/jax_call_overhead.py --variables=0,1,5,10,20,40 [--rounds=5 --calls=500]

For each count N, one `jax.jit` function takes N float32 [40, 40] arrays and a scalar and
returns the N arrays plus the scalar (what an optimizer step does to its parameters and
slots, with almost no arithmetic), called the way `jax_sinusoid.py` calls its step: new arrays
in, the scalar read back. Rounds alternate between the counts. Imports no TensorFlow, so that
`call_overhead.py` can run it under any interpreter that has JAX; prints one `ROW {json}` line
per count.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def updater(count):
    @jax.jit
    def update(arrays, x):
        return [a + x for a in arrays], x + 1.0

    arrays = [jnp.zeros((40, 40), jnp.float32) for _ in range(count)]
    state = {"arrays": arrays, "x": jnp.float32(0.0)}

    def call():
        state["arrays"], out = update(state["arrays"], state["x"])
        return float(out)

    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", default="0,1,5,10,20,40",
                        help="Comma-separated array counts.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved rounds.")
    parser.add_argument("--calls", type=int, default=500, help="Calls of each count per round.")
    args = parser.parse_args()
    try:
        counts = [int(c) for c in args.variables.split(",")]
    except ValueError:
        parser.error(f"--variables takes comma-separated whole numbers; got {args.variables!r}.")
    if min(counts) < 0 or args.rounds < 1 or args.calls < 1:
        parser.error(f"expected counts >= 0 and rounds, calls >= 1; got --variables="
                     f"{args.variables} --rounds={args.rounds} --calls={args.calls}.")
    calls = {n: updater(n) for n in counts}
    for call in calls.values():
        for _ in range(50):
            call()
    times = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n, call in calls.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                call()
            times[n].append((time.perf_counter() - start) / args.calls * 1e6)
    for n in counts:
        print("ROW " + json.dumps({"framework": "jax", "variables": n,
                                   "us_per_call": float(np.median(times[n])),
                                   "rounds_us": times[n], "jax_version": jax.__version__}),
              flush=True)


if __name__ == "__main__":
    main()
