"""The console scripts of a plain, non-editable install, run from outside the checkout.

Builds the wheel from a copy of the checkout's files, installs it into a fresh venv with
`pip install --no-deps --no-index`, and runs every command from that venv's `bin/` in a
temporary directory: `--help`, then a tiny sinusoid run (train, export, answer a request from
the export) and a tiny learned-optimizer run.

The dependencies are not reinstalled (TensorFlow alone is ~600 MB): a `.pth` file in the new
venv points at a folder of links to the test interpreter's site-packages, without its
keras-meta (the editable install's finder and metadata), so `keras_meta` can only come from the
wheel. Each `--help` runs with `PYTHONVERBOSE=1`, and the test reads from Python's import trace
which `keras_meta` files the command itself loaded.
"""

import ast
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "keras_meta"
TIMEOUT_S = 300

# Each console script and a flag that only its own module defines.
COMMANDS = {
    "keras-meta-train": "--task_family",
    "keras-meta-train-optimizer": "--optimizee",
    "keras-meta-export": "--kind",
    "keras-meta-client": "--saved_model_dir",
    "keras-meta-demo": "--omniglot_source_dir",
    "keras-meta-launch-local": "--num_workers",
}


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def _source_files():
    """The checkout's files as a fresh clone (plus work not yet committed) has them."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"], check=True, capture_output=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None:
        return sorted(p for p in listed.decode().split("\0") if p and (REPO / p).is_file())
    skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", "runs"}
    return sorted(str(p.relative_to(REPO)) for p in REPO.rglob("*")
                  if p.is_file() and not skip.intersection(p.relative_to(REPO).parts)
                  and not any(part.endswith(".egg-info") for part in p.parts))


def _console_scripts():
    """setup.cfg's console scripts: {name: "module:function"}."""
    lines = _setup_cfg()["options.entry_points"]["console_scripts"].splitlines()
    return {line.split("=", 1)[0].strip(): line.split("=", 1)[1].strip()
            for line in lines if "=" in line}


def _package_sources():
    return sorted(str(p.relative_to(REPO)) for p in (REPO / PACKAGE).rglob("*.py")
                  if "__pycache__" not in p.parts)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH",
                        "VIRTUAL_ENV", "PYTHONVERBOSE", "PIP_REQUIRE_VIRTUALENV")}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


def _describe(proc):
    def tail(text):
        text = text if isinstance(text, str) else (text or b"").decode(errors="replace")
        return text[-6000:]
    return (f"\n$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n"
            f"--- stdout ---\n{tail(proc.stdout)}\n--- stderr ---\n{tail(proc.stderr)}")


def _run(args, cwd, env=None, timeout=TIMEOUT_S):
    try:
        proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env or _clean_env(),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {timeout} s: {' '.join(map(str, args))}\n"
                    f"--- stdout ---\n{(e.stdout or b'')[-6000:]!r}\n"
                    f"--- stderr ---\n{(e.stderr or b'')[-6000:]!r}")
    assert proc.returncode == 0, _describe(proc)
    return proc


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    """Builds the wheel, installs it into a fresh venv; returns the paths."""
    tmp = tmp_path_factory.mktemp("installed_commands")
    # Build from a copy: an in-tree build leaves build/ (whose stale files a later build would
    # pack) and rewrites the editable install's egg-info.
    src = tmp / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    dist = tmp / "dist"
    # Offline: the build backend (setuptools, wheel) comes from this interpreter, which
    # TensorFlow's own requirements already bring.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", dist, src], cwd=tmp)
    wheels = sorted(dist.glob("keras_meta-*.whl"))
    assert len(wheels) == 1, f"expected one keras_meta wheel in {dist}: {os.listdir(dist)}"

    venv = tmp / "venv"
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    # Without pip of its own (ensurepip costs seconds): this interpreter's pip installs into
    # the venv through `--python`, running there as the venv's own pip would.
    _run([base_python, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          wheels[0]], cwd=tmp)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    assert (site / PACKAGE / "__init__.py").is_file(), f"the wheel did not install into {site}"

    # The dependencies: links to this interpreter's site-packages, minus its keras-meta
    # (editable: a finder, a .pth and metadata). A path in a .pth is not a site dir, so the
    # .pth files it holds are not run. Added only now, so that pip saw a bare venv.
    deps = tmp / "deps"
    deps.mkdir()
    paths = sysconfig.get_paths()
    for folder in dict.fromkeys([paths["purelib"], paths["platlib"]]):
        for entry in sorted(Path(folder).iterdir()):
            name = entry.name.lower().replace("-", "_")
            if (name.startswith(("keras_meta", "__editable__")) or name.endswith(".pth")
                    or (deps / entry.name).exists()):
                continue
            (deps / entry.name).symlink_to(entry)
    (site / "_keras_meta_test_deps.pth").write_text(f"{deps}\n")

    work = tmp / "work"  # the working directory of every command: outside the checkout
    work.mkdir()
    return {"tmp": tmp, "wheel": wheels[0], "venv": venv, "python": python, "site": site,
            "bin": venv / "bin", "work": work}


@pytest.mark.slow
def test_wheel_holds_the_package_and_nothing_else(install):
    version = _setup_cfg()["metadata"]["version"]
    wheel = install["wheel"]
    assert wheel.name.startswith(f"keras_meta-{version}-"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"keras_meta-{version}.dist-info/entry_points.txt").decode()
    top_level = {n.split("/", 1)[0] for n in names}
    assert top_level == {PACKAGE, f"keras_meta-{version}.dist-info"}, sorted(top_level)
    packed = sorted(n for n in names if n.startswith(f"{PACKAGE}/") and n.endswith(".py"))
    checkout = _package_sources()
    assert packed == checkout, (f"missing from the wheel: {sorted(set(checkout) - set(packed))}; "
                                f"not in the checkout: {sorted(set(packed) - set(checkout))}")
    declared = _console_scripts()
    assert set(declared) == set(COMMANDS), declared
    for name, target in declared.items():
        assert re.search(rf"^{re.escape(name)} = {re.escape(target)}$", entry_points, re.M), (
            name, entry_points)


@pytest.mark.slow
def test_every_command_answers_help_from_the_wheel(install):
    env = _clean_env(PYTHONVERBOSE="1")  # the import trace, on stderr
    procs = {name: subprocess.Popen([str(install["bin"] / name), "--help"], cwd=install["work"],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
             for name in COMMANDS}
    site = str(install["site"].resolve())
    docs = {}
    for name, target in _console_scripts().items():
        module = target.split(":", 1)[0]
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        docs[name] = ast.get_docstring(ast.parse(source)).strip().splitlines()[0]
    for name, flag in COMMANDS.items():
        try:
            out, err = procs[name].communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            pytest.fail(f"{name} --help timed out after {TIMEOUT_S} s")
        # Every keras_meta source file the command loaded, from the import trace.
        loaded = set(re.findall(rf"(/\S*/{PACKAGE}/\S*?\.py)\b", err))
        lines = err.splitlines()
        imports = [line for line in lines if (PACKAGE in line or "__editable__" in line)
                   and not line.startswith(("# destroy", "# cleanup"))][:12]
        messages = [line for line in lines
                    if not line.startswith(("#", "import ", "Processing "))][-40:]
        failure = (f"{name} --help: exit {procs[name].returncode}\n--- stdout ---\n{out[-4000:]}\n"
                   "--- stderr: the first keras_meta imports ---\n" + "\n".join(imports) +
                   "\n--- stderr: the last messages ---\n" + "\n".join(messages))
        assert procs[name].returncode == 0, failure
        assert re.search(rf"^\s*{re.escape(flag)}\b", out, re.M), failure
        assert docs[name] in out, failure  # the command's module docstring, not absl's stub
        init = os.path.join(site, PACKAGE, "__init__.py")
        assert init in {os.path.realpath(p) for p in loaded}, failure
        assert all(os.path.realpath(p).startswith(site + os.sep) for p in loaded), failure
        assert "__editable__" not in err, failure


@pytest.mark.slow
def test_installed_package_is_the_wheel(install):
    version = _setup_cfg()["metadata"]["version"]
    out = _run([install["python"], "-c",
                "import importlib.metadata as m, json, sys, keras_meta, keras_meta.cli.train_maml; "
                "from keras_meta.data import class_split, standard_splits; "
                "print(json.dumps({'file': keras_meta.__file__, "
                "'splits': {n: class_split(n).counts for n in standard_splits()}, "
                "'version': m.version('keras-meta'), "
                "'finders': [type(f).__name__ + repr(f) for f in sys.meta_path]}))"],
               cwd=install["work"]).stdout
    info = json.loads(out.strip().splitlines()[-1])
    assert info["file"] == str(install["site"] / PACKAGE / "__init__.py"), info
    assert info["version"] == version, info
    assert not any("editable" in f.lower() for f in info["finders"]), info
    # The standard class splits are package data: a wheel without them could not split.
    assert info["splits"]["cifar_fs"] == {"train": 64, "validation": 16, "test": 20}, info
    assert info["splits"]["cub"] == {"train": 100, "validation": 50, "test": 50}, info
    assert len(info["splits"]) == 6, info


@pytest.mark.slow
def test_tiny_sinusoid_run_export_and_request(install):
    bin_, work = install["bin"], install["work"]
    run_dir, serving = work / "sin_run", work / "serving"
    trained = _run([bin_ / "keras-meta-train", "--task_family=sinusoid", "--num_iterations=3",
                    "--meta_batch_size=2", "--eval_every=0", "--num_val_tasks=2",
                    "--num_eval_tasks=2", "--eval_inner_steps=1", "--checkpoint_every=1",
                    "--log_every=1", "--intra_op_threads=1", f"--model_dir={run_dir}"], cwd=work)
    assert "[threads] TensorFlow runs intra-op threads: 1" in trained.stdout, _describe(trained)
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["iterations"] == 3, results

    _run([bin_ / "keras-meta-export", f"--model_dir={run_dir}", f"--base_dir={serving}",
          "--model_name=sin"], cwd=work)
    versions = sorted((serving / "sin").iterdir())
    assert [v.name for v in versions] == ["1"], versions
    assert (versions[0] / "saved_model.pb").is_file()

    rng = np.random.default_rng(0)
    request = work / "request.npz"
    np.savez(request, support_x=rng.uniform(-5, 5, (5, 1)).astype(np.float32),
             support_y=rng.uniform(-5, 5, (5, 1)).astype(np.float32),
             query_x=rng.uniform(-5, 5, (3, 1)).astype(np.float32))
    proc = _run([bin_ / "keras-meta-client", f"--saved_model_dir={versions[0]}",
                 f"--npz={request}"], cwd=work)
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    predictions = np.asarray(answer["predictions"], np.float64)
    assert predictions.size == 3 and np.all(np.isfinite(predictions)), _describe(proc)


@pytest.mark.slow
def test_tiny_learned_optimizer_run(install):
    model_dir = install["work"] / "l2l"
    proc = _run([install["bin"] / "keras-meta-train-optimizer", "--optimizee=quadratic",
                 "--num_steps=4", "--unroll_length=2", "--num_meta_iterations=2",
                 "--hidden_size=4", "--num_layers=1", "--num_functions=2", "--log_every=1",
                 "--checkpoint_every=1", "--inter_op_threads=1", f"--model_dir={model_dir}"],
                cwd=install["work"])
    assert "[threads] TensorFlow runs inter-op threads: 1" in proc.stdout, _describe(proc)
    assert model_dir.is_dir() and any(model_dir.rglob("*")), list(model_dir.rglob("*"))


# Heavy: test_images_task.py runs a folder of images to a served answer, and the tiny
# sinusoid test here runs the installed commands end to end.
@pytest.mark.slow
@pytest.mark.heavy
def test_a_folder_of_images_to_a_served_answer_with_the_installed_commands(install):
    """The README's "Bring your own data" commands, from the wheel: train on a folder,
    export, answer image files; and a folder too small for the flags is a usage error."""
    import tensorflow as tf

    bin_, work = install["bin"], install["work"]
    rng = np.random.default_rng(0)
    photos = work / "photos"
    for k in range(20):
        folder = photos / f"kind{k // 5}" / f"sort{k % 5}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 255, (1, 1, 3))
        for i in range(4):
            image = np.clip(colour + rng.integers(-20, 20, (24, 30, 3)), 0, 255).astype(np.uint8)
            (folder / f"{i}.jpg").write_bytes(tf.io.encode_jpeg(image).numpy())
    common = [f"--dataset=folder:{photos}", "--task=images", "--image_size=16",
              "--conv4_filters=4", "--ways=3", "--queries=1", "--eval_queries=1",
              "--meta_batch_size=2", "--num_iterations=2", "--eval_every=0", "--num_eval_tasks=2",
              "--checkpoint_every=1", "--log_every=1", f"--cache_dir={work / 'cache'}"]
    # The splits of 20 classes hold 13/3/4: 4-way validation episodes cannot be drawn.
    refused = subprocess.run([str(bin_ / "keras-meta-train"), *common, "--ways=4",
                              f"--model_dir={work / 'refused'}"], cwd=work, env=_clean_env(),
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    assert refused.returncode == 1, _describe(refused)
    assert "Invalid --ways=4: the validation split of folder:" in refused.stderr, _describe(refused)
    assert "Traceback" not in refused.stderr and not (work / "refused").exists()

    run_dir, serving = work / "photos_run", work / "serving"
    _run([bin_ / "keras-meta-train", *common, f"--model_dir={run_dir}"], cwd=work)
    _run([bin_ / "keras-meta-export", f"--model_dir={run_dir}", f"--base_dir={serving}",
          "--model_name=photos"], cwd=work)
    version = serving / "photos" / "1"
    files = [photos / f"kind0/sort{c}" / "0.jpg" for c in range(3)]
    query = photos / "kind0/sort1" / "3.jpg"
    proc = _run([bin_ / "keras-meta-client", f"--saved_model_dir={version}",
                 f"--support_files={','.join(map(str, files))}", "--support_labels=0,1,2",
                 f"--query_files={query}"], cwd=work)
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(answer["classes"]) == 1 and 0 <= answer["classes"][0] <= 2, _describe(proc)
    assert np.isclose(np.sum(answer["probabilities"]), 1.0, atol=1e-5), _describe(proc)
