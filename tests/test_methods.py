"""Every registered distillation method on tiny CNNs: outputs, loss wiring, what a step may and may not change."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax as np_softmax
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.losses import (
    dist_loss,
    dkd_loss,
    drkd_rectify,
    drkd_target,
    kd_loss,
    kd_loss_to_target,
    r2kd_rank_loss,
    r2kd_value_loss,
    sld_loss,
    ttm_loss,
)
from edgekd.methods import build_method, list_methods, method_class
from edgekd.methods.augment import AUGMENTATIONS, BatchAutoAugment, augmented_view
from edgekd.prune import prune_model

C, B = 5, 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cnn(width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, C),
    )


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 16, 16, generator=g), torch.randint(0, C, (B,), generator=g)


def make(name: str, args=None, rectify=False):
    """Build a method the way the trainer does; self-teacher methods get a trained-looking copy of the student."""
    student = tiny_cnn(8, seed=0)
    cls = method_class(name)
    if cls.wants_self_teacher(args or {}):
        teacher = tiny_cnn(8, seed=1)
    elif cls.needs_teacher:
        teacher = tiny_cnn(16, seed=2)
    else:
        teacher = None
    return build_method(name, student, teacher, args, num_classes=C, rectify=rectify, input_shape=(3, 16, 16))


def state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


EXPECTED_TERMS = {  # the loss terms of the methods edgekd ships; a method registered later needs no edit here
    "ce": {"ce"}, "lsr": {"ce"}, "kd": {"ce", "kd"}, "dist": {"ce", "kd"}, "dkd": {"ce", "kd"},
    "tfkd-self": {"ce", "kd"}, "tfkd-reg": {"ce", "kd"}, "drkd": {"ce", "kd"}, "r2kd": {"ce", "value", "rank"},
    "sld": {"ce", "kd"}, "ttm": {"ce", "ttm"}, "wttm": {"ce", "wttm"},
}


def test_the_shipped_methods_stay_registered():
    assert set(EXPECTED_TERMS) <= set(list_methods())


@pytest.mark.parametrize("name", list_methods())
def test_step_trains_the_student_only(name):
    method = make(name)
    method.train()
    method.on_epoch_start(0)
    method.on_epoch_start(1)  # drkd dynamic takes its snapshot here
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=1)
    teachers = {"teacher": method.teacher, "pruned": getattr(method, "pruned_teacher", None)}
    frozen = {n: state(m) for n, m in teachers.items() if m is not None}
    student_before = state(method.student)

    assert logits.shape == (B, C)
    assert terms and set(terms) == EXPECTED_TERMS.get(name, set(terms))
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    opt = torch.optim.SGD(method.learnable_parameters(), lr=0.1)
    opt.zero_grad()
    sum(terms.values()).backward()
    opt.step()
    method.train()

    assert not same(state(method.student), student_before)
    for n, m in teachers.items():
        if m is None:
            continue
        assert same(state(m), frozen[n]), n
        assert not m.training, n
        assert not any(p.requires_grad for p in m.parameters()), n
        assert all(p.grad is None for p in m.parameters()), n
    snapshot = name == "drkd" and method.args["teacher"] == "snapshot"
    if name in ("kd", "dist", "dkd", "r2kd", "tfkd-self", "sld") or snapshot:
        assert method.teacher is not None
        assert not any(isinstance(m, nn.BatchNorm2d) for m in method.teacher.modules())  # conv-bn folded


def test_teacher_requirements_and_flags():
    for name in ("kd", "dist", "dkd", "r2kd", "tfkd-self"):
        assert method_class(name).needs_teacher and method_class(name).uses_teacher
        with pytest.raises(EdgeKDError, match="needs a teacher"):
            build_method(name, tiny_cnn(), None, num_classes=C)
    for name in ("lsr", "tfkd-reg"):
        assert not method_class(name).uses_teacher
        with pytest.raises(EdgeKDError, match="--rectify"):
            build_method(name, tiny_cnn(), None, num_classes=C, rectify=True)
    assert method_class("drkd").uses_teacher and not method_class("drkd").needs_teacher
    assert method_class("tfkd-self").wants_self_teacher({})
    assert method_class("drkd").wants_self_teacher({"teacher": "pretrained"})
    assert not method_class("drkd").wants_self_teacher({})
    with pytest.raises(EdgeKDError, match="no option"):
        make("kd", {"temperature": 3})


def test_kd_weights_and_rectify():
    method = make("kd", rectify=True)
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    with torch.no_grad():
        z_t = drkd_rectify(method.teacher(x), y)
    assert terms["ce"].item() == pytest.approx(0.1 * F.cross_entropy(logits, y).item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(0.9 * kd_loss(logits, z_t, 4.0).item(), rel=1e-5)
    assert not torch.equal(z_t, method.teacher(x))  # the random teacher is wrong somewhere, so rectify mattered


def test_dkd_linear_warmup_over_20_epochs():
    method = make("dkd")
    x, y = batch()
    method.eval()  # fixed BatchNorm statistics so the epochs see identical logits
    _, early = method.forward_train(x, y, epoch=0)
    _, mid = method.forward_train(x, y, epoch=9)
    _, late = method.forward_train(x, y, epoch=40)
    full = dkd_loss(method.student(x), method.teacher(x), y, 1.0, 8.0, 4.0).item()
    assert late["kd"].item() == pytest.approx(full, rel=1e-5)
    assert early["kd"].item() == pytest.approx(full / 20, rel=1e-5)
    assert mid["kd"].item() == pytest.approx(full / 2, rel=1e-5)


def test_dist_ramps_its_term_in_over_ten_epochs_unless_set_to_the_release():
    x, y = batch()
    release, default, ramped = make("dist", {"warmup": 0}), make("dist"), make("dist", {"warmup": 4})
    for m in (release, default, ramped):
        m.eval()
    full = 2.0 * dist_loss(release.student(x), release.teacher(x), 4.0, 1.0, 1.0).item()
    assert release.forward_train(x, y, epoch=0)[1]["kd"].item() == pytest.approx(full, rel=1e-5)
    assert default.forward_train(x, y, epoch=0)[1]["kd"].item() == pytest.approx(full / 10, rel=1e-5)
    assert default.forward_train(x, y, epoch=4)[1]["kd"].item() == pytest.approx(full / 2, rel=1e-5)
    assert default.forward_train(x, y, epoch=9)[1]["kd"].item() == pytest.approx(full, rel=1e-5)
    assert ramped.forward_train(x, y, epoch=0)[1]["kd"].item() == pytest.approx(full / 4, rel=1e-5)
    assert ramped.forward_train(x, y, epoch=3)[1]["kd"].item() == pytest.approx(full, rel=1e-5)


def test_tfkd_reg_matches_the_release_formula():
    method = make("tfkd-reg")
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    z = logits.detach().double().numpy()
    u = np.full((B, C), 0.01 / (C - 1))
    u[np.arange(B), y.numpy()] = 0.99
    p = np_softmax(u / 40.0, axis=1)
    kl_elementwise_mean = (p * (np.log(p) - np_log_softmax(z, axis=1))).sum() / (B * C)
    assert terms["kd"].item() == pytest.approx(0.95 * kl_elementwise_mean, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.05 * F.cross_entropy(logits, y).item(), rel=1e-5)


def _ttm_reference(z_s: np.ndarray, z_t: np.ndarray, gamma: float, weighted: bool) -> float:
    """The paper's definition, written out: the teacher's distribution raised to γ and renormalised (the power
    transform), KL to the untempered student per sample, times Σ_j p_j^γ for WTTM, averaged over the batch."""
    p = np_softmax(z_t, axis=1)
    powered = p**gamma
    target = powered / powered.sum(axis=1, keepdims=True)
    kl = (target * (np.log(target) - np_log_softmax(z_s, axis=1))).sum(axis=1)
    return float(np.mean(kl * powered.sum(axis=1) if weighted else kl))


@pytest.mark.parametrize("weighted", [False, True])
def test_ttm_and_wttm_match_the_papers_power_transform_on_random_logits(weighted):
    g = torch.Generator().manual_seed(3)
    z_s, z_t = torch.randn(7, 10, generator=g, dtype=torch.float64) * 3, torch.randn(7, 10, generator=g,
                                                                                       dtype=torch.float64) * 3
    for T in (1.0, 4.0, 10.0):
        assert ttm_loss(z_s, z_t, T, weighted).item() == pytest.approx(
            _ttm_reference(z_s.numpy(), z_t.numpy(), 1 / T, weighted), rel=1e-9)
    # the student has no temperature: scaling its logits changes the loss, unlike KD's symmetric softening
    assert ttm_loss(2 * z_s, z_t, 4.0).item() != pytest.approx(ttm_loss(z_s, z_t, 4.0).item(), rel=1e-3)
    # at T = 1 TTM is KD at T = 1 and WTTM's weight is 1 for every sample
    assert ttm_loss(z_s, z_t, 1.0, weighted).item() == pytest.approx(kd_loss(z_s, z_t, 1.0).item(), rel=1e-9)


@pytest.mark.parametrize("name, beta, T", [("ttm", 45.0, 10.0), ("wttm", 4.0, 5.0)])
def test_ttm_methods_are_ce_plus_beta_times_the_matching_term(name, beta, T):
    method = make(name)
    assert method.args == {"beta": beta, "T": T}  # the release README's examples
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    z_t = method.teacher(x)
    expected = _ttm_reference(logits.detach().double().numpy(), z_t.detach().double().numpy(), 1 / T, name == "wttm")
    assert terms[name].item() == pytest.approx(beta * expected, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_tfkd_self_scales_kd_like_the_release():
    method = make("tfkd-self", {"multiplier": 2.0})
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    z_s, z_t = logits.detach().double().numpy(), method.teacher(x).detach().double().numpy()
    lp_s, lp_t = np_log_softmax(z_s / 20, axis=1), np_log_softmax(z_t / 20, axis=1)
    kl_mean = (np.exp(lp_t) * (lp_t - lp_s)).sum() / (B * C)  # nn.KLDivLoss() default: mean over all entries
    # float32 KL of close distributions
    assert terms["kd"].item() == pytest.approx(0.95 * 2.0 * 400 * kl_mean, rel=1e-3)
    with pytest.raises(EdgeKDError, match="copy of the student"):
        build_method("tfkd-self", tiny_cnn(8), tiny_cnn(16), num_classes=C)


def assert_kd_on_rectified_teacher(method, x, y, logits, terms, weight: float) -> None:
    """The KD term is ``weight`` · T²·KL against the method's own teacher, rectified and smoothed, at T = 4."""
    with torch.no_grad():
        target = drkd_target(method.teacher(x), y, 4.0, method.args["smoothing"])
    assert method.args["smoothing"] == 0.1  # the default
    assert terms["kd"].item() == pytest.approx(weight * kd_loss_to_target(logits, target, 4.0).item(), rel=1e-5)


def test_drkd_snapshot_teacher():
    method = make("drkd", {"teacher": "snapshot"})
    x, y = batch()
    method.train()
    method.on_epoch_start(0)
    assert method.teacher is None
    _, terms = method.forward_train(x, y, epoch=0)
    assert set(terms) == {"ce"}

    opt = torch.optim.SGD(method.learnable_parameters(), lr=0.5)
    terms["ce"].backward()
    opt.step()
    method.on_epoch_start(1)
    snapshot = state(method.student)
    student_logits = eval_logits(method.student, x)
    assert torch.allclose(method.teacher(x), student_logits, atol=1e-5)  # folded, but the same function
    assert not method.teacher.training
    teacher_state = state(method.teacher)

    logits, terms = method.forward_train(x, y, epoch=1)
    assert_kd_on_rectified_teacher(method, x, y, logits, terms, 0.9)
    opt.zero_grad()
    sum(terms.values()).backward()
    opt.step()
    assert not same(state(method.student), snapshot)
    assert same(state(method.teacher), teacher_state)  # the snapshot does not follow later updates

    method.on_epoch_start(2)
    assert torch.allclose(method.teacher(x), eval_logits(method.student, x), atol=1e-5)
    assert not torch.allclose(method.teacher(x), student_logits, atol=1e-3)


def test_drkd_ema_teacher_is_a_moving_average_of_the_student():
    method = make("drkd", {"teacher": "ema", "decay": 0.2, "schedule": "constant", "alpha": 0.5})
    x, y = batch()
    method.train()
    assert not method.teacher.training and not any(p.requires_grad for p in method.teacher.parameters())
    opt = torch.optim.SGD(method.learnable_parameters(), lr=0.5)
    after_steps = []
    for _ in range(3):
        method.on_epoch_start(0)
        logits, terms = method.forward_train(x, y, epoch=0)
        assert_kd_on_rectified_teacher(method, x, y, logits, terms, 0.5)
        opt.zero_grad()
        sum(terms.values()).backward()
        assert all(p.grad is None for p in method.teacher.parameters())
        opt.step()
        method.on_step_end()
        after_steps.append(state(method.student))
    # the average starts at the student after the first step, then keeps a fixed share (the decay) each step
    w1, w2, w3 = after_steps
    ema = state(method.teacher.module)
    for k, v in ema.items():
        if v.is_floating_point():
            expected = 0.2 * (0.2 * w1[k] + 0.8 * w2[k]) + 0.8 * w3[k]
            assert torch.allclose(v, expected, atol=1e-6), k
    assert not same(ema, w3)
    assert torch.allclose(eval_logits(method.teacher.module, x), eval_logits(tiny_cnn_with(ema), x), atol=1e-5)
    with pytest.raises(EdgeKDError, match=r"decay must be in \(0, 1\)"):
        make("drkd", {"teacher": "ema", "decay": 1.0})


def tiny_cnn_with(weights: dict) -> nn.Module:
    model = tiny_cnn()
    model.load_state_dict(weights)
    return model


def test_drkd_teacher_modes_are_validated():
    with pytest.raises(EdgeKDError, match="pretrained needs"):
        build_method("drkd", tiny_cnn(), None, {"teacher": "pretrained"}, num_classes=C)
    with pytest.raises(EdgeKDError, match=r"(online|snapshot) makes its own"):
        build_method("drkd", tiny_cnn(), tiny_cnn(seed=3), num_classes=C)
    with pytest.raises(EdgeKDError, match="copy of the student"):
        build_method("drkd", tiny_cnn(8), tiny_cnn(16), {"teacher": "pretrained"}, num_classes=C)
    with pytest.raises(EdgeKDError, match="teacher must be one of"):
        build_method("drkd", tiny_cnn(), None, {"teacher": "sometimes"}, num_classes=C)
    method = make("drkd", {"teacher": "pretrained"})
    x, y = batch()
    _, terms = method.forward_train(x, y, epoch=0)
    assert set(terms) == {"ce", "kd"}


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s logits in eval mode, leaving its mode as it was."""
    mode = model.training
    with torch.no_grad():
        z = model.eval()(x)
    model.train(mode)
    return z


class CountCalls:
    def __init__(self, module: nn.Module) -> None:
        self.sizes: list[int] = []
        module.register_forward_hook(lambda _m, inp, _o: self.sizes.append(inp[0].shape[0]))


@pytest.mark.parametrize("augment", AUGMENTATIONS)
@pytest.mark.parametrize("rank", ["soft", "hard"])
def test_r2kd_step_each_augmentation_and_rank_mode(augment, rank):
    method = make("r2kd", {"augment": augment, "rank": rank})
    method.train()
    x, y = batch()
    calls = {n: CountCalls(getattr(method, n)) for n in ("student", "teacher", "pruned_teacher")}
    logits, terms = method.forward_train(x, y, epoch=0)
    views = 1 if augment == "none" else 2
    # the frozen teachers see the clean batch and its augmented view in one call; the student one call per view,
    # so that its batch norm normalises the clean batch by itself (as in the authors' release)
    sizes = {"student": [B] * views, "teacher": [views * B], "pruned_teacher": [views * B]}
    assert {n: c.sizes for n, c in calls.items()} == sizes
    assert logits.shape == (B, C)
    with torch.no_grad():
        assert torch.allclose(logits, method.student(x), atol=1e-6)
    assert terms["rank"].requires_grad == (rank == "soft")
    assert terms["value"].requires_grad and terms["value"].item() > 0
    sum(terms.values()).backward()


def test_r2kd_pruned_teacher_is_smaller_frozen_and_made_once():
    method = make("r2kd", {"preset": "edgekd"})  # structured: really fewer parameters
    x, y = batch()
    pruned = method.pruned_teacher  # made when the method is built
    n_pruned = sum(p.numel() for p in pruned.parameters())
    n_teacher = sum(p.numel() for p in method.teacher.parameters())
    assert n_pruned < n_teacher
    assert not any(p.requires_grad for p in pruned.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in pruned.modules())
    # pruned from the teacher as trained (importance of the unfolded conv weights), then folded
    expected = prune_model(tiny_cnn(16, seed=2).eval(), 0.1, "structured", torch.zeros(1, 3, 16, 16))
    assert torch.allclose(pruned(x), eval_logits(expected, x), atol=1e-5)
    method.train()
    assert not pruned.training
    method.forward_train(x, y, epoch=0)
    method.forward_train(x, y, epoch=1)
    assert method.pruned_teacher is pruned
    with pytest.raises(EdgeKDError, match="structured pruning needs input_shape"):
        build_method("r2kd", tiny_cnn(8), tiny_cnn(16), {"preset": "edgekd"}, num_classes=C)


def test_r2kd_l1_unstructured_pruned_teacher():
    method = make("r2kd")  # the default, the release's pruning
    for m, t in zip(method.pruned_teacher.modules(), method.teacher.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert (m.weight == 0).sum().item() == round(0.1 * m.weight.numel())
            assert m.weight.shape == t.weight.shape
    # zeroing weights traces nothing, so the input shape is not needed
    shapeless = build_method("r2kd", tiny_cnn(8), tiny_cnn(16, seed=2), num_classes=C)
    for m, t in zip(shapeless.pruned_teacher.modules(), method.pruned_teacher.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.equal(m.weight, t.weight)
    x, y = batch()
    assert torch.isfinite(sum(shapeless.forward_train(x, y, epoch=0)[1].values()))
    with pytest.raises(EdgeKDError, match="prune must be one of"):
        make("r2kd", {"prune": "random"})
    with pytest.raises(EdgeKDError, match="augment must be one of"):
        make("r2kd", {"augment": "rotate"})


def test_r2kd_targets_ensemble_teacher_and_pruned_teacher():
    method = make("r2kd", {"augment": "none", "prune": "structured", "teacher_weight": 0.7})
    method.eval()
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    with torch.no_grad():
        target = 0.7 * method.teacher(x) + 0.3 * method.pruned_teacher(x)
    # rel 1e-3: float32 1 - cos with cos near 1
    assert terms["value"].item() == pytest.approx(2 * r2kd_value_loss(logits, target, 4.0).item(), rel=1e-3)
    teacher_only = 2 * r2kd_value_loss(logits, method.teacher(x), 4.0).item()
    assert terms["value"].item() != pytest.approx(teacher_only, rel=1e-2)
    assert terms["rank"].item() == pytest.approx(2 * r2kd_rank_loss(logits, target, 4.0, "hard").item(), rel=1e-5)


def test_batch_autoaugment_undoes_the_normalisation_exactly():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 3, 8, 8), generator=g)
    pixels[0, :, 0, 0], pixels[1, :, 0, 0] = 0, 255  # every channel spans black to white
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    x = (pixels / 255 - mean) / std
    aug = BatchAutoAugment("cifar10")
    aug.augment = nn.Identity()
    assert torch.allclose(aug(x), x, atol=1e-6)
    aug = BatchAutoAugment("cifar10")
    torch.manual_seed(1)
    out = aug(x)
    back = (out * std + mean) * 255  # the augmented batch is again 8-bit pixels under the same normalisation
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.allclose(back, back.round(), atol=1e-3)
    assert back.min() >= -1e-3 and back.max() <= 255 + 1e-3


def test_r2kd_cutout_erases_one_quarter_side_square():
    method = make("r2kd", {"augment": "cutout"})
    x, y = batch()
    aug = augmented_view(method.augment, x, y)
    changed = (aug != x).any(dim=1)  # (B, H, W)
    assert torch.equal(changed[0], changed[-1])  # one hole for the whole batch, as the release
    rows, cols = changed[0].nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (4, 4)
    assert (aug[:, :, rows, cols] == 0).all()


def test_r2kd_cutmix_pastes_patches_from_the_batch():
    method = make("r2kd")
    torch.manual_seed(0)
    x, y = batch()
    mixed = augmented_view(method.augment, x, y)
    for i in range(B):
        diff = (mixed[i] != x[i]).any(0)
        if diff.any():
            donors = [j for j in range(B) if torch.equal(mixed[i][:, diff], x[j][:, diff])]
            assert donors and i not in donors
    assert not torch.equal(mixed, x)



def np_swap(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The paper's swap, written out: where the top class is not the label, the two logits trade places."""
    out = z.copy()
    for i, (row, label) in enumerate(zip(z, y)):
        top = int(np.argmax(row))
        if top != label:
            out[i, top], out[i, label] = row[label], row[top]
    return out


def np_kd(z_s: np.ndarray, z_t: np.ndarray, T: float) -> float:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over the batch."""
    lp_s, lp_t = np_log_softmax(z_s / T, axis=1), np_log_softmax(z_t / T, axis=1)
    return float((np.exp(lp_t) * (lp_t - lp_s)).sum(1).mean() * T * T)


def test_sld_loss_matches_the_papers_definition_on_random_logits():
    g = torch.Generator().manual_seed(3)
    z_s = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    z_t = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (8,), generator=g)
    s, t, labels = z_s.numpy(), z_t.numpy(), y.numpy()
    temps = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    teacher_only = sum(np_kd(s, np_swap(t, labels), T) for T in temps)
    both = teacher_only + sum(np_kd(s, np_swap(s, labels), T) for T in temps)
    assert (np.argmax(t, 1) != labels).any() and (np.argmax(s, 1) != labels).any()  # the swaps matter
    assert sld_loss(z_s, z_t, y, temps).item() == pytest.approx(teacher_only, rel=1e-9)
    z_s.requires_grad_(True)
    loss = sld_loss(z_s, z_t, y, temps, z_self=z_s)
    assert loss.item() == pytest.approx(both, rel=1e-9)
    loss.backward()  # the self target is detached: gradient flows through the prediction only
    manual = z_s.detach().clone().requires_grad_(True)
    (sld_loss(manual, z_t, y, temps) + sum(kd_loss(manual, drkd_rectify(z_s.detach(), y), T) for T in temps)).backward()
    assert torch.allclose(z_s.grad, manual.grad)


def test_sld_adds_the_students_own_swapped_target_from_self_start_on():
    student, teacher = tiny_cnn(8, seed=0), tiny_cnn(16, seed=2)
    method = build_method("sld", student, teacher, {"augment": "none"}, num_classes=C, epochs=8)
    assert method.self_epoch == 5  # ceil(0.625 * 8): the release's epoch 150 of 240
    method.eval()
    x, y = batch()
    temps = [float(t) for t in range(1, 7)]
    early_logits, early = method.forward_train(x, y, epoch=4)
    late_logits, late = method.forward_train(x, y, epoch=5)
    with torch.no_grad():
        z_t = method.teacher(x)
    assert early["kd"].item() == pytest.approx(0.9 * sld_loss(early_logits, z_t, y, temps).item(), rel=1e-5)
    assert late["kd"].item() == pytest.approx(0.9 * sld_loss(late_logits, z_t, y, temps, late_logits).item(), rel=1e-5)
    assert late["kd"].item() > early["kd"].item()
    assert early["ce"].item() == pytest.approx(0.1 * F.cross_entropy(early_logits, y).item(), rel=1e-5)
    with pytest.raises(EdgeKDError, match="drop --rectify"):
        build_method("sld", tiny_cnn(8), tiny_cnn(16), num_classes=C, rectify=True)


def test_sld_student_sees_weak_and_strong_views_in_separate_calls():
    method = make("sld")
    method.train()
    calls = {n: CountCalls(getattr(method, n)) for n in ("student", "teacher")}
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    assert {n: c.sizes for n, c in calls.items()} == {"student": [B, B], "teacher": [2 * B]}
    with torch.no_grad():
        assert torch.allclose(logits, method.student(x), atol=1e-6)  # the weak (as loaded) view's logits
    # both views' CE: more than the weak view's alone unless the strong view is free of error
    assert terms["ce"].item() > 0.1 * F.cross_entropy(logits, y).item() - 1e-6


def test_r2kd_release_preset_is_the_authors_objective_and_options_override_it():
    method = make("r2kd", {"preset": "release", "augment": "none"})
    assert (method.args["rank"], method.args["prune"], method.args["prune_ratio"]) == ("hard", "l1-unstructured", 0.1)
    for m in method.pruned_teacher.modules():
        if isinstance(m, nn.Conv2d):  # unstructured: the shapes stay, a tenth of the weights are zero
            assert (m.weight == 0).float().mean().item() == pytest.approx(0.1, abs=0.02)
    x, y = batch()
    _, terms = method.forward_train(x, y, epoch=0)
    assert not terms["rank"].requires_grad  # hard ranks pass no gradient, as in the release
    assert {k: make("r2kd").args[k] for k in ("preset", "rank", "prune")} == {
        "preset": "release", "rank": "hard", "prune": "l1-unstructured"}  # the release is the default
    own = make("r2kd", {"preset": "edgekd"}).args
    assert (own["rank"], own["prune"], own["prune_ratio"]) == ("soft", "structured", 0.1)
    assert make("r2kd", {"preset": "release", "rank": "soft"}).args["rank"] == "soft"
    assert make("r2kd", {"preset": "edgekd", "rank": "hard"}).args["rank"] == "hard"
    with pytest.raises(EdgeKDError, match="preset must be one of"):
        make("r2kd", {"preset": "paper"})


def test_drkd_weight_schedules():
    def weights(args, epochs=10):
        m = build_method("drkd", tiny_cnn(), None, args, num_classes=C, epochs=epochs)
        return [round(m.weight(e), 6) for e in range(epochs)]

    assert weights({"schedule": "constant", "alpha": 0.5}) == [0.5] * 10
    assert weights({"schedule": "linear", "alpha": 0.8}) == [round(0.08 * (e + 1), 6) for e in range(10)]  # PS-KD
    assert weights({"schedule": "constant", "alpha": 0.5, "start": 0.3}) == [0.0] * 3 + [0.5] * 7
    assert weights({"schedule": "linear", "alpha": 0.8, "start": 0.5}) == [0.0] * 5 + [0.16, 0.32, 0.48, 0.64, 0.8]
    m = build_method("drkd", tiny_cnn(), None, {"alpha": 0.8}, num_classes=C, epochs=4)
    assert m.weight(7) == 0.8  # a resumed run trained past its planned length keeps the full weight, no more
    with pytest.raises(EdgeKDError, match="schedule must be one of"):
        weights({"schedule": "cosine"})


def test_drkd_online_target_is_the_students_own_rectified_logits():
    method = build_method("drkd", tiny_cnn(), None,
                          {"teacher": "online", "alpha": 0.5, "schedule": "constant", "smoothing": 0.0}, num_classes=C)
    assert method.teacher is None and method.teacher_label(method.args) == "self (own logits, same forward)"
    method.eval()
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    target = drkd_rectify(logits.detach(), y)
    assert terms["kd"].item() == pytest.approx(0.5 * kd_loss(logits, target, 4.0).item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)  # ce: full
    # the KD term's gradient: none for samples the student gets right, some for those it gets wrong
    z = logits.detach().clone().requires_grad_(True)
    kd_loss(z, drkd_rectify(z.detach(), y), 4.0).backward()
    right = z.detach().argmax(1) == y
    assert (~right).any()
    assert torch.allclose(z.grad[right], torch.zeros_like(z.grad[right]), atol=1e-7)
    assert (z.grad[~right].abs().sum(1) > 1e-4).all()


@pytest.mark.parametrize("args", [{"smoothing": 0.2}, {"target_T": 8.0, "smoothing": 0.0}])
def test_drkd_softened_online_target_pulls_right_samples_towards_less_confidence(args):
    method = build_method("drkd", tiny_cnn(), None, {"alpha": 0.5, "schedule": "constant", **args}, num_classes=C)
    method.eval()
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    target = drkd_target(logits.detach(), y, args.get("target_T", 4.0), args["smoothing"])
    assert terms["kd"].item() == pytest.approx(0.5 * kd_loss_to_target(logits, target, 4.0).item(), rel=1e-5)
    # unlike the plain online target, this one has a gradient where the student is right: it lowers the top logit
    z = logits.detach().clone().requires_grad_(True)
    kd_loss_to_target(z, target, 4.0).backward()
    right = z.detach().argmax(1) == y
    assert right.any()
    assert (z.grad[right, :].gather(1, y[right, None]) > 1e-6).all()
    with pytest.raises(EdgeKDError, match="option smoothing must be in"):
        build_method("drkd", tiny_cnn(), None, {"smoothing": 1.5}, num_classes=C)
    with pytest.raises(EdgeKDError, match=r"option target_T must be >= 0 \(0: the same as T\)"):
        build_method("drkd", tiny_cnn(), None, {"target_T": -1}, num_classes=C)


def test_drkd_ce_full_keeps_the_labels_whole_weight():
    args = {"alpha": 0.5, "schedule": "constant"}
    x, y = batch()
    terms = {}
    for ce in ("complement", "full"):
        method = build_method("drkd", tiny_cnn(), None, {**args, "ce": ce}, num_classes=C)
        method.eval()
        logits, terms[ce] = method.forward_train(x, y, epoch=0)
    ce_loss = F.cross_entropy(logits, y).item()
    assert terms["full"]["ce"].item() == pytest.approx(ce_loss, rel=1e-5)
    assert terms["complement"]["ce"].item() == pytest.approx(0.5 * ce_loss, rel=1e-5)
    assert terms["full"]["kd"].item() == pytest.approx(terms["complement"]["kd"].item(), rel=1e-5)
    with pytest.raises(EdgeKDError, match="ce must be one of complement, full"):
        build_method("drkd", tiny_cnn(), None, {"ce": "half"}, num_classes=C)


def test_logit_standardization_is_the_papers_z_score_and_ignores_shift_and_scale():
    from edgekd.losses import kd_loss, standardize_logits

    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 10, generator=g, dtype=torch.float64) * 3 + 2
    x = z.numpy()
    expected = (x - x.mean(1, keepdims=True)) / np.sqrt(((x - x.mean(1, keepdims=True)) ** 2).mean(1, keepdims=True))
    assert np.allclose(standardize_logits(z).numpy(), expected, atol=1e-6)
    z_t = torch.randn(7, 10, generator=g, dtype=torch.float64)
    plain = kd_loss(standardize_logits(z), standardize_logits(z_t), 2.0)
    for scale, shift in ((0.1, -3.0), (5.0, 40.0)):  # the student's logits, shifted and rescaled: the same loss
        assert torch.allclose(kd_loss(standardize_logits(scale * z + shift), standardize_logits(z_t), 2.0), plain)
    assert not torch.allclose(kd_loss(5.0 * z, z_t, 2.0), kd_loss(z, z_t, 2.0))  # without it, the scale matters


@pytest.mark.parametrize("name", list_methods())
def test_every_method_whose_loss_softens_logits_takes_the_logit_std_plugin(name):
    cls = method_class(name)
    if not cls.softens_logits:
        with pytest.raises(EdgeKDError, match="has no option.*logit_std"):
            cls.check_args({"logit_std": True})
        return
    x, y = batch()
    terms = {}
    for on in (False, True):
        torch.manual_seed(0)
        method = make(name, {"logit_std": on})
        method.train()
        method.on_epoch_start(1)
        _, terms[on] = method.forward_train(x, y, epoch=1)
    assert set(terms[True]) == set(terms[False]) and all(torch.isfinite(v) for v in terms[True].values())
    assert torch.equal(terms[True]["ce"], terms[False]["ce"])  # cross-entropy keeps the raw logits
    distill = [k for k in terms[True] if k != "ce"]
    assert any(not torch.allclose(terms[True][k], terms[False][k]) for k in distill)
