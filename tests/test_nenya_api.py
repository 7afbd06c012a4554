"""The original Nenya's documented Python API, run as its documentation writes it, on built-in digits."""

import json
import math
import os

import numpy as np
import pytest
import torch

OPTS = {"ssl_method": "SimCLR", "ssl_model": "resnet18", "nchannels": 1, "images_file": "builtin:digits",
        "data_folder": "data", "model_root": "models", "feat_dim": 16, "batch_size_train": 128,
        "batch_size_valid": 256, "epochs": 2, "learning_rate": 0.05, "cosine": True, "lr_decay_rate": 0.1,
        "random_cropjitter": [6, 1], "print_freq": 5, "valid_freq": 1, "knn_k": 5, "temp": 0.1}


@pytest.fixture
def opts_file(tmp_path, monkeypatch):
    """path/to/opts_file.json, relative to a fresh working folder."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("path/to")
    with open("path/to/opts_file.json", "w") as handle:
        json.dump(OPTS, handle)
    return "path/to/opts_file.json"


def test_train_main_as_documented(opts_file):
    from nenya.train import main as train_main
    metrics = train_main(opts_file, debug=False)
    assert metrics["epochs_completed"] == 2 and 0 <= metrics["final"]["knn_acc"] <= 1
    folder = os.path.join("models", "simclr_resnet18_lr_0.05_decay_0.0001_bsz_128_temp_0.1_trial_0_cosine")
    assert os.path.isfile(os.path.join(folder, "last.pth"))
    assert json.load(open(os.path.join(folder, "opts.json")))["method"] == "simclr"


def test_model_and_loss_as_documented():
    from nenya.models.resnet_big import SupConResNet
    model = SupConResNet(name='resnet50', feat_dim=128)
    from nenya.losses import SupConLoss
    criterion = SupConLoss(temperature=0.07)
    with torch.no_grad():
        features = model(torch.rand(4, 3, 16, 16))
    assert features.shape == (4, 128)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(4))
    assert criterion.temperature == 0.07 and criterion(torch.stack([features, features], dim=1)).item() > 0


def test_params_loaders_set_model_and_train_model_as_documented(opts_file):
    from nenya import params
    opt = params.Params(opts_file)
    params.option_preprocess(opt)
    assert opt.method == "simclr" and opt.model_name.endswith("_trial_0_cosine")
    assert opt.lr_min == pytest.approx(0.05 * 0.1 ** 3)

    from nenya.train_util import nenya_loader
    train_loader = nenya_loader(opt, valid=False)
    valid_loader = nenya_loader(opt, valid=True)
    assert len(train_loader) == 1437 // 128 and len(valid_loader.dataset) == 360
    views, labels, index = next(iter(valid_loader))
    assert views.shape == (256, 2, 1, 8, 8) and labels.shape == (256,)
    assert torch.equal(index, torch.arange(256))  # validation is not shuffled

    from nenya.train_util import set_model
    model, criterion = set_model(opt)
    from nenya.util import set_optimizer
    optimizer = set_optimizer(opt, model)
    from nenya.losses import SupConLoss
    assert isinstance(criterion, SupConLoss) and criterion.temperature == 0.1
    criterion = SupConLoss(temperature=0.5)  # Nenya's criterion, not the options' temperature: train_model uses it

    # the first step's loss is the criterion of the first batch's two views, computed directly
    torch.manual_seed(5)
    first_views = next(iter(nenya_loader(opt, valid=False)))[0]
    with torch.no_grad():
        expected = criterion(model(first_views.flatten(0, 1)).view(128, 2, -1)).item()
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(5)
    epoch = 1
    from nenya.train_util import train_model
    loss, losses_step, losses_avg = train_model(
        nenya_loader(opt, valid=False), model, criterion, optimizer, epoch, opt,
        cuda_use=opt.cuda_use)
    assert losses_step[0] == pytest.approx(expected, rel=1e-5)
    assert len(losses_step) == len(train_loader) == len(losses_avg)
    np.testing.assert_allclose(losses_avg, [np.mean(losses_step[:i + 1]) for i in range(len(losses_step))])
    assert loss == pytest.approx(np.mean(losses_step))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_util_as_documented(opts_file):
    from nenya import params
    from nenya.train_util import nenya_loader, set_model
    opt = params.option_preprocess(params.Params({**OPTS, "warm": True, "warm_epochs": 2}))
    model, criterion = set_model(opt)
    train_loader = nenya_loader(opt, valid=False)
    from nenya.util import AverageMeter, adjust_learning_rate, save_model, set_optimizer, warmup_learning_rate
    optimizer = set_optimizer(opt, model)

    epoch, idx = 2, 3
    adjust_learning_rate(opt, optimizer, epoch)
    lr_min = 0.05 * 0.1 ** 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_min + (0.05 - lr_min) * (1 + math.cos(math.pi)) / 2)
    warmup_learning_rate(opt, epoch, idx, len(train_loader), optimizer)
    progress = (idx + (epoch - 1) * len(train_loader)) / (2 * len(train_loader))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 + progress * (opt.warmup_to - 0.01))

    meter = AverageMeter()
    meter.update(1.0, 3)
    meter.update(3.0, 1)
    assert (meter.val, meter.avg, meter.count) == (3.0, 1.5, 4)

    save_file = os.path.join("models", "saved.pth")
    os.makedirs("models")
    save_model(model, optimizer, opt, epoch, save_file)
    state = torch.load(save_file, weights_only=True)
    assert state["epoch"] == 2 and set(state["model"]) == set(model.state_dict())
    assert state["opts"]["method"] == "simclr"


def test_a_save_model_checkpoint_resumes(opts_file):
    """Nenya's save_model writes a checkpoint that python -m nenya.train --resume continues from."""
    from nenya import params
    from nenya.train import main as train_main
    from nenya.train_util import set_model
    from nenya.util import save_model, set_optimizer
    opt = params.option_preprocess(params.Params(opts_file))
    model, _ = set_model(opt)
    optimizer = set_optimizer(opt, model)
    folder = os.path.join(opt.model_root, opt.model_name)
    os.makedirs(folder)
    save_model(model, optimizer, opt, 1, os.path.join(folder, "last.pth"))
    metrics = train_main(opts_file, resume=True, verbose=False)
    assert metrics["epochs_completed"] == 2
    state = torch.load(os.path.join(folder, "last.pth"), weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 2 * (1437 // 128)


def test_train_model_without_update_is_an_eval_pass(opts_file):
    """Nenya's train_model(..., update_model=False) (its validation call): eval mode, nothing changes."""
    from nenya import params
    from nenya.train_util import nenya_loader, set_model, train_model
    opt = params.option_preprocess(params.Params(opts_file))
    model, criterion = set_model(opt)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    loss, steps, running = train_model(nenya_loader(opt, valid=True), model, criterion, None, 1, opt,
                                       update_model=False)
    assert len(steps) == 2 and np.isfinite(loss)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name  # BatchNorm statistics included
    assert model.training
