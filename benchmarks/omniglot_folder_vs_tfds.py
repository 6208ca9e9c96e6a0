r"""The generic image-folder path against the dedicated Omniglot path, on the same settings.

    python benchmarks/omniglot_folder_vs_tfds.py \
        --omniglot_source_dir=../shared/data/omniglot --work_dir=../runs/r2/folder_vs_tfds \
        --num_iterations=1000 --output=benchmarks/results/omniglot_folder_vs_tfds.md

Writes Omniglot's PNGs as a class-folder tree (`write_omniglot_folder`), then meta-trains the
`omniglot_5way_1shot` preset twice with the same seed: through `--task_family=omniglot` (TFDS,
the dedicated path) and through `--task=images --dataset=folder:TREE` with the same class split
(`omniglot_maml`), size, inversion and rotations. Both are tested on 600 tasks; the two
accuracies must agree within their 95% intervals. Re-running resumes both runs.
"""

import json
import os
import shlex
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("omniglot_source_dir", None, "Folder with Omniglot's zips.")
flags.DEFINE_string("work_dir", None, "Where the tree and the two runs go (outside the repo).")
flags.DEFINE_integer("num_iterations", 1000, "Meta-training iterations of each run.")
flags.DEFINE_integer("seed", 0, "Seed of both runs.")
flags.DEFINE_string("output", None, "Write the table here (markdown).")

_COMMON = ["--preset=omniglot_5way_1shot", "--eval_every=0", "--log_every=100",
           "--checkpoint_every=250", "--steps_per_execution=10"]


def run(name, extra):
    model_dir = os.path.join(FLAGS.work_dir, name)
    command = [sys.executable, "-m", "trainers.train_maml", *_COMMON,
               f"--num_iterations={FLAGS.num_iterations}", f"--seed={FLAGS.seed}",
               f"--model_dir={model_dir}", *extra]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    with open(os.path.join(model_dir, "eval_results.json")) as f:
        results = json.load(f)
    step = next(iter(results["results"]))
    return command, results, results["results"][step]["accuracy"]


def main(argv):
    del argv
    if not FLAGS.omniglot_source_dir or not FLAGS.work_dir:
        raise app.UsageError("--omniglot_source_dir and --work_dir are required.")
    from keras_meta.data.omniglot import write_omniglot_folder

    tree = write_omniglot_folder(FLAGS.omniglot_source_dir,
                                 os.path.join(FLAGS.work_dir, "omniglot_folder"))
    rows = [("dedicated (TFDS omniglot)", *run("tfds", [
                "--task_family=omniglot", f"--omniglot_source_dir={FLAGS.omniglot_source_dir}"])),
            ("generic (folder:PATH)", *run("folder", [
                "--task=images", f"--dataset=folder:{tree}", "--class_split=omniglot_maml",
                "--image_size=28", "--image_channels=1", "--invert_images", "--rotations=4",
                f"--cache_dir={os.path.join(FLAGS.work_dir, 'cache')}"]))]
    lines = [f"# Omniglot 5-way 1-shot: folder:PATH against the dedicated path, "
             f"{FLAGS.num_iterations} iterations, seed {FLAGS.seed}", "",
             "| path | test accuracy (600 tasks, 95% CI) | train seconds |", "|---|---|---|"]
    for label, _, results, acc in rows:
        lines.append(f"| {label} | {100 * acc['mean']:.2f}% +/- {100 * acc['ci95']:.2f}% | "
                     f"{results['train_seconds']:.0f} |")
    (a, b) = (rows[0][3], rows[1][3])
    agree = abs(a["mean"] - b["mean"]) <= a["ci95"] + b["ci95"]
    lines += ["", f"Difference {100 * (b['mean'] - a['mean']):+.2f} points; the intervals "
              f"{'overlap' if agree else 'do NOT overlap'}.", "", "Commands:", ""]
    lines += [f"    {shlex.join(command)}" for _, command, _, _ in rows]
    lines += ["", f"Made by: python {shlex.join(sys.argv)}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text)
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
