"""The learned optimizer's generalization suite (Andrychowicz et al. 2016, sections 3.2-3.4).

Meta-trains learned rules on the paper's base family (a 20-unit sigmoid MLP on 8x8 digits,
100 steps), three meta-training seeds per configuration, then runs each trained rule and
SGD, NAG, RMSprop and Adam (learning rates tuned by grid search on each test family's own
training images) on the held-out functions of every shift in
`keras_meta.learned_optimizer.shifts`: 2x and 5x the horizon, 40 hidden units, two hidden
layers, ReLU, and a convnet. Finally the best configuration's rule drives a Keras convnet in
`model.fit` against a tuned Adam.

    python -m benchmarks.learned_optimizer_shifts --model_dir=../runs/l2l_shifts

Stages (`--stage`): `train` (resumable: rerunning continues each run), `evaluate` (cached per
rule file, keyed by its sha256, so a retrained rule is evaluated again), `report`
(`learned_optimizer_shifts.{md,json}`, `learned_optimizer_shifts.png` and
`learned_optimizer_shifts_fit.png` in `--output_dir`), or `all`. `--configs` and `--seeds`
split the work between processes.
"""

import hashlib
import json
import os
import shlex
import sys
import time

import numpy as np
from absl import app, flags

BASELINES = ("SGD", "NAG", "RMSprop", "Adam")

# name -> (settings of LearnedOptimizerTrainConfig, what the configuration tests).
CONFIGS = {
    "lstm": (dict(rule="lstm", meta_lr=1e-3, num_meta_iterations=1000),
             "the paper's coordinatewise LSTM, first-order meta-gradient"),
    "mlp": (dict(rule="mlp", meta_lr=3e-4, num_meta_iterations=600, random_scaling=2.0,
                 curriculum_iterations=300),
            "MLP over accumulators, random scaling (a=2) + horizon curriculum"),
    "mlp_scaling": (dict(rule="mlp", meta_lr=3e-4, num_meta_iterations=600, random_scaling=2.0),
                    "ablation: no curriculum"),
    "mlp_curriculum": (dict(rule="mlp", meta_lr=3e-4, num_meta_iterations=600,
                            curriculum_iterations=300),
                       "ablation: no random scaling"),
    "mlp_plain": (dict(rule="mlp", meta_lr=3e-4, num_meta_iterations=600),
                  "ablation: neither trick"),
    "lstm_exact": (dict(rule="lstm", meta_lr=1e-3, num_meta_iterations=1000, first_order=False),
                   "gradient modes: the LSTM with exact second derivatives"),
    "mlp_exact": (dict(rule="mlp", meta_lr=3e-4, num_meta_iterations=600, random_scaling=2.0,
                       curriculum_iterations=300, first_order=False),
                  "gradient modes: the MLP rule with exact second derivatives"),
}


def define_flags():
    if "stage" in flags.FLAGS:
        return
    flags.DEFINE_enum("stage", "all", ["train", "evaluate", "report", "all"], "What to run.")
    flags.DEFINE_list("configs", ["lstm", "mlp", "mlp_scaling", "mlp_curriculum"],
                      f"Configurations: {', '.join(CONFIGS)}.")
    flags.DEFINE_list("exact_configs", ["lstm_exact", "mlp_exact"],
                      "Gradient-mode configurations (trained on --exact_seeds only).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Meta-training seeds.")
    flags.DEFINE_list("exact_seeds", ["0"], "Seeds of the --exact_configs.")
    flags.DEFINE_list("shifts", None, "Shifts to evaluate (default: all).")
    flags.DEFINE_integer("num_functions", 20, "Held-out functions per shift.")
    flags.DEFINE_integer("num_tune_functions", 4, "Functions per learning-rate grid point.")
    flags.DEFINE_list("fit_steps", ["100", "300"], "Steps of the model.fit comparisons (whole "
                      "epochs of 10 steps).")
    flags.DEFINE_string("model_dir", "/tmp/l2l_shifts", "Runs and caches.")
    flags.DEFINE_string("output_dir", "benchmarks/results", "Tables and plots.")


def _runs(f):
    seeds = [int(s) for s in f.seeds]
    exact = [int(s) for s in f.exact_seeds]
    for name in f.configs:
        for seed in seeds:
            yield name, seed
    for name in f.exact_configs:
        for seed in exact:
            yield name, seed


def _config(name, seed):
    from keras_meta.training import LearnedOptimizerTrainConfig

    if name not in CONFIGS:
        raise app.UsageError(f"Unknown configuration {name!r}; expected one of {list(CONFIGS)}.")
    settings, _ = CONFIGS[name]
    return LearnedOptimizerTrainConfig(optimizee="mlp_digits", seed=seed, log_every=100,
                                       checkpoint_every=100, **settings)


def _run_dir(f, name, seed):
    return os.path.join(f.model_dir, name, f"seed{seed}")


def _sha256(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def _train(f):
    from keras_meta.training.learned_optimizer_loop import train_learned_optimizer

    for name, seed in _runs(f):
        run_dir = _run_dir(f, name, seed)
        print(f"== train {name} seed {seed} -> {run_dir}", flush=True)
        result = train_learned_optimizer(_config(name, seed), run_dir)
        clock_path = os.path.join(run_dir, "wall_clock.json")
        clock = {"seconds": 0.0}
        if os.path.exists(clock_path):
            with open(clock_path) as file:
                clock = json.load(file)
        if result["losses"]:
            clock["seconds"] += result["seconds"]
        clock["iterations"] = result["iteration"]
        with open(clock_path, "w") as file:
            json.dump(clock, file)


def _shift_names(f):
    from keras_meta.learned_optimizer.shifts import SHIFT_NAMES

    return list(f.shifts or SHIFT_NAMES)


def _evaluate(f):
    from keras_meta.learned_optimizer import generalization, load_rule
    from keras_meta.learned_optimizer.shifts import get_shift

    steps = _config("lstm", 0).num_steps
    baseline_path = os.path.join(f.model_dir, "baselines.json")
    baselines = _load(baseline_path)
    for shift_name in _shift_names(f):
        key = f"{shift_name}/{f.num_functions}/{f.num_tune_functions}"
        if key in baselines:
            continue
        print(f"== baselines on {shift_name}", flush=True)
        start = time.perf_counter()
        runs, tuning = generalization.evaluate_shift(
            {}, get_shift(shift_name), steps, num_functions=f.num_functions, baselines=BASELINES,
            num_tune_functions=f.num_tune_functions)
        baselines[key] = {name: _run_json(run, tuning[name]) for name, run in runs.items()}
        baselines[key]["seconds"] = time.perf_counter() - start
        _dump(baseline_path, baselines)
    for name, seed in _runs(f):
        rule_file = os.path.join(_run_dir(f, name, seed), "rule.keras")
        if not os.path.exists(rule_file):
            print(f"== skip {name} seed {seed}: no rule file yet", flush=True)
            continue
        cache_path = os.path.join(_run_dir(f, name, seed), "shifts.json")
        cache = _load(cache_path)
        digest = _sha256(rule_file)
        if cache.get("rule_sha256") != digest:
            cache = {"rule_sha256": digest}
        rule = load_rule(rule_file)
        for shift_name in _shift_names(f):
            key = f"{shift_name}/{f.num_functions}"
            if key in cache:
                continue
            print(f"== evaluate {name} seed {seed} on {shift_name}", flush=True)
            runs, _ = generalization.evaluate_shift(
                {"learned": rule}, get_shift(shift_name), steps, num_functions=f.num_functions,
                baselines=())
            cache[key] = _run_json(runs["learned"])
            _dump(cache_path, cache)


def _run_json(run, tuning=None):
    return {"finals": [float(x) for x in run.finals],
            "curve": [float(x) for x in np.nanmean(np.where(np.isfinite(run.curves),
                                                             run.curves, np.nan), axis=0)],
            "learning_rate": run.learning_rate, "seconds_per_step": run.seconds_per_step,
            "tuning": tuning}


def _load(path):
    if os.path.exists(path):
        with open(path) as file:
            return json.load(file)
    return {}


def _dump(path, value):
    with open(path + ".tmp", "w") as file:
        json.dump(value, file)
    os.replace(path + ".tmp", path)


def _report(f, command):
    from keras_meta.learned_optimizer import generalization
    from keras_meta.learned_optimizer.shifts import NETWORK_SHIFTS, SHIFTS

    baselines = _load(os.path.join(f.model_dir, "baselines.json"))
    shifts = _shift_names(f)
    report = {"command": command, "shifts": {}, "configs": {}}
    lines = [f"Command: `{command}`", "",
             "Meta-training: the 20-unit sigmoid MLP on the training digits, 100 steps, "
             f"{len(f.seeds)} seeds per configuration. Each cell: held-out final loss "
             f"(cross-entropy on the whole held-out split) over {f.num_functions} functions.",
             ""]
    runs = list(_runs(f))
    learned = {}
    for name, seed in runs:
        cache = _load(os.path.join(_run_dir(f, name, seed), "shifts.json"))
        clock = _load(os.path.join(_run_dir(f, name, seed), "wall_clock.json"))
        for shift_name in shifts:
            entry = cache.get(f"{shift_name}/{f.num_functions}")
            if entry:
                learned[(name, seed, shift_name)] = entry
        report["configs"].setdefault(name, {"description": CONFIGS[name][1], "seeds": {}})
        report["configs"][name]["seeds"][str(seed)] = {"meta_training": clock}

    lines += ["## Against tuned Adam, per shift", "",
              "`mean / median` of the learned rule per seed; ✓ where it beats the tuned "
              "Adam by both; `wins`: share of functions where it is lower than Adam.", "",
              "| shift | steps | Adam lr | Adam mean / median | " + " | ".join(
                  f"{name}" for name in dict.fromkeys(n for n, _ in runs)) + " |",
              "|---|---|---|---|" + "---|" * len(dict.fromkeys(n for n, _ in runs))]
    verdicts = {}
    for shift_name in shifts:
        base = baselines.get(f"{shift_name}/{f.num_functions}/{f.num_tune_functions}")
        if not base:
            continue
        adam = np.array(base["Adam"]["finals"])
        adam_summary = generalization.summarize(adam)
        cells = []
        for name in dict.fromkeys(n for n, _ in runs):
            parts = []
            for seed in [s for n, s in runs if n == name]:
                entry = learned.get((name, seed, shift_name))
                if entry is None:  # not trained (a gradient-mode seed left out)
                    continue
                finals = np.array(entry["finals"])
                summary = generalization.summarize(finals)
                versus = generalization.compare(finals, adam)
                both = versus["better_mean"] and versus["better_median"]
                verdicts[(name, seed, shift_name)] = both
                report["configs"][name]["seeds"][str(seed)][shift_name] = dict(
                    summary, versus_adam=versus, seconds_per_step=entry["seconds_per_step"])
                parts.append(f"{summary['mean']:.3g} / {summary['median']:.3g}"
                             f"{' ✓' if both else ''} ({versus['wins']:.0%})")
            cells.append("<br>".join(parts))
        steps = SHIFTS[shift_name].horizon(100)
        lines.append(f"| {shift_name} | {steps} | {base['Adam']['learning_rate']:.3g} | "
                     f"{adam_summary['mean']:.3g} / {adam_summary['median']:.3g} | "
                     + " | ".join(cells) + " |")
        report["shifts"][shift_name] = {
            "description": SHIFTS[shift_name].description, "steps": steps,
            "baselines": {b: dict(generalization.summarize(np.array(base[b]["finals"])),
                                  learning_rate=base[b]["learning_rate"],
                                  seconds_per_step=base[b]["seconds_per_step"])
                          for b in BASELINES}}
    lines.append("")

    # The goal, per configuration: every seed beats Adam by mean and median at 1x and
    # 2x, and on at least three of the five shifts.
    lines += ["## The goal, per configuration", "",
              "Beat tuned Adam by mean and median at 1x and 2x the horizon, and on at least "
              "three of the five shifts (5x, 40 units, two layers, ReLU, conv), for every seed.",
              "", "| configuration | seeds meeting 1x & 2x | shifts won, per seed | goal met |",
              "|---|---|---|---|"]
    for name in dict.fromkeys(n for n, _ in runs):
        # Only the seeds that were trained and evaluated (the gradient-mode runs may have one).
        seeds = [s for n, s in runs
                 if n == name and any((name, s, h) in learned for h in shifts)]
        if not seeds:
            continue
        horizon_ok = [all(verdicts.get((name, s, h), False) for h in ("base", "horizon_2x"))
                      for s in seeds]
        shifts_won = [sum(verdicts.get((name, s, h), False) for h in NETWORK_SHIFTS)
                      for s in seeds]
        met = all(horizon_ok) and all(w >= 3 for w in shifts_won)
        report["configs"][name]["goal_met"] = met
        lines.append(f"| {name} | {sum(horizon_ok)}/{len(seeds)} | "
                     f"{', '.join(map(str, shifts_won))} of 5 | {'yes' if met else 'no'} |")
    lines.append("")

    lines += ["## Every baseline, per shift (mean ± 95% CI, median [95% CI])", "",
              "| shift | " + " | ".join(BASELINES) + " |", "|---|" + "---|" * len(BASELINES)]
    for shift_name, entry in report["shifts"].items():
        cells = [f"{s['mean']:.3g} ± {s['mean_ci95']:.2g}, {s['median']:.3g} "
                 f"[{s['median_ci95'][0]:.3g}, {s['median_ci95'][1]:.3g}] (lr {s['learning_rate']:.2g})"
                 for s in (entry["baselines"][b] for b in BASELINES)]
        lines.append(f"| {shift_name} | " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## Wall clock per optimizee step (base family, one function)", "",
              "| optimizer | ms per step | ratio to Adam |", "|---|---|---|"]
    base_entry = baselines.get(f"base/{f.num_functions}/{f.num_tune_functions}", {})
    adam_speed = base_entry.get("Adam", {}).get("seconds_per_step")
    for name in dict.fromkeys(n for n, _ in runs):
        entry = learned.get((name, int(f.seeds[0]), "base")) or learned.get(
            (name, int(f.exact_seeds[0]), "base"))
        if entry and adam_speed:
            lines.append(f"| {name} | {1e3 * entry['seconds_per_step']:.2f} | "
                         f"{entry['seconds_per_step'] / adam_speed:.2f} |")
    for b in BASELINES:
        speed = base_entry.get(b, {}).get("seconds_per_step")
        if speed and adam_speed:
            lines.append(f"| {b} | {1e3 * speed:.2f} | {speed / adam_speed:.2f} |")
    lines.append("")

    lines += ["## Meta-training cost", "", "| configuration | iterations | seconds per seed |",
              "|---|---|---|"]
    for name, entry in report["configs"].items():
        clocks = [s["meta_training"] for s in entry["seeds"].values() if s["meta_training"]]
        if clocks:
            lines.append(f"| {name} ({entry['description']}) | {clocks[0].get('iterations')} | "
                         + ", ".join(f"{c['seconds']:.0f}" for c in clocks) + " |")
    lines.append("")
    _plot(f, shifts, runs, learned, baselines)
    return report, lines


def _plot(f, shifts, runs, learned, baselines):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(shifts) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, shift_name in zip(axes.flat, shifts):
        base = baselines.get(f"{shift_name}/{f.num_functions}/{f.num_tune_functions}", {})
        for b in BASELINES:
            if b in base:
                ax.plot(base[b]["curve"], label=f"{b} (lr {base[b]['learning_rate']:.2g})",
                        linestyle="--", linewidth=1)
        for name in dict.fromkeys(n for n, _ in runs):
            curves = [learned[(name, s, shift_name)]["curve"] for n, s in runs
                      if n == name and (name, s, shift_name) in learned]
            if curves:
                ax.plot(np.mean(curves, axis=0), label=f"{name} ({len(curves)} seeds)")
        ax.set_yscale("log")
        ax.set_title(shift_name)
        ax.set_xlabel("optimizee step")
    for ax in list(axes.flat)[len(shifts):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("mini-batch loss, mean over functions")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(f.output_dir, "learned_optimizer_shifts.png"), dpi=110)
    plt.close(fig)


def digits_fit(make_learned, model="convnet", steps=300,
               adam_grid=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1), seed=0):
    """Validation-loss curves of a Keras digits model fitted with a learned rule and Adam.

    `model="convnet"` (3x3x8, pool, 3x3x16, pool, dense, ReLU) or `"mlp2"` (two hidden layers
    of 20 sigmoid units); neither was in meta-training. Both optimizers get the same initial
    weights and batches; Adam's rate is the grid point with the lowest final validation loss
    (tuned on the very number reported: the hard baseline).
    """
    import keras

    from keras_meta.learned_optimizer.optimizees.digits import digits_split

    x_train, y_train = digits_split("train")
    x_val, y_val = digits_split("heldout")
    shape = (8, 8, 1) if model == "convnet" else (64,)
    x_train = x_train.reshape((-1,) + shape).astype("float32")
    x_val = x_val.reshape((-1,) + shape).astype("float32")
    epochs = -(-steps // -(-len(x_train) // 128))

    def fit(optimizer):
        keras.utils.set_random_seed(seed)
        if model == "convnet":
            layers = [keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                      keras.layers.MaxPooling2D(),
                      keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                      keras.layers.MaxPooling2D(), keras.layers.Flatten()]
        else:
            layers = [keras.layers.Dense(20, activation="sigmoid"),
                      keras.layers.Dense(20, activation="sigmoid")]
        net = keras.Sequential([keras.Input(shape), *layers, keras.layers.Dense(10)])
        net.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        history = net.fit(x_train, y_train, batch_size=128, epochs=epochs, verbose=0,
                            validation_data=(x_val, y_val), shuffle=True)
        return ([float(v) for v in history.history["val_loss"]],
                [float(v) for v in history.history["loss"]])

    runs = {"learned": fit(make_learned())}
    adam = {lr: fit(keras.optimizers.Adam(lr)) for lr in adam_grid}
    best = min(adam, key=lambda lr: adam[lr][0][-1] if np.isfinite(adam[lr][0][-1]) else np.inf)
    runs[f"Adam (lr {best:g})"] = adam[best]
    return {"epochs": epochs, "steps_per_epoch": -(-len(x_train) // 128),
            "curves": {k: v[0] for k, v in runs.items()},
            "final_validation_loss": {k: v[0][-1] for k, v in runs.items()},
            "final_training_loss": {k: v[1][-1] for k, v in runs.items()},
            "adam_grid": {str(lr): c[0][-1] for lr, c in adam.items()}}


def _plot_fit(f, fit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max(int(s) for s in f.fit_steps)
    shown = {k: v for k, v in fit.items() if k.endswith(f"/{longest}")}
    cols = 3
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    for ax, (key, entry) in zip(axes.flat, shown.items()):
        for label, curve in entry["curves"].items():
            ax.plot(np.arange(1, len(curve) + 1), curve, label=label)
        ax.set(title=key, xlabel="epoch", yscale="log")
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("validation cross-entropy")
    fig.tight_layout()
    fig.savefig(os.path.join(f.output_dir, "learned_optimizer_shifts_fit.png"), dpi=110)
    plt.close(fig)


def _fit_comparison(f, names):
    """Each configuration's seed-0 rule in `model.fit` on Keras digits models vs a tuned Adam."""
    from keras_meta.learned_optimizer import LearnedOptimizer

    results = {}
    for steps in [int(s) for s in f.fit_steps]:
        for model in ("convnet", "mlp2"):
            for name in names:
                rule_file = os.path.join(_run_dir(f, name, int(f.seeds[0])), "rule.keras")
                if os.path.exists(rule_file):
                    print(f"== model.fit: {name} on the {model}, {steps} steps", flush=True)
                    results[f"{name}/{model}/{steps}"] = digits_fit(
                        lambda: LearnedOptimizer.from_file(rule_file), model=model, steps=steps)
    return results


def main(argv):
    del argv
    f = flags.FLAGS
    command = "python -m benchmarks.learned_optimizer_shifts " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    os.makedirs(f.model_dir, exist_ok=True)
    os.makedirs(f.output_dir, exist_ok=True)
    for name, _ in _runs(f):
        _config(name, 0)  # unknown names refused before any work
    if f.stage in ("train", "all"):
        _train(f)
    if f.stage in ("evaluate", "all"):
        _evaluate(f)
    if f.stage in ("report", "all"):
        report, lines = _report(f, command)
        fit = _fit_comparison(f, [n for n in ("mlp_exact", "mlp", "lstm")
                                  if n in f.configs or n in f.exact_configs])
        if fit:
            report["fit"] = fit
            lines += ["## `model.fit` on Keras digits models (not in meta-training)", "",
                      "Batches of 128 on the training digits (whole epochs of 10 steps: 100 "
                      "steps is the meta-training horizon); validation loss on the held-out "
                      "digits. Adam's rate is tuned on that same validation loss (grid "
                      "1e-3 .. 1e-1). Seed-0 rules.", "",
                      "| rule / Keras model / steps | validation: learned rule | validation: tuned Adam "
                      "| last epoch's training loss: learned / Adam | Adam's rate |",
                      "|---|---|---|---|---|"]
            for key, entry in fit.items():
                finals = entry["final_validation_loss"]
                train = entry["final_training_loss"]
                adam_label = next(k for k in finals if k.startswith("Adam"))
                lines.append(f"| {key} | {finals['learned']:.4f} | {finals[adam_label]:.4f} | "
                             f"{train['learned']:.4f} / {train[adam_label]:.4f} | "
                             f"{adam_label[len('Adam (lr '):-1]} |")
            lines.append("")
            _plot_fit(f, fit)
        with open(os.path.join(f.output_dir, "learned_optimizer_shifts.json"), "w") as file:
            json.dump(report, file, indent=2, default=str)
        with open(os.path.join(f.output_dir, "learned_optimizer_shifts.md"), "w") as file:
            file.write("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    define_flags()
    app.run(main)
