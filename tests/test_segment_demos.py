"""The two segmentation demos as a user runs them: each reaches validation Dice >= 0.9 (slow: ~1-2 CPU minutes each)."""

import json

import pytest

from nenya.train import cli as train_cli


@pytest.mark.slow
@pytest.mark.parametrize("opts", ["opts/demo_segment.json", "opts/demo_seg3d.json"])
def test_demo_reaches_dice_0_9(tmp_path, opts):
    assert train_cli([opts, f"data_folder={tmp_path / 'data'}", f"model_root={tmp_path / 'models'}"]) == 0
    name = json.load(open(opts))["model_name"]
    metrics = json.loads((tmp_path / "models" / name / "metrics.json").read_text())
    assert metrics["monitor"] == "dice" and metrics["best"]["value"] >= 0.9, metrics["best"]
    assert metrics["final"]["dice"] >= 0.9, metrics["final"]
    assert (tmp_path / "models" / name / "figures" / f"segmentation_epoch{metrics['epochs_completed']}.png").is_file()
