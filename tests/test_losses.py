"""edgekd.losses against independent numpy/scipy computations on small fixed tensors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax as np_softmax
from scipy.stats import pearsonr, rankdata

from edgekd import losses

Z_S = np.array([[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 2.2, 0.0], [-1.5, 0.4, 0.1, 1.7]])
Z_T = np.array([[0.2, 3.0, -0.5, 0.1], [1.0, 0.5, 1.5, -2.0], [0.0, -1.0, 0.5, 2.5]])
Y = np.array([1, 0, 3])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(a):
    return torch.tensor(a, dtype=torch.float64)


def np_kl_batchmean(p, log_p, log_q):
    return float((p * (log_p - log_q)).sum(1).mean())


def test_kd_loss_matches_hand_computation():
    T = 4.0
    lp_s, lp_t = np_log_softmax(Z_S / T, axis=1), np_log_softmax(Z_T / T, axis=1)
    expected = T**2 * np_kl_batchmean(np.exp(lp_t), lp_t, lp_s)
    assert losses.kd_loss(t(Z_S), t(Z_T), T).item() == pytest.approx(expected, rel=1e-10)
    assert losses.kd_loss(t(Z_S), t(Z_S), T).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.kd_loss(t(Z_S), t(Z_T), T).item() > 0.01


def test_dist_loss_matches_scipy_pearson():
    tau, beta, gamma = 4.0, 1.0, 2.0
    p_s, p_t = np_softmax(Z_S / tau, axis=1), np_softmax(Z_T / tau, axis=1)
    inter = 1 - np.mean([pearsonr(p_s[i], p_t[i])[0] for i in range(3)])
    intra = 1 - np.mean([pearsonr(p_s[:, c], p_t[:, c])[0] for c in range(4)])
    expected = tau**2 * (beta * inter + gamma * intra)
    # rel 1e-4: like the release, the loss adds 1e-8 to the Pearson denominators, which are ~1e-4 here.
    assert losses.dist_loss(t(Z_S), t(Z_T), tau, beta, gamma).item() == pytest.approx(expected, rel=1e-4)
    # Pearson is symmetric, and ~0 for identical inputs.
    assert losses.dist_loss(t(Z_T), t(Z_S), tau, beta, gamma).item() == pytest.approx(expected, rel=1e-4)
    assert losses.dist_loss(t(Z_S), t(Z_S), tau, beta, gamma).item() == pytest.approx(0.0, abs=1e-3)


def test_dkd_loss_matches_decoupled_definition():
    alpha, beta, T = 1.0, 8.0, 4.0
    p_s, p_t = np_softmax(Z_S / T, axis=1), np_softmax(Z_T / T, axis=1)
    tckd = nckd = 0.0
    for i, y in enumerate(Y):
        b_s = np.array([p_s[i, y], 1 - p_s[i, y]])
        b_t = np.array([p_t[i, y], 1 - p_t[i, y]])
        tckd += (b_t * np.log(b_t / b_s)).sum()
        keep = np.arange(4) != y  # non-target classes, renormalised
        q_s, q_t = np_softmax(Z_S[i, keep] / T), np_softmax(Z_T[i, keep] / T)
        nckd += (q_t * np.log(q_t / q_s)).sum()
    expected = T**2 * (alpha * tckd + beta * nckd) / 3
    got = losses.dkd_loss(t(Z_S), t(Z_T), torch.tensor(Y), alpha, beta, T).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_drkd_rectify_cases_and_input_untouched():
    z = torch.tensor([
        [1.0, 5.0, 2.0, 0.0],  # y=1: right, unchanged
        [1.0, 5.0, 2.0, 0.0],  # y=3: wrong, swap 5 and 0
        [4.0, 4.0, 1.0, 2.0],  # y=1 among tied maxima: counts as right, unchanged
        [4.0, 4.0, 1.0, 2.0],  # y=2: wrong, swapped with the first maximum (index 0)
    ])
    y = torch.tensor([1, 3, 1, 2])
    before = z.clone()
    out = losses.drkd_rectify(z, y)
    assert torch.equal(z, before)
    assert out.data_ptr() != z.data_ptr()
    expected = torch.tensor([
        [1.0, 5.0, 2.0, 0.0],
        [1.0, 0.0, 2.0, 5.0],
        [4.0, 4.0, 1.0, 2.0],
        [1.0, 4.0, 4.0, 2.0],
    ])
    assert torch.equal(out, expected)
    assert torch.equal(losses.drkd_rectify(out, y), out)  # rectifying twice changes nothing


def test_drkd_target_is_the_rectified_softmax_mixed_with_uniform():
    z = torch.tensor(Z_T, dtype=torch.float32)
    y = torch.tensor(Y)
    rect = losses.drkd_rectify(z, y)
    assert torch.equal(losses.drkd_target(z, y, 4.0), F.log_softmax(rect / 4.0, dim=1))  # no smoothing: exact
    for eps in (0.1, 1.0):
        expected = (1 - eps) * np_softmax(rect.numpy() / 2.0, axis=1) + eps / z.shape[1]
        got = losses.drkd_target(z, y, 2.0, smoothing=eps).exp().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        assert np.allclose(got.sum(1), 1.0)
    # against a plain probability target, the log-target KD is the same KL
    p = (0.9 * np_softmax(rect.numpy() / 4.0, axis=1) + 0.1 / z.shape[1])
    kl = (p * (np.log(p) - np_log_softmax(Z_S / 4.0, axis=1))).sum(1).mean() * 16
    got = losses.kd_loss_to_target(torch.tensor(Z_S), losses.drkd_target(z, y, 4.0, 0.1), 4.0).item()
    assert got == pytest.approx(kl, rel=1e-5)


def test_r2kd_value_loss_matches_cosines_and_is_symmetric():
    T = 4.0
    p_s, p_t = np_softmax(Z_S / T, axis=1), np_softmax(Z_T / T, axis=1)

    def cos(a, b):
        return (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))

    rows = 1 - np.mean([cos(p_s[i], p_t[i]) for i in range(3)])
    cols = 1 - np.mean([cos(p_s[:, c], p_t[:, c]) for c in range(4)])
    expected = T**2 * (rows + cols)
    # rel 1e-5 covers the release's 1e-8 in the cosine denominators
    assert losses.r2kd_value_loss(t(Z_S), t(Z_T), T).item() == pytest.approx(expected, rel=1e-5)
    assert losses.r2kd_value_loss(t(Z_T), t(Z_S), T).item() == pytest.approx(expected, rel=1e-5)
    assert losses.r2kd_value_loss(t(Z_S), t(Z_S), T).item() == pytest.approx(0.0, abs=1e-5)


def spearman_loss_np(a, b):
    return 1 - np.mean([pearsonr(rankdata(a[i]), rankdata(b[i]))[0] for i in range(len(a))])


def test_hard_rank_loss_is_spearman_and_passes_no_gradient():
    T = 4.0
    z_s = t(Z_S).requires_grad_(True)
    out = losses.r2kd_rank_loss(z_s, t(Z_T), T, mode="hard")
    assert out.item() == pytest.approx(spearman_loss_np(Z_S, Z_T), rel=1e-6)
    assert not out.requires_grad and out.grad_fn is None


def test_soft_rank_loss_tends_to_hard_as_tau_shrinks():
    rng = np.random.default_rng(0)
    z_s, z_t = rng.normal(size=(5, 12)), rng.normal(size=(5, 12))
    hard = spearman_loss_np(z_s, z_t)
    far = abs(losses.r2kd_rank_loss(t(z_s), t(z_t), 4.0, mode="soft", tau=1.0).item() - hard)
    near = abs(losses.r2kd_rank_loss(t(z_s), t(z_t), 4.0, mode="soft", tau=1e-6).item() - hard)
    assert near < 1e-6 < far


def finite_difference_grad(f, z: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of a scalar function, one entry at a time (float64)."""
    grad = torch.zeros_like(z)
    for i in range(z.numel()):
        step = torch.zeros_like(z).view(-1)
        step[i] = h
        step = step.view_as(z)
        grad.view(-1)[i] = (f(z + step) - f(z - step)) / (2 * h)
    return grad


def test_soft_rank_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    z_s = torch.randn(3, 6, dtype=torch.float64, generator=g)
    z_t = torch.randn(3, 6, dtype=torch.float64, generator=g)
    for chunk in (None, 4):  # one piece, and chunks
        def loss(z, chunk=chunk):
            return losses.r2kd_rank_loss(z, z_t, 4.0, mode="soft", tau=0.5, chunk=chunk)

        z = z_s.clone().requires_grad_(True)
        (analytic,) = torch.autograd.grad(loss(z), z)
        with torch.no_grad():
            numeric = finite_difference_grad(loss, z_s)
        assert analytic.abs().max() > 1e-3
        assert torch.allclose(analytic, numeric, atol=1e-7, rtol=1e-5)
    z = z_s.clone().requires_grad_(True)
    weights = torch.arange(18, dtype=torch.float64).view(3, 6)
    (analytic,) = torch.autograd.grad((losses.soft_ranks(z, 0.3, chunk=2) * weights).sum(), z)
    with torch.no_grad():
        numeric = finite_difference_grad(lambda v: (losses.soft_ranks(v, 0.3, chunk=2) * weights).sum(), z_s)
    assert torch.allclose(analytic, numeric, atol=1e-7, rtol=1e-5)


def test_soft_rank_chunked_at_1000_classes_equals_unchunked():
    g = torch.Generator().manual_seed(3)
    z_s = torch.randn(8, 1000, generator=g, requires_grad=True)
    z_t = torch.randn(8, 1000, generator=g)
    whole = losses.r2kd_rank_loss(z_s, z_t, 4.0, chunk=1000)
    (g_whole,) = torch.autograd.grad(whole, z_s)
    chunked = losses.r2kd_rank_loss(z_s, z_t, 4.0, chunk=64)
    (g_chunked,) = torch.autograd.grad(chunked, z_s)
    assert chunked.item() == pytest.approx(whole.item(), abs=1e-6)
    assert torch.allclose(g_chunked, g_whole, atol=1e-7)
    assert g_whole.abs().sum() > 0
    # the default chunk keeps (B, chunk, C) under the budget at 1000 classes with a real batch
    z_big = torch.randn(64, 1000, generator=g, requires_grad=True)
    ranks = losses.soft_ranks(z_big, 0.1)
    assert ranks.shape == (64, 1000)
    assert torch.allclose(ranks.sum(1), torch.full((64,), 1000 * 999 / 2))


def test_soft_ranks_tiny_tau_equal_hard_ranks():
    z = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    assert torch.allclose(losses.soft_ranks(z, 1e-4), torch.tensor([[1.0, 0.0, 3.0, 2.0]]), atol=1e-4)
    assert torch.equal(losses.hard_ranks(z), torch.tensor([[1.0, 0.0, 3.0, 2.0]]))
