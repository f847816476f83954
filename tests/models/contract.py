"""The contract every :class:`~metarec.models.base.RatingModel` keeps, as a mixin of tests.

Why: the meta-learner, the checkpoint and the server treat every model alike - parameters as a dict
split into ``head`` and ``embeddings``, the three stages, a state dict that round-trips through
safetensors. A model's test file subclasses :class:`ModelContract` and provides ``make_model``: a
callable ``(space, *, seed, rating_scale) -> RatingModel`` on the tiny data of ``conftest.py``.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.func import functional_call

from metarec.models.base import Context, RatingModel
from metarec.models.config import ModelConfig, build_model
from metarec.tasks.features import FeatureSpace

MakeModel = Callable[..., RatingModel]
USERS = torch.tensor([0, 3, 7])
ITEMS = torch.tensor([[1, 2, 5, 24], [0, 9, 21, 4], [8, 23, 6, 11]])  # [B, N]: 21-24 are new items
SUPPORT = torch.tensor([[3, 4, 7, 0, 0], [10, 12, 22, 13, 14], [2, 15, 0, 0, 0]])  # [B, S], padded
SUPPORT_MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
SUPPORT_RATING = torch.tensor([[5.0, 1.0, 4.0, 0, 0], [2.0, 3.0, 5.0, 1.0, 4.0], [1.0, 5.0, 0, 0, 0]])


def predict(model: RatingModel, space: FeatureSpace, *, rating_shift: float = 0.0,
            with_context: bool = True) -> torch.Tensor:
    """Predictions [B, N] for ``USERS`` x ``ITEMS`` through the three stages, as the meta-learner calls
    them; the support context (ratings moved by ``rating_shift``) for every model: one that does not use
    it must ignore it."""
    params = model.params()
    users = space.user_features.select(USERS)
    u = functional_call(model, params, ("users", users.single, users.multi))
    v = functional_call(model, params, ("items", ITEMS))
    context = None
    if with_context:
        support = functional_call(model, params, ("items", SUPPORT))
        context = Context(support, (SUPPORT_RATING + rating_shift) * SUPPORT_MASK, SUPPORT_MASK)
    return functional_call(model, params, ("score", u, v, context))


def model_maker(config: ModelConfig, kind: type[RatingModel]) -> MakeModel:
    """``make_model`` for a model built by ``build_model(config)``, checked to be a ``kind``."""

    def make(space: FeatureSpace, *, seed: int, rating_scale: tuple[float, float]) -> RatingModel:
        model = build_model(config, space.user_encoder, space.item_encoder, space.item_features,
                            known_items=space.known_items, rating_scale=rating_scale, seed=seed)
        assert isinstance(model, kind)
        return model

    return make


class ModelContract:
    """Tests every rating model passes; a subclass provides the ``make_model`` fixture."""

    works_without_user_attributes: bool = True

    @pytest.fixture
    def model(self, make_model: MakeModel, space: FeatureSpace) -> RatingModel:
        return make_model(space, seed=0, rating_scale=(1.0, 5.0)).eval()

    def test_parameter_groups_cover_every_parameter_once(self, model: RatingModel):
        groups = model.parameter_groups()
        names = [n for n, _ in model.named_parameters()]
        assert set(groups) == {"head", "embeddings"}
        assert groups["head"], "the inner loop adapts the head: it cannot be empty"
        assert not set(groups["head"]) & set(groups["embeddings"])
        assert sorted(groups["head"] + groups["embeddings"]) == sorted(names)
        assert all(model.param_group(n) for n in groups["head"])

    def test_params_are_the_named_parameters(self, model: RatingModel):
        params = model.params()
        named = dict(model.named_parameters())
        assert list(params) == list(named)
        assert all(params[n] is named[n] for n in named)

    def test_predictions_are_finite_and_one_per_user_and_item(self, model: RatingModel, space: FeatureSpace):
        for with_context in (True, False):
            pred = predict(model, space, with_context=with_context)
            assert pred.shape == ITEMS.shape
            assert torch.isfinite(pred).all()

    def test_the_support_shapes_predictions_only_if_the_model_says_so(self, model: RatingModel, space: FeatureSpace):
        """``uses_context`` tells the meta-learner to build the support context; a model that ignores it
        must say so, and one that says so must use it."""
        with torch.no_grad():
            same = torch.allclose(predict(model, space), predict(model, space, with_context=False), atol=1e-6)
        assert same != model.uses_context

    def test_one_user_predicts_as_in_a_batch(self, model: RatingModel, space: FeatureSpace):
        """``RatingModel.predict`` (one user, no batch axis) agrees with the batched stages."""
        batch = predict(model, space)
        b = 1
        user = space.user_features.select(USERS[b])
        support = functional_call(model, model.params(), ("items", SUPPORT[b]))
        context = Context(support, SUPPORT_RATING[b] * SUPPORT_MASK[b], SUPPORT_MASK[b])
        one = model.predict(model.params(), user.single, user.multi, ITEMS[b], context)
        assert one.shape == ITEMS[b].shape
        torch.testing.assert_close(one, batch[b], rtol=1e-5, atol=1e-5)

    def test_every_parameter_reaches_a_prediction(self, model: RatingModel, space: FeatureSpace):
        """A parameter no prediction depends on is dead weight the optimiser still carries."""
        params = model.params()
        grads = torch.autograd.grad(predict(model, space).sum(), list(params.values()), allow_unused=True)
        unused = [n for n, g in zip(params, grads) if g is None]
        assert not unused

    def test_rating_scale_is_the_centre_of_the_output(self, make_model: MakeModel, space: FeatureSpace):
        """Moving the scale (and the support ratings) by ``c`` moves every prediction by ``c``; clamped to
        the scale, every prediction lies on it."""
        base = make_model(space, seed=0, rating_scale=(1.0, 5.0)).eval()
        moved = make_model(space, seed=0, rating_scale=(3.0, 7.0)).eval()
        assert moved.rating_scale == (3.0, 7.0)
        with torch.no_grad():
            diff = predict(moved, space, rating_shift=2.0) - predict(base, space)
            torch.testing.assert_close(diff, torch.full_like(diff, 2.0), rtol=0, atol=1e-4)
            low, high = moved.rating_scale
            clamped = (predict(moved, space) * 100).clamp(low, high)  # far outside before clamping
        assert ((clamped >= low) & (clamped <= high)).all()

    def test_same_seed_same_model_other_seed_another(self, make_model: MakeModel, space: FeatureSpace):
        a, b, c = (make_model(space, seed=s, rating_scale=(1.0, 5.0)).eval() for s in (5, 5, 6))
        state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
        assert not all(torch.equal(state_a[k], state_c[k]) for k, _ in a.named_parameters())
        with torch.no_grad():
            assert torch.equal(predict(a, space), predict(b, space))

    def test_state_dict_round_trips_through_safetensors(self, make_model: MakeModel, space: FeatureSpace, tmp_path):
        trained = make_model(space, seed=1, rating_scale=(1.0, 5.0)).eval()
        with torch.no_grad():
            for p in trained.parameters():  # not the initial values: a load that kept them would pass
                p.add_(0.1 * torch.randn_like(p))
        save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "model.safetensors"))
        fresh = make_model(space, seed=2, rating_scale=(1.0, 5.0)).eval()
        with torch.no_grad():
            assert not torch.equal(predict(fresh, space), predict(trained, space))
        fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
        with torch.no_grad():
            assert torch.equal(predict(fresh, space), predict(trained, space))

    def test_works_without_user_attributes(self, make_model: MakeModel, space_without_user_attributes: FeatureSpace):
        if not self.works_without_user_attributes:
            pytest.skip("this model needs user attributes")
        model = make_model(space_without_user_attributes, seed=0, rating_scale=(1.0, 5.0)).eval()
        assert model.user_embedding is None
        pred = predict(model, space_without_user_attributes)
        assert pred.shape == ITEMS.shape and torch.isfinite(pred).all()
        groups = model.parameter_groups()
        assert sorted(groups["head"] + groups["embeddings"]) == sorted(n for n, _ in model.named_parameters())
