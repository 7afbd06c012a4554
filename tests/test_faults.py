"""Faults and edge cases beside the bad-input table: option ranges, dead-end run folders, non-finite losses,
a full disk, best.pth after a kill, SIGTERM, and errors raised inside DataLoader workers."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import nenya.io.atomic
import nenya.io.checkpoints
import nenya.train_util as train_module
from conftest import assert_same_run, write_images_h5
from nenya.errors import NenyaError, WriteFailed, one_line, run_cli
from nenya.evaluate import cli as evaluate_cli
from nenya.io.checkpoints import save_checkpoint
from nenya.io.run_folder import repair_checkpoints
from nenya.methods import get_method
from nenya.options import OPTIONS
from nenya.params import Params, get_options
from nenya.train import cli as train_cli
from nenya.train import main as train_main
from nenya.train_util import make_loader, train_model
from test_docs import load_generator
from test_methods_mae import BANDS, SIZE, mae_opts

NUMERIC = [option for option in OPTIONS if option.numeric]
LIST_LENGTH = {"rgb_bands": 3}


# ---- option ranges --------------------------------------------------------------------------------------

def test_every_numeric_option_declares_its_range_and_its_default_lies_in_it():
    for option in NUMERIC:
        assert option.minimum is not None or option.maximum is not None or option.rule, option.name
        values = option.default if isinstance(option.default, list) else [option.default]
        for value in values if option.default is not None else []:
            assert option.in_range(value), (option.name, value)


def _value(option, number):
    """``number`` as a value of ``option`` (a list of it for list options; [crop >= 1, jitter] for the crop)."""
    number = int(number) if option.type.startswith("int") else float(number)
    if option.name == "random_cropjitter":
        return [max(number, 1), number]
    listed = option.type.endswith("_list") or option.type == "float_list_or_auto"
    return [number] * LIST_LENGTH.get(option.name, 2) if listed else number


def _accepts(option, number) -> bool:
    method = "mae" if "mae" in option.methods else "simclr"
    try:
        Params({"method": method, "nchannels": 10, option.name: _value(option, number)}, warn_unused=False)
    except NenyaError as err:
        assert f"'{option.name}'" in str(err), str(err)
        return False
    return True


@pytest.mark.parametrize("option", [o for o in NUMERIC if o.minimum is not None], ids=lambda o: o.name)
def test_the_minimum_is_enforced(option):
    step = 1 if option.type.startswith("int") else 1e-6
    assert not _accepts(option, option.minimum - step)
    assert _accepts(option, option.minimum) is not option.exclusive_minimum
    assert _accepts(option, option.minimum + step)


@pytest.mark.parametrize("option", [o for o in NUMERIC if o.maximum is not None], ids=lambda o: o.name)
def test_the_maximum_is_enforced(option):
    step = 1 if option.type.startswith("int") else 1e-6
    assert not _accepts(option, option.maximum + step)
    assert _accepts(option, option.maximum) is not option.exclusive_maximum
    assert _accepts(option, option.maximum - step)


@pytest.mark.parametrize("option", [o for o in NUMERIC if o.type.startswith("float")], ids=lambda o: o.name)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_never_accepted(option, bad):
    value = [0.5, bad] if option.type in ("float_list", "float_list_or_auto") else bad
    with pytest.raises(NenyaError, match=f"'{option.name}' is .*finite number"):
        Params({"method": "mae", option.name: value}, warn_unused=False)


def test_the_options_reference_shows_the_ranges(tmp_path):
    text = open(load_generator().write_options_page(tmp_path / "options.rst"), encoding="utf-8").read()
    rows = {block.split("\n")[0].strip("`* -"): block for block in text.split("   * - ")[1:]}
    assert "at least 1" in rows["epochs"] and "greater than 0; finite" in rows["learning_rate"]
    assert r"in \[0, 4294967295\]" in rows["seed"] and r"each in \[0, 1); finite" in rows["betas"]
    assert r"low \< high" in rows["valid_range"] and "each at least 1" in rows["patch_size"]
    for option in NUMERIC:
        assert option.range_text().replace("[", r"\[").replace("]", r"\]") in rows[option.name], option.name


# ---- the run folder ---------------------------------------------------------------------------------------

def test_a_run_stopped_in_its_first_validation_is_no_dead_end(tmp_path, monkeypatch, capsys):
    opts = mae_opts(tmp_path, epochs=2, save_freq=2, valid_freq=2)
    train_main(opts, overrides={"model_name": "whole"}, verbose=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "validate", interrupted)
    assert train_cli([opts]) == 130  # Ctrl-C during the validation at initialisation
    monkeypatch.undo()
    folder = tmp_path / "models" / "mae"
    assert (folder / "opts.json").exists() and not (folder / "last.pth").exists()
    err = capsys.readouterr().err
    assert "interrupted (no checkpoint written yet); continue with: python -m nenya.train" in err
    assert err.rstrip().endswith("--resume\nnenya: interrupted")

    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert train_cli([opts]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stopped before its first checkpoint" in error and "pass --resume" in error
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before

    assert train_cli([opts, "--resume"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "nothing to resume" in line]
    assert said == [f"nothing to resume in {folder} (no checkpoint yet): starting the run from the beginning"]
    assert_same_run(tmp_path / "models" / "whole", folder)


def _fake_checkpoint(path, epoch, best_epoch):
    save_checkpoint(str(path), {"model": {"w": torch.full((3,), float(epoch))}, "optimizer": {}, "epoch": epoch,
                                "best": {"metric": "loss", "value": 0.5, "epoch": best_epoch}})


def test_best_pth_is_restored_from_last_pth_of_the_same_epoch(tmp_path):
    _fake_checkpoint(tmp_path / "last.pth", 4, best_epoch=4)
    _fake_checkpoint(tmp_path / "best.pth", 2, best_epoch=2)  # an older best: the kill came while replacing it
    (tmp_path / "best.pth.tmp").write_bytes(b"")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "mae_spectra_epoch4.png.tmp").write_bytes(b"\x89PNG")
    notes = repair_checkpoints(str(tmp_path), torch.load(tmp_path / "last.pth", weights_only=True), save_freq=2)
    assert (tmp_path / "best.pth").read_bytes() == (tmp_path / "last.pth").read_bytes()
    assert (tmp_path / "ckpt_epoch_4.pth").read_bytes() == (tmp_path / "last.pth").read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))
    assert "best.pth restored from last.pth (epoch 4 is the best epoch)" in notes
    assert "removed best.pth.tmp (left by an interrupted write)" in notes
    assert "ckpt_epoch_4.pth restored from last.pth" in notes


def test_a_lost_best_pth_of_an_earlier_epoch_is_stated(tmp_path):
    _fake_checkpoint(tmp_path / "last.pth", 5, best_epoch=3)
    notes = repair_checkpoints(str(tmp_path), torch.load(tmp_path / "last.pth", weights_only=True), save_freq=10)
    assert notes == ["warning: best.pth is missing but the best epoch was 3; it cannot be restored, and "
                     "--checkpoint best will use last.pth until a better epoch is saved"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_evaluate_says_when_best_falls_back_to_last(tiny_run, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    (folder / "best.pth").unlink()
    assert evaluate_cli([str(folder)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nenya: warning:")]
    assert len(warnings) == 1 and "has no best.pth" in warnings[0] and "using last.pth" in warnings[0]
    record = json.loads((folder / "eval" / "eval_metrics.json").read_text())
    assert record["checkpoint_file"].endswith("last.pth")


# ---- non-finite losses ------------------------------------------------------------------------------------

def _tiny_training(tmp_path, **overrides):
    write_images_h5(tmp_path / "images.h5", n_train=16, n_valid=8)
    opts = {"method": "simclr", "images_file": "images.h5", "data_folder": str(tmp_path), "feat_dim": 8,
            "batch_size_train": 8, "epochs": 1, "print_freq": 1, "model_root": str(tmp_path / "m"), **overrides}
    path = tmp_path / "opts.json"
    path.write_text(json.dumps(opts))
    opt = get_options(str(path))
    method = get_method(opt)
    model = method.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.learning_rate)
    loader = make_loader(method.build_datasets()[0], opt.batch_size_train, True, 0, drop_last=True)
    return opt, method, model, optimizer, loader


def test_a_non_finite_loss_stops_before_the_weights_take_the_step(tmp_path):
    opt, method, model, optimizer, loader = _tiny_training(tmp_path)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    real_loss = method.loss
    method.loss = lambda model, batch: (real_loss(model, batch)[0] * float("nan"), {})
    with pytest.raises(NenyaError, match=r"training loss is nan at epoch 1, step 1 of 2: the batch's values are "
                                         r"finite, so the learning rate is likely too high"):
        train_model(loader, model, method, optimizer, 1, opt)
    after = model.state_dict()
    for name, value in before.items():
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):  # the forward pass sets these
            assert torch.equal(value, after[name]), name


def test_skipped_steps_of_a_gradient_scaler_are_not_a_non_finite_loss(tmp_path):
    """Overflowing scaled gradients make the scaler skip steps (finite loss): training goes on, weights unchanged."""
    opt, method, model, optimizer, loader = _tiny_training(tmp_path, learning_rate=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))  # every scaled gradient overflows
    before = {name: value.clone() for name, value in model.named_parameters()}
    result = train_model(loader, model, method, optimizer, 1, opt, scaler=scaler)
    assert np.all(np.isfinite(result[1])) and result.steps == 2
    for name, value in model.named_parameters():
        assert torch.equal(before[name], value), name


def test_a_dry_run_names_non_finite_values_in_the_batch(tmp_path, capsys):
    with h5py.File(write_images_h5(tmp_path / "nan.h5", n_train=16, n_valid=8), "a") as handle:
        images = handle["train"][:]
        images[:, 0, 0, 0] = np.nan
        handle["train"][...] = images
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"images_file": "nan.h5", "data_folder": str(tmp_path), "batch_size_train": 16}))
    assert train_cli([str(path), "--dry-run"]) == 0
    assert "with 32 non-finite values (NaN or inf)" in capsys.readouterr().err  # 16 images x 2 views


# ---- a full disk ------------------------------------------------------------------------------------------

class _Full:
    """A file whose writes fail with ENOSPC after the first 100 bytes."""

    def __init__(self, handle):
        self.handle, self.left = handle, 100

    def write(self, data):
        if len(data) > self.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_last_pth_and_the_run_resumes_bit_exact(tmp_path, monkeypatch, capsys):
    opts = mae_opts(tmp_path, epochs=2, save_freq=2, valid_freq=2)
    train_main(opts, overrides={"model_name": "whole"}, verbose=False)
    folder = tmp_path / "models" / "mae"
    calls, kept = [], {}

    def full_on_the_second_checkpoint(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if "w" in mode:
            calls.append(path)
            if len(calls) == 2:  # epoch 2's last.pth: the disk is full
                kept["last"] = hashlib.sha256((folder / "last.pth").read_bytes()).hexdigest()
                return _Full(handle)
        return handle

    monkeypatch.setattr(nenya.io.checkpoints, "open", full_on_the_second_checkpoint, raising=False)
    assert train_cli([opts]) == 2
    monkeypatch.undo()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"nenya: error: cannot write {folder / 'last.pth'}: No space left on device (")
    assert "the previous last.pth is intact; free some space, then continue with: python -m nenya.train" in error
    assert hashlib.sha256((folder / "last.pth").read_bytes()).hexdigest() == kept["last"]
    assert torch.load(folder / "last.pth", weights_only=True)["epoch"] == 1 and not list(folder.rglob("*.tmp"))
    assert train_cli([opts, "--resume"]) == 0
    assert_same_run(tmp_path / "models" / "whole", folder)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("temporary, named", [("last.pth.tmp", "last.pth"),
                                              ("losses_valid.h5.tmp", "losses_valid.h5"),
                                              ("figures/mae_band_mse_epoch1.png.tmp", "mae_band_mse_epoch1.png")])
def test_a_real_full_disk_is_one_line(tmp_path, capsys, temporary, named):
    """Writes that really fail with ENOSPC: the temporary file is a link to /dev/full (torch, h5py, matplotlib)."""
    opts = mae_opts(tmp_path, epochs=1)
    link = tmp_path / "models" / "mae" / temporary
    link.parent.mkdir(parents=True)
    link.symlink_to("/dev/full")
    assert train_cli([opts]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("nenya: error:")]
    assert len(errors) == 1 and "Traceback" not in err and "HDF5-DIAG" not in err, err[-3000:]
    assert f"{named}: No space left on device" in errors[0]
    assert not os.path.lexists(link) and not link.with_suffix("").exists()


def test_write_failed_names_the_file_and_the_free_space(tmp_path):
    with pytest.raises(WriteFailed, match=r"cannot write .*x.json: No space left on device \(\d.* free\); "
                                          r"nothing was written"):
        with nenya.io.atomic.atomic_path(str(tmp_path / "x.json")):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError):  # not a disk error: raised as it is
        with nenya.io.atomic.atomic_path(str(tmp_path / "x.json")):
            raise ValueError("a bug")
    assert not list(tmp_path.iterdir())


# ---- signals and DataLoader workers -----------------------------------------------------------------------

def test_sigterm_is_handled_like_ctrl_c(capsys):
    previous = signal.getsignal(signal.SIGTERM)

    def run(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    assert run_cli("nenya.test", "", lambda parser: None, run, []) == 143
    assert capsys.readouterr().err.strip() == "nenya: terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_worker_error_keeps_only_its_own_line():
    wrapped = ("Caught NenyaError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 3, in f\n    raise NenyaError("cube c.h5 is damaged")\n'
               "nenya.errors.NenyaError: cube c.h5 is damaged\n")
    assert str(NenyaError(wrapped)) == "cube c.h5 is damaged"
    assert str(WriteFailed(wrapped.replace("errors.NenyaError", "errors.WriteFailed"))) == "cube c.h5 is damaged"
    assert one_line("a plain message") == "a plain message"


def test_a_damaged_cube_read_by_workers_is_one_line_in_a_real_process(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = ["path,split"]
    for index in range(5):
        with h5py.File(tmp_path / f"c{index}.h5", "w") as handle:
            handle.create_dataset("cube", data=rng.random((BANDS, SIZE, SIZE), dtype=np.float32),
                                  compression="gzip", chunks=(BANDS, SIZE, SIZE))
        lines.append(f"c{index}.h5,{'valid' if index == 4 else 'train'}")
    with h5py.File(tmp_path / "c2.h5", "r") as handle:
        chunk = handle["cube"].id.get_chunk_info(0)
    data = bytearray((tmp_path / "c2.h5").read_bytes())
    data[chunk.byte_offset + 8:chunk.byte_offset + chunk.size] = b"\x55" * (chunk.size - 8)
    (tmp_path / "c2.h5").write_bytes(bytes(data))
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    opts = mae_opts(tmp_path, images_file=None, data_csv="list.csv", num_workers=2, epochs=1)
    done = subprocess.run([sys.executable, "-m", "nenya.train", opts], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    errors = [line for line in done.stderr.splitlines() if line.startswith("nenya: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "c2.h5:cube item" in errors[0] and "cannot be read" in errors[0]
    assert "DataLoader worker" not in done.stderr
    assert train_cli([opts, "num_workers=0", "model_name=no_workers"]) == 2  # the same line without workers
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("nenya: error:")] == errors
