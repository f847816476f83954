"""The few-shot machinery: short meta-train supports, the K-curve selection, the support-size dependent
penalty, the running average by epochs, and the automatic recipe - each against a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metarec.errors import ConfigError
from metarec.meta.recipe import (HISTORY_SCALES, SEARCH_SPACE, apply_setting, choose_recipe, config_over_recipe,
                                 explicit_settings, few_shot_parts, item_id_mode, preset, recipe_base)
from metarec.meta.run import RunConfig, TrainConfig
from metarec.meta.trainer import Trainer, validation_mae
from metarec.models import Context
from metarec.tasks.selection import validation_curve, validation_score
from test_fold_in import fold_in_model  # the small fold-in model of the fold-in tests


def small(config: RunConfig, epochs: int = 2) -> RunConfig:
    return (config.override("model", embedding_size=8, hidden=[16], factors=4)
            .override("train", epochs=epochs, patience=2, threads=1))


# ---------------------------------------------------------------------- configuration
def test_train_config_checks_the_few_shot_settings():
    with pytest.raises(ConfigError, match="short_support_fraction"):
        TrainConfig(short_support_fraction=1.5)
    with pytest.raises(ConfigError, match="short_support_max"):
        TrainConfig(short_support_max=0)
    with pytest.raises(ConfigError, match="select_on"):
        TrainConfig(select_on="median")
    with pytest.raises(ConfigError, match="selection_support_sizes"):
        TrainConfig(selection_support_sizes=(0, 3))
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(average_epochs=3.0, average_decay=0.99)
    cfg = RunConfig.from_dict({"train": {"selection_support_sizes": [1, 2]}})
    assert cfg.train.selection_support_sizes == (1, 2)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # round trip through the TOML form


def test_recipe_base_is_package_data_and_toml_values_override_it(tmp_path):
    base = recipe_base()
    assert base.model.kind == "neural-cf" and base.model.fold_in and base.train.select_on == "k-curve"
    assert base.train.short_support_fraction > 0 and base.model.penalty_by_support_size
    values = {"meta": {"outer_lr": 0.02}, "train": {"average_decay": 0.9, "epochs": 4},
              "model": {"item_id_residual": True}}
    cfg, fixed = config_over_recipe(values)
    assert cfg.meta.outer_lr == 0.02 and cfg.train.average_decay == 0.9 and cfg.train.average_epochs == 0
    assert cfg.model.fold_in and cfg.train.epochs == 4  # the rest is the recipe's
    assert set(fixed) == {"meta.outer_lr", "model.item_ids"}
    assert explicit_settings({}) == ()
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("no-such-preset")
    assert preset("maml-gd").meta.inner_steps > 0 and preset("maml-gd").model.kind == "feature-mlp"


def test_item_id_modes_set_both_fields():
    cfg = recipe_base()
    for mode in ("input", "residual", "none"):
        assert item_id_mode(apply_setting(cfg, "model", "item_ids", mode)) == mode
    with pytest.raises(ConfigError, match="item_ids"):
        apply_setting(cfg, "model", "item_ids", "sideways")


def test_few_shot_parts_switch_the_short_supports_and_the_penalty_slope_together():
    base = recipe_base()
    assert few_shot_parts(base) == "on"
    off = apply_setting(base, "train", "few_shot_parts", "off")
    assert few_shot_parts(off) == "off"
    assert off.train.short_support_fraction == 0.0 and not off.model.penalty_by_support_size
    assert off.model.penalty_rate == 1.0
    assert off.meta == base.meta and off.train.epochs == base.train.epochs  # nothing else moves
    assert apply_setting(off, "train", "few_shot_parts", "on") == base  # back to the base's values
    with pytest.raises(ConfigError, match="few_shot_parts"):
        apply_setting(base, "train", "few_shot_parts", "half")
    # a TOML that sets any of the fields fixes the dimension (the search leaves the file's values alone)
    assert explicit_settings({"model": {"penalty_rate": 3.0}}) == ("train.few_shot_parts",)
    assert explicit_settings({"train": {"short_support_fraction": 0.2}}) == ("train.few_shot_parts",)
    assert explicit_settings({"train": {"epochs": 3}}) == ()


# ---------------------------------------------------------------------- model
def test_penalty_rate_and_support_size_slope(tiny_split):
    model = fold_in_model(tiny_split, penalty_rate=10.0, penalty_by_support_size=True).eval()
    w = model.head["log_reg"].weight[0]
    assert torch.allclose(torch.exp(10.0 * w), torch.full_like(w, math.e))  # starts at e, whatever the rate
    with torch.no_grad():
        model.head["log_reg_slope"].weight.fill_(0.05)
    mask = torch.tensor([[1.0, 1, 1, 0], [1.0, 0, 0, 0]], dtype=torch.float64)
    reg = model.penalty(mask)
    expected = torch.exp(10.0 * (w + 0.05 * torch.log1p(mask.sum(-1, keepdim=True))))
    torch.testing.assert_close(reg, expected)
    assert reg.shape == (2, model.factors + 1) and bool((reg[0] > reg[1]).all())  # grows with the support


def test_support_size_penalty_solves_the_ridge_problem_of_its_size(tiny_split):
    model = fold_in_model(tiny_split, penalty_by_support_size=True).eval()
    with torch.no_grad():
        model.head["log_reg"].weight.normal_()
        model.head["log_reg_slope"].weight.fill_(-0.3)
    user = torch.randn(model.user_dim, dtype=torch.float64)
    support, query = model.embed_items(torch.arange(6)), model.embed_items(torch.arange(6, 9))
    rating = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.float64)
    with torch.no_grad():
        pred = model.score(user, query, Context(support, rating, mask)).numpy()
        prior_q, prior_s = model.score(user, query).numpy(), model.score(user, support).numpy()
    f = model.factors
    z = np.c_[support[:4, :f].detach().numpy(), np.ones(4)]
    reg = np.exp(model.head["log_reg"].weight[0].detach().numpy() - 0.3 * np.log1p(4))
    delta = np.linalg.solve(z.T @ z + np.diag(reg), z.T @ (rating.numpy()[:4] - prior_s[:4]))
    np.testing.assert_allclose(pred, prior_q + np.c_[query[:, :f].detach().numpy(), np.ones(3)] @ delta, atol=1e-9)


# ---------------------------------------------------------------------- training
def test_short_supports_reach_the_meta_batches(tiny_split, monkeypatch):
    """Every epoch, about the configured fraction of meta-train tasks have 1..max support ratings."""
    split, _ = tiny_split
    seen = []
    from metarec.meta import learner as learner_module

    original = learner_module.MetaLearner.meta_step

    def spy(self, batch, **kwargs):
        seen.append(batch.support_mask.sum(1).numpy())
        return original(self, batch, **kwargs)

    monkeypatch.setattr(learner_module.MetaLearner, "meta_step", spy)
    cfg = small(recipe_base(), epochs=1).override("train", short_support_fraction=1.0, short_support_max=3)
    Trainer(cfg, split=split).fit()
    sizes = np.concatenate(seen)
    assert len(sizes) == len(split.meta_train) and sizes.max() <= 3 and sizes.min() >= 1
    seen.clear()
    Trainer(cfg.override("train", short_support_fraction=0.0), split=split).fit()
    assert np.array_equal(np.sort(np.concatenate(seen)), np.sort(split.meta_train.support_sizes.astype(float)))


def test_k_curve_selection_scores_the_mean_of_the_curve(tiny_split):
    split, _ = tiny_split
    trainer = Trainer(small(recipe_base(), epochs=2), split=split)
    trainer.fit()
    learner = trainer.restore_best()
    scores = validation_mae(learner, split, support_sizes=(1, 3))
    # by hand: per point, the mean over validation scenarios of that scenario's MAE; then the mean
    points = []
    for cut in [split.validation, split.validation_with_support_size(1), split.validation_with_support_size(3)]:
        maes = []
        for tasks in cut.values():
            if len(tasks):
                maes.append(float(np.abs(learner.predict_tasks(tasks) - tasks.query_rating).mean()))
        points.append(np.mean(maes))
    assert scores["val_mae"] == pytest.approx(np.mean(points), abs=1e-6)
    assert scores["val_k1_mae"] == pytest.approx(points[1], abs=1e-6)
    curve = validation_curve(lambda t: float(np.abs(learner.predict_tasks(t) - t.query_rating).mean()), split, (1, 3))
    assert list(curve) == ["all", "k1", "k3"]
    # the trainer selected on that score: its best equals the score of the restored parameters
    assert trainer.state["best_val_mae"] == pytest.approx(
        validation_mae(learner, split, support_sizes=trainer.selection_support_sizes)["val_mae"], abs=1e-6)
    # the cut validation tasks are cached: every candidate is scored on the same draws
    assert split.validation_with_support_size(1) is split.validation_with_support_size(1)


def test_average_epochs_sets_the_decay_from_the_number_of_meta_batches(tiny_split):
    split, _ = tiny_split
    cfg = small(recipe_base()).override("train", average_epochs=2.0)
    trainer = Trainer(cfg, split=split)
    n_batches = -(-len(split.meta_train) // cfg.meta.meta_batch_size)
    assert trainer.average_decay == pytest.approx(1 - 1 / (2.0 * n_batches))
    assert Trainer(cfg.override("train", average_epochs=0.0, average_decay=0.5), split=split).average_decay == 0.5


def test_validation_score_known_values(tiny_split_new_items):
    split, _ = tiny_split_new_items
    assert all(len(t) for t in split.validation.values())
    # a constant MAE per scenario: the score is that constant whatever the weights
    assert validation_score(lambda tasks: 0.7, split, (1, 3)) == pytest.approx(0.7)
    # new users 0.6, both new 1.0: each point is their mean 0.8, not weighted by ratings
    value = validation_score(lambda t: 0.6 if "new_items" not in t.name else 1.0, split, (1,))
    assert value == pytest.approx(0.8)


# ---------------------------------------------------------------------- the recipe
@pytest.mark.slow
def test_recipe_search_is_greedy_on_validation_and_keeps_the_chosen_model(tiny_split_new_items):
    split, _ = tiny_split_new_items
    base = small(recipe_base(), epochs=1)
    result = choose_recipe(split, base)
    # 3 learning rates, 2 more item-id modes, the id dropout where ids exist, the other loss, few-shot parts off
    dims = [d for d in SEARCH_SPACE]
    assert len(result.trials) in (sum(len(v) - 1 for _, _, v in dims) + 1, sum(len(v) - 1 for _, _, v in dims))
    best = min(result.trials, key=lambda t: t.val_score)
    assert {k: v for k, v in best.settings.items()} == {f"{s}.{k}": _setting(result.config, s, k) for s, k, _ in dims}
    # the kept trainer is the best trial's: its selected score is the best score
    assert result.trainer.state["best_val_mae"] == pytest.approx(best.val_score)
    # greedy: the first stage tried every learning rate from the base's other settings
    first = result.trials[:3]
    assert [t.settings["meta.outer_lr"] for t in first] == list(SEARCH_SPACE[0][2])
    assert len({tuple(t.settings.items()) for t in result.trials}) == len(result.trials)  # nothing trained twice
    record = result.to_dict()
    assert record["chosen"]["meta.outer_lr"] == best.settings["meta.outer_lr"] and len(record["trials"]) == len(result.trials)
    # fixed settings are not searched
    fixed = choose_recipe(split, base, fixed=("meta.outer_lr", "model.item_ids", "model.item_id_dropout"))
    assert len(fixed.trials) == 3
    assert all(t.settings.keys() == {"meta.query_loss", "train.few_shot_parts"} for t in fixed.trials)
    # the last stage switches both few-shot parts off from the best so far
    last = fixed.trials[-1].settings
    assert last["train.few_shot_parts"] == "off" and all(t.settings["train.few_shot_parts"] == "on"
                                                          for t in fixed.trials[:-1])


def _setting(config, section, key):
    from metarec.meta.recipe import setting_of

    return setting_of(config, section, key)


def test_history_scale_is_chosen_on_heavy_or_validation_users_new_items(tiny_split_new_items, monkeypatch):
    """The multiple with the lowest MAE on the heavy users' unused new-item tasks is kept, in the model
    and the config; without such tasks, on the validation users' new-item ratings."""
    from metarec.meta import recipe
    from metarec.tasks.split import ColdStartSplit

    split, _ = tiny_split_new_items
    trainer = Trainer(small(recipe_base(), epochs=1), split=split)
    trainer.fit()
    assert split.heavy_new_item_tasks() is None  # no user above max_ratings in the tiny data
    # so the validation users' new-item ratings stand in, their old-item validation ratings as the history
    source, stand_in = split.history_choice_tasks()
    assert source == "validation_users" and stand_in.support_prior is not None and stand_in.support_prior.any()
    # too few tasks choose nothing: the configured multiple stays
    configured = trainer.learner.model.history_penalty_scale
    assert recipe.choose_history_scale(trainer, split, min_tasks=len(stand_in) + 1) == {}
    assert trainer.learner.model.history_penalty_scale == configured
    scores = recipe.choose_history_scale(trainer, split, min_tasks=1)
    assert set(scores) == set(HISTORY_SCALES)
    assert trainer.learner.model.history_penalty_scale == min(scores, key=scores.get)
    # each score is that multiple's MAE on those tasks
    learner = trainer.restore_best()
    learner.model.history_penalty_scale = HISTORY_SCALES[-1]
    expected = float(np.abs(learner.predict_tasks(stand_in) - stand_in.query_rating).mean())
    assert scores[HISTORY_SCALES[-1]] == pytest.approx(expected)
    # heavy users' tasks come first where there are any (here: pretend the validation users' are)
    tasks = split.validation["new_users_new_items"]
    monkeypatch.setattr(ColdStartSplit, "heavy_new_item_tasks", lambda self, seed=0: tasks)
    assert split.history_choice_tasks()[0] == "heavy_users"
    scores = recipe.choose_history_scale(trainer, split, min_tasks=1)
    assert set(scores) == set(HISTORY_SCALES)
    assert trainer.learner.model.history_penalty_scale == min(scores, key=scores.get)

    # a multiple whose predictions are not finite is never chosen, even though NaN compares as "smallest"
    learner = trainer.restore_best()
    honest = type(learner).predict_tasks

    def nan_at_the_first_scale(self, tasks_, *args, **kwargs):
        pred = honest(self, tasks_, *args, **kwargs)
        return pred * np.nan if self.model.history_penalty_scale == HISTORY_SCALES[0] else pred

    monkeypatch.setattr(type(learner), "predict_tasks", nan_at_the_first_scale)
    scores = recipe.choose_history_scale(trainer, split, min_tasks=1)
    assert math.isnan(scores[HISTORY_SCALES[0]])
    finite = {k: v for k, v in scores.items() if not math.isnan(v)}
    assert trainer.learner.model.history_penalty_scale == min(finite, key=finite.get) != HISTORY_SCALES[0]


@pytest.mark.slow
def test_meta_learning_beats_the_bias_fold_in_with_one_rating():
    """Known answer: the synthetic users' tastes follow their attributes, which a bias fold-in cannot see;
    with one rating the recipe's meta-learner must be clearly better than the best bias fold-in."""
    from metarec.data.synthetic import SyntheticConfig, make_synthetic
    from metarec.eval.benchmark import BenchmarkConfig, make_method
    from metarec.tasks import make_split

    synthetic = make_synthetic(SyntheticConfig(seed=0))
    cfg = recipe_base().override("train", epochs=15, seed=0).override("meta", outer_lr=0.01)
    split = make_split(synthetic.dataset, cfg.split)
    trainer = Trainer(cfg, split=split)
    trainer.fit()
    learner = trainer.restore_best()
    bias = make_method("bias", BenchmarkConfig(run=cfg, seeds=(0,)))
    bias.fit(split)
    tasks = split.with_support_size(1).test["new_users"]
    meta_mae = float(np.abs(learner.predict_tasks(tasks) - tasks.query_rating).mean())
    bias_mae = float(np.abs(bias.predict("bias", tasks) - tasks.query_rating).mean())
    assert meta_mae < bias_mae - 0.02, (meta_mae, bias_mae)
