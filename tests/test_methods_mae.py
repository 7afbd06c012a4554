"""The MAE method end to end on tiny cubes (16 x 16 px, 10 bands, patch [8, 5]): curves, metrics, figures, resume."""

import json
import re

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_resume_is_bit_exact, fails_with, write_opts
from nenya.data.synthetic import make_hyperspectral
from nenya.evaluate import evaluate_run
from nenya.methods.mae import MAE
from nenya.metrics.reconstruction import visible_mean_baseline
from nenya.registry import METHODS
from nenya.train_util import evaluation_pass
from nenya.params import get_options
from nenya.plots.mae import default_rgb_bands, percentile_limits, rgb_composite
from nenya.train import main as train_main

BANDS, SIZE, PATCH = 10, 16, [8, 5]
LOSS_PARTS = ("loss_mse", "loss_sam", "loss_variance", "loss_range")
RECONSTRUCTION = ("mse", "sam", "psnr", "ssim", "mse_masked", "sam_masked", "psnr_masked", "ssim_masked")


def write_cubes_h5(path, n_train=8, n_valid=4, bands=BANDS, size=SIZE, seed=0, extra=None):
    """train/valid cubes (N, C, H, W) in [0, 1] from the synthetic mixing model (plus optional datasets)."""
    cubes = make_hyperspectral(n_train + n_valid, bands=bands, size=size, seed=seed)
    with h5py.File(path, "w") as handle:
        handle["train"], handle["valid"] = cubes[:n_train], cubes[n_train:]
        for name, value in (extra or {}).items():
            handle[name] = value
    return cubes


def mae_opts(tmp_path, name="opts.json", **extra):
    """An opts file for a tiny MAE run on tmp_path/cubes.h5 (written when absent)."""
    if not (tmp_path / "cubes.h5").exists():
        write_cubes_h5(tmp_path / "cubes.h5")
    values = dict(ssl_method="mae", ssl_model="mae_tiny", nchannels=BANDS, images_file="cubes.h5",
                  data_folder=str(tmp_path), model_root=str(tmp_path / "models"), model_name="mae",
                  patch_size=PATCH, mask_ratio=0.5, decoder_depth=1, decoder_embed_dim=32, decoder_num_heads=4,
                  optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, batch_size_train=4, batch_size_valid=4,
                  epochs=2, save_freq=2, print_freq=1, dpi=30, flip=True, cube_rot90=True)
    values.update(extra)
    return write_opts(tmp_path / name, **values)


def method_for(opts, **overrides):
    """(method, model) built from an opts file, datasets built first as the loop does."""
    method = MAE(get_options(opts, overrides))
    method.build_datasets()
    return method, method.build_model()


def validation_metrics(method, model):
    """The method's validation metrics of ``model``, through the loop's evaluation pass on the CPU."""
    def run(data, step, desc="valid"):
        return evaluation_pass(data, model, step, torch.device("cpu"), method.opt, desc)

    return method.validation(model, run, method.cubes.valid_set())[0]


def test_mae_is_registered():
    assert METHODS["mae"] is MAE and MAE.monitor == "mse_masked" and MAE.direction("mse_masked") == "min"


def test_run_logs_loss_parts_metrics_and_figures(tmp_path):
    opts = mae_opts(tmp_path)
    metrics = train_main(opts, verbose=False)
    folder = tmp_path / "models" / "mae"
    with h5py.File(folder / "losses_train.h5") as handle:
        for part in LOSS_PARTS:
            assert handle[f"{part}_train"].shape == (2,), part
        # the total is the weighted sum of the parts (default weights), epoch means being linear
        expected = (handle["loss_mse_train"][:] + 0.1 * handle["loss_sam_train"][:]
                    + 0.01 * handle["loss_variance_train"][:] + 0.001 * handle["loss_range_train"][:])
        np.testing.assert_allclose(handle["loss_train"][:], expected, rtol=1e-5)
    with h5py.File(folder / "losses_valid.h5") as handle:
        assert list(handle["epoch"][:]) == [0, 1, 2]
        for name in RECONSTRUCTION + ("baseline_mse_masked",) + LOSS_PARTS:
            assert np.all(np.isfinite(handle[f"{name}_valid"][:])), name
        assert np.all((handle["ssim_valid"][:] <= 1) & (handle["mse_masked_valid"][:] >= 0))
        final_mse_masked = handle["mse_masked_valid"][-1]
        per_epoch = handle["mse_masked_valid"][1:]  # epochs 1 and 2 (row 0: at initialisation)
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["monitor"] == "mse_masked" and saved["mode"] == "min"
    assert set(saved["final"]) <= set(MAE.metrics) and set(saved["init"]) <= set(MAE.metrics)
    assert saved["final"]["mse_masked"] == pytest.approx(final_mse_masked)
    assert set(RECONSTRUCTION) | {"baseline_mse_masked", "loss"} <= set(saved["init"])
    assert saved["best"] == {"metric": "mse_masked", "value": pytest.approx(float(per_epoch.min())),
                             "epoch": int(np.argmin(per_epoch)) + 1}
    for epoch in (1, 2):
        for name in ("mae_reconstruction", "mae_band_mse", "mae_spectra"):
            path = folder / "figures" / f"{name}_epoch{epoch}.png"
            assert path.stat().st_size > 1000, path
    assert (folder / "training_plots.png").exists()


def test_validation_metrics_use_a_fixed_mask_and_leave_the_rng_alone(tmp_path):
    method, model = method_for(mae_opts(tmp_path))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = validation_metrics(method, model)
    assert torch.equal(torch.get_rng_state(), state)
    assert validation_metrics(method, model) == first
    assert model.training  # the mode is restored


class PerfectModel(nn.Module):
    """Wraps an MAE (as ``module``, so unwrap() finds it) and predicts every patch exactly."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner
        self.masks = []

    def forward(self, imgs, **kwargs):
        _, mask, ids_restore = self.module(imgs, **kwargs)
        self.masks.append(mask)
        return self.module.patchify(imgs), mask, ids_restore


def test_metrics_of_a_perfect_reconstruction(tmp_path):
    method, model = method_for(mae_opts(tmp_path))
    metrics = validation_metrics(method, PerfectModel(model))
    for name in ("mse", "mse_masked", "sam", "sam_masked"):
        assert metrics[name] == 0.0, name
    for name in ("ssim", "ssim_masked"):
        assert metrics[name] == pytest.approx(1.0, abs=1e-6), name
    assert metrics["psnr"] == float("inf") and metrics["psnr_masked"] == float("inf")
    assert metrics["baseline_mse_masked"] > 0


class ZeroModel(PerfectModel):
    """Predicts 0 for every (normalised) patch: the mean of each patch under norm_pix_loss."""

    def forward(self, imgs, **kwargs):
        target, mask, ids_restore = super().forward(imgs, **kwargs)
        return torch.zeros_like(target), mask, ids_restore


def _visible_statistics_fill(cubes, masks, patch, band_patch, normalised_prediction):
    """Masked-voxel MSE of hidden patches mapped back with the visible patches' mean and std (numpy)."""
    rows = cols = cubes.shape[-1] // patch
    errors, count = 0.0, 0
    for n, cube in enumerate(cubes):
        patches = _numpy_patches(cube, patch, band_patch)
        hidden = {(g, i, j): masks[n, (g * rows + i) * cols + j] == 1 for g, i, j in patches}
        for g in range(cube.shape[0] // band_patch):
            visible = [patches[k] for k in patches if k[0] == g and not hidden[k]]
            mean = np.mean([v.mean() for v in visible])
            std = np.mean([np.sqrt(v.var(ddof=1) + 1e-6) for v in visible])
            for k in patches:
                if k[0] == g and hidden[k]:
                    values = patches[k]
                    normalised = (values - values.mean()) / np.sqrt(values.var(ddof=1) + 1e-6)
                    fill = (normalised if normalised_prediction else 0.0) * std + mean
                    errors += ((fill - values) ** 2).sum()
                    count += values.size
    return errors / count


@pytest.mark.parametrize("model_class", ["perfect", "zero"])
def test_norm_pix_predictions_are_mapped_back_with_visible_statistics(tmp_path, model_class):
    """A hidden patch's own mean and std are never used: a model predicting 0 cannot beat the baseline."""
    method, model = method_for(mae_opts(tmp_path, norm_pix_loss=True, patch_size=[4, 5]))

    class NormalisedPerfect(PerfectModel):
        def forward(self, imgs, **kwargs):
            target, mask, ids_restore = super().forward(imgs, **kwargs)
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            return (target - mean) / (var + 1e-6).sqrt(), mask, ids_restore

    recorder = NormalisedPerfect(model) if model_class == "perfect" else ZeroModel(model)
    metrics = validation_metrics(method, recorder)
    with h5py.File(tmp_path / "cubes.h5") as handle:
        cubes = handle["valid"][:].astype(np.float64)
    expected = _visible_statistics_fill(cubes, torch.cat(recorder.masks).numpy(), 4, 5, model_class == "perfect")
    assert metrics["mse_masked"] == pytest.approx(expected, rel=1e-4)
    if model_class == "zero":
        assert metrics["mse_masked"] >= metrics["baseline_mse_masked"]


def test_whole_cube_metrics_score_the_reconstruction_with_visible_voxels_pasted_back(tmp_path):
    method, model = method_for(mae_opts(tmp_path, patch_size=[4, 5]))
    recorder = ZeroModel(model)  # predicts 0 everywhere, also on visible patches
    metrics = validation_metrics(method, recorder)
    with h5py.File(tmp_path / "cubes.h5") as handle:
        cubes = handle["valid"][:].astype(np.float64)
    masks = torch.cat(recorder.masks).numpy()
    hidden = np.zeros_like(cubes, dtype=bool)
    rows = cols = SIZE // 4
    for n in range(len(cubes)):
        for g in range(BANDS // 5):
            for i in range(rows):
                for j in range(cols):
                    if masks[n, (g * rows + i) * cols + j] == 1:
                        hidden[n, g * 5:(g + 1) * 5, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4] = True
    pasted = np.where(hidden, 0.0, cubes)
    assert metrics["mse"] == pytest.approx(((pasted - cubes) ** 2).mean(), rel=1e-6)
    assert metrics["mse_masked"] == pytest.approx((cubes[hidden] ** 2).mean(), rel=1e-6)


def _numpy_patches(cube, patch, band_patch):
    """{(group, row, column): patch array} of one cube, straight from the slicing definition."""
    bands, height, width = cube.shape
    return {(g, i, j): cube[g * band_patch:(g + 1) * band_patch, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
            for g in range(bands // band_patch) for i in range(height // patch) for j in range(width // patch)}


def test_visible_mean_baseline_small_example():
    # 2 cubes, 2 spectral groups x 3 spatial patches, 2 values per patch
    patches = torch.arange(24, dtype=torch.float64).reshape(2, 6, 2) ** 1.5
    mask = torch.tensor([[1, 0, 0, 0, 1, 1],    # group 0: patches 1, 2 visible; group 1: patch 3 visible
                         [1, 1, 1, 0, 1, 0]],   # group 0 fully masked: falls back to the cube's visible mean
                        dtype=torch.float32)
    filled = visible_mean_baseline(patches, mask, groups=2).numpy()
    p = patches.numpy()
    expected = p.copy()
    expected[0, 0] = (p[0, 1] + p[0, 2]) / 2
    expected[0, 4] = expected[0, 5] = p[0, 3]
    expected[1, 0] = expected[1, 1] = expected[1, 2] = (p[1, 3] + p[1, 5]) / 2
    expected[1, 4] = (p[1, 3] + p[1, 5]) / 2
    np.testing.assert_allclose(filled, expected)


def test_baseline_mse_masked_matches_numpy(tmp_path):
    method, model = method_for(mae_opts(tmp_path, patch_size=[4, 5]))  # 2 groups x 4 x 4 patches
    recorder = PerfectModel(model)
    metrics = validation_metrics(method, recorder)
    with h5py.File(tmp_path / "cubes.h5") as handle:
        cubes = handle["valid"][:].astype(np.float64)
    mask = torch.cat(recorder.masks).numpy()
    rows = cols = SIZE // 4
    errors, count = 0.0, 0
    for n, cube in enumerate(cubes):
        patches = _numpy_patches(cube, 4, 5)
        hidden = {(g, i, j): mask[n, (g * rows + i) * cols + j] == 1 for g, i, j in patches}
        for g in range(2):
            visible = [patches[k] for k in patches if k[0] == g and not hidden[k]]
            assert visible  # mask_ratio 0.5: every group keeps a patch here
            fill = np.mean(visible, axis=0)
            for k in patches:
                if k[0] == g and hidden[k]:
                    errors += ((fill - patches[k]) ** 2).sum()
                    count += patches[k].size
    assert metrics["baseline_mse_masked"] == pytest.approx(errors / count, rel=1e-6)


def test_csv_input_with_centre_cropped_validation(tmp_path):
    cubes = make_hyperspectral(4, bands=BANDS, size=20, seed=1)
    (tmp_path / "cubes").mkdir()
    lines = ["path,split"]
    for index, cube in enumerate(cubes):
        with h5py.File(tmp_path / "cubes" / f"c{index}.h5", "w") as handle:
            handle["cube"] = cube
        lines.append(f"cubes/c{index}.h5,{'valid' if index == 3 else 'train'}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    opts = mae_opts(tmp_path, data_csv="list.csv", images_file=None, cube_crop=SIZE, epochs=1,
                    batch_size_train=2, figure_samples=1)
    method, model = method_for(opts)
    assert model.img_size == (SIZE, SIZE)
    train, valid = method.build_datasets()
    assert len(train) == 3 and len(valid) == 1
    np.testing.assert_array_equal(valid[0][0].numpy(), cubes[3][:, 2:18, 2:18])  # centre crop, no flips
    metrics = train_main(opts, verbose=False)
    assert np.isfinite(metrics["final"]["mse_masked"])
    folder = tmp_path / "models" / "mae"
    assert (folder / "figures" / "mae_reconstruction_epoch1.png").exists()
    # evaluation of a CSV run: --key names a split of its data_csv
    record = evaluate_run(str(folder), key="train")
    assert record["key"] == "train" and record["items"] == 3 and record["data"] == str(tmp_path / "list.csv")


def test_normalize_bands_computes_and_caches_training_statistics(tmp_path):
    opts = mae_opts(tmp_path, normalize_bands=True, valid_range=None, epochs=1)
    train_main(opts, verbose=False)
    stats_path = tmp_path / "cubes.h5.train.bandstats.json"
    stats = json.loads(stats_path.read_text())
    with h5py.File(tmp_path / "cubes.h5") as handle:
        train = handle["train"][:].astype(np.float64)
    np.testing.assert_allclose(stats["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], train.std(axis=(0, 2, 3)), rtol=1e-6)
    # the cache is read, not recomputed: the validation cubes come out normalised by its values
    stats["mean"] = [0.5] * BANDS
    stats["std"] = [2.0] * BANDS
    stats_path.write_text(json.dumps(stats))
    method = MAE(get_options(opts))
    _, valid = method.build_datasets()
    with h5py.File(tmp_path / "cubes.h5") as handle:
        expected = (handle["valid"][0] - 0.5) / 2.0
    np.testing.assert_allclose(valid[0][0].numpy(), expected, rtol=1e-6)


def test_normalize_bands_warns_about_a_valid_range_in_raw_units(tmp_path):
    with pytest.warns(UserWarning, match=r"normalised \(normalize_bands\) values in .* valid_range is \[0.0, 1.0\]"):
        MAE(get_options(mae_opts(tmp_path, normalize_bands=True))).build_datasets()


def test_data_outside_valid_and_data_range_warns_with_the_observed_range(tmp_path):
    write_cubes_h5(tmp_path / "cubes.h5")
    with h5py.File(tmp_path / "cubes.h5", "a") as handle:
        for key in ("train", "valid"):
            values = handle[key][:] * 4095
            del handle[key]
            handle[key] = values
        observed = handle["train"][:].max()
    with pytest.warns(UserWarning) as caught:
        MAE(get_options(mae_opts(tmp_path))).build_datasets()
    message = " ".join(str(w.message) for w in caught)
    low, high = (float(v) for v in re.search(r"values in \[([-\d.e+]+), ([-\d.e+]+)\]", message).groups())
    assert 0 <= low < high <= observed * 1.001 and high > 1000  # the observed range of (sampled) cubes
    assert "valid_range is [0.0, 1.0]" in message and "data_range is 1.0" in message


def test_data_inside_the_ranges_does_not_warn_and_units_are_recorded(tmp_path):
    import warnings
    opts = mae_opts(tmp_path, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MAE(get_options(opts)).build_datasets()
    metrics = train_main(opts, verbose=False)
    assert metrics["about"]["units"] == "data units, as stored" and metrics["about"]["data_range"] == 1.0


def test_default_rgb_bands_and_composite_scaling():
    assert default_rgb_bands(30) == [25, 15, 5] and default_rgb_bands(10) == [8, 5, 1]
    assert default_rgb_bands(2) == [1, 1, 0]
    cube = np.stack([np.linspace(0, 1, 100).reshape(10, 10) * (band + 1) for band in range(3)])
    lo, hi = percentile_limits(cube, [0, 1, 2])
    np.testing.assert_allclose(lo, np.percentile(cube[0], 2) * np.array([1, 2, 3]))
    image = rgb_composite(cube, [0, 1, 2], lo, hi, voxel_mask=np.zeros_like(cube, dtype=bool))
    assert image.shape == (10, 10, 3) and image.min() == 0 and image.max() == 1
    hidden = np.zeros_like(cube, dtype=bool)
    hidden[1] = True
    assert np.all(rgb_composite(cube, [0, 1, 2], lo, hi, hidden)[..., 1] == 0.5)


def test_band_stats_option_names_the_cache(tmp_path):
    opts = mae_opts(tmp_path, normalize_bands=True, valid_range=None, band_stats="stats/bands.npz")
    MAE(get_options(opts)).build_datasets()
    with np.load(tmp_path / "stats" / "bands.npz") as data:
        assert data["mean"].shape == (BANDS,)


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    opts = mae_opts(tmp_path, epochs=3, schedule="iter_cosine", warm_epochs=1, lr_decay_rate=0.1)
    assert_resume_is_bit_exact(opts, tmp_path / "models", monkeypatch, 3)


def test_dry_run_builds_the_model_for_the_data(tmp_path, capsys):
    result = train_main(mae_opts(tmp_path), dry=True)
    assert result["parameters"] > 0
    assert "one training batch: [4, 10, 16, 16] float32, [4] int64" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("overrides, expected", [
    (["nchannels=12"], ["nchannels=12", "cubes.h5:train has 10 channels"]),
    (["patch_size=[5, 5]"], ["patch_size=[5, 5]", "spatial patch 5 does not divide img_size 16", "[1, 2, 4, 8, 16]"]),
    (["patch_size=[8, 3]"], ["patch_size=[8, 3]", "spectral patch 3 does not divide the 10 bands"]),
    (["img_size=32"], ["img_size=32", "16x16", "cube_crop"]),
    (["cube_crop=24"], ["cube_crop=24 is larger than the 16x16 cubes"]),
    (["img_size=8", "cube_crop=12"], ["img_size=8 but cube_crop=12"]),
    (["ssl_model=resnet18"], ["model 'resnet18' is not a masked autoencoder", "mae_tiny"]),
    (["rgb_bands=[9, 5, 10]"], ["'rgb_bands' is [9, 5, 10]", "below nchannels=10"]),
    (["mask_ratio=1.0"], ["'mask_ratio' is 1.0", "must be in [0, 1)"]),
    (["valid_key=nope"], ["has no dataset 'nope' (valid_key)"]),
    (["valid_range=[1, 0]"], ["'valid_range' is [1.0, 0.0]", "low < high"]),
    (["sam_weight=-1"], ["'sam_weight' is -1.0", "must be at least 0"]),
    (["data_range=0"], ["'data_range' is 0.0", "must be greater than 0"]),
])
def test_user_errors_are_one_line(tmp_path, capsys, overrides, expected):
    opts = mae_opts(tmp_path)
    fails_with(capsys, [opts, *overrides], *expected)
    assert not (tmp_path / "models").exists()


def test_non_square_cubes_need_a_crop(tmp_path, capsys):
    with h5py.File(tmp_path / "cubes.h5", "w") as handle:
        handle["train"] = np.random.default_rng(0).random((4, BANDS, 16, 24), dtype=np.float32)
        handle["valid"] = handle["train"][:2]
    opts = mae_opts(tmp_path)
    fails_with(capsys, [opts], "16x24", "square", "cube_crop")


def test_metrics_do_not_depend_on_the_batch_size(tmp_path):
    """Fixed per-cube masks and per-cube sums: the same metrics from batches of 1, 3 and 8 cubes."""
    opts = mae_opts(tmp_path)
    results = []
    for size in (1, 3, 8):
        method, model = method_for(opts, batch_size_valid=size)
        torch.manual_seed(0)
        model = method.build_model()  # the same weights for every batch size
        results.append(validation_metrics(method, model))
    for name in results[0]:
        if not name.startswith("loss"):  # the loss is a per-batch mean; the metrics are per cube
            for other in results[1:]:
                assert other[name] == pytest.approx(results[0][name], rel=1e-6, nan_ok=True), name


def test_the_optimizer_of_a_wrapped_model_skips_decay_of_the_mask_token(tmp_path):
    from nenya.train_util import set_optimizer
    method, model = method_for(mae_opts(tmp_path))
    optimizer = set_optimizer(method.opt, nn.DataParallel(model))
    no_decay = next(group for group in optimizer.param_groups if group["weight_decay"] == 0)
    assert any(param is model.mask_token for param in no_decay["params"])


def test_band_statistics_are_recomputed_when_the_cube_list_changes(tmp_path):
    cubes = make_hyperspectral(6, bands=BANDS, size=SIZE, seed=3)
    (tmp_path / "cubes").mkdir()
    for index, cube in enumerate(cubes):
        with h5py.File(tmp_path / "cubes" / f"c{index}.h5", "w") as handle:
            handle["cube"] = cube
    listing = tmp_path / "list.csv"
    listing.write_text("path,split\n" + "".join(f"cubes/c{i}.h5,train\n" for i in range(3)))
    opts = mae_opts(tmp_path, data_csv="list.csv", valid_split=None, normalize_bands=True, valid_range=None,
                    data_range=10.0)
    first = MAE(get_options(opts)).cubes.normalizer()
    np.testing.assert_allclose(first.mean.numpy(), cubes[:3].mean(axis=(0, 2, 3)), rtol=1e-5)
    listing.write_text("path,split\n" + "".join(f"cubes/c{i}.h5,train\n" for i in range(3, 6)))
    with pytest.warns(UserWarning, match="computed on other data"):
        second = MAE(get_options(opts)).cubes.normalizer()
    np.testing.assert_allclose(second.mean.numpy(), cubes[3:].mean(axis=(0, 2, 3)), rtol=1e-5)


def test_validation_masks_are_a_function_of_seed_and_cube_index(tmp_path):
    """Cube i is always masked by the noise drawn from (seed, i): not by the batch or the device's RNG."""
    method, model = method_for(mae_opts(tmp_path, seed=7, batch_size_valid=3))
    recorder = PerfectModel(model)
    validation_metrics(method, recorder)
    masks = torch.cat(recorder.masks)
    length = masks.shape[1]
    keep = int(length * (1 - 0.5))
    for index in range(len(masks)):
        state = int(np.random.SeedSequence([7, index]).generate_state(1)[0])
        noise = torch.rand(length, generator=torch.Generator().manual_seed(state))
        expected = torch.ones(length)
        expected[noise.argsort()[:keep]] = 0
        assert torch.equal(masks[index], expected), index
