"""`task_batching="auto"` chooses by measurement: candidates, the cache, and who reads the choice.

Timings themselves are never asserted (they depend on the machine's load); what is asserted
is which candidates are timed, that a measured choice is cached per signature and reused,
that a damaged cache is measured again, and that the choice reaches the meta-objective.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta as km
from keras_meta.backbones import conv4, mlp
from keras_meta.core import batching
from keras_meta.data.sinusoid import sinusoid_episodes
from keras_meta.maml import task_batching_autotune as autotune
from keras_meta.maml.task_batching_autotune import TaskBatchingChoice


def images(num_tasks=8, seed=0):
    rng = np.random.default_rng(seed)
    return km.Episode(
        tf.constant(rng.normal(size=(num_tasks, 3, 8, 8, 1)), tf.float32),
        tf.constant(np.tile(np.arange(3), (num_tasks, 1)), tf.int32),
        tf.constant(rng.normal(size=(num_tasks, 3, 8, 8, 1)), tf.float32),
        tf.constant(np.tile(np.arange(3), (num_tasks, 1)), tf.int32))


def image_maml(**kwargs):
    keras.utils.set_random_seed(0)
    return km.MAML(conv4(3, (8, 8, 1), filters=4, **kwargs.pop("backbone", {})),
                   inner_lr=0.4, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   **kwargs)


def labels(options):
    return [c.label for c in options]


def test_candidates_cover_the_loop_chunks_and_both_batch_norms():
    assert labels(autotune.candidates(image_maml(), 32)) == [
        "loop", "batched", "batched, chunks of 4", "batched, chunks of 8",
        "batched, chunks of 16", "batched (plain batch norm)",
        "batched, chunks of 4 (plain batch norm)", "batched, chunks of 8 (plain batch norm)",
        "batched, chunks of 16 (plain batch norm)"]
    # Chunks as large as the meta-batch are the full pass: not timed twice.
    assert labels(autotune.candidates(image_maml(), 8)) == [
        "loop", "batched", "batched, chunks of 4", "batched (plain batch norm)",
        "batched, chunks of 4 (plain batch norm)"]


def test_candidates_keep_what_the_user_fixed():
    assert labels(autotune.candidates(image_maml(task_chunk_size=2), 32)) == [
        "loop", "batched, chunks of 2", "batched, chunks of 2 (plain batch norm)"]
    assert labels(autotune.candidates(image_maml(fused_batch_norm=False), 8)) == [
        "loop", "batched (plain batch norm)",
        "batched, chunks of 4 (plain batch norm)"]
    # Without batch norm the fused flag changes nothing, so it is not varied.
    sinusoid = km.MAML(mlp((8,)), inner_lr=0.01, loss="mse")
    assert labels(autotune.candidates(sinusoid, 8)) == ["loop", "batched",
                                                        "batched, chunks of 4"]
    # Per-step batch norm has running statistics: only the loop can run it.
    per_step = image_maml(backbone=dict(batch_norm="per_step", num_inner_steps=1))
    assert labels(autotune.candidates(per_step, 8)) == ["loop"]


def test_chunks_are_left_out_only_where_the_full_passes_say_they_cannot_win():
    C = autotune.TaskBatchingChoice
    loop, fused, plain = C("loop"), C("batched", None, True), C("batched", None, False)
    chunk, plain_chunk = C("batched", 8, True), C("batched", 8, False)
    # Full passes and the loop are always timed.
    for choice in (loop, fused, plain):
        assert autotune.left_out(choice, {loop: 0.1, fused: 9.0, plain: 9.0}) is None
    # The loop far ahead of both full passes (patches without oneDNN: 2-5x): no chunks.
    slow = {loop: 0.3, fused: 0.66, plain: 0.64}
    for choice in (chunk, plain_chunk):
        assert autotune.left_out(choice, slow) == ("not timed: the loop was 2.13x faster than "
                                                   "the full batched pass")
    # Within LOOP_PRUNE of the loop (oneDNN's grouped form: chunks won there), or the loop not
    # timed (yet), chunks are timed.
    close = {loop: 0.92, fused: 0.88, plain: 0.90}
    assert autotune.left_out(chunk, close) is None
    assert autotune.left_out(chunk, {fused: 0.9, plain: 0.9}) is None
    edge = {loop: 1.0, fused: autotune.LOOP_PRUNE * 0.999, plain: 5.0}
    assert autotune.left_out(chunk, edge) is None
    # The batch-norm rule: chunks only in the full pass's faster form, beyond the noise.
    assert autotune.left_out(plain_chunk, edge).startswith(
        "not timed: batched (plain batch norm) was 2.86x batched on the full pass")


def test_a_measured_choice_is_cached_per_signature_and_reused(tmp_path):
    path = str(tmp_path / "cache.json")
    # First order and 5 tasks: what is cached does not depend on the derivative order, and 5
    # tasks still have a chunk candidate (4) while the loop's trace, unrolled per task, stays
    # short; tracing the candidates is nearly all of this test's cost.
    maml = image_maml(first_order=True)
    messages = []
    choice, report = autotune.autotune_task_batching(maml, images(num_tasks=5), repeats=1,
                                                     path=path, log=messages.append)
    options = autotune.candidates(maml, 5)
    assert choice in options and not report["cached"]
    # Every candidate is timed, or said to be left out (chunks in a batch-norm form that
    # lost on the full pass by more than 10%, or all chunks where the loop won by far).
    assert set(report["timings"]) == set(labels(options))
    timed = {k: v for k, v in report["timings"].items() if not isinstance(v, str)}
    assert {"loop", "batched", "batched (plain batch norm)"} <= set(timed)
    assert all(t > 0 for t in timed.values())
    for label, why in report["timings"].items():
        if isinstance(why, str):
            assert "chunks of" in label and why.startswith("not timed:"), (label, why)
    assert choice.label == min(timed, key=timed.get)
    assert choice.label in messages[-1] and "measured in" in messages[-1]
    entry = json.load(open(path))[report["key"]]
    assert entry["choice"] == choice.to_dict() and entry["machine"]["cpu_count"] > 0

    again, report2 = autotune.autotune_task_batching(
        image_maml(first_order=True), images(num_tasks=5, seed=1), repeats=1, path=path,
        log=messages.append)
    assert again == choice and report2["cached"] and report2["seconds"] == 0.0
    assert report2["key"] == report["key"] and "cached timings" in messages[-1]

    # Another meta-batch size, derivative order or machine is another signature.
    _, other = autotune.autotune_task_batching(image_maml(first_order=True),
                                               images(num_tasks=2), repeats=1, path=path,
                                               log=messages.append)
    assert not other["cached"] and other["key"] != report["key"]
    assert autotune.signature(image_maml(), images(num_tasks=5)) != report["key"]
    assert len(json.load(open(path))) == 2


def test_the_budget_predicts_each_trace_from_the_full_pass_per_pass():
    C = autotune.TaskBatchingChoice
    loop, full, chunk = C("loop"), C("batched"), C("batched", 8)
    assert [autotune.passes(c, 25) for c in (full, C("batched", 16), chunk, C("batched", 4),
                                             loop)] == [1, 2, 4, 7, 25]
    first, warm = {full: 2.0, C("batched", None, False): 3.0}, {full: 0.01}
    # 5,000 iterations at 10 ms: a budget of 5 s, 2.5 of them spent.
    assert autotune.over_budget(loop, 25, first, warm, 2.5, 5000) == (
        "not timed: tracing it would take about 50 s, over the 2.5 s left of the measurement's "
        "budget (5.0 s: a tenth of this run's 5000 iterations at 10.0 ms)")
    assert autotune.over_budget(chunk, 25, first, warm, 2.5, 5000).startswith(
        "not timed: tracing it would take about 8.0 s")
    # 2 s per pass fits the 2.5 s left; 3 passes (chunks of 8 of 17 tasks) do not.
    assert autotune.over_budget(chunk, 8, first, warm, 2.5, 5000) is None
    assert autotune.over_budget(chunk, 17, first, warm, 2.5, 5000) is not None
    # A run 100 times as long affords the loop; no run length, or nothing traced yet: no budget.
    assert autotune.over_budget(loop, 25, first, warm, 2.5, 500000) is None
    assert autotune.over_budget(loop, 25, first, warm, 2.5, None) is None
    assert autotune.over_budget(loop, 25, {}, {}, 0.0, 1) is None
    # The fastest step so far sets the budget, and the cheapest pass traced the prediction.
    assert autotune.over_budget(loop, 25, first, {full: 0.01, loop: 0.1}, 2.5, 5000) is not None
    assert autotune.over_budget(chunk, 25, {loop: 50.0}, {loop: 0.01}, 2.5, 5000).startswith(
        "not timed: tracing it would take about 8.0 s")


def test_a_short_run_traces_only_what_its_budget_allows_and_a_longer_one_measures_again(
        tmp_path):
    path = str(tmp_path / "cache.json")
    sinusoid = km.MAML(mlp((8,)), inner_lr=0.01, loss="mse")
    episodes = next(iter(sinusoid_episodes(5, 5, 8, seed=0)))
    messages = []

    def measure(run_iterations):
        return autotune.autotune_task_batching(sinusoid, episodes, repeats=1, path=path,
                                               log=messages.append,
                                               run_iterations=run_iterations)

    # One iteration: a tenth of one step is less than any further trace.
    choice, report = measure(1)
    assert choice == TaskBatchingChoice("batched") and not report["cached"]
    # The log states the budget once and each left-out candidate's predicted trace.
    assert "loop (about" in messages[-1] and messages[-1].count("budget (") == 1, messages[-1]
    assert report["over_budget"] == ["loop", "batched, chunks of 4"]
    for label in report["over_budget"]:
        assert report["timings"][label].startswith("not timed: tracing it would take about")
    entry = json.load(open(path))[report["key"]]
    assert entry["over_budget"] == report["over_budget"] and entry["run_iterations"] == 1
    # A run no longer than the measured one reuses it.
    assert measure(1)[1]["cached"]
    # A longer run, or one without a budget, measures every candidate again.
    choice, report = measure(None)
    assert not report["cached"] and report["over_budget"] == []
    assert any("left out loop, batched, chunks of 4 for a run of 1 iterations" in m
               for m in messages)
    # (Chunks may still be left out by the timing rules, `left_out`, on a loaded machine.)
    assert not any(str(t).startswith("not timed: tracing it would take")
                   for t in report["timings"].values()), report["timings"]
    assert isinstance(report["timings"]["loop"], float), report["timings"]
    assert "over_budget" not in json.load(open(path))[report["key"]]
    # A complete measurement serves any run.
    assert measure(1)[1]["cached"] and measure(10**9)[1]["cached"]
    with pytest.raises(ValueError, match="run_iterations must be a positive int or None; got 0"):
        autotune.autotune_task_batching(sinusoid, episodes, run_iterations=0)


def test_timings_made_under_other_thread_settings_are_not_reused(monkeypatch):
    # TensorFlow sizes its pools from these variables at startup while tf.config.threading
    # still reports 0, and the fastest candidate depends on the pools' sizes.
    maml, episodes = image_maml(first_order=True), images(num_tasks=5)
    for name in (autotune.INTRA_OP_ENV, autotune.INTER_OP_ENV):
        monkeypatch.delenv(name, raising=False)
    default = autotune.signature(maml, episodes)
    assert autotune.machine_description()["intra_op_threads"] == 0
    monkeypatch.setenv(autotune.INTRA_OP_ENV, "1")
    one_thread_per_op = autotune.signature(maml, episodes)
    monkeypatch.setenv(autotune.INTER_OP_ENV, "2")
    two_at_a_time = autotune.signature(maml, episodes)
    assert len({default, one_thread_per_op, two_at_a_time}) == 3
    assert autotune.machine_description()["inter_op_threads"] == 2
    monkeypatch.delenv(autotune.INTRA_OP_ENV)
    monkeypatch.delenv(autotune.INTER_OP_ENV)
    assert autotune.signature(maml, episodes) == default


def test_a_damaged_cache_is_measured_again_and_rewritten(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text("{ not json")
    messages = []
    sinusoid = km.MAML(mlp((8,)), inner_lr=0.01, loss="mse")
    episodes = next(iter(sinusoid_episodes(5, 5, 8, seed=0)))
    choice, report = autotune.autotune_task_batching(sinusoid, episodes, repeats=1,
                                                     path=str(path), log=messages.append)
    assert not report["cached"] and any("ignoring the unreadable" in m for m in messages)
    assert json.loads(path.read_text())[report["key"]]["choice"] == choice.to_dict()
    # A cached choice this model can no longer take is not applied: it is measured anew.
    entries = json.loads(path.read_text())
    entries[report["key"]]["choice"] = TaskBatchingChoice("batched", 16, True).to_dict()
    path.write_text(json.dumps(entries))
    fresh, report = autotune.autotune_task_batching(sinusoid, episodes, repeats=1,
                                                    path=str(path), log=messages.append)
    assert not report["cached"] and fresh in autotune.candidates(sinusoid, 8)


def test_the_choice_reaches_the_meta_objective_and_keeps_the_meta_gradient():
    maml = image_maml()
    data = images(num_tasks=4)
    reference = maml.meta_gradients(data)
    for choice in [TaskBatchingChoice("loop"), TaskBatchingChoice("batched", 2, False)]:
        maml.set_task_batching_choice(choice)
        objective = maml.objective()
        assert objective.task_batched == (choice.task_batching == "batched")
        assert objective.task_chunk_size == choice.task_chunk_size
        assert objective.fused_batch_norm == choice.fused_batch_norm
        assert maml.uses_task_batching == (choice.task_batching == "batched")
        loss, grads, _ = maml.meta_gradients(data)
        np.testing.assert_allclose(loss.numpy(), reference[0].numpy(), rtol=1e-5)
        for a, b in zip(reference[1], grads):
            assert np.linalg.norm(b - a) <= 1e-4 * np.linalg.norm(a) + 1e-6
    maml.set_task_batching_choice(None)
    # The unmeasured rule: batched, unless its convolutions would fall back to patches here
    # (a CPU without oneDNN's grouped gradients; tests/core/test_grouped_fallback.py).
    expected = not batching.convolutions_fall_back_to_patches(maml.model)
    assert maml.objective().task_batched == expected
    assert maml.objective().task_chunk_size is None


def test_the_timed_step_computes_the_whole_meta_gradient_and_returns_two_scalars():
    # The autotuner times this function; a training step's gradients stay in its graph, so
    # only scalars come out, but every gradient must still be computed (no pruned backward).
    maml = image_maml()
    data = images(num_tasks=4)
    for choice in [TaskBatchingChoice("loop"), TaskBatchingChoice("batched", 2, False)]:
        maml.set_task_batching_choice(choice)
        for first_order in (False, True):
            loss, grads, _ = maml.meta_gradients(data, first_order=first_order)
            step = autotune.timed_step(maml, data, first_order=first_order)
            outputs = step(data)
            assert [tuple(x.shape) for x in outputs] == [(), ()]
            np.testing.assert_allclose(outputs[0].numpy(), loss.numpy(), rtol=1e-5)
            np.testing.assert_allclose(
                outputs[1].numpy(), sum(float(tf.reduce_sum(g)) for g in grads),
                rtol=1e-4, atol=1e-6)
    # The two orders differ on this model, so the checks above tell them apart.
    second = autotune.timed_step(maml, data)(data)[1].numpy()
    first = autotune.timed_step(maml, data, first_order=True)(data)[1].numpy()
    assert abs(second - first) > 1e-4 * abs(second)


def test_a_fixed_task_batching_is_the_override():
    maml = image_maml(task_batching="batched", task_chunk_size=4)
    choice, report = maml.autotune(images())
    assert choice == TaskBatchingChoice("batched", 4, True) and report is None
    with pytest.raises(ValueError, match="fixed"):
        maml.set_task_batching_choice(TaskBatchingChoice("loop"))
    with pytest.raises(ValueError, match="task_batching='auto'"):
        autotune.autotune_task_batching(maml, images())
    per_step = image_maml(backbone=dict(batch_norm="per_step", num_inner_steps=1))
    with pytest.raises(ValueError, match="not possible here"):
        per_step.set_task_batching_choice(TaskBatchingChoice("batched"))


@pytest.mark.parametrize("enabled", ["1", "0"])
def test_fit_measures_first_unless_turned_off(monkeypatch, tmp_path, enabled):
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, enabled)
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path))
    maml = km.MAML(mlp((8,)), inner_lr=0.01, loss="mse")
    maml.compile(keras.optimizers.Adam(1e-3))
    dataset = sinusoid_episodes(5, 5, 8, seed=0)
    maml.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    if enabled == "1":
        assert maml.task_batching_choice in autotune.candidates(maml, 8)
        # fit's length (2 steps of 1 epoch) is the measurement's budget: no loop traced.
        [entry] = json.loads((tmp_path / autotune.CACHE_FILE).read_text()).values()
        assert entry["run_iterations"] == 2 and "loop" in entry["over_budget"]
    else:
        assert maml.task_batching_choice is None
        assert not (tmp_path / autotune.CACHE_FILE).exists()


def test_fit_tells_the_measurement_its_length_only_where_keras_would_know_it():
    from keras_meta.maml.maml_model import _fit_iterations

    endless = sinusoid_episodes(5, 5, 8, seed=0)
    finite = tf.data.Dataset.range(6)
    assert _fit_iterations(endless, (), dict(steps_per_epoch=4, epochs=3)) == 12
    assert _fit_iterations(endless, (), dict(steps_per_epoch=4, epochs=3, initial_epoch=1)) == 8
    assert _fit_iterations(finite, (), dict(epochs=2)) == 12
    assert _fit_iterations(finite.repeat(), (), {}) is None
    # Positional arguments, or values Keras itself refuses: no length, and no error of ours.
    assert _fit_iterations(finite, (None, None, 2), {}) is None
    assert _fit_iterations(finite, (), dict(epochs=None)) is None
    assert _fit_iterations(finite, (), dict(epochs=2, initial_epoch=2)) is None


def test_the_trainer_records_its_choice(monkeypatch, tmp_path):
    from keras_meta.training import run_state, train
    from keras_meta.training.config import MAMLTrainConfig

    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "1")
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path / "cache"))
    # 4 tasks: two candidates (the loop and the batched pass); 3 iterations leave the loop
    # out of the measurement's budget.
    config = MAMLTrainConfig(task_family="sinusoid", num_iterations=3, meta_batch_size=4,
                             eval_every=0, num_eval_tasks=4, log_every=1)
    train(config, str(tmp_path / "run"), verbose=False)
    events = [e for e in run_state.read_history(str(tmp_path / "run"))
              if e["event"] == "task_batching"]
    assert len(events) == 1 and not events[0]["cached"]
    assert events[0]["choice"] in events[0]["timings"]
    assert events[0]["over_budget"] == ["loop"], events[0]
    # A resume on the same machine reuses the timings.
    train(config.replace(num_iterations=5), str(tmp_path / "run"), verbose=False)
    events = [e for e in run_state.read_history(str(tmp_path / "run"))
              if e["event"] == "task_batching"]
    assert len(events) == 2 and events[1]["cached"]


def test_bad_choices_and_switch_values_are_refused(monkeypatch):
    with pytest.raises(TypeError, match="TaskBatchingChoice or None; got str"):
        image_maml().set_task_batching_choice("batched")
    with pytest.raises(ValueError, match="must be 'batched' or 'loop'"):
        TaskBatchingChoice("grouped")
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "maybe")
    with pytest.raises(ValueError, match="KERAS_META_AUTOTUNE='maybe' is not understood"):
        autotune.autotune_enabled()
    for value, expected in [("off", False), ("0", False), ("ON", True), ("1", True)]:
        monkeypatch.setenv(autotune.AUTOTUNE_ENV, value)
        assert autotune.autotune_enabled() is expected
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        autotune.autotune_task_batching(image_maml(), images(), repeats=0)
