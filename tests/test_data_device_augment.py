"""Augmentation per sample in workers or per batch on the device (augment_on), and SimCLR's kornia recipe (augment)."""

import json
import types

import numpy as np
import pytest
import torch

from conftest import assert_resume_is_bit_exact, fails_with, write_images_h5, write_opts
from nenya.data.batch_transforms import CubeAugment, ImageAugment, augment_cubes, derive_seed, two_views
from nenya.data.device_augment import ContrastiveViews, SimCLRAugment, augment_cube_batch
from nenya.errors import NenyaError
from test_methods_mae import mae_opts


def options(**values):
    """The options ContrastiveViews reads, with defaults."""
    base = dict(augment="nenya", augment_on="device", seed=3, demean=False, flip=False, rotate=False,
                random_cropjitter=None, gauss_noise=0.0, nchannels=3, model="resnet18", spectral_channels=0)
    return types.SimpleNamespace(**{**base, **values})


def batch_of(count=6, channels=3, size=16, seed=0):
    """(images [B, C, H, W] in [0, 1], labels [B], indices [B])."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, channels, size, size, generator=generator), torch.zeros(count, dtype=torch.long),
            torch.arange(10, 10 + count))


# --- the SimCLR recipe ------------------------------------------------------------------------------------

def test_simclr_recipe_has_the_published_parameters():
    augment = SimCLRAugment((32, 32))
    assert augment.crop._param_generator.scale == (0.2, 1.0) and augment.crop.flags["size"] == (32, 32)
    assert augment.flip.p == 0.5
    jitter = augment.jitter
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue, jitter.p) == (0.8, 0.8, 0.8, 0.2, 0.8)
    assert augment.grayscale.p == 0.2
    assert augment.blur.p == 0.5 and augment.blur._param_generator.sigma == (0.1, 2.0)
    assert augment.blur.flags["kernel_size"] == 3 and SimCLRAugment((256, 256)).blur.flags["kernel_size"] == 25


def test_simclr_views_draw_crops_and_grayscale_at_the_stated_rates():
    torch.manual_seed(0)
    augment = SimCLRAugment((16, 16))
    images = torch.rand(2000, 3, 16, 16)
    out = augment(images)
    # grayscale views have three equal channels (colour jitter alone never makes them equal): p = 0.2
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert abs(gray.float().mean().item() - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 2000)
    boxes = augment.crop._params["src"]  # [B, 4, 2] corners of each crop in the input
    area = (boxes[:, 1, 0] - boxes[:, 0, 0] + 1) * (boxes[:, 2, 1] - boxes[:, 1, 1] + 1) / 256
    assert area.min() >= 0.2 - 0.1 and area.max() <= 1.0 and area.std() > 0.1  # integer boxes round the scale
    assert out.dtype == torch.float32 and out.shape == images.shape


def test_geometric_recipe_works_on_any_channel_count_and_keeps_equal_channels_equal():
    torch.manual_seed(0)
    plane = torch.rand(8, 1, 16, 16)
    out = SimCLRAugment((16, 16), colour=False)(plane.expand(8, 5, 16, 16).contiguous())
    assert out.shape == (8, 5, 16, 16)
    assert torch.equal(out, out[:, :1].expand_as(out))  # one crop, flip and blur for every channel of an image
    assert not torch.equal(out, plane.expand_as(out))


def test_colour_changes_only_the_three_rgb_channels():
    torch.manual_seed(0)
    images = torch.rand(64, 5, 16, 16)
    images[:, 3:] = 0.25  # constant extra channels stay constant under crop, flip and blur, whatever colour does
    out = SimCLRAugment((16, 16))(images)
    torch.testing.assert_close(out[:, 3:], torch.full_like(out[:, 3:], 0.25))
    assert not torch.allclose(out[:, :3].mean((2, 3)), images[:, :3].mean((2, 3)), atol=1e-2)


@pytest.mark.parametrize("values, text", [
    (dict(augment="simclr_rgb", nchannels=1), "needs 3 RGB image channels, but nchannels is 1"),
    (dict(augment="simclr_rgb", model="hvit", nchannels=5, spectral_channels=1), "(4 image channels)"),
    (dict(augment="simclr_geometric", flip=True, rotate=True), "options flip, rotate belong to augment 'nenya'"),
])
def test_bad_augment_combinations_are_errors(values, text):
    with pytest.raises(NenyaError) as err:
        ContrastiveViews(options(**values))
    assert text in str(err.value)


def test_rgb_recipe_with_spectral_channels_is_accepted():
    assert ContrastiveViews(options(augment="simclr_rgb", model="hvit", nchannels=5, spectral_channels=2))


# --- views made on the device: seeded by (seed, epoch, items) -----------------------------------------------

@pytest.mark.parametrize("kind", ["nenya", "simclr_rgb", "simclr_geometric"])
def test_device_views_are_seeded_by_seed_epoch_and_items(kind):
    extra = dict(flip=True, rotate=True, gauss_noise=0.1) if kind == "nenya" else {}
    views = ContrastiveViews(options(augment=kind, **extra))
    batch = batch_of()
    first = views.of_batch(batch, epoch=2)
    assert first.shape == (6, 2, 3, 16, 16) and first.dtype == torch.float32
    torch.manual_seed(123)  # the global RNG does not matter, and is left alone
    state = torch.get_rng_state()
    assert torch.equal(views.of_batch(batch, epoch=2), first)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(views.of_batch(batch, epoch=3), first)
    assert not torch.equal(ContrastiveViews(options(augment=kind, seed=4, **extra)).of_batch(batch, 2), first)
    assert not torch.equal(first[:, 0], first[:, 1])  # the two views differ
    for i in range(6):
        assert not torch.equal(first[i, 0], first[i, 1])


def test_device_views_of_nenya_vocabulary_are_two_views_from_the_item_seeds():
    views = ContrastiveViews(options(flip=True, random_cropjitter=[12, 2], gauss_noise=0.1, demean=True))
    batch = batch_of()
    augment = ImageAugment(flip=True, crop=12, jitter=2, gauss_noise=0.1, demean=True)
    expected = two_views(batch[0], [derive_seed(3, 5, i) for i in range(10, 16)], augment)
    assert torch.equal(views.of_batch(batch, epoch=5), expected)
    # an item's views do not depend on the batch around it
    alone = views.of_batch(tuple(t[2:3] for t in batch), epoch=5)
    assert torch.equal(alone[0], expected[2])


def test_workers_path_leaves_the_views_to_the_data_set():
    views = ContrastiveViews(options(augment_on="workers", augment="simclr_rgb"))
    batch = (torch.rand(4, 2, 3, 16, 16), torch.zeros(4), torch.arange(4))
    assert views.transform() is not None and views.of_batch(batch, 1) is batch[0]
    torch.manual_seed(0)
    pair = views.per_sample()(batch[0][0, 0])  # [2, C, H, W] from the global RNG (seeded per epoch by the loop)
    torch.manual_seed(0)
    assert pair.shape == (2, 3, 16, 16) and torch.equal(views.per_sample()(batch[0][0, 0]), pair)
    assert ContrastiveViews(options()).transform() is None  # on the device the data sets give plain images


def test_demean_after_the_simclr_recipe():
    views = ContrastiveViews(options(augment="simclr_geometric", demean=True))
    out = views.of_batch(batch_of(), 1)
    torch.testing.assert_close(out.mean(dim=(2, 3, 4)), torch.zeros(6, 2), atol=1e-6, rtol=0)


def test_cubes_on_the_device_are_augmented_from_the_item_seeds():
    opt = types.SimpleNamespace(augment_on="device", seed=1, flip=True, cube_rot90=True, cube_crop=6)
    cubes = torch.rand(5, 4, 8, 8)
    batch = (cubes, torch.zeros(5), torch.tensor([7, 3, 9, 0, 4]))
    out = augment_cube_batch(opt, batch, epoch=2)
    expected = augment_cubes(cubes, [derive_seed(1, 2, i, 1) for i in (7, 3, 9, 0, 4)], CubeAugment(True, True, 6))
    assert out.shape == (5, 4, 6, 6) and torch.equal(out, expected)
    assert not torch.equal(out, augment_cube_batch(opt, batch, epoch=3))
    assert augment_cube_batch(types.SimpleNamespace(augment_on="workers"), batch, 2) is cubes


# --- training with augment_on device ------------------------------------------------------------------------

def test_simclr_with_device_views_trains_and_resumes_bit_exact(tiny_run, monkeypatch):
    opts, folder = tiny_run
    assert_resume_is_bit_exact(opts, folder.parent, monkeypatch, 2, batch=1, epochs=2, augment_on="device")
    metrics = json.loads((folder.parent / "whole" / "metrics.json").read_text())
    assert np.isfinite(metrics["train_loss_final"]) and np.isfinite(metrics["final"]["loss"])


def test_simclr_rgb_on_the_device_resumes_bit_exact(tmp_path, monkeypatch):
    write_images_h5(tmp_path / "rgb.h5", n_train=24, n_valid=12, channels=3, size=16)
    opts = write_opts(tmp_path / "opts.json", method="simclr", model="resnet18", nchannels=3, images_file="rgb.h5",
                      data_folder=str(tmp_path), model_root=str(tmp_path / "models"), batch_size_train=8,
                      batch_size_valid=12, feat_dim=8, augment="simclr_rgb", augment_on="device", knn_k=3,
                      print_freq=1)
    assert_resume_is_bit_exact(opts, tmp_path / "models", monkeypatch, 2, batch=1, epochs=2)


def test_mae_with_device_cubes_trains_and_resumes_bit_exact(tmp_path, monkeypatch):
    opts = mae_opts(tmp_path, epochs=2, batch_size_train=2, batch_size_valid=2, cube_crop=8, patch_size=[4, 5])
    assert_resume_is_bit_exact(opts, tmp_path / "models", monkeypatch, 2, batch=2, augment_on="device")


def test_simclr_rgb_on_grey_images_is_one_error_line(tiny_run, capsys):
    opts, _ = tiny_run
    fails_with(capsys, [opts, "augment=simclr_rgb", "flip=false", "random_cropjitter=null", "gauss_noise=0"],
               "augment 'simclr_rgb'", "nchannels is 1", "simclr_geometric")


def test_with_device_augmentation_the_data_sets_give_plain_items(tiny_run, tmp_path):
    import h5py
    from nenya.methods import get_method
    from nenya.params import get_options
    opts, _ = tiny_run
    train, valid = get_method(get_options(opts, {"augment_on": "device"})).build_datasets()
    with h5py.File(tmp_path / "images.h5") as handle:
        assert torch.equal(train[3][0], torch.from_numpy(handle["train"][3]))  # [C, H, W], no views
        assert torch.equal(valid[1][0], torch.from_numpy(handle["valid"][1]))
    assert get_method(get_options(opts)).build_datasets()[0][3][0].shape == (2, 1, 8, 8)  # workers: two views
    mae = get_method(get_options(mae_opts(tmp_path, cube_crop=8, augment_on="device")))
    cubes = mae.build_datasets()[0]
    with h5py.File(tmp_path / "cubes.h5") as handle:
        assert torch.equal(cubes[2][0], torch.from_numpy(handle["train"][2]))  # uncropped, unrotated
