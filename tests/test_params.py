"""Options: loading, overrides, validation errors and option_preprocess's Nenya formulas."""

import json
import math

import pytest

from conftest import NENYA_OPTS

from nenya.errors import NenyaError
from nenya.params import Params, get_options, load_options, option_preprocess, parse_overrides



def test_original_nenya_opts_validate_with_warnings_for_unused_keys():
    with pytest.warns(UserWarning) as caught:
        opt = option_preprocess(Params(dict(NENYA_OPTS)))
    warned = " ".join(str(w.message) for w in caught)
    assert "'sensor'" in warned and "'nenya_data'" in warned
    assert opt.method == "simclr"
    assert opt.lr_decay_epochs == [700, 800, 900]
    assert opt.model_name == "simclr_resnet18_lr_0.05_decay_0.0001_bsz_64_temp_0.07_trial_0_cosine"
    assert opt.lr_min == pytest.approx(0.05 * 0.1 ** 3)
    assert opt.warmup_to is None


def test_warm_forced_above_batch_256_and_cosine_warmup_target():
    opt = option_preprocess(Params({"batch_size_train": 512, "learning_rate": 0.5, "cosine": True,
                                      "lr_decay_rate": 0.1, "epochs": 100}))
    assert opt.warm and opt.model_name.endswith("_cosine_warm")
    eta_min = 0.5 * 0.1 ** 3
    assert opt.warmup_to == pytest.approx(eta_min + (0.5 - eta_min) * (1 + math.cos(math.pi * 10 / 100)) / 2)
    step = option_preprocess(Params({"warm": True, "learning_rate": 0.2}))
    assert step.warmup_to == 0.2


def test_overrides_are_json_with_plain_string_fallback():
    parsed = parse_overrides(["random_cropjitter=[40,5]", "cosine=false", "epochs=3", "images_file=cut.h5",
                              "learning_rate=1e-3"])
    assert parsed == {"random_cropjitter": [40, 5], "cosine": False, "epochs": 3, "images_file": "cut.h5",
                      "learning_rate": 1e-3}
    with pytest.raises(NenyaError, match="key=value"):
        parse_overrides(["epochs"])


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "epochs": 3,\n  "temp" 0.1\n}')
    with pytest.raises(NenyaError, match=r"bad.json is not valid JSON: .* line 3 column 10"):
        load_options(str(path))


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(NenyaError, match=r"unknown option 'learning_rat'; did you mean 'learning_rate'\?"):
        Params({"learning_rat": 0.1})


@pytest.mark.parametrize("key, value, expected", [("epochs", "ten", "must be int"), ("cosine", 1, "must be bool"),
                                                   ("learning_rate", "fast", "must be float"),
                                                   ("random_cropjitter", [4.5, 1], "must be int_list"),
                                                   ("ssl_method", "BYOL", "allowed: .*mae, .*simclr, supcon"),
                                                   ("head", "deep", "allowed: mlp, linear"),
                                                   ("epochs", 0, "at least 1")])
def test_wrong_values_name_the_key(key, value, expected):
    with pytest.raises(NenyaError, match=f"'{key}'.*{expected}"):
        Params({key: value})


def test_int_is_accepted_for_float_and_defaults_fill_in():
    opt = Params({"learning_rate": 1})
    assert opt.learning_rate == 1.0 and isinstance(opt.learning_rate, float)
    assert opt.optimizer == "sgd" and opt.seed == 0


def test_resolved_options_round_trip_through_a_file(tmp_path):
    opt = get_options(_write(tmp_path / "a.json", {"epochs": 7, "cosine": True, "warm": True}), {"trial": 3})
    saved = {**opt.to_dict(), "_versions": {"torch": "x"}}
    again = get_options(_write(tmp_path / "b.json", saved))
    assert again.to_dict() == opt.to_dict()


def _write(path, values):
    path.write_text(json.dumps(values))
    return str(path)


def test_an_option_of_another_family_warns_once_naming_who_uses_it(tiny_run, capsys):
    from nenya.train import cli
    opts, _ = tiny_run
    assert cli([opts, "mask_ratio=0.5", "cube_rot90=false", "--dry-run"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nenya: warning:")]
    assert len(warnings) == 1, warnings  # cube_rot90 is set to its default: no warning
    assert "'mask_ratio' is not used by method 'simclr'" in warnings[0] and "mae" in warnings[0]


def test_options_every_method_uses_do_not_warn():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Params({"method": "mae", "model": "mae_tiny", "flip": True, "epochs": 3, "learning_rate": 0.1})
        Params({"method": "supcon", "flip": True, "temp": 0.5, "knn_k": 3})


def test_nenya_names_are_read_as_the_canonical_ones():
    opt = Params({"ssl_method": "SupCon", "ssl_model": "resnet34"})
    assert (opt.method, opt.model) == ("supcon", "resnet34")
    assert "ssl_method" not in opt.to_dict() and "ssl_model" not in opt.to_dict()
    with pytest.raises(NenyaError, match="'ssl_method' .* and 'method' .* disagree"):
        Params({"ssl_method": "simclr", "method": "mae"})
    with pytest.warns(UserWarning, match="'cube_flip' is now called 'flip'"):
        assert Params({"method": "mae", "model": "mae_tiny", "cube_flip": True}).flip is True


def test_an_override_of_the_canonical_name_wins_over_the_file(tmp_path):
    opt = get_options(_write(tmp_path / "a.json", {"ssl_method": "SimCLR"}), {"method": "supcon"})
    assert opt.method == "supcon"


def test_params_accepts_a_path_or_a_dict(tmp_path):
    path = _write(tmp_path / "a.json", {"ssl_method": "SimCLR", "epochs": 7})
    assert Params(path).to_dict() == Params({"method": "simclr", "epochs": 7}).to_dict()
    assert Params(Params(path)).epochs == 7


@pytest.mark.parametrize("method, model", [("segment", "attention_unet"), ("classify", "resnet18")])
def test_the_shared_loss_option_defaults_and_checks_per_method(method, model):
    """segment and classify share ``loss``; each gets its own default and refuses the other's losses."""
    assert Params({"method": method, "model": model}).loss == {"segment": "dice_ce", "classify": "ce"}[method]
    other = {"segment": "combined", "classify": "dice"}[method]
    with pytest.raises(NenyaError, match=f"option 'loss' is \"{other}\", which method '{method}' does not have"):
        Params({"method": method, "model": model, "loss": other})
    assert Params({"method": method, "model": model, "loss": "focal"}).loss == "focal"
