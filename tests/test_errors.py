"""Every user error ends with one 'nenya: error:' line naming what is wrong, exit status 2, nothing overwritten."""

import subprocess
import sys

import h5py
import numpy as np
import torch

from conftest import fails_with, write_images_h5, write_opts
from nenya.latents import cli as latents_cli
from nenya.train import cli as train_cli
from nenya.train import main as train_main


def test_invalid_json_line_and_column(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{"epochs": 3,\n "cosine": tru}')
    fails_with(capsys, [str(path)], "bad.json is not valid JSON", "line 2 column")


def test_unknown_key_with_did_you_mean(tiny_run, capsys):
    opts, _ = tiny_run
    fails_with(capsys, [opts, "batch_size_trian=8"], "unknown option 'batch_size_trian'", "did you mean 'batch_size_train'")


def test_wrong_type(tiny_run, capsys):
    opts, _ = tiny_run
    fails_with(capsys, [opts, "epochs=\"many\""], "option 'epochs' must be int", '"many"')


def test_missing_images_file(tiny_run, capsys):
    opts, _ = tiny_run
    fails_with(capsys, [opts, "images_file=nothere.h5"], "nothere.h5 does not exist", "images_file")
    fails_with(capsys, [opts, "images_file=null"], "option 'images_file' is required")


def test_train_key_missing_lists_the_keys(tiny_run, capsys):
    opts, _ = tiny_run
    fails_with(capsys, [opts, "train_key=trian"], "has no dataset 'trian' (train_key)",
           "it has: train, train_labels, valid, valid_labels")


def test_nchannels_mismatch(tiny_run, capsys):
    opts, _ = tiny_run
    fails_with(capsys, [opts, "nchannels=3"], "nchannels=3", "1 channel")


def test_supcon_without_labels(tmp_path, capsys):
    write_images_h5(tmp_path / "nolabels.h5", labels=False)
    opts = write_opts(tmp_path / "o.json", ssl_method="SupCon", images_file="nolabels.h5",
                      data_folder=str(tmp_path), model_root=str(tmp_path / "m"))
    fails_with(capsys, [opts], "supcon needs labels", "train_labels")


def test_existing_run_is_refused_and_kept(tiny_run, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    before = (folder / "last.pth").read_bytes(), (folder / "opts.json").read_bytes()
    fails_with(capsys, [opts, "epochs=1", "temp=0.5"], "already holds a different run", "--resume", "nothing was changed")
    assert ((folder / "last.pth").read_bytes(), (folder / "opts.json").read_bytes()) == before


def test_resume_with_nothing_to_resume(tiny_run, capsys):
    opts, _ = tiny_run
    fails_with(capsys, [opts, "--resume"], "nothing to resume", "no last.pth")


def test_corrupt_checkpoint(tiny_run, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    (folder / "last.pth").write_bytes(b"not a checkpoint at all")
    fails_with(capsys, [opts, "epochs=1", "--resume"], "last.pth is corrupt or not a nenya checkpoint")


def test_incompatible_checkpoint(tiny_run, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    state = torch.load(folder / "last.pth", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("head.")}
    torch.save(state, folder / "last.pth")
    fails_with(capsys, [opts, "epochs=1", "--resume"], "does not fit the model SupConResNet", "missing: head.")


def test_checkpoint_without_training_state(tiny_run, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    state = torch.load(folder / "last.pth", weights_only=True)
    torch.save({"model": state["model"]}, folder / "last.pth")
    fails_with(capsys, [opts, "epochs=1", "--resume"], "cannot be resumed", "lacks optimizer, epoch")


def test_resume_with_changed_options(tiny_run, capsys):
    opts, _ = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    fails_with(capsys, [opts, "epochs=2", "learning_rate=0.3", "--resume"], "options differ", "learning_rate=0.3")


def test_bad_command_line(capsys):
    fails_with(capsys, [], "the following arguments are required: opts")
    fails_with(capsys, ["x.json", "--resum"], "unrecognized arguments: --resum")


def test_latents_errors(tiny_run, tmp_path, capsys):
    opts, folder = tiny_run
    fails_with(capsys, [str(tmp_path / "norun"), "d.h5", "o.h5"], "is not a nenya run folder", cli=latents_cli)
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    with h5py.File(tmp_path / "rgb.h5", "w") as handle:
        handle["test"] = np.zeros((4, 3, 8, 8), np.float32)
    fails_with(capsys, [str(folder), str(tmp_path / "rgb.h5"), str(tmp_path / "o.h5")], "nchannels=1", "3 channel",
           cli=latents_cli)
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.tmp").exists()


def test_real_process_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[1, 2]")
    done = subprocess.run([sys.executable, "-m", "nenya.train", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"nenya: error: {path} must hold one JSON object of options, "
                                                "not a list"]


def test_legacy_keys_warn_in_one_line(tiny_run, capsys):
    opts, _ = tiny_run
    assert train_cli([opts, "sensor=\"MODIS\"", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "nenya: warning:" in err and "'sensor' is not used" in err and "Traceback" not in err
