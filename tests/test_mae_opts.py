"""The six MAE opts files dry-run at full size, and the MAE demo trains and beats the mean-of-visible baseline."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from nenya.models.mae_spectral import MAE_SIZES, mae_parameter_count
from nenya.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def retina_csv(tmp_path_factory):
    """A CSV of three 30-band 500 x 500 cubes (compressed constant data: small on disk)."""
    folder = tmp_path_factory.mktemp("retina")
    rows = ["path,split"]
    for index, split in enumerate(["train", "train", "valid"]):
        with h5py.File(folder / f"cube{index}.h5", "w") as handle:
            handle.create_dataset("cube", data=np.full((30, 500, 500), 0.25 + 0.1 * index, np.float32),
                                  compression="gzip")
        rows.append(f"cube{index}.h5,{split}")
    (folder / "cubes.csv").write_text("\n".join(rows) + "\n")
    return folder / "cubes.csv"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MAE_SIZES))
def test_mae_opts_file_dry_runs_at_full_size(name, retina_csv, tmp_path):
    opts = ROOT / "opts" / f"{name}.json"
    values = json.loads(opts.read_text())
    assert (values["img_size"], values["patch_size"], values["mask_ratio"], values["nchannels"]) == \
        (500, [25, 5], 0.8, 30)
    result = train_main(str(opts), overrides={"data_csv": str(retina_csv), "data_folder": "/",
                                              "model_root": str(tmp_path), "num_workers": 0}, dry=True,
                        verbose=False)
    assert result["parameters"] == mae_parameter_count(name, img_size=500, bands=30, patch_size=25,
                                                       band_patch=5)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_demo_mae_beats_the_mean_of_visible_patches(tmp_path):
    command = [sys.executable, "-m", "nenya.train", str(ROOT / "opts/demo_mae.json"),
               f"model_root={tmp_path / 'models'}", f"data_folder={tmp_path / 'data'}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "models" / "demo_mae"
    summary = json.loads((folder / "metrics.json").read_text())
    metrics = summary["final"]
    assert metrics["mse_masked"] < 0.85 * metrics["baseline_mse_masked"]
    epochs = json.loads((ROOT / "opts/demo_mae.json").read_text())["epochs"]
    for name in ("mae_reconstruction", "mae_band_mse", "mae_spectra"):
        assert (folder / "figures" / f"{name}_epoch{epochs}.png").exists()
    evaluated = subprocess.run([sys.executable, "-m", "nenya.evaluate", str(folder)], capture_output=True,
                               text=True, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((folder / "eval" / "eval_metrics.json").read_text())["metrics"]
    assert summary["best"]["metric"] == "mse_masked"
    assert again["mse_masked"] == pytest.approx(summary["best"]["value"], rel=1e-5)  # evaluate uses best.pth
