"""The Colab notebooks in colab/: committed clean, and executed end to end with tiny settings.

Each notebook runs in a real IPython kernel started with this interpreter (`sys.executable`),
from the repository root, with `KERAS_META_NOTEBOOK_SIZE=tiny`. The notebooks save their figures
to `$KERAS_META_FIGURE_DIR` and print one `RESULT key=value ...` line, which is checked here.
"""

import base64
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
COLAB = REPO / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL_NAME = "keras-meta-notebook-test"


def _read(name):
    return nbformat.read(COLAB / name, as_version=4)


def test_notebooks_exist():
    assert {"maml_sinusoid.ipynb", "omniglot_few_shot.ipynb", "learned_optimizer.ipynb",
            "export_and_serve.ipynb", "your_own_images.ipynb"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{name} cell {index} has committed outputs; clear them"
        assert cell.execution_count is None, f"{name} cell {index} has an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_layout(name):
    nb = _read(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    badge = ("https://colab.research.google.com/github/keras-meta/keras-meta/blob/main/colab/"
             f"{name}")
    assert badge in first.source, f"{name} does not open with its Open in Colab badge"
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    assert "KERAS_META_NOTEBOOK_SIZE" in tagged[0].source
    setup = "\n".join(c.source for c in nb.cells[:3] if c.cell_type == "code")
    assert '"google.colab" in sys.modules' in setup
    assert "git+https://github.com/keras-meta/keras-meta" in setup


def _your_own_images_sizes(p):
    # Evaluation batches as large as the trainer allows (`eval_batch_size`: the largest divisor
    # up to 25), not a prime's batches of 1; the demo folder's classes hold whole episodes,
    # and its 16% of validation classes (the seeded 64/16/20 split; CIFAR-FS: 16 of 100) hold
    # a task's ways.
    return (p["META_ITERATIONS"] % p["EVAL_EVERY"] == 0
            and all(n <= 25 or n % 25 == 0 for n in (p["NUM_VAL_TASKS"], p["NUM_TEST_TASKS"]))
            and p["NUM_SHOTS"] + p["NUM_QUERIES"] <= p["DEMO_IMAGES_PER_CLASS"]
            and round(0.16 * p["DEMO_CLASSES"]) >= p["NUM_WAYS"])


# The full sizes only run on Colab; these relations keep them runnable (whole meta-batches,
# whole unrolls, whole evaluation epochs).
SIZE_RULES = {
    "maml_sinusoid.ipynb": lambda p: (p["NUM_EVAL_TASKS"] % 25 == 0
                                      and p["COMPARE_ITERATIONS"] % 10 == 0),
    "omniglot_few_shot.ipynb": lambda p: (p["NUM_VAL_TASKS"] % p["EVAL_BATCH_SIZE"] == 0
                                          and p["NUM_TEST_TASKS"] % p["EVAL_BATCH_SIZE"] == 0
                                          and p["META_ITERATIONS"] % p["EVAL_EVERY"] == 0),
    "learned_optimizer.ipynb": lambda p: (p["NUM_STEPS"] % p["UNROLL_LENGTH"] == 0
                                          and p["MLP_STEPS"] % p["MLP_UNROLL"] == 0),
    "export_and_serve.ipynb": lambda p: p["META_ITERATIONS"] >= 1,
    "your_own_images.ipynb": _your_own_images_sizes,
}


@pytest.mark.parametrize("size", ["full", "tiny"])
@pytest.mark.parametrize("name", sorted(SIZE_RULES))
def test_parameters_are_consistent(name, size, monkeypatch):
    monkeypatch.setenv("KERAS_META_NOTEBOOK_SIZE", size)
    (cell,) = [c for c in _read(name).cells
               if "parameters" in c.get("metadata", {}).get("tags", [])]
    params = {}
    exec(cell.source, params)  # plain assignments: papermill can override any of them
    assert params["SIZE"] == size
    assert SIZE_RULES[name](params), f"{name}: inconsistent {size} parameters"
    if size == "full":
        tiny = {}
        monkeypatch.setenv("KERAS_META_NOTEBOOK_SIZE", "tiny")
        exec(cell.source, tiny)
        assert tiny["META_ITERATIONS"] < params["META_ITERATIONS"]


# -- execution -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_spec_dir(tmp_path_factory):
    """A kernelspec whose command is this interpreter, so the kernel sees this environment."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL_NAME
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "keras-meta tests",
        "language": "python",
    }))
    return root


def _execute(name, kernel_spec_dir, figure_dir, env):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = _read(name)
    # Appended to the executed copy only: proves which interpreter ran the notebook.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL_PYTHON', sys.executable)"))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_spec_dir)], ensure_native_kernel=False)
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    kernel_env = {**os.environ, "KERAS_META_NOTEBOOK_SIZE": "tiny",
                  "KERAS_META_FIGURE_DIR": str(figure_dir), "PYTHONPATH": pythonpath,
                  "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
                            resources={"metadata": {"path": str(REPO)}})
    start = time.perf_counter()
    try:
        client.execute(env=kernel_env)
    finally:
        # A kernel handed to NotebookClient is not the client's to stop: without this, every
        # executed notebook left its kernel (about 1 GiB, TF threads) running for the rest of
        # the test session.
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    return nb, time.perf_counter() - start


def _stdout(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


def _images(nb):
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)


def _result(nb):
    lines = re.findall(r"^RESULT (.+)$", _stdout(nb), flags=re.MULTILINE)
    assert len(lines) == 1, f"expected one RESULT line, got {lines}"
    return {k: float(v) for k, v in (item.split("=") for item in lines[0].split())}


def _run(name, kernel_spec_dir, tmp_path, env=None):
    nb, seconds = _execute(name, kernel_spec_dir, tmp_path / "figures", env or {})
    # Kept for a failing run's post-mortem (pytest keeps the last few tmp dirs).
    nbformat.write(nb, tmp_path / name)
    print(f"{name}: {seconds:.1f} s")
    stdout = _stdout(nb)
    assert f"KERNEL_PYTHON {sys.executable}" in stdout
    assert re.search(r"^Accelerator: (CPU|GPU|TPU) \(", stdout, flags=re.MULTILINE)
    return nb, _result(nb), tmp_path / "figures"


def _check_figures(nb, figure_dir, names):
    assert _images(nb) >= len(names), "the notebook displayed fewer plots than it saves"
    for figure in names:
        path = figure_dir / f"{figure}.png"
        assert path.is_file() and path.stat().st_size > 5000, f"missing or empty {path}"


@pytest.mark.slow
def test_maml_sinusoid(kernel_spec_dir, tmp_path):
    nb, r, figures = _run("maml_sinusoid.ipynb", kernel_spec_dir, tmp_path)
    _check_figures(nb, figures, ["sinusoid_adaptation", "sinusoid_first_order"])
    # Adaptation helps, and meta-learning helps more than pretraining after 10 steps.
    assert r["maml_mse_10_steps"] < r["maml_mse_1_steps"] < r["maml_mse_0_steps"]
    assert r["maml_mse_10_steps"] < r["pretrained_mse_10_steps"]
    # The exact meta-gradient has its Hessian term: close to, but not, the first-order one.
    assert 0.5 < r["grad_cosine"] < 1.0
    assert r["grad_relative_difference"] > 1e-3
    for key in ("final_loss_exact", "final_loss_first_order"):
        assert 0 < r[key] < 10


@pytest.mark.slow
# From scratch is heavy: the same cells as from the preset, with a random initialisation.
@pytest.mark.parametrize("start", ["preset", pytest.param("scratch", marks=pytest.mark.heavy)])
def test_omniglot_few_shot(kernel_spec_dir, tmp_path, omniglot_data_dir, start):
    from keras_meta.data import load_omniglot_classes
    from keras_meta.presets import Preset

    # One-time preparation outside the notebook: the decoded-image cache.
    load_omniglot_classes(omniglot_data_dir)
    nb, r, figures = _run("omniglot_few_shot.ipynb", kernel_spec_dir, tmp_path,
                          {"KERAS_META_DATA_DIR": str(omniglot_data_dir),
                           "KERAS_META_NOTEBOOK_START": start})
    _check_figures(nb, figures, ["omniglot_episode", "omniglot_validation_accuracy",
                                 "omniglot_predictions"])
    if start == "preset":
        # The shipped weights, before any further training, are as good as they say.
        preset = Preset.load("omniglot_5way_1shot")
        assert r["val_accuracy_initial"] > preset.result["mean"] - 0.1
        assert r["iterations"] == preset.iteration + 20
        assert r["test_accuracy"] > 0.8
    else:
        # 5-way: chance is 0.2. Even a short run adapts well above it.
        assert r["val_accuracy_final"] > 0.3
        assert r["test_accuracy"] > 0.3
        assert r["iterations"] >= 1


@pytest.mark.slow
def test_learned_optimizer(kernel_spec_dir, tmp_path):
    nb, r, figures = _run("learned_optimizer.ipynb", kernel_spec_dir, tmp_path)
    _check_figures(nb, figures, ["learned_optimizer_quadratics", "learned_optimizer_fit",
                                 "learned_optimizer_shifts", "learned_optimizer_convnet_fit"])
    # The meta-trained LSTM optimises held-out quadratics, and fit() with it lowers the loss.
    assert r["lstm_final_loss"] < 0.5 * r["initial_loss"]
    for name in ("sgd", "rmsprop", "adam"):
        assert r[f"{name}_final_loss"] < r["initial_loss"]
    assert r["fit_last_loss"] < r["fit_first_loss"]
    # The MLP rule (20 tiny meta-iterations) still optimises the digits MLP well below the
    # initial cross-entropy of log(10) = 2.3, and the convnet it fits from its file learns.
    assert r["mlp_rule_base_loss"] < 1.0 and r["adam_base_loss"] < 2.3
    assert r["convnet_learned_loss"] < 2.3


@pytest.mark.slow
def test_export_and_serve(kernel_spec_dir, tmp_path):
    base_dir = tmp_path / "serving"
    nb, r, figures = _run("export_and_serve.ipynb", kernel_spec_dir, tmp_path,
                          {"KERAS_META_EXPORT_DIR": str(base_dir)})
    _check_figures(nb, figures, ["served_prediction"])
    # Both SavedModels answer as adapting in Python does (the MLP has no batch norm).
    assert r["few_shot_vs_python"] < 1e-4
    assert r["adapted_vs_python"] < 1e-4
    assert 0 <= r["served_mse"] < 10
    for model in ("sinusoid_few_shot", "sinusoid_adapted"):
        assert (base_dir / model / "1" / "saved_model.pb").is_file()
        assert f'name: "{model}"' in (base_dir / "models.config").read_text()
    assert json.loads((base_dir / "request.json").read_text())["inputs"].keys() == {
        "support_x", "support_y", "query_x"}
    stdout = _stdout(nb)
    assert "curl -s -X POST http://localhost:8501/v1/models/sinusoid_few_shot:predict" in stdout
    assert "inputs['support_x']" in stdout  # saved_model_cli listed the signature


@pytest.mark.slow
def test_your_own_images(kernel_spec_dir, tmp_path):
    base_dir = tmp_path / "serving"
    nb, r, figures = _run("your_own_images.ipynb", kernel_spec_dir, tmp_path,
                          {"KERAS_META_EXPORT_DIR": str(base_dir),
                           "KERAS_META_WORK_DIR": str(tmp_path / "work"),
                           "KERAS_META_IMAGE_FOLDER": ""})
    _check_figures(nb, figures, ["your_images_episode", "your_images_validation",
                                 "your_images_predictions"])
    # The generated folder: its 40 classes found through two levels of folders, and its one
    # truncated JPEG and one text file reported by path and skipped.
    assert r["num_classes"] == 40
    assert r["corrupt_files"] == 1 and r["skipped_files"] == 1
    stdout = _stdout(nb)
    assert "truncated.jpg" in stdout and "README.txt" in stdout
    # The generated classes are easy: even 60 iterations of a tiny network, adapting to one
    # image per class, are far above chance (5-way: 0.2), in the trainer's test and served.
    assert r["chance"] == pytest.approx(0.2)
    assert 0.4 < r["test_accuracy"] <= 1
    assert r["chance"] < r["served_accuracy"] <= 1
    # The export, in TF Serving's layout, and the REST request of encoded files.
    assert (base_dir / "my_images" / "1" / "saved_model.pb").is_file()
    assert 'name: "my_images"' in (base_dir / "models.config").read_text()
    request = json.loads((base_dir / "request.json").read_text())
    assert request["signature_name"] == "serving_bytes"
    inputs = request["inputs"]
    assert inputs.keys() == {"support_images", "support_labels", "query_images"}
    assert sorted(inputs["support_labels"]) == [0, 1, 2, 3, 4]
    for key in ("support_images", "query_images"):
        assert inputs[key] and all(item.keys() == {"b64"} for item in inputs[key])
        for item in inputs[key]:
            data = base64.b64decode(item["b64"])
            assert data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("curl -s -X POST http://localhost:8501/v1/models/my_images:predict "
            f"-d @{base_dir / 'request.json'}") in stdout
    assert "inputs['support_images']" in stdout  # the serving_bytes signature was listed
