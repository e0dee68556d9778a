"""Distillation losses as plain functions of logits, for use inside or outside edgekd's trainer (the methods that
combine them are ``edgekd.methods``).

Each returns a scalar tensor exactly as its docstring writes it, temperature-squared factors included; the method's
outer weights (a, w_v, w_r, CE weight) are left to the caller. Softmax temperatures follow the literature:
p = softmax(z / T), KL averaged over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgekd.errors import EdgeKDError

_EPS = 1e-8  # denominator guard of the DIST and R2KD releases' cosine / Pearson
# Soft ranks compare every class with every other; the (B, chunk, C) comparison is kept under this many
# elements by working through the classes in chunks, so memory stays bounded at 1000 classes.
_SOFT_RANK_BUDGET = 1 << 24


def standardize_logits(z: torch.Tensor) -> torch.Tensor:
    """Logit standardization (Sun et al., CVPR 2024): each sample's logits z-scored over the classes,
    (z − mean(z)) / σ(z) with σ the population standard deviation, before a loss softens them with its (base)
    temperature. A shift or a positive scale of z leaves the result unchanged, so the student matches the shape of
    the teacher's logits, not their range."""
    centred = z - z.mean(dim=1, keepdim=True)
    return centred / (centred.pow(2).mean(dim=1, keepdim=True).sqrt() + _EPS)


def kd_loss(z_s: torch.Tensor, z_t: torch.Tensor, T: float) -> torch.Tensor:
    """Hinton KD: T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over the batch."""
    return kd_loss_to_target(z_s, F.log_softmax(z_t / T, dim=1), T)


def kd_loss_to_target(z_s: torch.Tensor, log_p_t: torch.Tensor, T: float) -> torch.Tensor:
    """T² · KL(p_t ‖ softmax(z_s/T)) for a target given as log-probabilities (e.g. a smoothed one)."""
    return F.kl_div(F.log_softmax(z_s / T, dim=1), log_p_t, reduction="batchmean", log_target=True) * T**2


def ttm_loss(z_s: torch.Tensor, z_t: torch.Tensor, T: float, weighted: bool = False) -> torch.Tensor:
    """Transformed teacher matching (Zheng & Yang, ICLR 2024): KL(softmax(z_t/T) ‖ softmax(z_s)), summed over
    classes and averaged over the batch, with no temperature on the student's side and no T² (the release's
    ``distiller_zoo/ttm.py``). The teacher's target is the power transform of its distribution, p^γ / Σ p^γ with
    γ = 1/T, which is softmax(z_t/T). ``weighted`` (WTTM): each sample's term is multiplied by U = Σ_j p_j^γ, that
    transform's normaliser, which is large where the teacher's distribution is smooth."""
    gamma = 1.0 / T
    log_target = F.log_softmax(gamma * z_t, dim=1)
    kl = (log_target.exp() * (log_target - F.log_softmax(z_s, dim=1))).sum(dim=1)
    if weighted:  # Σ_j softmax(z_t)_j^γ = exp(logsumexp(γ·z_t) − γ·logsumexp(z_t))
        kl = kl * torch.exp(torch.logsumexp(gamma * z_t, dim=1) - gamma * torch.logsumexp(z_t, dim=1))
    return kl.mean()


def _cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + _EPS)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _cosine_rows(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True))


def dist_loss(z_s: torch.Tensor, z_t: torch.Tensor, tau: float, beta: float, gamma: float) -> torch.Tensor:
    """DIST (Huang et al. 2022): τ²·[β·(1 − mean_i ρ(p_s,i, p_t,i)) + γ·(1 − mean_c ρ(p_s,:c, p_t,:c))].

    ρ is the Pearson correlation of the softened probabilities per sample (inter-class relation) and per class
    across the batch (intra-class relation); the τ² factor is that of the authors' release
    (hunto/image_classification_sota, ``lib/models/losses/dist_kd.py``).
    """
    p_s = F.softmax(z_s / tau, dim=1)
    p_t = F.softmax(z_t / tau, dim=1)
    inter = 1 - _pearson_rows(p_s, p_t).mean()
    intra = 1 - _pearson_rows(p_s.t(), p_t.t()).mean()
    return tau**2 * (beta * inter + gamma * intra)


def dkd_loss(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float,
             T: float) -> torch.Tensor:
    """Decoupled KD (Zhao et al. 2022) as mdistiller writes it: α·TCKD + β·NCKD, each with T², averaged over the batch.

    TCKD is the KL between the binary (target, all non-targets) distributions; NCKD the KL between the
    distributions over the non-target classes, obtained by subtracting 1000 from the target logit (after
    dividing by T) so that its softmax weight vanishes.
    """
    gt = F.one_hot(y, z_s.shape[1]).to(z_s.dtype)
    p_s = F.softmax(z_s / T, dim=1)
    p_t = F.softmax(z_t / T, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    batch = y.shape[0]
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * T**2 / batch
    log_q_s = F.log_softmax(z_s / T - 1000.0 * gt, dim=1)
    q_t = F.softmax(z_t / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * T**2 / batch
    return alpha * tckd + beta * nckd


def drkd_rectify(z_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DR-KD rectification: new logits where, for each sample the teacher gets wrong, the values at its argmax
    and at the true class are swapped, so the true class leads and the other classes keep their values.

    Tie rule: a sample counts as right when its true-class logit equals the row maximum (the true class is
    among tied maxima) and is left unchanged. Otherwise the swap is with ``torch.argmax``'s pick, the first
    maximum; if several classes tied for the maximum the true class then ties with the rest, which by the
    same rule counts as right, so rectifying twice changes nothing. The input is never modified.
    """
    z = z_t.clone()
    rows = torch.arange(z.shape[0], device=z.device)
    top = z.argmax(dim=1)
    top_val = z[rows, top]
    y_val = z[rows, y]
    wrong = y_val < top_val
    z[rows[wrong], top[wrong]] = y_val[wrong]
    z[rows[wrong], y[wrong]] = top_val[wrong]
    return z


def drkd_target(z_t: torch.Tensor, y: torch.Tensor, T: float, smoothing: float = 0.0) -> torch.Tensor:
    """DR-KD's soft target as log-probabilities: softmax(rectified z_t / T), mixed with the uniform distribution
    by ``smoothing`` as label smoothing mixes the one-hot label; with 0 it is exactly log_softmax."""
    log_p = F.log_softmax(drkd_rectify(z_t, y) / T, dim=1)
    if smoothing == 0:
        return log_p
    uniform = torch.full_like(log_p, math.log(smoothing / log_p.shape[1]))
    kept = math.log1p(-smoothing) if smoothing < 1 else -math.inf
    return torch.logaddexp(log_p + kept, uniform)


def value_from_probs(p_s: torch.Tensor, p_t: torch.Tensor, T: float) -> torch.Tensor:
    """R2KD value term on already-softened probabilities (see ``r2kd_value_loss``)."""
    rows = 1 - _cosine_rows(p_s, p_t).mean()
    cols = 1 - _cosine_rows(p_s.t(), p_t.t()).mean()
    return T**2 * (rows + cols)


def r2kd_value_loss(z_s: torch.Tensor, z_t: torch.Tensor, T: float) -> torch.Tensor:
    """R2KD value loss without w_v: T²·[(1 − mean_i cos(p_s,i, p_t,i)) + (1 − mean_c cos(p_s,:c, p_t,:c))].

    Uncentered cosine over rows (samples) and columns (classes across the batch). The authors' release takes
    the absolute value of the cosine, which is the same thing here because probabilities are non-negative.
    """
    return value_from_probs(F.softmax(z_s / T, dim=1), F.softmax(z_t / T, dim=1), T)


def hard_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ranks 0..C-1 within each row (argsort of argsort, stable on ties); no gradient flows through them."""
    order = scores.detach().argsort(dim=1, stable=True)
    return order.argsort(dim=1).to(scores.dtype)


class _SoftRank(torch.autograd.Function):
    """rank_j = Σ_k sigmoid((s_j − s_k)/τ), built ``chunk`` classes at a time in forward and in backward.

    Only the scores are saved, so memory stays O(B·C·chunk) however many classes there are. The gradient
    is ∂L/∂s_m = (1/τ)·Σ_k sigmoid'((s_m − s_k)/τ)·(g_m − g_k) for upstream gradient g, since sigmoid' is even.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, tau: float, chunk: int) -> torch.Tensor:
        ctx.save_for_backward(s)
        ctx.tau, ctx.chunk = tau, chunk
        c = s.shape[1]
        pieces = [torch.sigmoid((s[:, a:a + chunk, None] - s[:, None, :]) / tau).sum(-1) for a in range(0, c, chunk)]
        return torch.cat(pieces, dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        (s,) = ctx.saved_tensors
        tau, chunk, c = ctx.tau, ctx.chunk, s.shape[1]
        grads = []
        for a in range(0, c, chunk):
            sig = torch.sigmoid((s[:, a:a + chunk, None] - s[:, None, :]) / tau)
            d = sig * (1 - sig)  # (B, chunk, C)
            grads.append(g[:, a:a + chunk] * d.sum(-1) - torch.einsum("bkc,bc->bk", d, g))
        return torch.cat(grads, dim=1) / tau, None, None


def soft_ranks(scores: torch.Tensor, tau: float, chunk: int | None = None) -> torch.Tensor:
    """Differentiable ranks: rank_j = Σ_k sigmoid((s_j − s_k)/τ) − 1/2, which tends to the hard rank as τ → 0.

    The (B, C, C) comparison is built ``chunk`` classes at a time in forward and backward and never stored,
    so memory stays O(B·C·chunk) at 1000 classes. ``chunk=None`` picks the largest chunk within a fixed
    element budget (a single chunk for small C).
    """
    b, c = scores.shape
    if chunk is None:
        chunk = _SOFT_RANK_BUDGET // max(1, b * c)
    return _SoftRank.apply(scores, tau, max(1, min(c, chunk))) - 0.5


def rank_from_logprobs(
    logp_s: torch.Tensor,
    logp_t: torch.Tensor,
    mode: str = "soft",
    tau: float = 0.1,
    chunk: int | None = None,
) -> torch.Tensor:
    """R2KD rank term on log-probabilities log softmax(z/T) (see ``r2kd_rank_loss``).

    Log-probabilities order the classes exactly as the probabilities do, and their gaps do not shrink with the
    number of classes, so one soft-rank temperature suits 10 and 1000 classes alike.
    """
    if mode == "hard":
        r_s = hard_ranks(logp_s)
    elif mode == "soft":
        r_s = soft_ranks(logp_s, tau, chunk)
    else:
        raise EdgeKDError(f"rank mode must be 'soft' or 'hard', got {mode!r}")
    return 1 - _pearson_rows(r_s, hard_ranks(logp_t)).mean()


def r2kd_rank_loss(
    z_s: torch.Tensor,
    z_t: torch.Tensor,
    T: float,
    mode: str = "soft",
    tau: float = 0.1,
    chunk: int | None = None,
) -> torch.Tensor:
    """R2KD rank loss without w_r: 1 − mean_i Pearson(rank(p_s,i), rank(p_t,i)) (Spearman per sample).

    Teacher ranks are always hard. ``mode="hard"`` ranks the student by argsort too, as the authors' release
    does, and so passes no gradient (the result does not require grad). ``mode="soft"`` uses differentiable
    soft ranks of the student's log-probabilities log softmax(z_s/T) (same order as p_s) with temperature
    ``tau`` in log-probability units, computed ``chunk`` classes at a time (``None``: as memory allows).
    """
    return rank_from_logprobs(F.log_softmax(z_s / T, dim=1), F.log_softmax(z_t / T, dim=1), mode, tau, chunk)


def sld_loss(
    z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, temperatures: list[float], z_self: torch.Tensor | None = None
) -> torch.Tensor:
    """Swapped Logit Distillation (Limantoro et al. 2025), the KD term of one view, without its outer weight:
    Σ_T T²·KL(softmax(swap(z_t)/T) ‖ softmax(z_s/T)), plus, when ``z_self`` is given, the same sum with the
    student's own swapped logits swap(z_self) as a second target (detached: a target, not a path for gradient).

    swap is DR-KD's rectification (``drkd_rectify``): where the logits' top class is wrong, its value and the true
    class's trade places. The sum over several temperatures is the paper's prediction augmentation.
    """
    targets = [drkd_rectify(z_t, y)]
    if z_self is not None:
        targets.append(drkd_rectify(z_self.detach(), y))
    return sum(kd_loss(z_s, t, T) for t in targets for T in temperatures)
