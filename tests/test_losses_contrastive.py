"""Tests for SupConLoss against a direct loop-by-loop float64 computation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nenya.losses import SupConLoss


def reference_supcon(features, labels=None, mask=None, temperature=0.07,
                     base_temperature=0.07, contrast_mode="all"):
    """SupCon loss written out anchor by anchor and positive by positive in float64."""
    f = np.asarray(features, dtype=np.float64)
    batch_size, n_views, _ = f.shape

    def is_positive(i, j):
        if labels is not None:
            return labels[i] == labels[j]
        if mask is not None:
            return bool(mask[i][j])
        return i == j

    views = [(b, v) for v in range(n_views) for b in range(batch_size)]
    anchor_views = views if contrast_mode == "all" else [(b, 0) for b in range(batch_size)]
    anchor_losses = []
    for a in anchor_views:
        others = [o for o in views if o != a]
        similarity = {o: float(f[a] @ f[o]) / temperature for o in others}
        denominator = sum(math.exp(s) for s in similarity.values())
        positives = [o for o in others if is_positive(a[0], o[0])]
        if not positives:
            continue
        log_probs = [math.log(math.exp(similarity[p]) / denominator) for p in positives]
        anchor_losses.append(-(temperature / base_temperature) * sum(log_probs) / len(log_probs))
    return sum(anchor_losses) / len(anchor_losses) if anchor_losses else 0.0


def unit_features(batch_size, n_views, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch_size, n_views, dim, generator=generator,
                                   dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("n_views", [2, 3])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_simclr_matches_reference(n_views, contrast_mode):
    features = unit_features(6, n_views, 8)
    loss = SupConLoss(temperature=0.5, contrast_mode=contrast_mode)(features)
    expected = reference_supcon(features, temperature=0.5, contrast_mode=contrast_mode)
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n_views", [1, 2, 3])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_supcon_with_labels_matches_reference(n_views, contrast_mode):
    features = unit_features(8, n_views, 5, seed=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 0, 2])
    loss = SupConLoss(temperature=0.1, contrast_mode=contrast_mode)(features, labels=labels)
    expected = reference_supcon(features, labels=labels.tolist(), temperature=0.1,
                                contrast_mode=contrast_mode)
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_temperature_differs_from_base_temperature():
    features = unit_features(5, 2, 4, seed=2)
    labels = torch.tensor([3, 3, 1, 1, 1])
    criterion = SupConLoss(temperature=0.2, base_temperature=0.07)
    expected = reference_supcon(features, labels=labels.tolist(), temperature=0.2,
                                base_temperature=0.07)
    assert criterion(features, labels=labels).item() == pytest.approx(expected, rel=1e-6)


def test_user_mask_matches_reference():
    features = unit_features(4, 2, 6, seed=3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [1, 0, 0, 1]])
    loss = SupConLoss(temperature=0.3)(features, mask=mask)
    expected = reference_supcon(features, mask=mask.tolist(), temperature=0.3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_float32_default_temperature_matches_reference():
    features = unit_features(16, 2, 32, seed=4)
    labels = torch.arange(16) % 4
    loss = SupConLoss()(features.float(), labels=labels)
    expected = reference_supcon(features, labels=labels.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_distinct_labels_equal_simclr():
    features = unit_features(6, 2, 8, seed=5)
    criterion = SupConLoss()
    torch.testing.assert_close(criterion(features, labels=torch.arange(6)), criterion(features))


def test_two_dimensional_features_are_one_view():
    features = unit_features(6, 1, 8, seed=6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    criterion = SupConLoss()
    torch.testing.assert_close(criterion(features[:, 0], labels=labels),
                               criterion(features, labels=labels))


def test_anchors_without_positives_are_left_out():
    features = unit_features(4, 1, 8, seed=7).requires_grad_()
    labels = torch.tensor([0, 0, 1, 2])
    loss = SupConLoss()(features, labels=labels)
    expected = reference_supcon(features.detach(), labels=labels.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_zero_mask_row_gives_finite_loss_and_gradients():
    features = unit_features(3, 2, 8, seed=8).requires_grad_()
    mask = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    loss = SupConLoss()(features, mask=mask)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference_supcon(features.detach(), mask=mask.tolist()))
    loss.backward()
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_no_positive_anywhere_gives_zero_with_gradient(batch_size):
    features = unit_features(batch_size, 1, 8, seed=9).requires_grad_()
    loss = SupConLoss()(features, labels=torch.arange(batch_size))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_tiny_temperature_stays_finite():
    features = unit_features(6, 2, 8, seed=10).float()
    loss = SupConLoss(temperature=1e-3, base_temperature=1e-3)(features)
    assert torch.isfinite(loss)


def test_loss_decreases_when_optimising_free_features():
    torch.manual_seed(0)
    raw = torch.randn(8, 2, 16, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    criterion = SupConLoss(temperature=0.1)
    optimizer = torch.optim.SGD([raw], lr=0.5)
    losses = []
    for _ in range(40):
        loss = criterion(F.normalize(raw, dim=-1), labels=labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_labels_and_mask_together_raise():
    features = unit_features(3, 2, 4)
    with pytest.raises(ValueError, match="not both"):
        SupConLoss()(features, labels=torch.arange(3), mask=torch.eye(3))


def test_unknown_contrast_mode_raises():
    with pytest.raises(ValueError, match="'some'"):
        SupConLoss(contrast_mode="some")


@pytest.mark.parametrize(
    "features, kwargs",
    [
        (torch.randn(3, 2, 4, 1), {}),
        (torch.randn(3, 2, 4), {"labels": torch.arange(4)}),
        (torch.randn(3, 2, 4), {"mask": torch.eye(4)}),
    ],
)
def test_bad_shapes_raise(features, kwargs):
    with pytest.raises(ValueError):
        SupConLoss()(features, **kwargs)


def test_non_positive_temperature_raises():
    with pytest.raises(ValueError):
        SupConLoss(temperature=0.0)
