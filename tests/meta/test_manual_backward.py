"""The hand-written one-step meta-gradient (FeatureMLP.one_step_meta_gradient, used by the engine's fast
path for K = 1 with a scalar inner rate) equals autograd's through the same batched head, and the
direct fused Adam step equals torch.optim.Adam's."""

from __future__ import annotations

import copy

import pytest
import torch

from metarec.meta.engine import MetaLearner
from test_equivalence import make_learner, relative_difference


def _both(learner: MetaLearner, batch, seed: int | None = None) -> tuple[dict, float, dict, float]:
    """(hand-written gradients, loss, autograd's gradients, loss); ``seed``: support mini-batches."""
    assert learner._manual and learner.manual_backward
    gen = (lambda: None) if seed is None else (lambda: torch.Generator().manual_seed(seed))  # noqa: E731
    manual, manual_loss = learner.meta_gradients(batch, generator=gen())
    learner.manual_backward = False
    try:
        auto, auto_loss = learner.meta_gradients(batch, generator=gen())
    finally:
        learner.manual_backward = True
    return manual, manual_loss, auto, auto_loss


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_manual_equals_autograd_on_random_heads(tiny_split, algorithm, seed):
    """Random head weights and ratings (many ReLUs on both sides of 0), a large inner rate (the
    second-order terms matter), float64: the two gradients agree to rounding."""
    learner, batch = make_learner(tiny_split, "feature-mlp", algorithm=algorithm, inner_steps=1, inner_lr=0.7)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    batch.support_rating.copy_(torch.randint(1, 6, batch.support_rating.shape, generator=gen).to(batch.support_rating.dtype))
    manual, manual_loss, auto, auto_loss = _both(learner, batch)
    assert relative_difference(manual, auto) <= 1e-10
    assert manual_loss == pytest.approx(auto_loss, rel=1e-12)
    head = [n for n in learner.adapted]
    assert all(float(manual[n].abs().max()) > 0 for n in head)
    emb = [n for n in manual if n not in head]
    assert any(float(manual[n].abs().max()) > 0 for n in emb)  # the embeddings get their share


def test_manual_path_second_order_terms_are_real(tiny_split):
    learner2, batch = make_learner(tiny_split, "feature-mlp", algorithm="maml", inner_steps=1, inner_lr=0.7)
    learner1, _ = make_learner(tiny_split, "feature-mlp", algorithm="fomaml", inner_steps=1, inner_lr=0.7)
    assert relative_difference(learner2.meta_gradients(batch)[0], learner1.meta_gradients(batch)[0]) > 1e-3


def test_manual_path_with_support_minibatches_and_float32(tiny_split):
    learner, batch = make_learner(tiny_split, "feature-mlp", dtype=torch.float32, algorithm="maml", inner_steps=1,
                                  support_batch_size=4)
    manual, _, auto, _ = _both(learner, batch, seed=3)
    assert relative_difference(manual, auto) <= 1e-5


@pytest.mark.parametrize("algorithm,steps", [("maml", 2), ("metasgd", 1), ("reptile", 1)])
def test_manual_path_only_where_it_applies(tiny_split, algorithm, steps):
    learner, _ = make_learner(tiny_split, "feature-mlp", algorithm=algorithm, inner_steps=steps)
    assert not learner._manual


@pytest.mark.parametrize("clip", [10.0, 1e-3, None])
def test_direct_fused_adam_equals_optimizer_step(tiny_split, clip):
    """meta_step's direct fused Adam call (clip factor included) updates exactly as clip_grad_norm_ +
    torch.optim.Adam.step would (clip 1e-3: the clipping branch is taken)."""
    a, batch = make_learner(tiny_split, "feature-mlp", dtype=torch.float32, algorithm="maml", inner_steps=1,
                            grad_clip=clip)
    b = copy.deepcopy(a)
    for _ in range(3):
        a.meta_step(batch)  # the first step initialises Adam's state the usual way, then the direct call
        grads, _ = b.meta_gradients(batch)
        named = b.named_meta_parameters()
        for n, p in named.items():
            p.grad = grads[n]
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(named.values()), clip)
        b.optimizer.step()
        b.optimizer.zero_grad(set_to_none=True)
    for (n, p), q in zip(a.named_meta_parameters().items(), b.named_meta_parameters().values()):
        assert torch.allclose(p, q, rtol=0, atol=1e-7), n
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(float(sa[i]["step"]) == float(sb[i]["step"]) == 3 for i in sa)
