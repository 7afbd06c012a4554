"""The loop as a run applies it, checked from outside: labels reach the loss, validation leaves the model alone,
the kNN monitor, best.pth and the monitor's direction, the schedules step by step, shuffling, overfit_batches."""

import math

import h5py
import numpy as np
import pytest
import torch

import nenya.metrics.probe as probe_module
import nenya.train as train_cli_module
import nenya.train_util as train_module
from conftest import knn_by_hand, write_images_h5, write_opts
from nenya.losses import SupConLoss
from nenya.methods import get_method
from nenya.methods.contrastive import SimCLR
from nenya.models import unwrap
from nenya.params import get_options
from nenya.train import main as train_main
from nenya.train_util import evaluation_pass, nenya_loader, train_model, validate

CPU = torch.device("cpu")
NO_AUGMENTATION = {"random_cropjitter": None, "flip": False, "gauss_noise": 0.0}


def build(opts, **overrides):
    """(opt, method, model) of an opts file, the model seeded."""
    opt = get_options(opts, overrides)
    method = get_method(opt)
    torch.manual_seed(0)
    return opt, method, method.build_model()


def h5_images(path, key):
    """Images and labels of ``key`` as float32 [N, C, H, W] and int64 [N]."""
    with h5py.File(path) as handle:
        return torch.tensor(handle[key][:]), torch.tensor(handle[f"{key}_labels"][:])


# ---- labels, eval mode ------------------------------------------------------------------------------

def test_supcon_training_passes_the_labels_to_the_loss(tiny_run):
    opts, _ = tiny_run
    opt, method, model = build(opts, method="supcon", temp=0.5, base_temp=0.5, **NO_AUGMENTATION)
    views, labels, _ = next(iter(nenya_loader(opt, method=method)))  # the loader's first batch, seeded
    assert len(set(labels.tolist())) > 1
    criterion = SupConLoss(temperature=0.5, base_temperature=0.5)
    with torch.no_grad():  # train mode, as in the loop (BatchNorm uses the batch's statistics)
        features = model(views.flatten(0, 1)).view(views.shape[0], 2, -1)
        supervised, unsupervised = criterion(features, labels).item(), criterion(features).item()
    assert abs(supervised - unsupervised) > 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_model(nenya_loader(opt, method=method), model, method, optimizer, 1, opt, device=CPU)
    assert result[1][0] == pytest.approx(supervised, rel=1e-5)


def _bn_state(model):
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_validation_runs_in_eval_mode_under_no_grad_and_leaves_batchnorm_alone(tiny_run):
    opts, _ = tiny_run
    opt, method, model = build(opts)
    seen = []

    def spy(step):
        def spied(model, batch, indices):
            seen.append((step.__name__, torch.is_grad_enabled(), any(m.training for m in model.modules())))
            return step(model, batch, indices)
        spied.__name__ = step.__name__
        return spied

    method.eval_step, method.feature_step = spy(method.eval_step), spy(method.feature_step)
    model.train()
    before = _bn_state(model)
    result = validate(nenya_loader(opt, valid=True, method=method), model, method, CPU, opt)
    assert {name for name, _, _ in seen} == {"eval_step", "feature_step"} and "knn_acc" in result["metrics"]
    assert all(not grad and not training for _, grad, training in seen), seen
    assert model.training
    after = _bn_state(model)
    assert any("running_mean" in name for name in after)
    for name, value in before.items():
        assert torch.equal(after[name], value), name  # running statistics and num_batches_tracked


def test_the_evaluation_pass_runs_in_eval_mode_under_no_grad(tiny_run):
    """The pass nenya.evaluate and nenya.latents use, called as they call it (no no_grad of their own)."""
    opts, _ = tiny_run
    opt, method, model = build(opts)
    images, _ = h5_images(tiny_run[1].parent.parent / "images.h5", "valid")
    seen = []

    def step(model, batch, indices):
        seen.append((torch.is_grad_enabled(), model.training))
        return {"out": model(batch[0])}

    model.train()
    before = _bn_state(model)
    outputs = evaluation_pass(torch.utils.data.TensorDataset(images, torch.zeros(24)), model, step, CPU, opt)
    assert seen == [(False, False)] and not outputs["out"].requires_grad and model.training
    for name, value in _bn_state(model).items():
        assert torch.equal(value, before[name]), name
    with torch.no_grad():
        torch.testing.assert_close(outputs["out"], model.eval()(images))


def test_validation_with_workers_is_the_same_at_every_epoch(tiny_run):
    """Augmented validation pairs drawn in DataLoader workers come from the same seeds at every validation."""
    opts, _ = tiny_run
    opt, method, model = build(opts, num_workers=2)
    loader = nenya_loader(opt, valid=True, method=method)
    first = validate(loader, model, method, CPU, opt)
    second = validate(loader, model, method, CPU, opt)
    assert first["metrics"] == second["metrics"]
    np.testing.assert_array_equal(first["loss_step"], second["loss_step"])


# ---- the kNN monitor --------------------------------------------------------------------------------

@pytest.mark.parametrize("bank_size", [10, 10000])
def test_knn_monitor_scores_encoder_features_against_a_bank_of_at_most_knn_bank_size(tiny_run, monkeypatch,
                                                                                    bank_size):
    opts, folder = tiny_run
    opt, method, model = build(opts, knn_bank_size=bank_size)
    calls = []
    real = probe_module.knn_accuracy
    monkeypatch.setattr(probe_module, "knn_accuracy",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or real(*args, **kwargs))
    metrics = validate(nenya_loader(opt, valid=True, method=method), model, method, CPU, opt)["metrics"]
    (bank, bank_labels, queries, query_labels, k), kwargs = calls[0]
    path = folder.parent.parent / "images.h5"
    train_images, train_labels = h5_images(path, "train")
    valid_images, valid_labels = h5_images(path, "valid")
    with torch.no_grad():  # direct forward passes of the un-augmented images, the encoder without the head
        train_features = model.eval().encode(train_images)
        valid_features = model.encode(valid_images)
    assert queries.shape == (24, 512) and k == 3 and not kwargs.get("exclude_self")
    torch.testing.assert_close(queries, valid_features, rtol=1e-4, atol=1e-5)
    assert torch.equal(query_labels, valid_labels)
    assert bank.shape == (min(bank_size, 48), 512)
    # every bank row is the features of a different training image, with its label
    match = torch.cdist(bank, train_features).argmin(dim=1)
    assert len(set(match.tolist())) == bank.shape[0]
    torch.testing.assert_close(bank, train_features[match], rtol=1e-4, atol=1e-5)
    assert torch.equal(bank_labels, train_labels[match])
    expected = np.mean(knn_by_hand(bank.numpy(), bank_labels.numpy(), queries.numpy(), 3) == valid_labels.numpy())
    assert metrics["knn_acc"] == pytest.approx(expected)


# ---- best.pth and the monitor -----------------------------------------------------------------------

# validation metrics at initialisation and after epochs 1-4, replayed in place of a real validation
SCRIPT = [{"loss": 5.0, "knn_acc": 0.5}, {"loss": 4.0, "knn_acc": 0.6}, {"loss": 4.5, "knn_acc": 0.8},
          {"loss": 3.0, "knn_acc": 0.7}, {"loss": 3.0, "knn_acc": 0.8}]


@pytest.mark.parametrize("monitor, best, written", [
    (None, {"metric": "knn_acc", "value": 0.8, "epoch": 2}, [1, 2]),  # max: the tie at epoch 4 is no improvement
    ("loss", {"metric": "loss", "value": 3.0, "epoch": 3}, [1, 3]),  # min
])
def test_best_checkpoint_follows_the_monitor_and_is_written_only_on_improvement(tiny_run, monkeypatch, monitor,
                                                                                best, written):
    opts, folder = tiny_run
    script = iter(SCRIPT)
    monkeypatch.setattr(SimCLR, "validation", lambda self, model, run, data: (dict(next(script)), [1.0]))
    saves = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda path, state: saves.append((str(path), state["epoch"])) or real_save(path, state))
    overrides = {"epochs": 4, "save_freq": 1, **({"monitor": monitor} if monitor else {})}
    metrics = train_main(opts, overrides=overrides, verbose=False)
    assert metrics["best"] == best and metrics["mode"] == ("max" if monitor is None else "min")
    assert [epoch for path, epoch in saves if path.endswith("best.pth")] == written
    assert [epoch for path, epoch in saves if path.endswith("last.pth")] == [1, 2, 3, 4]
    chosen = torch.load(folder / "best.pth", weights_only=True)
    same_epoch = torch.load(folder / f"ckpt_epoch_{best['epoch']}.pth", weights_only=True)
    assert chosen["epoch"] == best["epoch"]
    for name, value in chosen["model"].items():
        assert torch.equal(value, same_epoch["model"][name]), name


def test_without_validation_best_is_the_lowest_training_loss(tiny_run, monkeypatch):
    opts, folder = tiny_run
    saves = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda path, state: saves.append((str(path), state["epoch"])) or real_save(path, state))
    metrics = train_main(opts, overrides={"epochs": 3, "valid_key": None, "learning_rate": 0.5}, verbose=False)
    with h5py.File(folder / "losses_train.h5") as handle:
        losses = handle["loss_train"][:]
    improved, running = [], math.inf
    for epoch, value in enumerate(losses, start=1):
        if value < running:
            improved.append(epoch)
            running = value
    assert metrics["best"] == {"metric": "loss_train", "value": float(losses.min()),
                               "epoch": int(losses.argmin()) + 1}
    assert [epoch for path, epoch in saves if path.endswith("best.pth")] == improved


# ---- the schedules, as the loop applies them ----------------------------------------------------------

def _rates_at_every_step(opts, monkeypatch, **overrides):
    """The learning rate of every optimizer step of a run (48 images, batch 16: 3 steps per epoch)."""
    rates = []
    real = train_cli_module.set_optimizer

    def recording(opt, model):
        optimizer = real(opt, model)
        optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: rates.append(
            optimizer.param_groups[0]["lr"]))
        return optimizer

    monkeypatch.setattr(train_cli_module, "set_optimizer", recording)
    train_main(opts, overrides={"valid_key": None, "learning_rate": 0.05, "lr_decay_rate": 0.1, **overrides},
               verbose=False)
    return rates


def test_nenya_warmup_then_cosine_step_by_step(tiny_run, monkeypatch):
    opts, folder = tiny_run
    rates = _rates_at_every_step(opts, monkeypatch, epochs=4, cosine=True, warm=True, warm_epochs=2,
                                 warmup_from=0.01)
    lr, floor, steps = 0.05, 0.05 * 0.1 ** 3, 3

    def cosine(epoch):  # Nenya's per-epoch cosine, epochs counted from 1
        return floor + (lr - floor) * (1 + math.cos(math.pi * epoch / 4)) / 2

    expected = []
    for epoch in range(1, 5):
        for batch in range(steps):
            if epoch <= 2:  # linear from warmup_from to the cosine rate at the end of warm-up, every step
                progress = (batch + (epoch - 1) * steps) / (2 * steps)
                expected.append(0.01 + progress * (cosine(2) - 0.01))
            else:
                expected.append(cosine(epoch))
    assert rates == pytest.approx(expected, rel=1e-12)
    with h5py.File(folder / "losses_train.h5") as handle:  # the logged rate: the epoch's last step
        assert handle["lr"][:] == pytest.approx(expected[steps - 1::steps], rel=1e-12)


def test_per_iteration_cosine_step_by_step(tiny_run, monkeypatch):
    opts, _ = tiny_run
    rates = _rates_at_every_step(opts, monkeypatch, epochs=3, schedule="iter_cosine", warm_epochs=1)
    lr, floor, steps = 0.05, 0.05 * 0.1 ** 3, 3
    expected = []
    for epoch in range(1, 4):
        for batch in range(steps):
            progress = epoch - 1 + batch / steps  # in epochs
            if progress < 1:
                expected.append(lr * progress)
            else:
                expected.append(floor + (lr - floor) * (1 + math.cos(math.pi * (progress - 1) / 2)) / 2)
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_step_decay_step_by_step(tiny_run, monkeypatch):
    opts, _ = tiny_run
    rates = _rates_at_every_step(opts, monkeypatch, epochs=4, cosine=False, lr_decay_epochs=[2, 3])
    assert rates == pytest.approx([0.05] * 6 + [0.005] * 3 + [0.0005] * 3, rel=1e-12)


# ---- shuffling --------------------------------------------------------------------------------------

@pytest.fixture
def numbered_images(tmp_path):
    """An opts file over 48 training images, image i holding the value i everywhere; no augmentation."""
    with h5py.File(tmp_path / "numbered.h5", "w") as handle:
        handle["train"] = np.repeat(np.arange(48, dtype=np.float32), 64).reshape(48, 1, 8, 8)
        handle["train_labels"] = np.arange(48) % 3
    return write_opts(tmp_path / "numbered.json", method="simclr", images_file="numbered.h5",
                      data_folder=str(tmp_path), model_root=str(tmp_path / "models"), valid_key=None,
                      batch_size_train=16, feat_dim=16, **NO_AUGMENTATION)


def _orders(opts, monkeypatch, **overrides):
    """The order the training images come in, one list of 48 per epoch that runs."""
    seen = []
    real = SimCLR.loss

    def recording(self, model, batch):
        seen.extend(batch[0][:, 0, 0, 0, 0].round().long().tolist())
        return real(self, model, batch)

    monkeypatch.setattr(SimCLR, "loss", recording)
    train_main(opts, overrides=overrides, verbose=False)
    monkeypatch.undo()
    return [seen[i:i + 48] for i in range(0, len(seen), 48)]


def test_a_new_shuffle_every_epoch_and_the_same_for_the_same_seed_and_epoch(numbered_images, monkeypatch):
    whole = _orders(numbered_images, monkeypatch, model_name="whole", epochs=3)
    assert len(whole) == 3 and all(sorted(order) == list(range(48)) for order in whole)
    assert whole[0] != whole[1] and whole[1] != whole[2] and whole[0] != whole[2]
    assert whole[0] != list(range(48))
    # a second run stopped after epoch 2 and resumed: the same order in every epoch, the resumed one included
    assert _orders(numbered_images, monkeypatch, model_name="split", epochs=2) == whole[:2]
    resumed = []
    real = SimCLR.loss
    monkeypatch.setattr(SimCLR, "loss", lambda self, model, batch: resumed.extend(
        batch[0][:, 0, 0, 0, 0].round().long().tolist()) or real(self, model, batch))
    train_main(numbered_images, overrides={"model_name": "split", "epochs": 3}, resume=True, verbose=False)
    monkeypatch.undo()
    assert resumed == whole[2]
    other_seed = _orders(numbered_images, monkeypatch, model_name="seed1", epochs=1, seed=1)
    assert other_seed[0] != whole[0]


# ---- overfit_batches --------------------------------------------------------------------------------

def test_overfit_batches_validates_and_scores_knn_on_the_training_batches(tiny_run, monkeypatch):
    opts, folder = tiny_run
    path = folder.parent.parent / "images.h5"
    train_images, train_labels = h5_images(path, "train")
    first = train_images[:16]  # overfit_batches=1 at batch_size_train=16
    trained, evaluated, knn = [], {}, []
    real_loss, real_pass = SimCLR.loss, train_module.evaluation_pass

    def loss(self, model, batch):
        if torch.is_grad_enabled():  # a training step (validation's loss pass runs under no_grad)
            trained.append(batch[0][:, 0])
        return real_loss(self, model, batch)

    def evaluation(data, model, step, *args, **kwargs):
        outputs = real_pass(data, model, step, *args, **kwargs)
        name = step.__name__
        evaluated.setdefault(name, [])
        items = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
        items = [items[i] for i in range(len(items))]
        evaluated[name].append(torch.stack([item[0] for item in items]))
        if name == "feature_step":  # the encoder features of the first batch's images, computed directly
            was = model.training
            with torch.no_grad():
                features = unwrap(model).eval().encode(first)
            model.train(was)
            knn.append(np.mean(knn_by_hand(features.numpy(), train_labels[:16].numpy(), features.numpy(), 3,
                                           leave_one_out=True) == train_labels[:16].numpy()))
        return outputs

    monkeypatch.setattr(SimCLR, "loss", loss)
    monkeypatch.setattr(train_module, "evaluation_pass", evaluation)
    train_main(opts, overrides={"overfit_batches": 1, "epochs": 2, **NO_AUGMENTATION}, verbose=False)
    for batch in trained:  # training: the first 16 images, shuffled
        assert sorted(map(tuple, batch.flatten(1).tolist())) == sorted(map(tuple, first.flatten(1).tolist()))
    assert len(trained) == 2
    # validation (at initialisation and after epochs 1 and 2): the loss on their pairs, kNN among them alone
    assert set(evaluated) == {"eval_step", "feature_step"}
    for pairs in evaluated["eval_step"]:
        assert torch.equal(pairs[:, 0], first) and torch.equal(pairs[:, 1], first)
    for images in evaluated["feature_step"]:
        assert torch.equal(images, first)
    with h5py.File(folder / "losses_valid.h5") as handle:
        np.testing.assert_allclose(handle["knn_acc_valid"][:], knn, rtol=1e-6)
    assert len(knn) == 3
