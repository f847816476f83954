"""FeatureMLP and MeLU (FeatureMLP with MeLU's sizes) keep the model contract."""

from __future__ import annotations

import pytest
from contract import ModelContract, model_maker

from metarec.models import FeatureMLP, ModelConfig

CONFIGS = {
    "feature-mlp": ModelConfig(kind="feature-mlp", embedding_size=4, hidden=(8, 8)),
    "item-ids": ModelConfig(kind="feature-mlp", embedding_size=4, hidden=(8,), item_id_embedding=True, item_id_dropout=0.3),
    "melu": ModelConfig.melu(),
}


class TestFeatureMLP(ModelContract):
    @pytest.fixture(params=sorted(CONFIGS))
    def make_model(self, request):
        return model_maker(CONFIGS[request.param], FeatureMLP)

    def test_plain_head_is_what_the_batched_kernel_needs(self, model):
        assert model.head_is_plain()
        assert [w for w, _ in model.linear_names()] == [n for n in model.parameter_groups()["head"] if n.endswith("weight")]


def test_packed_item_lookup_equals_column_by_column(space):
    """Many rows (a meta-batch's items, a catalogue) are embedded in one gather (PackedAttributes): the same
    vectors and table gradients as the per-column path, rows repeated and in any order."""
    import torch

    from metarec.models.base import PACKED_MIN_ROWS

    model = model_maker(CONFIGS["feature-mlp"], FeatureMLP)(space, seed=0, rating_scale=(1.0, 5.0))
    n_items = len(space.item_features)
    rows = torch.randint(0, n_items, (PACKED_MIN_ROWS + 37,), generator=torch.Generator().manual_seed(0))
    weight = torch.randn(len(rows), model.item_embedding.out_dim, generator=torch.Generator().manual_seed(1))
    tables = list(model.item_embedding.parameters())
    packed = model.item_attribute_vectors(rows)
    columns = model.item_attribute_vectors(rows, vmap_safe=True)
    assert torch.allclose(packed, columns, atol=1e-6)
    grads_packed = torch.autograd.grad((packed * weight).sum(), tables)
    grads_columns = torch.autograd.grad((columns * weight).sum(), tables)
    for a, b in zip(grads_packed, grads_columns):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("side", ["items", "users", "single columns only"])
def test_packed_table_gradient_equals_autograd(space, side):
    """PackedAttributes.table_gradient (the one-step kernel's embedding backward, written out) is the
    autograd gradient of the packed lookup w.r.t. the stacked tables, float64, rows repeated; the
    graph-free lookup (embed_rows) gives the same vectors."""
    import copy

    import torch

    from metarec.models.embedding import PackedAttributes, packed_table

    model = model_maker(CONFIGS["feature-mlp"], FeatureMLP)(space, seed=0, rating_scale=(1.0, 5.0)).double()
    features = space.item_features if side == "items" else space.user_features
    embedding = copy.copy(model.item_embedding if side == "items" else model.user_embedding)
    multi = dict(features.multi)
    if side == "single columns only":
        embedding.multi_columns, multi = [], {}
    packed = PackedAttributes(embedding, features.single, multi)
    if side != "users":
        assert packed.one_each == (side == "single columns only")
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, len(features), (150,), generator=gen)
    table = packed_table(embedding).detach().requires_grad_(True)
    at = packed.lookup(rows, table.dtype)
    vectors = PackedAttributes.embed_rows(table, at)
    assert torch.allclose(vectors, packed.embed(embedding, rows), rtol=0, atol=1e-12)
    adjoint = torch.randn(vectors.shape, generator=gen, dtype=torch.float64)
    (expected,) = torch.autograd.grad((vectors * adjoint).sum(), table)
    found = PackedAttributes.table_gradient(adjoint, at, torch.zeros_like(table))
    assert float((found - expected).abs().max()) <= 1e-10 * float(expected.abs().max())
