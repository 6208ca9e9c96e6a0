"""Every code example in README.md (and benchmarks/README.md) runs in a test.

* Each ```python block is executed with `exec` in a fresh namespace, after a prelude that
  defines the names the block takes from the surrounding prose (`model`, `episodes`, ...) with
  tiny real objects. Long runs are shrunk by explicit textual substitutions, listed per block in
  `SPECS`; a substitution whose README text is gone fails the test, and so does a python block
  without an entry in `SPECS` (or an entry without a block), so the README and this file cannot
  drift apart silently. After the block runs, the names it defines are checked.
* Each command line of a ```bash block (and each inline `python -m ...` / `keras-meta-...` /
  `python benchmarks/...` command in the prose) has its flags parsed by the program it names,
  with that program's own flag definitions: an unknown flag or a bad value fails. Trainer lines
  also build their `MAMLTrainConfig`, so that invalid combinations fail. Nothing is trained.
"""

import dataclasses
import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The benchmarks' page (every speed run, moved out of the README) is checked as the README is:
# its commands, flags, names and paths.
DOCS = (README, ROOT / "benchmarks" / "README.md")
README_TEXT = "\n".join(doc.read_text() for doc in DOCS)

# Fences may be indented (a block inside a list item). An indented fence this missed once
# left its backticks in the prose and shifted the pairing of every inline span after it, so
# that their commands went unchecked without a failure.
FENCE = re.compile(r"^[ \t]*```([\w-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)


def fenced_blocks(lang):
    return [m.group(2) for m in FENCE.finditer(README_TEXT) if m.group(1) == lang]


def first_line(code):
    return next(line.strip() for line in code.splitlines() if line.strip())


PYTHON_BLOCKS = fenced_blocks("python")


# ---------------------------------------------------------------------------------------------
# Python blocks: preludes, substitutions and checks, keyed by the block's first line.
# ---------------------------------------------------------------------------------------------

def _common():
    import keras
    import keras_meta as km

    keras.utils.set_random_seed(0)
    return {"keras": keras, "km": km}


def _prelude_sinusoid_maml(tmp_path):
    return {}  # the block imports everything it uses


def _check_sinusoid_maml(ns, shrunk):
    import keras
    import numpy as np

    maml, task, y = ns["maml"], ns["task"], ns["y"]
    # fit ran the (shrunk) number of outer steps.
    assert int(maml.optimizer.iterations.numpy()) == shrunk["steps"]
    assert isinstance(ns["adapted"], keras.Model)
    assert tuple(task.query_x.shape) == (50, 1)
    assert tuple(y.shape) == (50, 1)                           # one prediction per query point
    assert np.all(np.isfinite(y))
    # adapt -> model and adapt_and_predict agree: same 10 inner steps from the same init.
    np.testing.assert_allclose(ns["adapted"](task.query_x).numpy(), np.asarray(y),
                               rtol=1e-4, atol=1e-4)


def _prelude_maml_loss(tmp_path):
    from keras_meta.data.sinusoid import sinusoid_episodes

    ns = _common()
    ns["model"] = ns["km"].backbones.mlp(hidden=(8,))
    task = next(iter(sinusoid_episodes(num_shots=5, num_queries=7)))
    ns.update(support_x=task.support_x, support_y=task.support_y, query_x=task.query_x,
              query_y=task.query_y)
    return ns


def _check_maml_loss(ns, shrunk):
    import numpy as np

    model, grads = ns["model"], ns["meta_grads"]
    assert np.isfinite(float(ns["loss"])) and ns["loss"].shape.rank == 0
    assert len(grads) == len(model.trainable_variables)    # one tensor per trainable variable
    assert all(g is not None for g in grads)
    for g, v in zip(grads, model.trainable_variables):
        assert tuple(g.shape) == tuple(v.shape)
        assert np.all(np.isfinite(g.numpy()))
    assert any(np.any(g.numpy() != 0) for g in grads)


def _prelude_meta_objective(tmp_path):
    from keras_meta.data.sinusoid import sinusoid_episodes

    ns = _common()
    ns["model"] = ns["km"].backbones.mlp(hidden=(8,))
    ns["episodes"] = next(iter(sinusoid_episodes(num_shots=5, meta_batch_size=2)))
    return ns


def _check_meta_objective(ns, shrunk):
    import numpy as np

    params = ns["km"].get_params(ns["model"])
    grads = ns["grads"]
    assert np.isfinite(float(ns["meta_loss"])) and ns["meta_loss"].shape.rank == 0
    assert len(grads) == len(params) == len(ns["model"].trainable_variables)
    for g, p in zip(grads, params):
        assert g is not None and tuple(g.shape) == tuple(p.shape)
        assert np.all(np.isfinite(g.numpy()))
    assert any(np.any(g.numpy() != 0) for g in grads)


def _prelude_learned_optimizer(tmp_path):
    import keras
    import numpy as np

    ns = _common()
    rng = np.random.default_rng(0)
    ns["x"] = rng.normal(size=(16, 4)).astype("float32")
    ns["y"] = rng.integers(0, 3, 16).astype("int32")
    ns["model"] = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    ns["_initial_weights"] = [w.copy() for w in ns["model"].get_weights()]
    return ns


def _check_learned_optimizer(ns, shrunk):
    import numpy as np

    km, model = ns["km"], ns["model"]
    assert isinstance(model.optimizer, km.LearnedOptimizer)
    assert model.optimizer.lstm_optimizer is ns["rule"]
    # model.fit ran: one epoch of 16 examples in batches of 32 is one step, and it moved the
    # weights.
    assert int(model.optimizer.iterations.numpy()) == 1
    moved = [not np.allclose(a, b) for a, b in zip(model.get_weights(), ns["_initial_weights"])]
    assert any(moved)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    # The rule was meta-trained (its weights exist and are finite).
    assert ns["rule"].weights and all(np.all(np.isfinite(w.numpy())) for w in ns["rule"].weights)


EXPORT_WAYS, EXPORT_CLIENT = 3, (12, 12, 3)


def _prelude_export(tmp_path):
    import numpy as np

    from keras_meta.data.image_preprocessing import ImagePreprocessing
    from keras_meta.training import task_families
    from keras_meta.training.config import MAMLTrainConfig

    ns = _common()
    # A tiny Omniglot-shaped run: conv4 on 8x8 greyscale, clients send 12x12 RGB uint8 images.
    # The export needs the config only, never the dataset.
    prep = ImagePreprocessing((8, 8), 1, invert=True)
    train_config = MAMLTrainConfig(task_family="omniglot", num_ways=EXPORT_WAYS, image_size=8,
                                   inner_lr=0.4, inner_steps=1, eval_inner_steps=(2,),
                                   image_preprocessing=prep.get_config(),
                                   client_image_shape=EXPORT_CLIENT,
                                   data_dir=str(tmp_path / "no_tfds"))
    maml = task_families.build_maml(train_config, *task_families.build_model(train_config))
    rng = np.random.default_rng(0)
    ns.update(
        maml=maml, train_config=train_config, _prep=prep,
        support_images=rng.integers(0, 256, (2 * EXPORT_WAYS,) + EXPORT_CLIENT, dtype=np.uint8),
        support_labels=np.tile(np.arange(EXPORT_WAYS, dtype=np.int32), 2),
        query_images=rng.integers(0, 256, (5,) + EXPORT_CLIENT, dtype=np.uint8))
    return ns


def _check_export(ns, shrunk):
    import numpy as np

    path, out = Path(ns["path"]), ns["out"]
    assert path.resolve() == (Path.cwd() / "serving" / "omniglot" / "1").resolve()
    assert (path / "saved_model.pb").is_file()
    assert (Path.cwd() / "serving" / "models.config").is_file()
    assert out["probabilities"].shape == (5, EXPORT_WAYS)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    assert out["classes"].shape == (5,)
    # The served answer is the library's own: adapt_and_predict on the preprocessed images.
    prep = ns["_prep"]
    expected = ns["maml"].adapt_and_predict(prep(ns["support_images"]), ns["support_labels"],
                                            prep(ns["query_images"]), steps=2).numpy()
    np.testing.assert_allclose(out["logits"], expected, atol=2e-3, rtol=2e-3)


def _prelude_preset(tmp_path):
    import numpy as np

    ns = _common()
    rng = np.random.default_rng(0)
    # The preset's model takes 28x28 greyscale images in [0, 1] (strokes 1, as it was trained).
    ns.update(support_images=rng.random((5, 28, 28, 1), np.float32),
              support_labels=np.arange(5, dtype=np.int32),
              query_images=rng.random((7, 28, 28, 1), np.float32))
    return ns


def _check_preset(ns, shrunk):
    import numpy as np

    assert "omniglot_5way_1shot" in ns["km"].presets.list_presets()
    logits = np.asarray(ns["logits"])
    assert logits.shape == (7, 5) and np.all(np.isfinite(logits))


@dataclasses.dataclass
class Spec:
    prelude: object                     # tmp_path -> namespace the block runs in
    check: object                       # (namespace, shrunk) -> None, asserts after the block ran
    substitutions: dict = dataclasses.field(default_factory=dict)   # README text -> test text
    shrunk: dict = dataclasses.field(default_factory=dict)          # sizes the check relies on


SPECS = {
    "import keras": Spec(
        _prelude_sinusoid_maml, _check_sinusoid_maml,
        substitutions={
            "meta_batch_size=25), steps_per_epoch=1000, epochs=5)":
                "meta_batch_size=4), steps_per_epoch=3, epochs=1, verbose=0)",
        },
        shrunk={"steps": 3}),
    "import tensorflow as tf": Spec(_prelude_maml_loss, _check_maml_loss),
    "objective = km.MetaObjective(model, keras.losses.MeanSquaredError(), inner_lr=0.01,": Spec(
        _prelude_meta_objective, _check_meta_objective),
    "rule = km.LSTMOptimizer()": Spec(
        _prelude_learned_optimizer, _check_learned_optimizer,
        substitutions={
            "km.MetaOptimizerConfig()).train(2000)":
                "km.MetaOptimizerConfig(num_steps=4, unroll_length=2)).train(2)",
            "model.fit(x, y)": "model.fit(x, y, verbose=0)",
        }),
    "from keras_meta.export import export_few_shot, export_adapted, predict_local": Spec(
        _prelude_export, _check_export),
    "km.presets.list_presets()                          # ['omniglot_5way_1shot']": Spec(
        _prelude_preset, _check_preset),
}


def shrink(code, substitutions):
    """Applies each substitution; each README text must be in the block exactly once."""
    for old, new in substitutions.items():
        count = code.count(old)
        if count != 1:
            pytest.fail(f"README drifted: substitution source text {old!r} occurs {count} times "
                        f"in the block (expected once); update SPECS in {Path(__file__).name}.")
        code = code.replace(old, new)
    return code


def test_every_python_block_has_a_spec_and_every_spec_a_block():
    firsts = [first_line(b) for b in PYTHON_BLOCKS]
    assert PYTHON_BLOCKS, "README.md has no ```python blocks"
    assert len(set(firsts)) == len(firsts), f"two python blocks start with the same line: {firsts}"
    missing = [f for f in firsts if f not in SPECS]
    stale = [k for k in SPECS if k not in firsts]
    assert not missing, f"README python blocks without a prelude in SPECS: {missing}"
    assert not stale, f"SPECS entries whose README block is gone or changed: {stale}"


# fit on a tf.data.Dataset with Keras' default shuffle=True: Keras' own warning, not the README's.
@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed")
@pytest.mark.parametrize("code", PYTHON_BLOCKS,
                         ids=[f"{i}:{first_line(b)[:50]}" for i, b in enumerate(PYTHON_BLOCKS)])
def test_python_block_runs(code, tmp_path, monkeypatch):
    key = first_line(code)
    if key not in SPECS:
        pytest.fail(f"README python block starting {key!r} has no prelude in SPECS; add one.")
    spec = SPECS[key]
    source = shrink(code, spec.substitutions)
    monkeypatch.chdir(tmp_path)            # blocks may write relative paths ("serving")
    namespace = spec.prelude(tmp_path)
    namespace["__name__"] = "__readme__"
    exec(compile(source, f"README.md:{key}", "exec"), namespace)
    spec.check(namespace, spec.shrunk)


# ---------------------------------------------------------------------------------------------
# Command lines.
# ---------------------------------------------------------------------------------------------

CONSOLE_SCRIPTS = {
    "keras-meta-train": "keras_meta.cli.train_maml",
    "keras-meta-train-optimizer": "keras_meta.cli.train_learned_optimizer",
    "keras-meta-export": "keras_meta.cli.export",
    "keras-meta-client": "keras_meta.cli.serving_client",
    "keras-meta-demo": "keras_meta.cli.demo",
    "keras-meta-launch-local": "keras_meta.cli.launch_local",
}
# The `python -m` wrappers kept at the top of a checkout, and the module each re-exports.
WRAPPERS = {
    "trainers.train_maml": "keras_meta.cli.train_maml",
    "trainers.train_learned_optimizer": "keras_meta.cli.train_learned_optimizer",
    "trainers.demo": "keras_meta.cli.demo",
    "trainers.launch_local": "keras_meta.cli.launch_local",
    "export.export_saved_model": "keras_meta.cli.export",
    "export.serving_client": "keras_meta.cli.serving_client",
    "export.make_preset": "keras_meta.cli.make_preset",
}
# Programs whose lines are not parsed, and why:
# - `make`: targets that build a virtualenv and run the whole demo / test suite; only the
#   target's existence in the Makefile is checked.
# - `tensorflow_model_server`: TF Serving's own binary (not installed here, not ours); its flags
#   are TF Serving's documented ones.
SKIPPED = {"make", "tensorflow_model_server"}
# The local launcher runs the MAML trainer with the flags after its `--`.
LAUNCHER, LAUNCHED = "keras_meta.cli.launch_local", "keras_meta.cli.train_maml"


def _logical_lines(block):
    """Joins backslash continuations; yields (command argv, alternatives from `# or --x` notes)."""
    text = re.sub(r"\\\n", " ", block)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command, _, comment = line.partition(" #")
        alternatives = []
        # "# or --kind=adapted --support_npz=s.npz": flags of the documented alternative.
        match = re.match(r"\s*or\s+((?:--\S+\s*)+)", comment)
        if match:
            alternatives.append(match.group(1).split())
        yield shlex.split(command), alternatives


def test_every_paragraph_pairs_its_backticks():
    # Inline spans are paired across the whole text: one stray backtick (or a fence this
    # cannot see) would pair every later span wrongly, and their checks would silently stop.
    prose = FENCE.sub("", README_TEXT)
    unseen = [line.strip() for line in prose.splitlines() if "```" in line]
    assert not unseen, f"fences this test does not see as fences: {unseen}"
    odd = [p.strip()[:120] for p in re.split(r"\n[ \t]*\n", prose) if p.count("`") % 2]
    assert not odd, f"paragraphs with an odd number of backticks: {odd}"


def _inline_commands():
    """`python -m ...`, `python benchmarks/...` and `keras-meta-...` spans in the prose."""
    prose = FENCE.sub("", README_TEXT)
    for span in re.findall(r"`([^`]+)`", prose, re.S):
        span = " ".join(span.split())
        if re.match(r"(python3? (-m \w|benchmarks/)|keras-meta-[\w-]+( |$))", span):
            yield shlex.split(span)


def _commands():
    commands = []
    for block in fenced_blocks("bash"):
        for argv, alternatives in _logical_lines(block):
            commands.append(("bash", argv, alternatives))
    for argv in _inline_commands():
        commands.append(("inline", argv, []))
    return commands


COMMANDS = _commands()


def resolve(argv):
    """(kind, target, flag argv) of a command line; kind is module, file, make or skip."""
    # Leading environment assignments (`TF_CONFIG=... keras-meta-train ...`) are not the program.
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        argv = argv[1:]
    program = argv[0]
    if program in SKIPPED:
        return ("make" if program == "make" else "skip"), program, argv[1:]
    if program in CONSOLE_SCRIPTS:
        return "module", CONSOLE_SCRIPTS[program], argv[1:]
    if program in ("python", "python3"):
        if argv[1] == "-m":
            name = argv[2]
            if name.startswith("benchmarks."):
                return "file", name.replace(".", "/") + ".py", argv[3:]
            if name in WRAPPERS:
                return "module", WRAPPERS[name], argv[3:]
            pytest.fail(f"README runs `python -m {name}`, which this test does not know; map it "
                        "in WRAPPERS or CONSOLE_SCRIPTS.")
        if argv[1].endswith(".py"):
            return "file", argv[1], argv[2:]
    pytest.fail(f"README command {shlex.join(argv)!r} runs a program this test does not know.")


def _command_id(index, item):
    source, argv, _ = item
    return f"{index}:{source}:{shlex.join(argv)[:70]}"


def test_readme_has_commands():
    programs = {resolve(argv)[1] for _, argv, _ in COMMANDS}
    assert {"keras_meta.cli.train_maml", "keras_meta.cli.export",
            "keras_meta.cli.serving_client"} <= programs


_CHILD = r"""
import dataclasses, importlib, importlib.util, json, sys
from absl import app, flags
target, argvs = sys.argv[1], json.loads(sys.argv[2])
if target.endswith(".py"):
    sys.path.insert(0, ".")
    spec = importlib.util.spec_from_file_location("readme_checked_program", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
else:
    module = importlib.import_module(target)
if hasattr(module, "define_flags"):
    module.define_flags()
results = []
for argv in argvs:
    flags.FLAGS.unparse_flags()
    try:
        rest = flags.FLAGS(argv)
        if target == "keras_meta.cli.train_learned_optimizer":  # its main() builds this
            module.config_from_flags()
        results.append({"rest": rest[1:]})
    except (flags.Error, ValueError, app.UsageError) as e:
        results.append({"error": f"{type(e).__name__}: {e}"})
print("READMECHECK" + json.dumps({"results": results, "flags": sorted(flags.FLAGS)}))
"""

_child_cache = {}


def _child(target):
    """Runs the program's flag definitions in a subprocess (for programs that define their flags
    on the global FLAGS) and parses there every README argv of that program, in one child.

    Returns ({argv tuple: {"rest": positional args} or {"error": message}}, flag names).
    """
    if target not in _child_cache:
        argvs = []
        for _, line, alternatives in COMMANDS:
            kind, other, flag_argv = resolve(line)
            if other == target:
                argvs.append([target] + flag_argv)
                argvs.extend([target] + flag_argv + alt for alt in alternatives)
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run([sys.executable, "-c", _CHILD, target, json.dumps(argvs)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        marker = [line for line in proc.stdout.splitlines() if line.startswith("READMECHECK")]
        assert proc.returncode == 0 and marker, (
            f"could not load the flags of {target}:\n{proc.stdout}\n{proc.stderr[-3000:]}")
        answer = json.loads(marker[0][len("READMECHECK"):])
        _child_cache[target] = (dict(zip(map(tuple, argvs), answer["results"])),
                                set(answer["flags"]))
    return _child_cache[target]


def parse_in_child(target, argv):
    """Parses argv with the program's flags in a subprocess; returns the positional args."""
    result = _child(target)[0][tuple([target] + argv)]
    assert "error" not in result, f"{target} rejects {argv}: {result['error']}"
    return result["rest"]


def parse_in_process(module_name, argv):
    """A fresh FlagValues with the program's flags; returns it after parsing argv."""
    from absl import flags

    module = importlib.import_module(module_name)
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    rest = flag_values([module_name] + argv)   # raises on an unknown flag or a bad value
    assert rest[1:] == [], f"{module_name} takes no positional arguments; got {rest[1:]}"
    return flag_values


def _takes_flag_values(module_name):
    module = importlib.import_module(module_name)
    return bool(inspect.signature(module.define_flags).parameters)


def check_module_flags(module_name, argv):
    if not _takes_flag_values(module_name):
        rest = parse_in_child(module_name, argv)
        assert rest == [], f"{module_name} takes no positional arguments; got {rest}"
        return
    fv = parse_in_process(module_name, argv)
    if module_name == "keras_meta.cli.train_maml":
        from keras_meta.cli.train_maml import config_from_flags
        from keras_meta.training.config import MAMLTrainConfig

        config = config_from_flags(fv)     # invalid combinations raise here
        assert isinstance(config, MAMLTrainConfig)
    elif module_name == "keras_meta.cli.train_learned_optimizer":   # as its main() does
        from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig

        fields = dataclasses.fields(LearnedOptimizerTrainConfig)
        LearnedOptimizerTrainConfig(**{f.name: fv[f.name].value for f in fields})
    elif module_name == "keras_meta.cli.export":
        from keras_meta.export.from_run import CHECKPOINTS, KINDS

        assert fv.kind in KINDS and fv.checkpoint in CHECKPOINTS
        assert (fv.kind == "adapted") == bool(fv.support_npz), \
            "--kind=adapted needs --support_npz, and only it takes one"
    elif module_name == "keras_meta.cli.serving_client":
        from keras_meta.export.client import PROTOCOLS

        assert fv.protocol in PROTOCOLS


@pytest.mark.parametrize("item", COMMANDS, ids=[_command_id(i, c) for i, c in enumerate(COMMANDS)])
def test_command_line_flags_exist(item):
    _, argv, alternatives = item
    kind, target, flag_argv = resolve(argv)
    if kind == "skip":
        pytest.skip(f"{target}: not one of this project's programs")
    if kind == "make":
        makefile = (ROOT / "Makefile").read_text()
        for goal in flag_argv:
            if "=" in goal:
                # A variable on make's command line must be one the Makefile reads.
                name = goal.split("=", 1)[0]
                assert re.search(rf"^{re.escape(name)}\s*\??=", makefile, re.M), \
                    f"`make {goal}`: the Makefile defines no {name}"
                continue
            assert re.search(rf"^{re.escape(goal)}:", makefile, re.M), f"no `make {goal}` target"
        return
    if kind == "file":
        assert (ROOT / target).is_file(), f"README runs {target}, which does not exist"
        parse_in_child(target, flag_argv)
        for alt in alternatives:
            parse_in_child(target, flag_argv + alt)
        return
    if target == LAUNCHER and "--" in flag_argv:
        # The launcher's own flags, then the trainer's, which every worker gets.
        split = flag_argv.index("--")
        check_module_flags(target, flag_argv[:split])
        check_module_flags(LAUNCHED, flag_argv[split + 1:])
        return
    check_module_flags(target, flag_argv)
    for alt in alternatives:
        check_module_flags(target, flag_argv + alt)


def program_flag_names(kind, target):
    if kind == "file" or not _takes_flag_values(target):
        return _child(target)[1]
    from absl import flags

    flag_values = flags.FlagValues()
    importlib.import_module(target).define_flags(flag_values)
    return set(flag_values)


def test_every_flag_named_in_the_readme_exists():
    # Prose mentions flags too (`--task_batching=loop`, `--optimizee`, ...): each must be a flag
    # of one of the programs the README runs. TF Serving's flags (skipped lines) are not ours;
    # absl's app.run adds --help to every program.
    known, foreign = {"help"}, set()
    for _, argv, _ in COMMANDS:
        kind, target, flag_argv = resolve(argv)
        if kind == "skip":
            foreign |= {a[2:].split("=")[0] for a in flag_argv if a.startswith("--")}
        elif kind in ("module", "file"):
            known |= program_flag_names(kind, target)
    mentioned = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", README_TEXT)) - foreign
    unknown = sorted(n for n in mentioned
                     if n not in known and not (n.startswith("no") and n[2:] in known))
    assert not unknown, f"README names flags no program defines: {unknown}"


# ---------------------------------------------------------------------------------------------
# Names and files the prose points to.
# ---------------------------------------------------------------------------------------------

INLINE_SPANS = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", FENCE.sub("", README_TEXT))]


def test_every_dotted_keras_meta_name_in_the_readme_resolves():
    names = sorted({m for s in INLINE_SPANS for m in re.findall(r"keras_meta(?:\.\w+)+", s)})
    assert names
    for name in names:
        parts = name.split(".")
        # The longest importable module prefix, then attributes.
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"README names {name}, but {attr!r} is not there"
            obj = getattr(obj, attr)


def test_every_repository_path_in_the_readme_exists():
    roots = ("keras_meta/", "tests/", "benchmarks/", "colab/", "trainers/", "export/")
    paths = sorted({s for s in INLINE_SPANS
                    if s.startswith(roots) and re.fullmatch(r"[\w./-]+", s)})
    assert paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"README points to files that do not exist: {missing}"


def test_every_test_the_readme_names_exists():
    # `tests/x.py::test_name` spans (the Reliability table): the file and the test function.
    named = sorted({s for s in INLINE_SPANS if re.fullmatch(r"tests/[\w./-]+\.py::\w+", s)})
    assert named
    missing = []
    for span in named:
        path, name = span.split("::")
        source = (ROOT / path).read_text() if (ROOT / path).exists() else ""
        if not re.search(rf"^def {name}\(", source, re.M):
            missing.append(span)
    assert not missing, f"README names tests that do not exist: {missing}"
