"""Every registered distillation method on tiny CNNs: outputs, loss wiring, what a step may and may not change."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax as np_softmax
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.losses import dkd_loss, drkd_rectify, kd_loss, r2kd_rank_loss, r2kd_value_loss
from edgekd.methods import build_method, list_methods, method_class
from edgekd.methods.r2kd import AUGMENTATIONS, BatchAutoAugment
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


EXPECTED_TERMS = {
    "ce": {"ce"}, "lsr": {"ce"}, "kd": {"ce", "kd"}, "dist": {"ce", "kd"}, "dkd": {"ce", "kd"},
    "tfkd-self": {"ce", "kd"}, "tfkd-reg": {"ce", "kd"}, "drkd": {"ce", "kd"}, "r2kd": {"ce", "value", "rank"},
}


def test_all_methods_registered():
    assert set(list_methods()) == set(EXPECTED_TERMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_TERMS))
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
    assert set(terms) == EXPECTED_TERMS[name]
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
    if name in ("kd", "dist", "dkd", "r2kd", "tfkd-self", "drkd"):
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


def test_tfkd_self_scales_kd_like_the_release():
    method = make("tfkd-self", {"multiplier": 2.0})
    x, y = batch()
    logits, terms = method.forward_train(x, y, epoch=0)
    z_s, z_t = logits.detach().double().numpy(), method.teacher(x).detach().double().numpy()
    lp_s, lp_t = np_log_softmax(z_s / 20, axis=1), np_log_softmax(z_t / 20, axis=1)
    kl_mean = (np.exp(lp_t) * (lp_t - lp_s)).sum() / (B * C)  # nn.KLDivLoss() default: mean over all entries
    assert terms["kd"].item() == pytest.approx(0.95 * 2.0 * 400 * kl_mean, rel=1e-3)  # float32 KL of close distributions
    with pytest.raises(EdgeKDError, match="copy of the student"):
        build_method("tfkd-self", tiny_cnn(8), tiny_cnn(16), num_classes=C)


def test_drkd_dynamic_snapshot():
    method = make("drkd")
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
    with torch.no_grad():
        z_t = drkd_rectify(method.teacher(x), y)
    assert terms["kd"].item() == pytest.approx(0.9 * kd_loss(logits, z_t, 4.0).item(), rel=1e-5)
    opt.zero_grad()
    sum(terms.values()).backward()
    opt.step()
    assert not same(state(method.student), snapshot)
    assert same(state(method.teacher), teacher_state)  # the snapshot does not follow later updates

    method.on_epoch_start(2)
    assert torch.allclose(method.teacher(x), eval_logits(method.student, x), atol=1e-5)
    assert not torch.allclose(method.teacher(x), student_logits, atol=1e-3)


def test_drkd_teacher_modes_are_validated():
    with pytest.raises(EdgeKDError, match="pretrained needs"):
        build_method("drkd", tiny_cnn(), None, {"teacher": "pretrained"}, num_classes=C)
    with pytest.raises(EdgeKDError, match="dynamic makes its own"):
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
    assert {n: c.sizes for n, c in calls.items()} == {"student": [B] * views, "teacher": [views * B], "pruned_teacher": [views * B]}
    assert logits.shape == (B, C)
    with torch.no_grad():
        assert torch.allclose(logits, method.student(x), atol=1e-6)
    assert terms["rank"].requires_grad == (rank == "soft")
    assert terms["value"].requires_grad and terms["value"].item() > 0
    sum(terms.values()).backward()


def test_r2kd_pruned_teacher_is_smaller_frozen_and_made_once():
    method = make("r2kd")
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
    with pytest.raises(EdgeKDError, match="input_shape"):
        build_method("r2kd", tiny_cnn(8), tiny_cnn(16), num_classes=C)


def test_r2kd_l1_unstructured_pruned_teacher():
    method = make("r2kd", {"prune": "l1-unstructured"})
    for m, t in zip(method.pruned_teacher.modules(), method.teacher.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert (m.weight == 0).sum().item() == round(0.1 * m.weight.numel())
            assert m.weight.shape == t.weight.shape
    with pytest.raises(EdgeKDError, match="prune must be one of"):
        make("r2kd", {"prune": "random"})
    with pytest.raises(EdgeKDError, match="augment must be one of"):
        make("r2kd", {"augment": "rotate"})


def test_r2kd_targets_ensemble_teacher_and_pruned_teacher():
    method = make("r2kd", {"augment": "none", "rank": "hard", "teacher_weight": 0.7})
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
    views = method._views(x, y)
    assert torch.equal(views[:B], x)
    changed = (views[B:] != x).any(dim=1)  # (B, H, W)
    assert torch.equal(changed[0], changed[-1])  # one hole for the whole batch, as the release
    rows, cols = changed[0].nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (4, 4)
    assert (views[B:][:, :, rows, cols] == 0).all()


def test_r2kd_cutmix_pastes_patches_from_the_batch():
    method = make("r2kd")
    torch.manual_seed(0)
    x, y = batch()
    mixed = method._views(x, y)[B:]
    for i in range(B):
        diff = (mixed[i] != x[i]).any(0)
        if diff.any():
            donors = [j for j in range(B) if torch.equal(mixed[i][:, diff], x[j][:, diff])]
            assert donors and i not in donors
    assert not torch.equal(mixed, x)

