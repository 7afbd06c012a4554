"""The classify method: init_from, freezing, seeded presets, TTA, resume, its metrics and its bad inputs."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import assert_resume_is_bit_exact, fails_with, write_images_h5, write_opts
from nenya.data.presets import PRESETS, augment_batch, build_preset
from nenya.errors import NenyaError
from nenya.evaluate import evaluate_run
from nenya.io.pretrained import load_encoder
from nenya.models import build_model
from nenya.models.tta import tta_probabilities
from nenya.train import main as train_main

TINY_HVIT = {"model": "hvit", "patch_size": [2], "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2],
             "window_size": 2, "drop_path_rate": 0.0}


def classify_opts(tmp_path, **values):
    """A tiny classify run on random 3-channel 8x8 images with 3 classes (tiny hvit unless told)."""
    if not (tmp_path / "images.h5").exists():
        write_images_h5(tmp_path / "images.h5", n_train=32, n_valid=12, channels=3, size=8)
    base = dict(method="classify", nchannels=3, images_file="images.h5", data_folder=str(tmp_path),
                model_root=str(tmp_path / "models"), model_name="c", batch_size_train=8, batch_size_valid=12,
                epochs=2, optimizer="adamw", learning_rate=0.01, print_freq=100, save_freq=100, **TINY_HVIT)
    base.update(values)
    return write_opts(tmp_path / f"{base['model_name']}.json", **base)


def ssl_checkpoint(path, model="hvit", **geometry):
    """A checkpoint as an SSL run writes it: model state (encoder.*, head.*, probe.*) and its options."""
    options = {key: value for key, value in TINY_HVIT.items() if key != "model"}
    options.update(geometry)
    kwargs = {} if model != "hvit" else {"img_size": 8, "patch_size": options["patch_size"][0],
                                         "embed_dim": options["embed_dim"], "depths": options["depths"],
                                         "num_heads": options["num_heads"], "window_size": options["window_size"]}
    ssl = build_model(model, nchannels=3, feat_dim=16, **kwargs)
    state = {"probe.weight": torch.zeros(3, ssl.dim_in), **ssl.state_dict()}
    torch.save({"model": state, "opts": {"model": model}, "epoch": 1}, path)
    return ssl


def test_init_from_loads_the_encoder_not_the_head_and_logs_the_keys(tmp_path, capsys):
    ssl = ssl_checkpoint(tmp_path / "ssl.pth")
    opts = classify_opts(tmp_path, init_from=str(tmp_path / "ssl.pth"), epochs=1)
    train_main(opts, dry=True)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    encoder = {k: v for k, v in ssl.encoder.state_dict().items()}
    from nenya.methods import get_method
    from nenya.params import get_options
    method = get_method(get_options(opts))
    model = method.build_model()
    for key, value in model.backbone.encoder.state_dict().items():
        assert torch.equal(value, encoder[key]), key
    assert not any(key.startswith("backbone.head") for key in model.state_dict())  # the projection head is gone
    notes = " ".join(method.notes)
    assert f"loaded {len(encoder)} encoder tensors" in notes and "missing 0" in notes and "unexpected 0" in notes
    assert f"loaded {len(encoder)} encoder tensors" in out  # in the log


def test_init_from_a_run_folder_takes_best_then_last(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    ssl = ssl_checkpoint(folder / "last.pth")
    target = build_model("hvit", nchannels=3, img_size=8, patch_size=2, embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                         window_size=2)
    notes = load_encoder(target.encoder, str(folder), "hvit")
    assert "last.pth" in notes[0]
    assert all(torch.equal(a, b) for a, b in zip(target.encoder.state_dict().values(),
                                                   ssl.encoder.state_dict().values()))


@pytest.mark.parametrize("source_model, geometry, text", [
    ("resnet18", {}, "holds a 'resnet18' model"),
    ("hvit", {"embed_dim": 16, "num_heads": [2, 4]}, "shapes differ"),
])
def test_init_from_another_architecture_is_one_error_line(tmp_path, capsys, source_model, geometry, text):
    ssl_checkpoint(tmp_path / "ssl.pth", source_model, **geometry)
    opts = classify_opts(tmp_path, init_from=str(tmp_path / "ssl.pth"))
    fails_with(capsys, [opts], "init_from", text)
    assert not (tmp_path / "models").exists()


def test_a_checkpoint_without_options_is_still_refused_by_its_shapes(tmp_path):
    ssl = build_model("resnet18", nchannels=3)
    torch.save({"model": ssl.state_dict()}, tmp_path / "r.pth")
    target = build_model("hvit", nchannels=3, img_size=8, patch_size=2, embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                         window_size=2)
    with pytest.raises(NenyaError, match="does not fit model 'hvit'"):
        load_encoder(target.encoder, str(tmp_path / "r.pth"), "hvit")


def test_frozen_epochs_leave_the_encoder_and_its_batchnorm_alone(tmp_path):
    ssl_checkpoint(tmp_path / "ssl.pth", "resnet18")
    start = torch.load(tmp_path / "ssl.pth", weights_only=True)["model"]
    opts = classify_opts(tmp_path, model="resnet18", init_from=str(tmp_path / "ssl.pth"), freeze_encoder_epochs=1,
                         batch_size_train=16, epochs=1)
    train_main(opts, overrides={"model_name": "frozen"}, verbose=False)
    after = torch.load(tmp_path / "models" / "frozen" / "last.pth", weights_only=True)["model"]
    encoder = [key for key in after if key.startswith("backbone.encoder.")]
    assert any("running_mean" in key for key in encoder)
    for key in encoder:
        assert torch.equal(after[key], start[key[len("backbone."):]]), key
    assert not torch.equal(after["classifier.weight"], torch.zeros_like(after["classifier.weight"]))
    train_main(opts, overrides={"model_name": "frozen", "epochs": 2}, resume=True, verbose=False)
    later = torch.load(tmp_path / "models" / "frozen" / "last.pth", weights_only=True)["model"]
    changed = [key for key in encoder if not torch.equal(later[key], start[key[len("backbone."):]])]
    assert any("running_mean" in key for key in changed) and any(key.endswith("conv1.weight") for key in changed)


def test_presets_mixing_and_freezing_resume_bit_exact(tmp_path, monkeypatch):
    ssl_checkpoint(tmp_path / "ssl.pth")
    opts = classify_opts(tmp_path, init_from=str(tmp_path / "ssl.pth"), freeze_encoder_epochs=2, epochs=3,
                         batch_size_train=16, augment_preset="aggressive", mixup_alpha=0.4, cutmix_alpha=1.0,
                         label_smoothing=0.1, loss="combined", tta=True)
    # interrupted in epoch 2 (frozen), resumed from epoch 1's checkpoint, then epoch 3 trains the encoder
    assert_resume_is_bit_exact(opts, tmp_path / "models", monkeypatch, stop_epoch=2, batch=1)


def test_presets_keep_shapes_repeat_by_seed_and_leave_the_training_generator_alone():
    images = torch.rand(6, 3, 16, 16)
    indices = torch.arange(6)
    assert build_preset("none", (16, 16), 3) is None
    for name in PRESETS[1:]:
        for channels in (3, 5):
            pipeline = build_preset(name, (16, 16), channels)
            batch = torch.rand(6, channels, 16, 16)
            state = torch.get_rng_state()
            a = augment_batch(pipeline, batch, 0, 1, indices)
            assert torch.equal(state, torch.get_rng_state())
            b = augment_batch(pipeline, batch, 0, 1, indices)
            c = augment_batch(pipeline, batch, 0, 2, indices)
            assert a.shape == batch.shape and torch.equal(a, b), (name, channels)
            assert not torch.equal(a, c) and not torch.equal(a, batch), (name, channels)
    light = augment_batch(build_preset("light", (16, 16), 3), images, 0, 1, indices)
    aggressive = augment_batch(build_preset("aggressive", (16, 16), 3), images, 0, 1, indices)
    assert (aggressive - images).abs().mean() > (light - images).abs().mean()


def test_tta_is_the_mean_softmax_over_the_image_and_its_flips():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    images = torch.randn(2, 3, 4, 4)
    expected = sum(model(view).softmax(-1) for view in (images, images.flip(-1), images.flip(-2))) / 3
    torch.testing.assert_close(tta_probabilities(model, images), expected)
    assert not torch.allclose(tta_probabilities(model, images), model(images).softmax(-1))


def method_and_model(opts, **overrides):
    from nenya.methods import get_method
    from nenya.params import get_options
    method = get_method(get_options(opts, overrides))
    return method, method.build_model()


def test_eval_step_gives_tta_probabilities_when_tta_is_on(tmp_path):
    opts = classify_opts(tmp_path)
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    for tta in (True, False):
        method, model = method_and_model(opts, tta=tta)
        model.eval()
        with torch.no_grad():
            out = method.eval_step(model, [images, labels, torch.arange(4)], torch.arange(4))
            expected = tta_probabilities(model, images) if tta else model(images).softmax(-1)
        torch.testing.assert_close(out["probabilities"], expected)
        assert torch.equal(out["labels"], labels) and out["loss"].dim() == 0


def test_a_batch_draws_its_augmentation_and_mixing_from_its_seed_epoch_and_items_only(tmp_path):
    opts = classify_opts(tmp_path, augment_preset="aggressive", mixup_alpha=0.4, cutmix_alpha=1.0)
    method, model = method_and_model(opts)
    method.epoch = 1
    batch = [torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,)), torch.arange(8)]
    losses = []
    for other in (1, 2):
        torch.manual_seed(other)  # whatever else drew from the training generator before
        losses.append(method.loss(model, batch)[0])
    assert torch.equal(losses[0], losses[1])
    method.epoch = 2
    assert not torch.equal(method.loss(model, batch)[0], losses[0])


def test_validation_and_evaluate_metrics_come_from_the_tta_predictions(tmp_path):
    from sklearn.metrics import accuracy_score, f1_score
    opts = classify_opts(tmp_path, epochs=1, tta=True, model_name="t")
    metrics = train_main(opts, verbose=False)
    folder = tmp_path / "models" / "t"
    assert (folder / "figures" / "confusion_epoch1.png").exists()
    record = evaluate_run(str(folder), checkpoint="last")
    from nenya.evaluate import load_run
    opt, method, model = load_run(str(folder), "last")
    with h5py.File(tmp_path / "images.h5") as handle:
        images, labels = torch.from_numpy(handle["valid"][:]), handle["valid_labels"][:]
    with torch.no_grad():
        predicted = tta_probabilities(model, images).argmax(1).numpy()
    assert record["metrics"]["acc"] == pytest.approx(accuracy_score(labels, predicted))
    assert record["metrics"]["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro",
                                                                    labels=np.unique(np.r_[labels, predicted])))
    assert metrics["final"]["acc"] == pytest.approx(record["metrics"]["acc"])
    assert (folder / "eval" / "confusion.png").exists()


def test_class_weights_auto_and_listed(tmp_path):
    from nenya.methods import get_method
    from nenya.params import get_options
    opts = classify_opts(tmp_path, class_weights="auto")
    method = get_method(get_options(opts))
    with h5py.File(tmp_path / "images.h5") as handle:
        counts = np.bincount(handle["train_labels"][:], minlength=3)
    np.testing.assert_allclose(method.criterion.weight.numpy(), counts.sum() / (3 * counts), rtol=1e-6)
    method = get_method(get_options(opts, {"class_weights": [1, 2, 3]}))
    np.testing.assert_allclose(method.criterion.weight.numpy(), [1, 2, 3])


@pytest.mark.parametrize("values, texts", [
    ({"class_weights": [1, 2]}, ["class_weights", "2 numbers", "3 classes"]),
    ({"class_weights": "many"}, ["class_weights", '"auto"']),
    ({"class_weights": [1, 0, 1]}, ["class_weights", "greater than 0"]),
    ({"num_classes": 2}, ["num_classes is 2", "labels reach 2"]),
    ({"init_from": "nowhere"}, ["init_from", "nowhere", "does not exist"]),
    ({"loss": "hinge"}, ["loss", "hinge", "ce, focal, combined"]),
    ({"mixup_alpha": -1}, ["mixup_alpha", "at least 0"]),
    ({"augment_preset": "wild"}, ["augment_preset", "light"]),
    ({"nchannels": 1}, ["nchannels=1", "3 channels"]),
    ({"images_file": "missing.h5"}, ["missing.h5", "does not exist"]),
])
def test_bad_classify_options_are_one_error_line(tmp_path, capsys, values, texts):
    opts = classify_opts(tmp_path, **values)
    fails_with(capsys, [opts], *texts)
    assert not (tmp_path / "models").exists()


def test_unlabelled_images_are_one_error_line(tmp_path, capsys):
    write_images_h5(tmp_path / "images.h5", channels=3, labels=False)
    fails_with(capsys, [classify_opts(tmp_path)], "classify needs labels", "train_labels")


def test_any_encoder_fine_tunes_and_logs_its_metrics(tmp_path):
    opts = classify_opts(tmp_path, model="resnet18", epochs=1, model_name="r", loss="focal", label_smoothing=0.1)
    metrics = train_main(opts, verbose=False)
    final = metrics["final"]
    assert {"loss", "acc", "macro_f1", "balanced_acc", "recall_0", "recall_1", "recall_2"} <= set(final)
    options = json.loads((tmp_path / "models" / "r" / "opts.json").read_text())
    assert options["num_classes"] == 3


def test_the_full_size_finetune_opts_dry_run_and_print_the_parameter_count(tmp_path, capsys):
    from conftest import write_images_h5
    write_images_h5(tmp_path / "leaf.h5", n_train=7, n_valid=7, channels=3, size=256)
    with h5py.File(tmp_path / "leaf.h5", "a") as handle:
        for key in ("train", "valid"):
            del handle[f"{key}_labels"]
            handle[f"{key}_labels"] = np.arange(7)
    opts = str(Path(__file__).resolve().parents[1] / "opts" / "hvit_finetune.json")
    result = train_main(opts, {"data_folder": str(tmp_path), "images_file": "leaf.h5",
                                                    "init_from": None, "num_workers": 0}, dry=True)
    assert result["parameters"] == 27_578_545  # 27,573,162 in the encoder + 768 x 7 + 7 in the head
    assert "model hvit: 27,578,545 parameters" in capsys.readouterr().err
