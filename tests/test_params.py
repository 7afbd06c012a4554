"""Options: loading, overrides, validation errors and option_preprocess's Nenya formulas."""

import json
import math

import pytest

from conftest import NENYA_OPTS

from nenya.errors import NenyaError
from nenya.params import get_options, load_options, option_preprocess, parse_overrides, validate



def test_original_nenya_opts_validate_with_warnings_for_unused_keys():
    with pytest.warns(UserWarning) as caught:
        opt = option_preprocess(validate(dict(NENYA_OPTS)))
    warned = " ".join(str(w.message) for w in caught)
    assert "'sensor'" in warned and "'nenya_data'" in warned
    assert opt.ssl_method == "simclr"
    assert opt.lr_decay_epochs == [700, 800, 900]
    assert opt.model_name == "simclr_resnet18_lr_0.05_decay_0.0001_bsz_64_temp_0.07_trial_0_cosine"
    assert opt.lr_min == pytest.approx(0.05 * 0.1 ** 3)
    assert opt.warmup_to is None


def test_warm_forced_above_batch_256_and_cosine_warmup_target():
    opt = option_preprocess(validate({"batch_size_train": 512, "learning_rate": 0.5, "cosine": True,
                                      "lr_decay_rate": 0.1, "epochs": 100}))
    assert opt.warm and opt.model_name.endswith("_cosine_warm")
    eta_min = 0.5 * 0.1 ** 3
    assert opt.warmup_to == pytest.approx(eta_min + (0.5 - eta_min) * (1 + math.cos(math.pi * 10 / 100)) / 2)
    step = option_preprocess(validate({"warm": True, "learning_rate": 0.2}))
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
        validate({"learning_rat": 0.1})


@pytest.mark.parametrize("key, value, expected", [("epochs", "ten", "must be int"), ("cosine", 1, "must be bool"),
                                                   ("learning_rate", "fast", "must be float"),
                                                   ("random_cropjitter", [4.5, 1], "must be int_list"),
                                                   ("ssl_method", "BYOL", "allowed: mae, simclr, supcon"),
                                                   ("head", "deep", "allowed: mlp, linear"),
                                                   ("epochs", 0, "at least 1")])
def test_wrong_values_name_the_key(key, value, expected):
    with pytest.raises(NenyaError, match=f"'{key}'.*{expected}"):
        validate({key: value})


def test_int_is_accepted_for_float_and_defaults_fill_in():
    opt = validate({"learning_rate": 1})
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
