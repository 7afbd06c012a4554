"""The segment method end to end: options, losses, target_label, joint augmentation, split, inference, evaluate."""

import csv
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from sklearn.utils.class_weight import compute_class_weight

from nenya.data.segment_augment import SegmentAugment
from nenya.data.segmentation import SegmentationSet
from nenya.evaluate import cli as evaluate_cli
from nenya.methods import get_method
from nenya.methods.segment_inference import predict
from nenya.params import Params, option_preprocess
from nenya.split import cli as split_cli
from nenya.split import grouped_split
from nenya.train import cli as train_cli
from nenya.train import main as train_main


def blobs(rng, count, size, classes, dims=2):
    """Images [N, 2, *S] whose channel 0 shows the label map [N, *S] (discs of labels 1 .. classes - 1) plus noise."""
    grid = np.indices((size,) * dims)
    masks = np.zeros((count,) + (size,) * dims, np.uint8)
    for n in range(count):
        for label in range(1, classes):
            centre = rng.uniform(size * 0.25, size * 0.75, dims)
            radius = rng.uniform(size * 0.12, size * 0.25)
            masks[n][sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2] = label
    images = np.stack([masks / max(classes - 1, 1), rng.random(masks.shape) * 0.1], axis=1).astype(np.float32)
    return images, masks


def write_seg_h5(path, size=16, classes=3, dims=2, n_train=12, n_valid=6, groups=None, seed=0):
    """A small segmentation file: train/valid images with ``{key}_masks`` (and ``train_groups``)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for key, count in (("train", n_train), ("valid", n_valid)):
            images, masks = blobs(rng, count, size, classes, dims)
            f[key], f[f"{key}_masks"] = images, masks
        if groups is not None:
            f["train_groups"] = np.asarray(groups)
    return str(path)


def seg_opts(tmp_path, data, **extra):
    """Options dict of a tiny attention_unet run on ``data``."""
    return {"method": "segment", "model": "attention_unet", "nchannels": 2, "images_file": str(data),
            "data_folder": "", "widths": [4, 8], "epochs": 1, "batch_size_train": 4, "batch_size_valid": 4,
            "optimizer": "adam", "learning_rate": 0.01, "model_root": str(tmp_path / "models"),
            "model_name": "seg", "print_freq": 100, **extra}


def method_of(options):
    return get_method(option_preprocess(Params(options)))


@pytest.fixture
def data(tmp_path):
    return write_seg_h5(tmp_path / "seg.h5")


def a_batch(method, count=4):
    train, _ = method.build_datasets()
    items = [train[i] for i in range(count)]
    return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]), torch.stack([i[2] for i in items])


# ---- losses per option --------------------------------------------------------------------------------------

def dice_by_hand(logits, target, classes):
    """1 - (2 sum p t + 1e-5) / (sum p + sum t + 1e-5) per image and channel (softmax, one-hot), averaged."""
    probabilities = torch.softmax(logits.double(), 1)
    onehot = F.one_hot(target, classes).movedim(-1, 1).double()
    dims = tuple(range(2, logits.dim()))
    inter, total = (probabilities * onehot).sum(dims), probabilities.sum(dims) + onehot.sum(dims)
    return float((1 - (2 * inter + 1e-5) / (total + 1e-5)).mean())


@pytest.mark.parametrize("loss, extra", [("ce", {}), ("ce", {"class_weights": [0.2, 1.0, 3.0]}),
                                         ("ce", {"class_weights": "auto"}), ("dice", {}), ("dice_ce", {}),
                                         ("bce", {"num_classes": 1, "target_label": 2, "pos_weight": 3.0}),
                                         ("bce", {"num_classes": 1, "target_label": 1, "pos_weight": "auto"})])
def test_the_method_loss_follows_each_loss_option(tmp_path, data, loss, extra):
    method = method_of(seg_opts(tmp_path, data, loss=loss, **extra))
    model = method.build_model()
    images, masks, _ = a_batch(method)
    value, _ = method.loss(model, (images, masks))
    with torch.no_grad():
        logits = model(images).double()
    with h5py.File(data) as f:
        train_masks = f["train_masks"][()]
    if loss == "ce":
        weights = extra.get("class_weights")
        if weights == "auto":  # scikit-learn's balanced weights of the training masks' pixels
            weights = compute_class_weight("balanced", classes=np.arange(3), y=train_masks.ravel())
            np.testing.assert_allclose(method.criterion.class_weights.numpy(), weights, rtol=1e-6)
            np.testing.assert_allclose(method.opt.class_weights, weights, rtol=1e-12)  # recorded in opts.json
        weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
        expected = float(F.cross_entropy(logits, masks, weight=weights))
    elif loss == "bce":
        label = extra["target_label"]
        assert set(masks.unique().tolist()) <= {0, 1} and bool((masks == 1).any())
        pos = extra["pos_weight"]
        if pos == "auto":
            pos = (train_masks != label).sum() / (train_masks == label).sum()
        expected = float(F.binary_cross_entropy_with_logits(logits[:, 0], masks.double(),
                                                            pos_weight=torch.tensor([float(pos)], dtype=torch.float64)))
    else:
        expected = dice_by_hand(logits, masks, 3) + (float(F.cross_entropy(logits, masks)) if loss == "dice_ce" else 0)
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_num_classes_and_spatial_dims_are_derived_from_the_training_masks(tmp_path, data):
    method = method_of(seg_opts(tmp_path, data))
    assert (method.opt.num_classes, method.opt.spatial_dims, method.classes) == (3, 2, [1, 2])
    binary = write_seg_h5(tmp_path / "binary.h5", classes=2)
    assert method_of(seg_opts(tmp_path, binary)).opt.num_classes == 1
    assert method_of(seg_opts(tmp_path, data)).direction("dice_1") == "max"


# ---- target_label ---------------------------------------------------------------------------------------------

def test_target_label_trains_that_label_against_the_rest(tmp_path, data):
    method = method_of(seg_opts(tmp_path, data, target_label=2))
    assert method.opt.num_classes == 1
    train, _ = method.build_datasets()
    with h5py.File(data) as f:
        stored = f["train_masks"][3]
    assert torch.equal(train[3][1], torch.from_numpy((stored == 2).astype(np.int64)))


# ---- joint augmentation ---------------------------------------------------------------------------------------

NAMES = ("horizontal_flip", "vertical_flip", "depth_flip", "rotation", "elastic_transform", "affine_transform")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_the_mask_moves_with_the_image_and_stays_integer(name, dims):
    if name == "depth_flip" and dims == 2:
        pytest.skip("no depth axis")
    size = 24 if dims == 2 else 16
    images, masks = blobs(np.random.default_rng(1), 1, size, 3, dims)
    image, mask = torch.from_numpy(images[0]), 2 * torch.from_numpy(masks[0] > 0).long()  # labels 0 and 2 only
    image[0] = mask.float()  # channel 0 is the mask itself: after the transform it must still agree
    augment = SegmentAugment(mask.shape, {name: 1.0})
    out_image, out_mask = augment(image, mask, seed=5)
    assert out_mask.dtype == torch.int64 and out_image.shape == image.shape and out_mask.shape == mask.shape
    assert set(out_mask.unique().tolist()) == {0, 2}  # nearest: no label 1 between 0 and 2
    assert not torch.equal(out_mask, mask), "the transform changed nothing"
    # the image's channel 0 (interpolated labels) matches the mask almost everywhere; edges may differ
    follows = 2 * (out_image[0] > 1.0).long()  # the interpolated image channel, thresholded halfway
    agree = (follows == out_mask).float().mean()
    unmoved = (follows == mask).float().mean()  # what a mask left behind would score
    assert agree > 0.97 and 1 - agree < 0.5 * (1 - unmoved), (float(agree), float(unmoved))


def test_coarse_dropout_blanks_the_image_only():
    images, masks = blobs(np.random.default_rng(2), 1, 32, 2)
    image = torch.from_numpy(images[0]) + 1.0  # no zeros before dropout
    mask = torch.from_numpy(masks[0]).long()
    out_image, out_mask = SegmentAugment(mask.shape, {"coarse_dropout": 1.0})(image, mask, seed=3)
    assert torch.equal(out_mask, mask) and bool((out_image == 0).any())


def test_augmentation_is_seeded_per_seed_epoch_and_index(tmp_path, data):
    method = method_of(seg_opts(tmp_path, data, rotation=1.0, horizontal_flip=0.5, elastic_transform=0.5))
    train, _ = method.build_datasets()
    first = train[2]
    again = train[2]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    method.epoch = 2  # the loop sets the epoch; the dataset's draws follow it
    assert train.epoch == 2 and not torch.equal(train[2][0], first[0])
    method.epoch = 0
    assert torch.equal(train[2][0], first[0])
    assert not torch.equal(train[3][0], SegmentationSet(data, "train")[3][0])


def test_a_resumed_run_ends_with_the_same_weights(tmp_path, data):
    options = seg_opts(tmp_path, data, epochs=2, rotation=0.5, horizontal_flip=0.5, elastic_transform=0.3)
    path = tmp_path / "opts.json"
    path.write_text(json.dumps(options))
    train_main(str(path), {"model_name": "whole"}, verbose=False)
    train_main(str(path), {"model_name": "parts", "epochs": 1}, verbose=False)
    train_main(str(path), {"model_name": "parts", "epochs": 2}, resume=True, verbose=False)
    whole = torch.load(tmp_path / "models/whole/last.pth", weights_only=True)["model"]
    parts = torch.load(tmp_path / "models/parts/last.pth", weights_only=True)["model"]
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


# ---- split manifest -------------------------------------------------------------------------------------------

def test_split_keeps_groups_together_and_training_reads_it(tmp_path, capsys):
    groups = np.repeat(np.arange(6), [1, 2, 3, 1, 3, 2])  # 12 rows in 6 groups
    data = write_seg_h5(tmp_path / "g.h5", groups=groups)
    assert split_cli([data, "--key", "train", "--valid-fraction", "0.3", "--seed", "4"]) == 0
    manifest = json.loads((tmp_path / "g_split.json").read_text())
    train, valid = set(manifest["train"]), set(manifest["valid"])
    assert train | valid == set(range(12)) and not train & valid
    assert not set(groups[list(train)]) & set(groups[list(valid)])
    assert len(valid) >= 0.3 * 12
    assert grouped_split(groups, 0.3, 5) != grouped_split(groups, 0.3, 4)  # the seed matters
    assert split_cli([data]) == 2 and "already exists" in capsys.readouterr().err
    method = method_of(seg_opts(tmp_path, data, split_manifest=str(tmp_path / "g_split.json")))
    train_set, valid_set = method.build_datasets()
    assert sorted(train_set.rows.tolist()) == sorted(train) and sorted(valid_set.rows.tolist()) == sorted(valid)
    with h5py.File(data) as f:
        assert np.array_equal(valid_set[0][1].numpy(), f["train_masks"][sorted(valid)[0]])


# ---- inference ------------------------------------------------------------------------------------------------

def test_sliding_windows_equal_whole_image_inference():
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(2, 3, 1)  # per-pixel: any window gives the same logits
    images = torch.randn(2, 2, 20, 20)
    whole, _ = predict(pointwise, images)
    windows, _ = predict(pointwise, images, roi=[8, 8], overlap=0.5, mode="gaussian", sw_batch_size=3)
    assert windows.device.type == "cpu"
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return pointwise(x)

    predict(Recorder(), images, roi=[8, 8], overlap=0.5, sw_batch_size=3)
    assert {shape[2:] for shape in seen} == {(8, 8)} and max(shape[0] for shape in seen) == 3  # windows, batched
    torch.testing.assert_close(windows, whole, rtol=1e-5, atol=1e-5)
    from nenya.models import build_model
    unet = build_model("attention_unet", nchannels=2, num_classes=3, widths=[4, 8]).eval()
    with torch.no_grad():
        fits, _ = predict(unet, images[:, :, :16, :16], roi=[16, 16], overlap=0.25)
        torch.testing.assert_close(fits, unet(images[:, :, :16, :16]), rtol=1e-5, atol=1e-5)
        plain, averaged = predict(unet, images, tta=True)
        flips = [torch.softmax(unet(images), 1), torch.softmax(unet(images.flip(2)), 1).flip(2),
                 torch.softmax(unet(images.flip(3)), 1).flip(3)]
        torch.testing.assert_close(averaged, sum(flips) / 3)
        assert not torch.allclose(averaged, torch.softmax(plain, 1))


# ---- evaluate -------------------------------------------------------------------------------------------------

def test_evaluate_writes_per_image_metrics_masks_and_figures(tmp_path, data, capsys):
    path = tmp_path / "opts.json"
    path.write_text(json.dumps(seg_opts(tmp_path, data, epochs=3, target_label=2, figure_samples=2, pos_weight=20.0)))
    train_main(str(path), verbose=False)
    run = str(tmp_path / "models/seg")
    assert sorted(p.name for p in (tmp_path / "models/seg/figures").iterdir()) == [
        "dice_per_class_epoch0.png"[:0] + n for n in ("dice_per_class_epoch1.png", "dice_per_class_epoch2.png",
                                                     "dice_per_class_epoch3.png", "segmentation_epoch1.png",
                                                     "segmentation_epoch2.png", "segmentation_epoch3.png")]
    out = tmp_path / "eval"
    assert evaluate_cli([run, "--data", data, "--key", "valid", "--save-masks", "--out", str(out),
                         "--roi-size", "8", "--overlap", "0.5"]) == 0
    record = json.loads((out / "eval_metrics.json").read_text())
    assert record["overrides"]["roi_size"] == [8]
    with h5py.File(out / "masks.h5") as f:
        predicted, rows = f["masks"][()], f["rows"][()]
    with h5py.File(data) as f:
        truth = f["valid_masks"][()]
    assert set(np.unique(predicted)) == {0, 2} and list(rows) == list(range(6))  # mapped back to label 2
    lines = list(csv.DictReader(open(out / "per_image_metrics.csv")))
    assert len(lines) == 6
    for line, pred, true in zip(lines, predicted, truth):
        p, t = (pred == 2).ravel(), (true == 2).ravel()
        expected = 1.0 if not p.any() and not t.any() else f1_score(t, p, zero_division=0.0)
        assert float(line["dice"]) == pytest.approx(expected, abs=1e-5)
        assert float(line["pixel_accuracy"]) == pytest.approx(((pred == 2) == (true == 2)).mean(), abs=1e-6)
    assert record["metrics"]["dice"] != pytest.approx(record["metrics"]["iou"])
    assert record["metrics"]["dice"] == pytest.approx(np.mean([float(line["dice"]) for line in lines]), abs=1e-5)
    assert (out / "segmentation.png").is_file() and (out / "dice_per_class.png").is_file()


# ---- debug and dry runs ---------------------------------------------------------------------------------------

def test_debug_prints_the_first_batch_output_shape_and_loss_parts(tmp_path, data, capsys):
    path = tmp_path / "opts.json"
    path.write_text(json.dumps(seg_opts(tmp_path, data)))
    assert train_cli([str(path), "--debug"]) == 0
    out = capsys.readouterr().out
    assert "debug: images [4, 2, 16, 16] float32" in out and "debug: masks [4, 16, 16] int64 values [0, 1, 2]" in out
    assert "debug: model output [4, 3, 16, 16]" in out and "= dice " in out and " + ce " in out


@pytest.mark.parametrize("name, shape, classes", [("attention_unet", (2, 512, 512), 2),
                                                  ("unet3d", (1, 96, 96, 96), 3), ("dformer3d", (1, 64, 128, 128), 3)])
def test_full_size_opts_files_dry_run_and_print_parameter_counts(tmp_path, capsys, name, shape, classes):
    from nenya.models import count_parameters

    options = json.load(open(f"opts/{name}.json"))
    with h5py.File(tmp_path / options["images_file"], "w") as f:
        for key in ("train", "valid"):
            f[key] = np.zeros((2,) + shape, np.float32)
            masks = np.zeros((2,) + shape[1:], np.uint8)
            masks[:, :4] = classes - 1
            f[f"{key}_masks"] = masks
    assert train_cli([f"opts/{name}.json", "--dry-run", f"data_folder={tmp_path}", "num_workers=0"]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    method = method_of({**{k: v for k, v in options.items() if not k.startswith("_")}, "data_folder": str(tmp_path)})
    assert f"model {name}: {count_parameters(method.build_model()):,} parameters" in out
    assert f"one training batch: [{min(options['batch_size_train'], 2)}, {', '.join(map(str, shape))}] float32" in out


# ---- bad inputs -----------------------------------------------------------------------------------------------

def bad_cases(tmp_path, data):
    nomasks = tmp_path / "nomasks.h5"
    with h5py.File(nomasks, "w") as f:
        f["train"] = np.zeros((2, 2, 8, 8), np.float32)
    return [({"images_file": str(nomasks)}, "no dataset 'train_masks'"),
            ({"num_classes": 2}, "holds label value 2, which needs num_classes >= 3"),
            ({"target_label": 7}, "target_label=7 does not occur"),
            ({"nchannels": 3}, "nchannels=3 but"),
            ({"model": "unet3d"}, "model 'unet3d' takes 3-D data"),
            ({"split_manifest": "missing.json"}, "split_manifest missing.json does not exist"),
            ({"loss": "bce"}, "loss 'bce' needs num_classes=1"),
            ({"class_weights": [1, 2]}, "class_weights=[1.0, 2.0] is invalid")]


def test_bad_inputs_are_one_error_line_and_exit_2(tmp_path, data, capsys):
    for change, fragment in bad_cases(tmp_path, data):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**seg_opts(tmp_path, data), **change}))
        assert train_cli([str(path)]) == 2, change
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("nenya: error:") and fragment in err[0], (change, err)
    assert not (tmp_path / "models").exists()


def test_the_split_module_runs_as_a_command(tmp_path):
    data = write_seg_h5(tmp_path / "c.h5")
    done = subprocess.run([sys.executable, "-m", "nenya.split", data, "--valid-fraction", "1.5"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == (
        "nenya: error: --valid-fraction 1.5 is invalid; use a fraction strictly between 0 and 1")


@pytest.mark.slow
def test_two_processes_report_the_metrics_of_the_whole_validation_set(tmp_path):
    from test_distributed import train_in_processes

    data = write_seg_h5(tmp_path / "seg.h5", n_valid=5)  # 5 items over 2 processes: one is padding, left out
    path = tmp_path / "opts.json"
    path.write_text(json.dumps(seg_opts(tmp_path, data, batch_size_valid=2, learning_rate=1e-4)))
    single = train_main(str(path), {"model_name": "one"}, verbose=False)
    both = train_in_processes(str(path), {"model_name": "two"})
    assert single["init"]["empty_one"] + single["init"]["empty_both"] <= 10  # 5 images x 2 classes
    for name, value in single["init"].items():  # the same initial weights: the same metrics over all 5 images
        assert both[0]["init"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert both[0]["init"] == both[1]["init"]
