"""Tests for the classification losses against their formulas written out in numpy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from nenya.data.mixing import Mixer
from nenya.errors import NenyaError
from nenya.losses.classification import (ClassificationLoss, FocalLoss, LabelSmoothingCrossEntropy,
                                         class_weights, focal_loss, smoothed_cross_entropy)

K = 4


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def as_distribution(targets):
    targets = np.asarray(targets)
    if targets.ndim == 1:
        out = np.zeros((len(targets), K))
        out[np.arange(len(targets)), targets] = 1.0
        return out
    return targets.astype(np.float64)


def ref_focal(logits, targets, gamma, weight=None):
    """-mean_i sum_k w_k t_ik (1 - p_ik)^gamma log p_ik, loop by loop."""
    p, t = softmax(logits), as_distribution(targets)
    w = np.ones(K) if weight is None else np.asarray(weight, np.float64)
    total = 0.0
    for i in range(len(p)):
        for k in range(K):
            total += -w[k] * t[i, k] * (1 - p[i, k]) ** gamma * np.log(p[i, k])
    return total / len(p)


def ref_smoothed_ce(logits, targets, eps, weight=None):
    """-mean_i sum_k w_k ((1 - eps) t_ik + eps / K) log p_ik."""
    p, t = softmax(logits), as_distribution(targets)
    w = np.ones(K) if weight is None else np.asarray(weight, np.float64)
    t = (1 - eps) * t + eps / K
    return float(-(w * t * np.log(p)).sum(1).mean())


def data(seed=0, batch=8):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, K, generator=gen) * 3
    labels = torch.randint(0, K, (batch,), generator=gen)
    return logits, labels


def mixed_targets(labels, seed=0):
    """Soft targets from MixUp (label smoothing 0.1 inside)."""
    torch.manual_seed(seed)
    images = torch.rand(len(labels), 1, 4, 4)
    return Mixer(K, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)(images, labels)[1]


WEIGHTS = [None, [0.5, 2.0, 1.0, 1.5]]


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("soft", [False, True])
def test_focal_loss_matches_its_formula(gamma, weight, soft):
    logits, labels = data()
    targets = mixed_targets(labels) if soft else labels
    if soft:
        assert not np.isin(targets.numpy(), (0.0, 1.0)).all()  # really soft
    loss = FocalLoss(gamma, None if weight is None else torch.tensor(weight))(logits, targets)
    assert loss.item() == pytest.approx(ref_focal(logits.numpy(), targets.numpy(), gamma, weight), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("soft", [False, True])
def test_label_smoothed_cross_entropy_matches_its_formula(eps, weight, soft):
    logits, labels = data(1)
    targets = mixed_targets(labels, 1) if soft else labels
    loss = LabelSmoothingCrossEntropy(eps, None if weight is None else torch.tensor(weight))(logits, targets)
    assert loss.item() == pytest.approx(ref_smoothed_ce(logits.numpy(), targets.numpy(), eps, weight), rel=1e-5)


def test_gamma_zero_focal_is_cross_entropy_and_smoothing_matches_torch():
    logits, labels = data(2)
    soft = mixed_targets(labels, 2)
    torch.testing.assert_close(focal_loss(logits, labels, gamma=0.0), F.cross_entropy(logits, labels))
    torch.testing.assert_close(focal_loss(logits, soft, gamma=0.0), F.cross_entropy(logits, soft))
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels, 0.1),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))
    weight = torch.tensor(WEIGHTS[1])  # torch's soft-target CE with weights is also a plain batch mean
    torch.testing.assert_close(focal_loss(logits, soft, 0.0, weight), F.cross_entropy(logits, soft, weight=weight))


@pytest.mark.parametrize("soft", [False, True])
def test_combined_loss_is_half_focal_plus_half_smoothed_ce(soft):
    logits, labels = data(3)
    targets = mixed_targets(labels, 3) if soft else labels
    x, t = logits.numpy(), targets.numpy()
    default = ClassificationLoss()(logits, targets).item()
    assert default == pytest.approx(0.5 * ref_focal(x, t, 2.0) + 0.5 * ref_smoothed_ce(x, t, 0.1), rel=1e-5)
    weight = WEIGHTS[1]
    custom = ClassificationLoss(focal_weight=0.3, ce_weight=1.2, gamma=1.0, smoothing=0.2,
                                weight=torch.tensor(weight))
    expected = 0.3 * ref_focal(x, t, 1.0, weight) + 1.2 * ref_smoothed_ce(x, t, 0.2, weight)
    assert custom(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    terms = custom.terms(logits, targets)
    assert terms["focal"].item() == pytest.approx(ref_focal(x, t, 1.0, weight), rel=1e-5)


def test_losses_are_float32_under_half_precision_logits():
    logits, labels = data(4)
    for dtype in (torch.float16, torch.bfloat16):
        low = logits.to(dtype)
        for loss in (FocalLoss(), LabelSmoothingCrossEntropy(), ClassificationLoss()):
            value = loss(low, labels)
            assert value.dtype == torch.float32
            torch.testing.assert_close(value, loss(low.float(), labels))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_loss_is_finite_for_confident_logits(gamma):
    logits = torch.tensor([[60.0, -60.0, 0.0, 0.0], [-80.0, 80.0, 0.0, 0.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 0]), gamma=gamma)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and loss.item() > 10


def test_class_weights_are_sklearns_balanced_weights():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    expected = compute_class_weight("balanced", classes=np.arange(K), y=labels)
    np.testing.assert_allclose(class_weights(labels, K).numpy(), expected, rtol=1e-6)
    # Mean weight over the samples is 1, so weighted losses keep the unweighted scale.
    assert class_weights(labels, K)[labels].mean().item() == pytest.approx(1.0)
    # A class with no sample counts as one sample (finite weight N / K).
    assert class_weights([0, 0, 1], 3).tolist() == pytest.approx([0.5, 1.0, 1.0])
    with pytest.raises(NenyaError, match=r"labels must be in 0..3 for 4 classes, got 0..4"):
        class_weights([0, 4], K)


def test_bad_loss_settings_are_errors():
    with pytest.raises(NenyaError, match="focal gamma must be >= 0"):
        FocalLoss(gamma=-1)
    with pytest.raises(NenyaError, match=r"label_smoothing must be in \[0.0, 1.0\)"):
        LabelSmoothingCrossEntropy(1.0)


@pytest.mark.parametrize("soft", [False, True])
def test_the_loss_option_builds_each_formula_with_smoothing_and_weights(soft):
    from nenya.losses.classification import build_classification_loss
    logits, labels = data(4)
    targets = mixed_targets(labels, 4) if soft else labels
    x, t = logits.numpy(), targets.numpy()
    weight = WEIGHTS[1]
    w = torch.tensor(weight)
    smoothed = (1 - 0.2) * as_distribution(t) + 0.2 / K  # focal alone: the targets are smoothed first
    expected = {"ce": ref_smoothed_ce(x, t, 0.2, weight), "focal": ref_focal(x, smoothed, 1.5, weight),
                "combined": 0.5 * ref_focal(x, t, 1.5, weight) + 0.5 * ref_smoothed_ce(x, t, 0.2, weight)}
    for kind, value in expected.items():
        loss = build_classification_loss(kind, gamma=1.5, smoothing=0.2, weight=w)(logits, targets)
        assert loss.dtype == torch.float32 and loss.item() == pytest.approx(value, rel=1e-5), kind
    with pytest.raises(NenyaError, match="hinge"):
        build_classification_loss("hinge")
