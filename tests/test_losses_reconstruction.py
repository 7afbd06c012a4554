"""Tests for MAESpectralLoss against a direct loop-by-loop float64 computation."""

import math

import numpy as np
import pytest
import torch

from nenya.losses.reconstruction import MAESpectralLoss

BAND_PATCH = 3
PIXELS = 4
TERMS = ("mse", "sam", "variance", "range")


def reference_terms(pred, target, mask, masked_only=True, norm_pix_loss=False, valid_range=(0.0, 1.0),
                    band_patch=BAND_PATCH, eps=1e-7):
    """The four unweighted terms, patch by patch, pixel by pixel and band by band, in float64."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    batch, length, values = pred.shape
    cubes = []
    for b in range(batch):
        every = [(b, token) for token in range(length)]
        included = [(b, token) for b, token in every if not masked_only or mask[b, token] == 1] or every
        cubes.append(cube_terms(pred, target, included, norm_pix_loss, valid_range, band_patch, eps))
    return {name: sum(cube[name] for cube in cubes) / batch for name in TERMS}  # mean over cubes


def cube_terms(pred, target, included, norm_pix_loss, valid_range, band_patch, eps):
    """The four terms of one cube: means over its ``included`` (cube, token) patches."""
    values = pred.shape[2]
    pixels = values // band_patch
    sums = dict.fromkeys(TERMS, 0.0)
    for b, token in included:
        t = list(target[b, token])
        p = list(pred[b, token])
        if norm_pix_loss:
            mean = sum(t) / values
            std = math.sqrt(sum((v - mean) ** 2 for v in t) / (values - 1) + 1e-6)
            sums["mse"] += sum((p[i] - (t[i] - mean) / std) ** 2 for i in range(values)) / values
            p = [v * std + mean for v in p]
        else:
            sums["mse"] += sum((p[i] - t[i]) ** 2 for i in range(values)) / values
        for k in range(pixels):
            ps = [p[c * pixels + k] for c in range(band_patch)]
            ts = [t[c * pixels + k] for c in range(band_patch)]
            dot = sum(a * b for a, b in zip(ps, ts))
            norm = math.sqrt(sum(a * a for a in ps)) * math.sqrt(sum(b * b for b in ts))
            cosine = min(max(dot / max(norm, eps), -1 + eps), 1 - eps)
            sums["sam"] += math.acos(cosine) / pixels
            mean_p, mean_t = sum(ps) / band_patch, sum(ts) / band_patch
            var_p = sum((a - mean_p) ** 2 for a in ps) / band_patch
            var_t = sum((b - mean_t) ** 2 for b in ts) / band_patch
            sums["variance"] += max(var_t - var_p, 0.0) / pixels
        if valid_range is not None:
            low, high = valid_range
            sums["range"] += sum((max(v - high, 0) + max(low - v, 0)) ** 2 for v in p) / values
    return {name: total / len(included) for name, total in sums.items()}


def make_batch(batch=2, length=6, seed=0, dtype=torch.float64):
    """pred (partly outside [0, 1]), target in [0, 1] and a mask with masked and visible patches."""
    generator = torch.Generator().manual_seed(seed)
    values = BAND_PATCH * PIXELS
    target = torch.rand(batch, length, values, generator=generator, dtype=dtype)
    pred = torch.rand(batch, length, values, generator=generator, dtype=dtype) * 1.6 - 0.3
    mask = torch.zeros(batch, length)
    mask[0, [0, 2, 3]] = 1
    mask[1, [1, 5]] = 1
    return pred, target, mask


def loss_fn(**kwargs):
    return MAESpectralLoss(**{"band_patch": BAND_PATCH, **kwargs})


@pytest.mark.parametrize("masked_only", [True, False])
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_terms_match_reference(masked_only, norm_pix_loss):
    pred, target, mask = make_batch()
    if norm_pix_loss:
        pred = (pred - 0.5) * 6  # normalised units, wide enough to leave the valid range once mapped back
    _, parts = loss_fn(masked_only=masked_only, norm_pix_loss=norm_pix_loss)(pred, target, mask)
    expected = reference_terms(pred, target, mask, masked_only=masked_only, norm_pix_loss=norm_pix_loss)
    assert set(parts) == set(TERMS)
    for name in TERMS:
        assert parts[name].item() == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name
        assert expected[name] > 0, name


def test_float32_terms_match_reference():
    pred, target, mask = make_batch(dtype=torch.float32)
    _, parts = loss_fn()(pred, target, mask)
    expected = reference_terms(pred, target, mask)
    for name in TERMS:
        assert parts[name].item() == pytest.approx(expected[name], rel=1e-5), name


def test_total_is_weighted_sum_and_parts_are_detached():
    pred, target, mask = make_batch()
    pred.requires_grad_(True)
    weights = {"mse_weight": 0.7, "sam_weight": 0.3, "variance_weight": 2.0, "range_weight": 5.0}
    total, parts = loss_fn(**weights)(pred, target, mask)
    expected = sum(weights[f"{name}_weight"] * parts[name] for name in TERMS)
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    assert total.requires_grad
    assert all(not part.requires_grad and part.dim() == 0 for part in parts.values())


def test_masked_only_ignores_visible_patches():
    pred, target, mask = make_batch()
    pred = torch.where(mask[..., None].bool(), target, pred)
    _, masked = loss_fn(masked_only=True)(pred, target, mask)
    _, everything = loss_fn(masked_only=False)(pred, target, mask)
    assert masked["mse"].item() == 0
    assert masked["variance"].item() == 0 and masked["range"].item() == 0
    assert masked["sam"].item() < 1e-3
    assert everything["mse"].item() > 0.01 and everything["sam"].item() > 0.1


def test_mask_values_weight_patches_like_a_bool_mask():
    pred, target, mask = make_batch()
    total_float, _ = loss_fn()(pred, target, mask)
    total_bool, _ = loss_fn()(pred, target, mask.bool())
    assert total_float.item() == pytest.approx(total_bool.item(), rel=1e-12)


def test_all_visible_mask_falls_back_to_all_patches():
    pred, target, mask = make_batch()
    total, parts = loss_fn(masked_only=True)(pred, target, torch.zeros_like(mask))
    reference_total, reference_parts = loss_fn(masked_only=False)(pred, target, mask)
    assert torch.isfinite(total)
    assert total.item() == pytest.approx(reference_total.item(), rel=1e-12)
    for name in TERMS:
        assert parts[name].item() == pytest.approx(reference_parts[name].item(), rel=1e-12)


def test_norm_pix_loss_normalises_target_of_mse_only():
    _, target, mask = make_batch()
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    normalised = (target - mean) / std
    _, parts = loss_fn(norm_pix_loss=True)(normalised, target, mask)
    assert parts["mse"].item() == pytest.approx(0, abs=1e-20)
    # the other terms see the prediction mapped back to raw values: here the target itself
    assert parts["variance"].item() == pytest.approx(0, abs=1e-15)
    assert parts["range"].item() == 0
    assert parts["sam"].item() < 1e-3
    _, raw_parts = loss_fn(norm_pix_loss=False)(normalised, target, mask)
    assert raw_parts["mse"].item() > 0.1


@pytest.mark.parametrize("case", ["equal", "zero_pred", "all_zero"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite(case, dtype):
    _, target, mask = make_batch(dtype=dtype)
    if case == "all_zero":
        target = torch.zeros_like(target)
    pred = target.clone() if case == "equal" else torch.zeros_like(target)
    pred.requires_grad_(True)
    total, parts = loss_fn(sam_weight=1.0)(pred, target, mask)
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(pred.grad).all()
    if case == "equal":
        assert parts["sam"].item() < 1e-3
    else:
        assert parts["sam"].item() == pytest.approx(math.pi / 2)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_a_small_step_against_the_sam_gradient_lowers_sam(norm_pix_loss):
    _, target, mask = make_batch()
    pred = (target * torch.linspace(0.5, 1.5, target.shape[-1], dtype=target.dtype)).requires_grad_(True)
    loss = loss_fn(mse_weight=0, sam_weight=1, variance_weight=0, range_weight=0, norm_pix_loss=norm_pix_loss)
    total, _ = loss(pred, target, mask)
    total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    stepped, _ = loss(pred.detach() - 1e-3 * pred.grad / pred.grad.norm(), target, mask)
    assert stepped.item() < total.item()


def test_range_penalty():
    _, target, mask = make_batch()
    inside = torch.rand_like(target)
    assert loss_fn(valid_range=(0.0, 1.0))(inside, target, mask)[1]["range"].item() == 0
    above = torch.full_like(target, 1.5)
    assert loss_fn(valid_range=(0.0, 1.0))(above, target, mask)[1]["range"].item() == pytest.approx(0.25)
    below = torch.full_like(target, -0.2)
    assert loss_fn(valid_range=(0.0, 1.0))(below, target, mask)[1]["range"].item() == pytest.approx(0.04)
    shifted = loss_fn(valid_range=(-1.0, 2.0))(above, target, mask)[1]["range"].item()
    assert shifted == 0
    disabled = loss_fn(valid_range=None)(above * 10, target, mask)[1]["range"].item()
    assert disabled == 0


def test_range_counts_only_included_patches():
    _, target, mask = make_batch()
    pred = torch.where(mask[..., None].bool(), torch.full_like(target, 0.5), torch.full_like(target, 3.0))
    assert loss_fn(masked_only=True)(pred, target, mask)[1]["range"].item() == 0
    expected = 4.0 * (1 - mask.mean().item())
    assert loss_fn(masked_only=False)(pred, target, mask)[1]["range"].item() == pytest.approx(expected)


def test_variance_penalises_only_a_loss_of_spectral_variation():
    _, target, mask = make_batch()
    spectra = target.reshape(*target.shape[:2], BAND_PATCH, PIXELS)
    collapsed = spectra.mean(dim=2, keepdim=True).expand_as(spectra).reshape(target.shape)
    _, parts = loss_fn()(collapsed, target, mask)
    per_cube = [spectra[b][mask[b].bool()].var(dim=1, correction=0).mean() for b in range(len(mask))]
    assert parts["variance"].item() == pytest.approx(torch.stack(per_cube).mean().item())
    mean = spectra.mean(dim=2, keepdim=True)
    exaggerated = (mean + 2 * (spectra - mean)).reshape(target.shape)
    assert loss_fn()(exaggerated, target, mask)[1]["variance"].item() == 0
    assert loss_fn(band_patch=1)(collapsed, target, mask)[1]["variance"].item() == 0


def test_loss_decreases_when_optimising_a_free_prediction():
    _, target, mask = make_batch(batch=4, length=8, dtype=torch.float32)
    pred = torch.full_like(target, 0.5).requires_grad_(True)
    loss = loss_fn(sam_weight=1.0, variance_weight=1.0, range_weight=1.0)
    optimizer = torch.optim.Adam([pred], lr=0.05)
    first = None
    for _ in range(60):
        total, _ = loss(pred, target, mask)
        first = total.item() if first is None else first
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    final, parts = loss(pred, target, mask)
    assert final.item() < 0.1 * first
    assert all(torch.isfinite(part) for part in parts.values())


def test_half_precision_is_computed_in_float32():
    pred, target, mask = make_batch(dtype=torch.float32)
    total, _ = loss_fn()(pred.bfloat16(), target.bfloat16(), mask)
    assert total.dtype == torch.float32 and torch.isfinite(total)


@pytest.mark.parametrize("kwargs", [
    {"band_patch": 0}, {"sam_weight": -1.0}, {"valid_range": (1.0, 0.0)}, {"sam_eps": 0.0},
])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        MAESpectralLoss(**kwargs)


def test_bad_shapes_are_rejected():
    pred, target, mask = make_batch()
    with pytest.raises(ValueError, match="band_patch"):
        MAESpectralLoss(band_patch=5)(pred, target, mask)
    with pytest.raises(ValueError, match="mask"):
        loss_fn()(pred, target, mask[:, :3])
    with pytest.raises(ValueError, match="pred and target"):
        loss_fn()(pred, target[:, :3], mask)


def reference_spectrum_sam(pred, target, mask, groups, masked_only=True, band_patch=BAND_PATCH, eps=1e-7):
    """Whole-spectrum angle per pixel, spectra assembled piece by piece from the groups' tokens (float64)."""
    pred, target, mask = (np.asarray(x, dtype=np.float64) for x in (pred, target, mask))
    batch, length, values = pred.shape
    spatial, pixels = length // groups, values // band_patch
    per_cube = []
    for b in range(batch):
        angles = []
        for s in range(spatial):
            tokens = [g * spatial + s for g in range(groups)]
            hidden = [mask[b, t] == 1 for t in tokens]
            if masked_only and not any(hidden):
                continue
            for k in range(pixels):
                p, t = [], []
                for token, is_hidden in zip(tokens, hidden):
                    source = pred if (is_hidden or not masked_only) else target
                    p += [source[b, token, c * pixels + k] for c in range(band_patch)]
                    t += [target[b, token, c * pixels + k] for c in range(band_patch)]
                cosine = np.dot(p, t) / max(np.linalg.norm(p) * np.linalg.norm(t), eps)
                angles.append(math.acos(min(max(cosine, -1 + eps), 1 - eps)))
        per_cube.append(np.mean(angles))
    return float(np.mean(per_cube))  # mean over each cube's pixels, then over cubes


@pytest.mark.parametrize("masked_only", [True, False])
def test_spectrum_sam_is_the_angle_of_whole_reconstructed_spectra(masked_only):
    pred, target, mask = make_batch()  # 6 tokens = 2 spectral groups x 3 spatial patches
    loss = loss_fn(spectral_groups=2, masked_only=masked_only)
    _, parts = loss(pred, target, mask)
    assert parts["sam"].item() == pytest.approx(reference_spectrum_sam(pred, target, mask, 2, masked_only), rel=1e-9)
    _, per_patch = loss_fn(spectral_groups=2, masked_only=masked_only, sam_scope="patch")(pred, target, mask)
    expected = reference_terms(pred, target, mask, masked_only=masked_only)["sam"]
    assert per_patch["sam"].item() == pytest.approx(expected, rel=1e-9)
    assert abs(parts["sam"].item() - per_patch["sam"].item()) > 1e-3  # the two scopes differ here


def test_spectrum_sam_sends_gradient_to_hidden_pieces_only():
    pred, target, mask = make_batch()
    pred.requires_grad_()
    loss = loss_fn(spectral_groups=2, mse_weight=0, sam_weight=1, variance_weight=0, range_weight=0)
    loss(pred, target, mask)[0].backward()
    grad_norm = pred.grad.abs().sum(dim=-1)  # [B, L]
    assert torch.all(grad_norm[mask == 0] == 0) and torch.all(grad_norm[mask == 1] > 0)


@pytest.mark.parametrize("sam_scope", ["spectrum", "patch"])
def test_a_batch_loss_is_the_mean_of_its_cubes_losses(sam_scope):
    """Cubes with different numbers of hidden patches: batching (or splitting over processes) changes nothing."""
    pred, target, mask = make_batch()  # cube 0 hides 3 patches, cube 1 hides 2
    loss = loss_fn(spectral_groups=2, sam_scope=sam_scope)
    total, parts = loss(pred, target, mask)
    alone = [loss(pred[i:i + 1], target[i:i + 1], mask[i:i + 1]) for i in range(2)]
    assert total.item() == pytest.approx((alone[0][0].item() + alone[1][0].item()) / 2, rel=1e-12)
    for name in TERMS:
        assert parts[name].item() == pytest.approx((alone[0][1][name] + alone[1][1][name]).item() / 2, rel=1e-12)
