"""Every user error ends with one 'nenya: error:' line naming what is wrong, exit status 2, nothing overwritten."""

import json
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest
import torch

from conftest import fails_with, write_images_h5, write_opts
from nenya.data.synthetic import make_hyperspectral
from nenya.errors import NenyaError
from nenya.evaluate import cli as evaluate_cli
from nenya.latents import cli as latents_cli
from nenya.train import cli as train_cli
from nenya.train import main as train_main
from test_methods_mae import BANDS, SIZE, mae_opts


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


# ---- every NenyaError the command line can reach, each triggered through it ------------------------------

def test_options_file_missing(tmp_path, capsys):
    fails_with(capsys, [str(tmp_path / "nothere.json")], f"options file {tmp_path / 'nothere.json'} does not exist")


def test_null_option(tiny_run, capsys):
    opts, _ = tiny_run
    fails_with(capsys, [opts, "epochs=null"], "option 'epochs' must not be null", "int")


@pytest.mark.parametrize("override, expected", [
    ("random_cropjitter=[6,1,2]", "option 'random_cropjitter' must be [crop, jitter], got [6, 1, 2]"),
    ("betas=[0.9]", "option 'betas' must hold 2 numbers, got [0.9]"),
    ("patch_size=[8]", "option 'patch_size' must hold 2 numbers, got [8]"),
    ("rgb_bands=[0,1]", "option 'rgb_bands' must hold 3 numbers, got [0, 1]"),
    ("valid_range=[0]", "option 'valid_range' must hold 2 numbers, got [0.0]"),
])
def test_list_options_of_the_wrong_length(tmp_path, capsys, override, expected):
    fails_with(capsys, [mae_opts(tmp_path), override], expected)


def test_corrupt_run_opts_json_is_named_and_kept(tiny_run, tmp_path, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    (folder / "opts.json").write_text('{"method": "simclr", ')
    fails_with(capsys, [opts, "epochs=2", "--resume"], f"{folder / 'opts.json'} is not readable JSON", "move it away")
    fails_with(capsys, [str(folder)], "opts.json is not readable JSON", cli=evaluate_cli)
    assert (folder / "opts.json").read_text() == '{"method": "simclr", '


def test_checkpoints_without_a_model_or_with_an_optimizer_state_that_does_not_fit(tiny_run, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    state = torch.load(folder / "last.pth", weights_only=True)
    torch.save({key: value for key, value in state.items() if key != "model"}, folder / "last.pth")
    fails_with(capsys, [opts, "epochs=2", "--resume"], "last.pth is not a nenya checkpoint (no 'model' entry)")
    wrong = dict(state, optimizer={**state["optimizer"],
                                   "param_groups": state["optimizer"]["param_groups"] * 2})
    torch.save(wrong, folder / "last.pth")
    fails_with(capsys, [opts, "epochs=2", "--resume"], "its optimizer state does not fit optimizer 'sgd'",
               "parameter groups")
    assert torch.load(folder / "last.pth", weights_only=True)["epoch"] == 1  # nothing written over it


def test_latents_data_missing_or_without_images(tiny_run, tmp_path, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    out = str(tmp_path / "o.h5")
    for extra in ([], ["--keys", "valid"]):
        fails_with(capsys, [str(folder), str(tmp_path / "missing.h5"), out, *extra],
                   f"data file {tmp_path / 'missing.h5'} does not exist", cli=latents_cli)
    with h5py.File(tmp_path / "labels_only.h5", "w") as handle:
        handle["valid_labels"] = np.zeros(4, np.int64)
    fails_with(capsys, [str(folder), str(tmp_path / "labels_only.h5"), out], "labels_only.h5 holds no image datasets",
               cli=latents_cli)
    (tmp_path / "notes.txt").write_text("not HDF5")
    for extra in ([], ["--keys", "valid"]):
        fails_with(capsys, [str(folder), str(tmp_path / "notes.txt"), out, *extra],
                   "notes.txt is not a readable HDF5 file", cli=latents_cli)
    assert not (tmp_path / "o.h5").exists()


def test_evaluate_a_run_without_valid_key_and_no_key_given(tiny_run, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1, "valid_key": None}, verbose=False)
    fails_with(capsys, [str(folder)], "the run has no valid_key; pass --key", cli=evaluate_cli)
    assert evaluate_cli([str(folder), "--key", "valid"]) == 0


def test_mae_evaluate_without_validation_data_and_no_key_given(tmp_path, capsys):
    opts = mae_opts(tmp_path, valid_key=None, epochs=1)
    train_main(opts, verbose=False)
    folder = tmp_path / "models" / "mae"
    fails_with(capsys, [str(folder)], "the run has no validation data", "pass --key", cli=evaluate_cli)
    fails_with(capsys, [str(folder), "--data", str(tmp_path / "cubes.h5")], "the run has no valid_key; pass --key",
               cli=evaluate_cli)


def test_patch_size_not_positive(tmp_path, capsys):
    fails_with(capsys, [mae_opts(tmp_path), "patch_size=[0,5]"], "option 'patch_size' is [0, 5]; each element must be at least 1")


def test_mae_on_images_that_are_not_cubes(tmp_path, capsys):
    with h5py.File(tmp_path / "volumes.h5", "w") as handle:
        handle["train"] = np.zeros((4, BANDS, 2, SIZE, SIZE), np.float32)  # (N, C, D, H, W)
    fails_with(capsys, [mae_opts(tmp_path), "images_file=\"volumes.h5\"", "valid_key=null"],
               "volumes.h5:train holds images of shape (10, 2, 16, 16); the MAE needs cubes (C, H, W)")


def test_validation_cubes_smaller_than_the_crop(tmp_path, capsys):
    cubes = make_hyperspectral(6, bands=BANDS, size=SIZE)
    with h5py.File(tmp_path / "mixed.h5", "w") as handle:
        handle["train"], handle["valid"] = cubes[:4], cubes[4:, :, :8, :8]
    fails_with(capsys, [mae_opts(tmp_path), "images_file=\"mixed.h5\"", "cube_crop=16"],
               "mixed.h5:valid holds 8x8 cubes, smaller than cube_crop=16")


def test_band_statistics_files_that_are_not_usable(tmp_path, capsys):
    opts = mae_opts(tmp_path)
    (tmp_path / "stats.txt").write_text("mean std\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "short.json").write_text(json.dumps({"mean": [0.5] * BANDS, "std": [0.1] * (BANDS - 1)}))
    for name, expected in (("stats.txt", "band statistics file {} must end in .json or .npz"),
                           ("list.json", "band statistics file {} must hold an object with 'mean' and 'std'"),
                           ("short.json", "band statistics file {} has 10 means but 9 stds")):
        path = tmp_path / name
        fails_with(capsys, [opts, "normalize_bands=true", f"band_stats=\"{name}\""], expected.format(path))
    with h5py.File(tmp_path / "empty.h5", "w") as handle:
        handle["train"] = np.zeros((0, BANDS, SIZE, SIZE), np.float32)
    fails_with(capsys, [opts, "normalize_bands=true", "images_file=\"empty.h5\"", "valid_key=null"],
               "cannot compute band statistics of an empty dataset")


# ---- NenyaErrors the command line cannot reach (its own checks come first): raised from Python ----------

def test_errors_only_python_callers_can_reach(tmp_path, tiny_run):
    from nenya.data.band_stats import band_statistics
    from nenya.data.builtin import write_digits_h5
    from nenya.data.synthetic import write_hyperspectral_h5
    from nenya.data.transforms import build_cube_augmentation
    from nenya.methods import get_method
    from nenya.params import get_options

    with pytest.raises(NenyaError, match="unknown method 'nope'"):  # the options' schema checks method names
        get_method(types.SimpleNamespace(method="nope"))
    with pytest.raises(NenyaError, match="n_train=0, n_valid=4 are invalid"):  # built-in data: fixed counts
        write_hyperspectral_h5(str(tmp_path / "h.h5"), n_train=0, n_valid=4)
    with pytest.raises(NenyaError, match="valid_fraction=1.5 is invalid"):
        write_digits_h5(str(tmp_path / "d.h5"), valid_fraction=1.5)
    with pytest.raises(NenyaError, match="crop='' is invalid"):  # cube_crop is an int: 0 or null is off
        build_cube_augmentation(False, False, crop="")
    with pytest.raises(NenyaError, match="item 1 has 3 bands but earlier items have 2"):  # CubeCSV checks first
        band_statistics([(torch.zeros(2, 4, 4),), (torch.zeros(3, 4, 4),)], progress=False)
    opts, _ = tiny_run  # evaluate and latents check that the data file exists before the method does
    method = get_method(get_options(opts))
    with pytest.raises(NenyaError, match="missing.h5 does not exist"):
        method.eval_dataset(str(tmp_path / "missing.h5"), "valid")
    mae = get_method(get_options(mae_opts(tmp_path)))
    with pytest.raises(NenyaError, match="missing.h5 does not exist"):
        mae.eval_dataset(str(tmp_path / "missing.h5"), "valid")
