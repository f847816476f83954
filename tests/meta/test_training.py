"""Training is reproducible, checkpoints round-trip exactly, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from metarec.meta.checkpoint import load_checkpoint
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer, load_best


def config(kind: str = "feature-mlp", algorithm: str = "maml", epochs: int = 4) -> RunConfig:
    cfg = RunConfig.preset(kind, algorithm)
    cfg = cfg.override("model", embedding_size=8, hidden=[16, 16], factors=8, attention_size=8, dropout=0.1)
    return cfg.override("train", epochs=epochs, patience=10).override("meta", meta_batch_size=8, inner_lr=0.05, support_batch_size=6)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.learner.named_meta_parameters().items()}


def test_same_seed_same_result(tiny_split):
    split, _ = tiny_split
    a = Trainer(config(), split=split)
    a.fit()
    b = Trainer(config(), split=split)
    b.fit()
    pa, pb = params(a), params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    c = Trainer(config().override("train", seed=1), split=split)
    c.fit()
    assert not all(torch.equal(pa[k], params(c)[k]) for k in pa)


@pytest.mark.parametrize("kind,algorithm,average", [("feature-mlp", "maml", 0.0), ("attention", "metasgd", 0.0),
                                                    ("neural-cf", "reptile", 0.0), ("feature-mlp", "maml", 0.7)])
def test_resumed_run_equals_uninterrupted(tiny_split, tmp_path, kind, algorithm, average):
    split, _ = tiny_split
    cfg = config(kind, algorithm).override("train", average_decay=average)
    full = Trainer(cfg, split=split, run_dir=tmp_path / "full")
    full.fit()
    part = Trainer(cfg, split=split, run_dir=tmp_path / "part")
    part.fit(max_epochs=2)  # "interrupted" after two epochs
    resumed = Trainer(cfg, split=split, run_dir=tmp_path / "part")
    resumed.resume(tmp_path / "part" / "last")
    assert resumed.state["epoch"] == 2
    assert (resumed.average is not None) == bool(average)
    resumed.fit()
    pf, pr = params(full), params(resumed)
    assert all(torch.equal(pf[k], pr[k]) for k in pf), "resumed parameters differ"
    if average:
        assert all(torch.equal(full.average[k], resumed.average[k]) for k in pf), "resumed average differs"
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    full_lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_mae"] for r in lines] == [r["val_mae"] for r in full_lines]


def test_checkpoint_round_trip_gives_identical_predictions(tiny_split, tmp_path):
    split, _ = tiny_split
    trainer = Trainer(config("attention", "metasgd", epochs=2), split=split, run_dir=tmp_path / "run")
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last")
    batch = split.test["new_users"].packed()
    before = trainer.learner.predict_query(batch)
    after = ckpt.learner.predict_query(batch)
    assert torch.equal(before, after)
    assert ckpt.item_vocab == split.dataset.item_vocab
    files = sorted(p.name for p in (tmp_path / "run" / "last").iterdir())
    assert files == ["checkpoint.json", "features.safetensors", "model.safetensors", "optimizer.safetensors"]
    assert not any(p.suffix in (".pt", ".pkl", ".pickle") for p in (tmp_path / "run").rglob("*"))
    assert load_best(tmp_path / "run") is not None


def test_residual_item_id_model_round_trips_through_its_checkpoint(tiny_split_new_items, tmp_path):
    """The setting travels in the checkpoint's config, so the loaded model adds ids to the same place."""
    split, _ = tiny_split_new_items
    cfg = config("neural-cf", "maml", epochs=2).override("meta", inner_steps=0).override(
        "model", item_id_embedding=True, item_id_residual=True, fold_in=True, dropout=0.0)
    trainer = Trainer(cfg, split=split, run_dir=tmp_path / "run")
    trainer.fit()
    assert float(trainer.learner.model.item_id.weight.detach().abs().max()) > 0  # the id vectors trained
    ckpt = load_checkpoint(tmp_path / "run" / "last")
    assert ckpt.learner.model.item_id_residual
    batch = split.test["new_items"].with_history(split.meta_train).packed()  # warm and new items together
    assert len(batch.user_idx) > 0
    assert torch.equal(trainer.learner.predict_query(batch), ckpt.learner.predict_query(batch))


def test_run_folder_has_config_and_metrics(tiny_split, tmp_path):
    split, _ = tiny_split
    Trainer(config(epochs=2), split=split, run_dir=tmp_path / "run").fit()
    run = tmp_path / "run"
    assert RunConfig.from_toml(run / "config.toml") == config(epochs=2)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [-1, 0, 1]
    assert all(r["val_mae"] == r["val_mae"] for r in records)  # finite, not NaN


def test_early_stopping_keeps_the_best_validation_epoch(tiny_split, tmp_path):
    split, _ = tiny_split
    cfg = config(epochs=30).override("train", patience=2).override("meta", outer_lr=0.05)
    result = Trainer(cfg, split=split, run_dir=tmp_path / "run").fit()
    maes = [r["val_mae"] for r in result.history]
    assert result.best_val_mae == pytest.approx(min(maes))
    assert result.epochs_run <= 30
    best = load_checkpoint(tmp_path / "run" / "best")
    assert best.state["best_epoch"] == result.best_epoch
    # the saved best model, evaluated afresh, scores what was recorded for it (and the last one does not)
    from metarec.meta.trainer import validation_mae

    assert validation_mae(best.learner, split)["val_mae"] == pytest.approx(result.best_val_mae, rel=1e-9)
    if result.best_epoch < result.epochs_run - 1:
        last = load_checkpoint(tmp_path / "run" / "last")
        assert validation_mae(last.learner, split)["val_mae"] == pytest.approx(maes[-1], rel=1e-9)


def test_resample_query_trains_on_fresh_partitions_reproducibly(tiny_split):
    """resample_query: same seed, same result; and a different result from the fixed partition."""
    split, _ = tiny_split
    fixed = Trainer(config(epochs=3), split=split)
    fixed.fit()
    runs = []
    for _ in range(2):
        t = Trainer(config(epochs=3).override("train", resample_query=True), split=split)
        t.fit()
        runs.append(params(t))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], params(fixed)[k]) for k in runs[0])


def test_global_model_is_plain_training_fine_tuned_with_the_meta_learners_budget(tiny_split):
    from metarec.meta.global_model import global_config, train_global_model

    split, _ = tiny_split
    cfg = config(epochs=3).override("train", resample_query=True).override("meta", inner_steps=2)
    plain = global_config(cfg)
    assert (plain.meta.algorithm, plain.meta.inner_steps, plain.meta.test_steps) == ("fomaml", 0, 2)
    assert plain.train.resample_query is False  # its tasks' query is already every rating
    trainer = train_global_model(cfg, split)
    # trained on every meta-train rating: each task's query holds its support too
    assert (trainer.split.meta_train.query_sizes == split.meta_train.query_sizes + split.meta_train.support_sizes).all()
    learner = trainer.restore_best()
    val = split.validation["new_users"]
    tuned, untuned = learner.evaluate(val), learner.evaluate(val, steps=0)
    assert tuned["mae"] != untuned["mae"]  # fine-tuning on the support set changes the predictions


@pytest.mark.parametrize("average", [0.0, 0.8])
def test_global_model_without_fine_tuning_has_its_own_epoch_chosen_on_validation(tiny_split, average):
    """The global model is scored with and without fine-tuning; each use keeps the epoch that is best on
    validation users for it (with averaging: the fine-tuned use on the average, the unadapted on the raw
    parameters, each kept as it was scored)."""
    import numpy as np

    from metarec.eval.benchmark import BenchmarkConfig, MetaMethod
    from metarec.meta.global_model import train_global_model
    from metarec.meta.trainer import validation_mae

    split, _ = tiny_split
    cfg = config(epochs=4).override("train", patience=10, average_decay=average)
    trainer = train_global_model(cfg, split)
    unadapted = [r["val_unadapted_mae"] for r in trainer.history]
    assert len(unadapted) == 4 and trainer.state["best_unadapted_epoch"] == int(np.argmin(unadapted))
    assert trainer.state["best_epoch"] == int(np.argmin([r["val_mae"] for r in trainer.history]))
    learner = trainer.restore_best()
    assert validation_mae(learner, trainer.split)["val_mae"] == pytest.approx(trainer.state["best_val_mae"])
    named = learner.named_meta_parameters()
    with torch.no_grad():
        for n, value in trainer.best_unadapted_params.items():
            named[n].copy_(value)
    assert validation_mae(learner, trainer.split, adapted=False)["val_mae"] == pytest.approx(min(unadapted))

    # the benchmark's global model scores each variant with its own parameters and puts the learner back
    from metarec.meta.trainer import without_support

    method = MetaMethod("global-neural", BenchmarkConfig(run=cfg).run, global_model=True, user_history=False)
    method.fit(split)
    assert method.unadapted_params is not None
    learner, val = method.learner, split.validation["new_users"]
    own = {n: p.detach().clone() for n, p in learner.named_meta_parameters().items()}
    # another epoch's parameters stand in (here both uses chose the same epoch): a known shift
    method.unadapted_params = {n: p + 0.05 for n, p in own.items()}
    fine_tuned = method.predict("global-neural-ft", val)
    plain = method.predict("global-neural", val)
    assert all(torch.equal(p, own[n]) for n, p in learner.named_meta_parameters().items())  # put back
    assert np.array_equal(method.predict("global-neural-ft", val), fine_tuned)
    unshifted = learner.predict_tasks(without_support(val, learner), 0, 512)
    named = learner.named_meta_parameters()
    with torch.no_grad():
        for n, value in method.unadapted_params.items():
            named[n].copy_(value)
    shifted = learner.predict_tasks(without_support(val, learner), 0, 512)
    with torch.no_grad():
        for n, value in own.items():
            named[n].copy_(value)
    assert np.array_equal(plain, shifted) and not np.array_equal(plain, unshifted)
    items = np.arange(1, 20)
    scores = method.catalogue_scores("global-neural", val, items)
    assert all(torch.equal(p, own[n]) for n, p in learner.named_meta_parameters().items())
    assert not np.allclose(scores, method.catalogue_scores("global-neural-ft", without_support(val, learner), items))


def test_benchmark_meta_method_keeps_the_inner_lr_best_on_validation(tiny_split):
    from metarec.eval.benchmark import MetaMethod

    split, _ = tiny_split
    method = MetaMethod("reptile", config("feature-mlp", "reptile", epochs=2), inner_lr_grid=(0.05, 5.0))
    method.fit(split)
    grid = [r for r in method.history if "candidate" in r]
    assert [r["candidate"] for r in grid] == ["inner_lr=0.05", "inner_lr=5"]
    best = min((r for r in grid if not r["diverges_with_one_rating"]), key=lambda r: r["val_mae"])
    assert method.config.meta.inner_lr == float(best["candidate"].split("=")[1])
    from metarec.meta.trainer import validation_mae

    assert validation_mae(method.learner, split)["val_mae"] == pytest.approx(best["val_mae"], abs=1e-6)


def test_benchmark_meta_method_folds_a_known_user_in_from_their_history(tiny_split, monkeypatch):
    import contextlib

    import numpy as np

    from metarec.eval.benchmark import MetaMethod

    split, _ = tiny_split
    method = MetaMethod("maml", config("neural-cf", epochs=1).override("model", fold_in=True))
    method.fit(split)
    # meta-train users with 3 support ratings (a warm task's support is all that training saw: keep 3)
    warm, new = split.test["warm"], split.test["new_users"]
    rank = np.arange(len(warm.support_item)) - np.repeat(warm.support_ptr[:-1], warm.support_sizes)
    warm = warm.with_support(rank < 3)
    assert set(warm.user_idx) <= set(split.meta_train.user_idx) and not set(new.user_idx) & set(split.meta_train.user_idx)
    with_history = method.predict("maml", warm)
    assert np.allclose(with_history, method.learner.predict_tasks(warm.with_history(split.meta_train)))
    assert not np.allclose(with_history, method.learner.predict_tasks(warm))
    assert np.array_equal(method.predict("maml", new), method.learner.predict_tasks(new))
    method.user_history = False
    assert np.array_equal(method.predict("maml", warm), method.learner.predict_tasks(warm))
    # history_max_new_support counts support ratings of new items only: warm tasks (none) keep the history
    method.user_history, method.history_max_new_support, method._last_history = True, 1, None
    assert np.allclose(method.predict("maml", warm), with_history)
    # ... and a task whose support holds that many new items goes without it
    method.known_items = np.zeros_like(method.known_items)  # every support item counts as new
    for limit, history_kept in ((3, False), (4, True)):
        method.history_max_new_support, method._last_history = limit, None
        expected = with_history if history_kept else method.learner.predict_tasks(warm)
        assert np.allclose(method.predict("maml", warm), expected)
    # history as the prior: in tasks with new-item support (here every task), the history rows are flagged
    method.history_max_new_support, method.history_as_prior, method._last_history = None, True, None
    as_prior = method.predict("maml", warm)
    assert method._tasks("maml", warm).support_prior.sum() == (method._tasks("maml", warm).support_sizes - 3).sum()
    assert np.allclose(as_prior, method.learner.predict_tasks(
        warm.with_history(split.meta_train, as_prior=np.ones(len(warm), bool))))
    assert not np.allclose(as_prior, with_history)
    # the rule is for strict scoring: the pooled item fold-in gives every task the history
    import metarec.eval.benchmark.meta_method as meta_method
    import metarec.eval.benchmark.methods as benchmark_methods

    seen = []

    def spy(learner, tasks, *args):
        seen.append(tasks.support_sizes.copy())
        return contextlib.nullcontext()

    method.history_max_new_support, method.history_as_prior, method._last_history = 3, False, None
    method.pool_penalty = np.ones(1)
    monkeypatch.setattr(meta_method, "new_items_folded_in", spy)
    with method.pooled("maml", warm):
        assert np.allclose(method.predict("maml", warm), with_history)
    assert seen[0].tolist() == warm.with_history(split.meta_train).support_sizes.tolist()
    assert np.allclose(method.predict("maml", warm), method.learner.predict_tasks(warm))  # strict again
    method.history_max_new_support, method.history_as_prior, method._last_history = None, True, None  # pooled: never as the prior
    with method.pooled("maml", warm):
        assert np.allclose(method.predict("maml", warm), with_history)
    assert np.allclose(method.predict("maml", warm), as_prior)
    # ... and the global model, fine-tuned per user, has no rule
    bench = benchmark_methods.BenchmarkConfig(history_max_new_support=3)
    assert benchmark_methods.make_method("global-neural", bench).history_max_new_support is None
    assert benchmark_methods.make_method("maml", bench).history_max_new_support == 3
    assert benchmark_methods.make_method("maml", bench).history_as_prior and not benchmark_methods.make_method("global-neural", bench).history_as_prior
    assert not benchmark_methods.make_method("maml", benchmark_methods.BenchmarkConfig(history_as_prior=False)).history_as_prior


def test_average_decay_selects_the_running_average_and_trains_on_from_the_raw_parameters(tiny_split, tmp_path):
    """train.average_decay: after every meta-step avg <- d * avg + (1 - d) * phi, from the initialisation;
    validation and "best" see the average, the next epoch goes on from the raw parameters."""
    split, _ = tiny_split
    decay = 0.8
    cfg = config(epochs=2).override("train", average_decay=decay, patience=10)
    trainer = Trainer(cfg, split=split, run_dir=tmp_path / "run")
    expected = params(trainer)
    raw_after_steps: list[dict[str, torch.Tensor]] = []
    step = trainer.learner.meta_step

    def recording_step(*args, **kwargs):
        loss = step(*args, **kwargs)
        raw_after_steps.append(params(trainer))
        return loss

    trainer.learner.meta_step = recording_step
    result = trainer.fit()
    steps_per_epoch = len(raw_after_steps) // 2
    at_epoch_end = []
    for raw in raw_after_steps:
        expected = {k: decay * expected[k] + (1 - decay) * raw[k] for k in expected}
        at_epoch_end.append(expected)
    assert steps_per_epoch > 1 and len(raw_after_steps) == 2 * steps_per_epoch
    assert all(torch.allclose(trainer.average[k], expected[k], atol=1e-6) for k in expected)
    last_raw = raw_after_steps[-1]
    assert all(torch.equal(params(trainer)[k], last_raw[k]) for k in last_raw), "training must go on from the raw parameters"
    assert not all(torch.allclose(expected[k], last_raw[k]) for k in last_raw)
    selected = at_epoch_end[(result.best_epoch + 1) * steps_per_epoch - 1]  # the average at the best epoch's end
    assert all(torch.allclose(trainer.best_params[k], selected[k], atol=1e-6) for k in expected)
    best = load_checkpoint(tmp_path / "run" / "best")
    assert all(torch.equal(best.learner.named_meta_parameters()[k], trainer.best_params[k]) for k in expected)
    assert (tmp_path / "run" / "last" / "average.safetensors").exists()
    assert not (tmp_path / "run" / "best" / "average.safetensors").exists()
    trainer.restore_best()
    batch = split.validation["new_users"].packed()
    assert torch.equal(trainer.learner.predict_query(batch), best.learner.predict_query(batch))


def test_average_decay_must_be_below_one():
    from metarec.errors import ConfigError

    with pytest.raises(ConfigError, match="average_decay"):
        config().override("train", average_decay=1.0)


def test_global_model_stops_only_when_neither_use_improves(tiny_split, monkeypatch):
    """With both uses selected, patience runs out only after ``patience`` epochs in which neither the
    fine-tuned nor the unadapted validation MAE improved: scripted validation scores, a known stop."""
    import metarec.meta.trainer as trainer_module
    from metarec.meta.global_model import train_global_model

    scripted = {True: iter([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99]),   # fine-tuned: best at epoch 1
                False: iter([2.0, 1.9, 1.8, 1.85, 1.86, 1.87, 1.88])}   # unadapted: best at epoch 2

    def validation(learner, split, batch_size=512, adapted=True, **kwargs):
        return {"val_mae": next(scripted[adapted])}

    monkeypatch.setattr(trainer_module, "validation_mae", validation)
    split, _ = tiny_split
    trainer = train_global_model(config("neural-cf", epochs=7).override("train", patience=2), split)
    # epoch 2: only the unadapted MAE improves (patience restarts); epochs 3 and 4: neither -> stop after 5.
    # The fine-tuned MAE alone would have stopped after epoch 3 (4 epochs).
    assert trainer.state["epoch"] == 5 == len(trainer.history)
    assert trainer.state["best_epoch"] == 1 and trainer.state["best_unadapted_epoch"] == 2


def test_fit_restores_the_callers_thread_count(tiny_trained):
    """``train.threads`` holds while the Trainer trains; a library call leaves its process as it found it
    (the command line sets the count for its whole command instead)."""
    import torch

    from metarec.meta.run import RunConfig
    from metarec.meta.trainer import Trainer

    split, _ = tiny_trained
    previous = torch.get_num_threads()
    seen: list[int] = []
    try:
        torch.set_num_threads(2)
        config = RunConfig.preset("neural-cf", "maml").override("train", epochs=1, threads=1)
        trainer = Trainer(config, split=split, progress=lambda stage, done, total: seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 2  # building it changes nothing
        trainer.fit()
        assert seen and set(seen) == {1}  # one thread while it trained
        assert torch.get_num_threads() == 2  # and the caller's count after
    finally:
        torch.set_num_threads(previous)
