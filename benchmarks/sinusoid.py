r"""MAML sinusoid regression, the paper's full protocol, against a pretrained baseline.

    python benchmarks/sinusoid.py --model_dir=runs/bench_sinusoid [--num_iterations=70000]

MAML: K=10, alpha 0.01, 1 inner step, meta-batch 25, Adam 1e-3, 70,000 iterations; tested
5-shot after 1, 5 and 10 steps on 600 tasks. The baseline ("pretrained" in Finn et al. 2017)
is the same network trained jointly on all tasks (MAML with 0 inner steps), fine-tuned on the
test tasks with the same inner SGD. Both runs resume if interrupted.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", "runs/bench_sinusoid", "Where both runs go.")
flags.DEFINE_integer("num_iterations", 70000, "Outer steps of each run.")
flags.DEFINE_integer("num_eval_tasks", 600, "Test tasks.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_boolean("tolerate_divergence", False,
                     "Exit 0 even if some test task diverged (a non-finite loss).")

PAPER = {"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}


def main(argv):
    from keras_meta.training.presets import PRESETS
    from keras_meta.training import train

    base = PRESETS["sinusoid"].replace(num_iterations=FLAGS.num_iterations,
                                       num_eval_tasks=FLAGS.num_eval_tasks, seed=FLAGS.seed,
                                       log_every=2000)
    runs = {
        "maml": base,
        "pretrained": base.replace(inner_steps=0),
    }
    results = {}
    for name, config in runs.items():
        print(f"=== {name} ===", flush=True)
        results[name] = train(config, os.path.join(FLAGS.model_dir, name))

    command = "python " + " ".join(sys.argv)
    lines = [f"command: {command}", "",
             "| model | steps | 5-shot MSE (ours, 95% CI) | median | diverged tasks | paper |",
             "|---|---|---|---|---|---|"]
    diverged = []
    for name, res in results.items():
        for steps in (1, 5, 10):
            stats = res["results"][str(steps)]["loss"]
            lines.append(f"| {name} | {steps} | {stats['mean']:.3f} +/- {stats['ci95']:.3f} | "
                         f"{stats['median']:.3f} | {stats['num_diverged']} | "
                         f"{PAPER[name][steps]} |")
            if stats["num_diverged"]:
                diverged.append(f"{name} at {steps} steps: {stats['num_diverged']} of "
                                f"{stats['num_tasks']}")
    m = results["maml"]
    lines += ["", f"MAML meta-training: {m['iterations']} iterations, "
                  f"{m['train_seconds']:.0f} s wall clock, "
                  f"{1000 * (m['seconds_per_iteration'] or float('nan')):.2f} ms per meta-iteration "
                  f"(steady state), {m['num_shots']}-shot test on {FLAGS.num_eval_tasks} tasks."]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(FLAGS.model_dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(FLAGS.model_dir, "summary.json"), "w") as f:
        json.dump({k: v["results"] for k, v in results.items()}, f, indent=2)
    if diverged:
        message = "Test tasks diverged (non-finite loss): " + "; ".join(diverged) + "."
        if not FLAGS.tolerate_divergence:
            sys.exit(message + " The per-task losses are in each run's eval_results.json "
                     "(null: diverged). --tolerate_divergence exits 0 anyway.")
        print("warning: " + message)


if __name__ == "__main__":
    app.run(main)
