"""maml.py on a one-parameter model whose meta-gradient has a closed form.

f_w(x) = w x, one support rating (x_s, y_s) and one query rating (x_q, y_q) per task, inner rate alpha.
One inner step: w' = a w + b with a = 1 - 2 alpha x_s^2, b = 2 alpha x_s y_s; after K steps
w_K = a^K w + b (1 + a + ... + a^(K-1)). The squared query loss (w_K x_q - y_q)^2 then has

    second order   dL/dw = 2 (w_K x_q - y_q) x_q a^K
    first order    dL/dw = 2 (w_K x_q - y_q) x_q
    Meta-SGD, K=1  dL/dalpha = 2 (w_1 x_q - y_q) x_q (-2 x_s (w x_s - y_s))
    Reptile, K=1   w - mean_i w_1,i   (its inner loop on the support only here)

averaged over tasks, plus 2 lambda w from the L2 term.
"""

from __future__ import annotations

import pytest
import torch

from metarec.meta import maml

X_S, Y_S = torch.tensor([[1.5], [-0.5], [2.0]], dtype=torch.float64), torch.tensor([[4.0], [1.0], [2.5]], dtype=torch.float64)
X_Q, Y_Q = torch.tensor([[0.5], [1.0], [-1.0]], dtype=torch.float64), torch.tensor([[2.0], [3.0], [-1.5]], dtype=torch.float64)
W0, ALPHA, L2 = 0.7, 0.1, 0.01


def predict(params, task, which):
    return params["w"] * task[f"{which}_x"]


def tasks() -> dict:
    ones = torch.ones_like(Y_S)
    return {"support_x": X_S, "support_rating": Y_S, "support_mask": ones,
            "query_x": X_Q, "query_rating": Y_Q, "query_mask": ones}


def closed_form(steps: int, first_order: bool) -> tuple[float, float]:
    a = 1 - 2 * ALPHA * X_S ** 2
    b = 2 * ALPHA * X_S * Y_S
    w_k = a ** steps * W0 + b * sum(a ** j for j in range(steps))
    resid = w_k * X_Q - Y_Q
    loss = float((resid ** 2).mean()) + L2 * W0 ** 2
    chain = torch.ones_like(a) if first_order else a ** steps
    return loss, float((2 * resid * X_Q * chain).mean()) + 2 * L2 * W0


@pytest.mark.parametrize("steps", [0, 1, 2, 5])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_has_its_closed_form(steps, first_order):
    w = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    loss = maml.meta_loss(predict, {"w": w}, ["w"], tasks(), steps, ALPHA, first_order, "squared", L2)
    grads = maml.meta_gradients(loss, {"w": w})
    want_loss, want_grad = closed_form(steps, first_order)
    assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-12)
    assert float(grads["w"]) == pytest.approx(want_grad, rel=1e-12)
    if steps:  # the orders really differ once there is an inner step
        other = closed_form(steps, not first_order)[1]
        assert abs(other - want_grad) > 1e-3


def test_meta_sgd_rate_gradient_has_its_closed_form():
    w = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    alpha = {"w": torch.tensor(ALPHA, dtype=torch.float64, requires_grad=True)}
    loss = maml.meta_loss(predict, {"w": w}, ["w"], tasks(), 1, alpha, False, "squared", 0.0)
    grads = maml.meta_gradients(loss, {"w": w, "alpha": alpha["w"]})
    w_1 = W0 - ALPHA * 2 * X_S * (W0 * X_S - Y_S)
    want = (2 * (w_1 * X_Q - Y_Q) * X_Q * (-2 * X_S * (W0 * X_S - Y_S))).mean()
    assert float(grads["alpha"]) == pytest.approx(float(want), rel=1e-12)


def test_reptile_gradient_and_adapt_have_their_closed_form():
    params = {"w": torch.tensor(W0, dtype=torch.float64)}
    grads, loss = maml.reptile_gradients(predict, params, ["w"], tasks(), 1, ALPHA, L2)
    w_1 = W0 * (1 - 2 * ALPHA * X_S ** 2) + 2 * ALPHA * X_S * Y_S
    assert float(grads["w"]) == pytest.approx(W0 - float(w_1.mean()) + 2 * L2 * W0, rel=1e-12)
    assert loss == pytest.approx(float(((w_1 * X_S - Y_S) ** 2).mean()), rel=1e-12)
    adapted = maml.adapt(predict, params, ["w"], tasks(), 1, ALPHA)
    assert torch.allclose(adapted["w"], w_1.flatten(), rtol=1e-12)


def test_absolute_query_loss():
    w = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    loss = maml.meta_loss(predict, {"w": w}, ["w"], tasks(), 1, ALPHA, False, "absolute", 0.0)
    w_1 = W0 * (1 - 2 * ALPHA * X_S ** 2) + 2 * ALPHA * X_S * Y_S
    assert float(loss.detach()) == pytest.approx(float((w_1 * X_Q - Y_Q).abs().mean()), rel=1e-12)
