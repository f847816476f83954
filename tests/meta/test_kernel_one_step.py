"""The one-step kernel (metarec.meta.kernels.one_step: the meta-gradient of one inner step with a scalar
rate, written out by hand) equals maml.py's (the vmap kernel) and autograd's through the batched head."""

from __future__ import annotations

import pytest
import torch

from metarec.errors import ConfigError
from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
from test_equivalence import make_learner, relative_difference


def _as_kernel(learner: MetaLearner, kernel: str) -> MetaLearner:
    """The same model and settings computed by another kernel."""
    return MetaLearner(learner.model, MetaConfig(**{**vars(learner.config), "kernel": kernel}), learner.user_features)


def _both(learner: MetaLearner, batch, seed: int | None = None, other: str = "vmap") -> tuple[dict, float, dict, float]:
    """(one-step kernel's gradients, loss, ``other`` kernel's, loss); ``seed``: support mini-batches."""
    assert learner.kernel == "one_step"
    gen = (lambda: None) if seed is None else (lambda: torch.Generator().manual_seed(seed))  # noqa: E731
    manual, manual_loss = learner.meta_gradients(batch, generator=gen())
    auto, auto_loss = _as_kernel(learner, other).meta_gradients(batch, generator=gen())
    return manual, manual_loss, auto, auto_loss


@pytest.mark.parametrize("other", ["vmap", "batched_head"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_manual_equals_autograd_on_random_heads(tiny_split, algorithm, seed, other):
    """Random head weights and ratings (many ReLUs on both sides of 0), a large inner rate (the
    second-order terms matter), float64: the two gradients agree to rounding."""
    learner, batch = make_learner(tiny_split, "feature-mlp", algorithm=algorithm, inner_steps=1, inner_lr=0.7)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    batch.support_rating.copy_(torch.randint(1, 6, batch.support_rating.shape, generator=gen).to(batch.support_rating.dtype))
    manual, manual_loss, auto, auto_loss = _both(learner, batch, other=other)
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


def test_auto_chooses_the_one_step_kernel_where_it_applies(tiny_split):
    assert make_learner(tiny_split, "feature-mlp", algorithm="maml", inner_steps=1)[0].kernel == "one_step"
    assert make_learner(tiny_split, "feature-mlp", algorithm="maml", inner_steps=2)[0].kernel == "batched_head"
    assert make_learner(tiny_split, "neural-cf", algorithm="maml", inner_steps=1)[0].kernel == "vmap"


@pytest.mark.parametrize("algorithm,steps", [("maml", 2), ("metasgd", 1), ("reptile", 1)])
def test_one_step_kernel_refused_where_it_does_not_apply(tiny_split, algorithm, steps):
    learner, _ = make_learner(tiny_split, "feature-mlp", algorithm=algorithm, inner_steps=steps)
    assert learner.kernel == "batched_head"
    with pytest.raises(ConfigError, match="one_step.*does not apply"):
        _as_kernel(learner, "one_step")


@pytest.mark.slow  # compiles the kernel (~45 s the first time on a machine, a few seconds once cached)
def test_compiled_kernel_equals_eager(tiny_split):
    """meta.compile_kernel: the same meta-gradients through torch.compile (float32, maml), two batches of
    different support widths through one compilation. Without a working compiler the library falls back to
    eager; the test then skips, saying why, instead of comparing eager with itself."""
    from metarec.meta.kernels import one_step

    learner, batch = make_learner(tiny_split, "feature-mlp", dtype=torch.float32, algorithm="maml", inner_steps=1)
    compiled = MetaLearner(learner.model, MetaConfig(**{**vars(learner.config), "compile_kernel": True}),
                           learner.user_features)
    assert compiled.kernel == "one_step"
    for rows in (torch.arange(6), torch.arange(3)):
        part = batch.select(rows)
        a, loss_a = compiled.meta_gradients(part)
        b, loss_b = learner.meta_gradients(part)
        assert relative_difference(a, b) <= 1e-5
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
    if "failed" in one_step._COMPILED:  # the eager fallback ran: nothing compiled was compared
        pytest.skip(f"torch.compile does not work here: {one_step._COMPILED['failed'].splitlines()[0][:200]}")
    assert "kernel" in one_step._COMPILED


def _attributes_only(tiny_split, algorithm: str) -> tuple[MetaLearner, object]:
    """A FeatureMLP without item id vectors: every parameter outside the head is an attribute table, so the
    one-step kernel writes the embeddings' backward out too (no autograd at all)."""
    from metarec.meta.kernels import one_step
    from metarec.models import ModelConfig, build_model

    learner, batch = make_learner(tiny_split, "feature-mlp", algorithm=algorithm, inner_steps=1, inner_lr=0.7)
    split, feats = tiny_split
    model = build_model(ModelConfig(kind="feature-mlp", embedding_size=8, hidden=(16, 16)), feats.user_encoder,
                        feats.item_encoder, feats.item_features, known_items=feats.known_items,
                        rating_scale=(1.0, 5.0), seed=3).double()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    learner = MetaLearner(model, learner.config, feats.user_features)
    assert learner.kernel == "one_step"
    assert one_step.hand_embeddings(model, learner._params, learner.adapted) is not None
    return learner, batch


@pytest.mark.parametrize("other", ["vmap", "batched_head"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_hand_written_embedding_backward_equals_autograd(tiny_split, algorithm, other):
    learner, batch = _attributes_only(tiny_split, algorithm)
    manual, manual_loss, auto, auto_loss = _both(learner, batch, other=other)
    assert relative_difference(manual, auto) <= 1e-10
    assert manual_loss == pytest.approx(auto_loss, rel=1e-12)
    tables = [n for n in manual if n not in learner.adapted]
    assert tables and all(float(manual[n].abs().max()) > 0 for n in tables)


def test_hand_written_embedding_backward_on_a_share_of_the_tasks(tiny_split):
    """A distributed rank's share (``rows``): the other tasks' users and items get no gradient."""
    learner, batch = _attributes_only(tiny_split, "maml")
    rows = torch.tensor([1, 4])
    manual, manual_loss = learner.meta_gradients(batch, rows=rows)
    auto, auto_loss = _as_kernel(learner, "batched_head").meta_gradients(batch, rows=rows)
    assert relative_difference(manual, auto) <= 1e-10
    assert manual_loss == pytest.approx(auto_loss, rel=1e-12)
