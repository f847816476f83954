"""The fused-Adam kernel (metarec.meta.kernels.fused_adam: the outer step as one direct fused call) updates
exactly as clip_grad_norm_ + torch.optim.Adam.step."""

from __future__ import annotations

import copy

import pytest
import torch

from metarec.meta.kernels import fused_adam
from test_equivalence import make_learner


@pytest.mark.parametrize("clip", [10.0, 1e-3, None])
def test_direct_fused_adam_equals_optimizer_step(tiny_split, clip):
    """meta_step's direct fused Adam call (clip factor included) updates exactly as clip_grad_norm_ +
    torch.optim.Adam.step would (clip 1e-3: the clipping branch is taken)."""
    a, batch = make_learner(tiny_split, "feature-mlp", dtype=torch.float32, algorithm="maml", inner_steps=1,
                            grad_clip=clip)
    b = copy.deepcopy(a)
    for _ in range(3):
        params = list(a.named_meta_parameters().values())
        grads_a, _ = a.meta_gradients(batch)
        assert fused_adam.applies(a.optimizer, params, list(grads_a.values())) == (a.optimizer.state != {})
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
