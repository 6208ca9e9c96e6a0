"""Helpers of the benchmark scripts that their figures depend on."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a child: the script defines absl flags at import, which must not meet the test
# process's own.
_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("benchmark", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
function = getattr(module, sys.argv[2])
print(json.dumps([function(value) for value in json.loads(sys.argv[3])]))
"""


def _in_child(script, function, values):
    """`[function(value) for value in values]`, `function` taken from `benchmarks/script`."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, os.path.join(ROOT, "benchmarks", script), function,
         json.dumps(values)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_rounds_pool_timed_rows_and_the_matmul_peak():
    # `--rounds=3` with the peak row once failed at the second round: a rate has no times.
    peak = [{"config": "matmul_peak", "median_s": None, "min_s": None, "max_s": None,
             "gflops_per_s": rate, "matmul_size": 2048} for rate in (190.0, 280.0, 200.0)]
    timed = [{"config": "x", "median_s": m, "min_s": m, "max_s": m, "times": [m, m + 1.0],
              "first_call_s": 1.0, "peak_rss_mib": 10.0, "tensor_peak_mib": None,
              "gflop": 2.0, "gflops_per_s": None} for m in (1.0, 3.0)]
    peak_row, timed_row = _in_child("meta_step.py", "_pooled", [peak, timed])
    assert peak_row["gflops_per_s"] == 200.0
    assert peak_row["round_gflops_per_s"] == [190.0, 280.0, 200.0]
    assert timed_row["round_medians"] == [1.0, 3.0]
    assert timed_row["times"] == [1.0, 2.0, 3.0, 4.0]
    assert timed_row["median_s"] == 2.5 and timed_row["gflops_per_s"] == 0.8


def test_the_trainer_benchmarks_interval_brackets_its_median():
    # trainer_loop.py and trainer_call.py say how far their median of noisy rounds could be off.
    same, spread = [5.0] * 9, [-20.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 40.0]
    (low_same, high_same), (low, high) = _in_child("interleaved.py", "median_interval",
                                                   [same, spread])
    assert low_same == high_same == 5.0
    # The median (6) is inside; the interval stays within the middle rounds, not the outliers.
    assert 1.0 <= low < 6.0 < high <= 12.0


def _interleaved():
    spec = importlib.util.spec_from_file_location(
        "interleaved", os.path.join(ROOT, "benchmarks", "interleaved.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no flags there: safe in the test process
    return module


def test_settled_turns_leave_the_switch_out_of_the_timing():
    # A call made right after the other function's turn costs 50 ms on a fake clock (as a
    # meta-step does after another step evicted its caches); every other call costs nothing.
    # `settle` makes that call untimed. The clock is the module's own, so nothing sleeps.
    interleaved = _interleaved()
    clock, calls, last = [0.0], [], [None]
    interleaved.time = types.SimpleNamespace(perf_counter=lambda: clock[0])

    def make(name):
        def call():
            calls.append(name)
            if last[0] not in (None, name):
                clock[0] += 0.05
            last[0] = name
            return 0.0
        return call

    functions = {"a": make("a"), "b": make("b")}
    settled = interleaved.time_interleaved(functions, rounds=2, calls=2, warmup=0,
                                           alternate=True, settle=1)
    assert "".join(calls) == "aaabbbbbbaaa"
    assert settled == {"a": [0.0, 0.0], "b": [0.0, 0.0]}
    calls.clear()
    last[0] = None
    unsettled = interleaved.time_interleaved(functions, rounds=2, calls=2, warmup=0,
                                             alternate=True)
    assert "".join(calls) == "aabbbbaa"
    # Each function's turn after the other's: 50 ms over 2 calls.
    assert unsettled == {"a": [0.0, pytest.approx(25.0)], "b": [pytest.approx(25.0), 0.0]}


def test_in_process_pairs_refuse_rows_they_cannot_pair_before_any_work():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "meta_step.py"), "--in_process",
         "--configs=sinusoid_second_auto"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--in_process takes the Omniglot auto rows; got ['sinusoid_second_auto']" in \
        done.stderr
    assert "omniglot_5w1s_first_auto" in done.stderr


_VS_JAX_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("vs_jax", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
order = []
def side(name, ms):
    def turn():
        order.append(name)
        return ms
    return turn
times = module.take_turns({"keras-meta": side("keras-meta", 2.0), "JAX": side("JAX", 1.0)}, 4)
try:
    module.JaxChild(sys.executable, steps=1, warmup=0)
    refusal = None
except RuntimeError as error:
    refusal = str(error)
print(json.dumps({"order": order, "times": times, "refusal": refusal}))
"""


def test_sinusoid_vs_jax_takes_turns_in_both_orders_and_names_a_python_without_jax():
    # Every other round starts with the other side, so that neither always runs right after
    # the other's turn; a JAX side that cannot start says what to install, not a traceback.
    if importlib.util.find_spec("jax") is not None:
        pytest.skip("this Python has JAX: the refusal is for one without it")
    done = subprocess.run(
        [sys.executable, "-c", _VS_JAX_CHILD,
         os.path.join(ROOT, "benchmarks", "sinusoid_vs_jax.py")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["order"] == ["keras-meta", "JAX", "JAX", "keras-meta"] * 2
    assert result["times"] == {"keras-meta": [2.0] * 4, "JAX": [1.0] * 4}
    assert result["refusal"] == (f"--jax_python={sys.executable} has no JAX: install jax[cpu] "
                                 "in that environment (JAX is not a keras-meta dependency).")


def test_sinusoid_vs_jax_needs_a_python_with_jax_before_any_work():
    script = os.path.join(ROOT, "benchmarks", "sinusoid_vs_jax.py")

    def refusal(*arguments):
        done = subprocess.run([sys.executable, script, *arguments], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode != 0
        return done.stderr

    assert "--jax_python is required: the Python that has JAX." in refusal()
    assert "--jax_python='/nonexistent/python' is not an executable file." in refusal(
        "--jax_python=/nonexistent/python")
    # Swapping graphs runs one step per call; asking for more is refused before any work.
    jax_python = f"--jax_python={sys.executable}"
    assert ("--swap_graphs runs one step per call; got --steps_per_call=10 and "
            "--jax_steps_per_call=10.") in refusal(jax_python, "--swap_graphs",
                                                   "--steps_per_call=10")
    assert ("--swap_graphs runs one step per call; got --steps_per_call=1 and "
            "--jax_steps_per_call=10.") in refusal(jax_python, "--swap_graphs",
                                                   "--jax_steps_per_call=10")


def _run_vs_jax(tmp_path, *arguments):
    """`sinusoid_vs_jax.py` with a JAX Python, two rounds: `(stdout, the --output JSON)`."""
    output = tmp_path / "vs_jax.json"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "sinusoid_vs_jax.py"),
         f"--jax_python={os.environ['KERAS_META_JAX_PYTHON']}", "--rounds=2", "--warmup=0",
         f"--output={output}", *arguments], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(output.read_text())


@pytest.mark.skipif(not os.environ.get("KERAS_META_JAX_PYTHON"),
                    reason="set KERAS_META_JAX_PYTHON to a Python with JAX (not a dependency)")
def test_sinusoid_vs_jax_compares_several_steps_per_call_with_jax_at_one(tmp_path):
    # Issue 17's bar: keras-meta at several meta-iterations per call as a share of JAX's time
    # at one; JAX's blocks cover as many meta-iterations as keras-meta's.
    stdout, result = _run_vs_jax(tmp_path, "--steps_per_call=3", "--jax_steps_per_call=1",
                                 "--calls=2", "--settle=1")
    assert "keras-meta at 3 per call / JAX at 1 per call, per round: median" in stdout
    assert (result["steps_per_call"], result["jax_steps_per_call"]) == (3, 1)
    assert (result["calls"], result["jax_calls"]) == (2, 6)
    times = result["times_ms"]
    share = result["medians"]["keras-meta at 3 per call / JAX at 1 per call"]
    ratios = sorted(k / j for k, j in zip(times["keras-meta"], times["JAX"]))
    assert share == pytest.approx(sum(ratios) / 2)


@pytest.mark.skipif(not os.environ.get("KERAS_META_JAX_PYTHON"),
                    reason="set KERAS_META_JAX_PYTHON to a Python with JAX (not a dependency)")
def test_sinusoid_vs_jax_runs_each_graph_in_both_runtimes(tmp_path):
    _, result = _run_vs_jax(tmp_path, "--swap_graphs", "--calls=3", "--settle=0")
    assert sorted(result["times_ms"]) == sorted([
        "keras-meta", "JAX", "keras-meta's graph, JAX's runtime", "JAX's graph, JAX's runtime",
        "JAX's graph, TensorFlow's runtime"])
    assert all(len(v) == 2 and all(0 < t < 1e4 for t in v) for v in result["times_ms"].values())
    assert len(result["medians"]) == 5


_SERVE_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("vs_jax", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
answers = {}
with module.JaxChild(sys.argv[2], steps=1, warmup=0) as jax_side:
    for command in sys.argv[4:]:
        try:
            answers[command] = jax_side.request(command)
        except ValueError as error:
            answers[command] = str(error)
    answers["turn"] = jax_side.turn(calls=2, settle=0)
print(json.dumps(answers))
"""


@pytest.mark.skipif(not os.environ.get("KERAS_META_JAX_PYTHON"),
                    reason="set KERAS_META_JAX_PYTHON to a Python with JAX (not a dependency)")
def test_the_jax_side_answers_a_command_it_cannot_do_and_keeps_serving(tmp_path):
    no_entry = tmp_path / "module.txt"
    no_entry.write_text("HloModule step\n")
    commands = ["frobnicate", "3 0 loaded", f"load {tmp_path}/missing.pb {no_entry}",
                f"load {tmp_path}/missing.pb {tmp_path}/missing.txt"]
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_CHILD, os.path.join(ROOT, "benchmarks",
                                                          "sinusoid_vs_jax.py"),
         os.environ["KERAS_META_JAX_PYTHON"], str(tmp_path), *commands],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers["frobnicate"].startswith("The JAX side could not do 'frobnicate': expected "
                                            "'CALLS SETTLE [SIDE]'"), answers
    assert "no side 'loaded'" in answers["3 0 loaded"], answers
    assert f"{no_entry} has no ENTRY line" in answers[commands[2]], answers
    assert "No such file" in answers[commands[3]], answers
    assert 0 < answers["turn"] < 1e4


def test_the_batch_norm_benchmark_sets_the_fused_form_against_its_plain_op_second_derivative():
    # Layers only, one call per round: the fused rows against the previous second derivative,
    # the plain-op rows left out.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "batch_norm_second_order.py"),
         "--before=plain_second", "--steps=none", "--rounds=1", "--layer_calls=1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| layer:")]
    assert "before: plain-op second derivative" in done.stdout
    assert len(rows) == 3 and all("fused" in row for row in rows), done.stdout


def test_the_thunk_profile_reads_opcodes_and_shapes_from_optimized_hlo():
    hlo = "\n".join([
        "ENTRY %main (p: f32[25,10,40]) -> f32[25,40,40] {",
        "  %MatMul_6.7 = f32[25,40,40]{2,1,0} dot(%a, %b), lhs_batch_dims={0}",
        "  %bitcast_dot_fusion = f32[40]{0} fusion(%c, %d), kind=kLoop, calls=%f",
        "  ROOT %tuple.3 = (f32[], s32[4]{0}) tuple(%x, %y)",
        "  %copy.31 = f32[40,40]{0,1} copy(%e)",
        "}"])
    [found] = _in_child("xla_thunks.py", "hlo_instructions", [hlo])
    assert found == {"MatMul_6.7": ["dot", "f32[25,40,40]"],
                     "bitcast_dot_fusion": ["fusion", "f32[40]"],
                     "tuple.3": ["tuple", "(f32[], s32[4])"],
                     "copy.31": ["copy", "f32[40,40]"]}


def test_the_thunk_profile_accounts_for_the_compiled_steps_time(tmp_path):
    # Two profiled calls of two meta-iterations: every thunk event is named after an
    # instruction of the optimized module, and the thunks fit inside the executor's time.
    output = tmp_path / "thunks.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow")
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "xla_thunks.py"), "--steps_per_call=2",
         "--calls=2", "--warmup=1", "--top=3", f"--output={output}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(output.read_text())
    assert "| dot |" in done.stdout and len(figures["top"]) == 3, done.stdout
    assert figures["thunks"] > 10 and figures["by_opcode"]["dot"]["thunks"] >= 1
    assert sum(v["us"] for v in figures["by_opcode"].values()) == pytest.approx(
        figures["thunks_us"])
    assert 0 < figures["thunks_us"] <= figures["executor_us"] * 1.001
    assert figures["executor_us"] < figures["wall_us"]
