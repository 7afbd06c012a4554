"""opts/hvit_pretrain.json dry-runs at full size (256 px RGB, 7 classes) and prints the parameter count."""

import json
from pathlib import Path

from conftest import write_images_h5
from nenya.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
HEAD = 768 * 768 + 768 + 768 * 128 + 128  # the MLP projection head: Linear(768, 768), ReLU, Linear(768, 128)
PROBE = 768 * 7 + 7  # the online linear probe on the encoder features, 7 classes


def test_hvit_pretrain_opts_dry_run_at_full_size(tmp_path, capsys):
    values = json.loads((ROOT / "opts" / "hvit_pretrain.json").read_text())
    assert (values["method"], values["model"], values["img_size"], values["nchannels"], values["feat_dim"],
            values["temp"], values["optimizer"], values["augment"]) == \
        ("simclr", "hvit", 256, 3, 128, 0.07, "adamw", "simclr_rgb")
    write_images_h5(tmp_path / "leaves.h5", n_train=2, n_valid=2, channels=3, size=256)
    result = train_main(str(ROOT / "opts" / "hvit_pretrain.json"),
                        overrides={"data_folder": str(tmp_path), "model_root": str(tmp_path / "models"),
                                   "num_workers": 0, "batch_size_train": 2}, dry=True)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert f"model hvit: {result['parameters']:,} parameters" in out
    assert "one training batch: [2, 3, 256, 256] float32" in out  # views are made on the device
    # the encoder with a 7-class linear head has the published HViT's ~27.6 M parameters (Swin-T: 28 M)
    assert 27.5e6 < result["parameters"] - HEAD < 27.7e6
    # From Swin-T's published count (28,288,354 with its 1000-class head): a 16x16 instead of 4x4 patch
    # embedding, and relative-position tables for windows 8, 8, 4, 2 (grids 16, 8, 4, 2) instead of 7 everywhere.
    swin_t_encoder = 28_288_354 - (768 * 1000 + 1000)
    patch_embedding = 3 * 96 * (16 * 16 - 4 * 4)
    heads = [3] * 2 + [6] * 2 + [12] * 6 + [24] * 2  # per block
    windows = [8] * 2 + [8] * 2 + [4] * 6 + [2] * 2
    tables = sum(h * ((2 * w - 1) ** 2 - 13 ** 2) for h, w in zip(heads, windows))
    assert result["parameters"] - HEAD - PROBE == swin_t_encoder + patch_embedding + tables
    assert not (tmp_path / "models").exists()
