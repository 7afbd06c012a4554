"""Tests for MixUp / CutMix (nenya.data.mixing) against direct computations."""

import numpy as np
import pytest
import torch
from scipy import stats

from nenya.data.mixing import Mixer, cutmix_box
from nenya.errors import NenyaError

K = 5


def batch(size=6, channels=2, height=8, width=10, seed=0):
    """Random images and distinct labels 0..size-1 (mod K)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(size, channels, height, width, generator=gen), torch.arange(size) % K


def one_hot(labels, smoothing=0.0):
    """Direct numpy (1 - eps) * one_hot + eps / K."""
    out = np.zeros((len(labels), K))
    out[np.arange(len(labels)), np.asarray(labels)] = 1.0
    return out * (1 - smoothing) + smoothing / K


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0), (0.0, 0.0)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_targets_sum_to_one(mixup_alpha, cutmix_alpha, smoothing):
    torch.manual_seed(0)
    mixer = Mixer(K, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=smoothing)
    images, labels = batch()
    for _ in range(20):
        mixed, targets = mixer(images, labels)
        assert mixed.shape == images.shape and targets.shape == (6, K) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
        assert (targets >= 0).all()


@pytest.mark.parametrize("alpha", [0.2, 0.4, 2.0])
def test_mixup_lambda_is_drawn_from_beta_alpha_alpha(alpha):
    torch.manual_seed(0)
    mixer = Mixer(K, mixup_alpha=alpha, cutmix_alpha=0.0)
    images, labels = batch(size=2)
    lams = np.array([mixer.mix(images, labels)[2]["lam"] for _ in range(3000)])
    mean, var = 0.5, alpha * alpha / ((2 * alpha) ** 2 * (2 * alpha + 1))  # Beta(a, a) moments
    assert abs(lams.mean() - mean) < 4 * np.sqrt(var / len(lams))
    assert abs(lams.var() - var) < 0.1 * var
    assert stats.kstest(lams, "beta", args=(alpha, alpha)).pvalue > 1e-3


def test_mixup_pixels_and_targets_are_the_convex_combination():
    torch.manual_seed(0)
    mixer = Mixer(K, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    images, labels = batch()
    mixed, targets, info = mixer.mix(images, labels)
    lam, perm = info["lam"], info["perm"].numpy()
    assert info["kind"] == "mixup" and 0 < lam < 1 and sorted(perm) == list(range(6))
    x = images.numpy()
    np.testing.assert_allclose(mixed.numpy(), lam * x + (1 - lam) * x[perm], rtol=1e-6, atol=1e-6)
    y = one_hot(labels.numpy(), 0.1)
    np.testing.assert_allclose(targets.numpy(), lam * y + (1 - lam) * y[perm], rtol=1e-6, atol=1e-6)


def test_cutmix_box_comes_from_the_permuted_images_and_weights_its_area():
    clipped = 0
    for seed in range(60):
        torch.manual_seed(seed)
        mixer = Mixer(K, mixup_alpha=0.0, cutmix_alpha=1.0)
        images, labels = batch(seed=seed)
        mixed, targets, info = mixer.mix(images, labels)
        perm = info["perm"].numpy()
        top, bottom, left, right = info["box"]
        inside = np.zeros((8, 10), bool)
        inside[top:bottom, left:right] = True
        x, m = images.numpy(), mixed.numpy()
        np.testing.assert_array_equal(m[:, :, inside], x[perm][:, :, inside])
        np.testing.assert_array_equal(m[:, :, ~inside], x[:, :, ~inside])
        # The pasted fraction, counted from the pixels that changed (labels i and perm[i] differ).
        for i in np.flatnonzero(labels.numpy()[perm] != labels.numpy()):
            changed = (m[i] != x[i]).any(0).mean()
            assert changed == pytest.approx(inside.mean())
            assert targets[i, labels[perm[i]]].item() == pytest.approx(changed, abs=1e-6)
            assert targets[i, labels[i]].item() == pytest.approx(1 - changed, abs=1e-6)
        if inside.sum() and (top == 0 or left == 0 or bottom == 8 or right == 10):
            clipped += 1
    assert clipped > 0  # some boxes hit the border, and the target still follows the pasted area


@pytest.mark.parametrize("lam", [0.75, 0.36, 0.9])
def test_cutmix_box_has_the_drawn_area_unless_the_border_clips_it(lam):
    torch.manual_seed(0)
    height, width = 20, 30
    side = np.sqrt(1 - lam)  # the box's side, as a fraction of the image's
    unclipped = 0
    for _ in range(300):
        top, bottom, left, right = cutmix_box(height, width, lam)
        assert 0 <= top <= bottom <= height and 0 <= left <= right <= width
        assert bottom - top <= int(height * side) and right - left <= int(width * side)
        if 0 < top and bottom < height and 0 < left and right < width:
            unclipped += 1
            assert (bottom - top, right - left) == (int(height * side), int(width * side))
    assert unclipped >= 3  # (some boxes of each size fit inside)


def test_mixup_prob_and_switch_prob_are_the_probabilities_of_mixing_and_of_cutmix():
    torch.manual_seed(0)
    mixer = Mixer(K, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=0.6, mixup_switch_prob=0.25)
    images, labels = batch(size=2)
    kinds = [mixer.mix(images, labels)[2]["kind"] for _ in range(2000)]
    mixed = [k for k in kinds if k != "none"]
    assert abs(len(mixed) / 2000 - 0.6) < 0.04
    assert abs(mixed.count("cutmix") / len(mixed) - 0.25) < 0.04


def test_unmixed_batches_get_smoothed_one_hot_targets():
    mixer = Mixer(K, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=0.0, label_smoothing=0.2)
    images, labels = batch()
    mixed, targets = mixer(images, labels)
    assert mixed is images
    np.testing.assert_allclose(targets.numpy(), one_hot(labels.numpy(), 0.2), rtol=1e-6)


def test_the_same_seed_gives_the_same_mix():
    images, labels = batch()
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        mixer = Mixer(K)
        outs.append([mixer(images, labels) for _ in range(4)])
    for (a, ta), (b, tb) in zip(*outs):
        assert torch.equal(a, b) and torch.equal(ta, tb)


@pytest.mark.parametrize("kwargs, text", [({"mixup_alpha": -0.2}, "mixup_alpha must be >= 0"),
                                          ({"mixup_prob": 1.5}, "mixup_prob is a probability"),
                                          ({"mixup_switch_prob": -1}, "mixup_switch_prob is a probability"),
                                          ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)")])
def test_bad_values_are_errors(kwargs, text):
    with pytest.raises(NenyaError) as err:
        Mixer(K, **kwargs)
    assert text in str(err.value)
