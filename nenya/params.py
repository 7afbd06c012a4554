"""Options: Params (from a JSON opts file or a dict), key=value overrides, validation, option_preprocess.

The schema itself (every key, its type, default, allowed values and the methods that use it) is
declared one file per family in :mod:`nenya.options`; ``params.SCHEMA`` / ``params.OPTIONS`` are it.
"""

import json
import math
import os
import warnings

import nenya.methods  # noqa: F401  (registers every method family, so method names can be checked)
from nenya import distributed
from nenya.errors import NenyaError
from nenya.options import ALIASES, LEGACY_KEYS, OPTIONS, SCHEMA  # noqa: F401  (OPTIONS re-exported)
from nenya.options.supervised import DEFAULT_LOSS, LOSSES
from nenya.registry import METHODS, did_you_mean


_SPELLED = "__spelled__"  # which alias a user wrote for a canonical key, for error messages


class Params:
    """The options of one run, read as attributes (``opt.learning_rate``).

    ``Params("opts.json")`` reads and validates an opts file, ``Params({...})`` a dict of options (as
    the original Nenya's ``params.Params(path)``); ``option_preprocess`` then derives the rest.
    """

    def __init__(self, source, source_name: str | None = None, warn_unused: bool = True):
        if isinstance(source, Params):
            values, name = source.to_dict(), source_name or "options"
        elif isinstance(source, dict):
            values, name = dict(source), source_name or "options"
        else:
            values, name = load_options(os.fspath(source)), source_name or os.fspath(source)
        self.__dict__.update(validate(values, name, warn_unused))

    def to_dict(self) -> dict:
        """A plain-dict copy of every option."""
        return dict(self.__dict__)

    def __repr__(self):
        return f"Params({self.__dict__!r})"


def load_options(path: str) -> dict:
    """Read a JSON opts file into a dict; invalid JSON is a NenyaError with line and column."""
    if os.path.isdir(path):
        raise NenyaError(f"options file {path} is a folder; give the JSON opts file (a run folder's opts.json "
                         f"works too)")
    if not os.path.isfile(path):
        raise NenyaError(f"options file {path} does not exist")
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise NenyaError(f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at line {line}); save the opts "
                         f"file as UTF-8 JSON") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise NenyaError(f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(values, dict):
        raise NenyaError(f"{path} must hold one JSON object of options, not a {type(values).__name__}")
    return {key: value for key, value in values.items() if not key.startswith("_")}


def parse_overrides(items) -> dict:
    """Turn ``key=value`` strings into a dict; values are JSON, or plain strings when not JSON."""
    overrides = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise NenyaError(f"override '{item}' must look like key=value (value as JSON, e.g. epochs=3)")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def _coerce(option, value, source: str):
    """Check one value against its option's type; return it in canonical form."""
    where = f"{source}: option '{option.name}'"
    if value is None:
        if option.nullable:
            return None
        raise NenyaError(f"{where} must not be null (expected {option.type})")
    kind = option.type
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(option, float(value), where)
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind == "str_list":
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    elif kind == "int_list":
        if isinstance(value, str):
            try:
                return [int(part) for part in value.split(",") if part.strip()]
            except ValueError:
                pass
        elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        elif isinstance(value, int) and not isinstance(value, bool):  # one number: a list of one
            return [value]
    elif kind in ("float_list_or_auto", "float_or_auto"):  # "auto", or numbers ('1,5,10' or a JSON list)
        if value == "auto":
            return value
        if kind == "float_or_auto":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return _finite(option, float(value), where)
        else:
            try:
                numbers = [float(part) for part in value.split(",")] if isinstance(value, str) else None
            except ValueError:
                numbers = None
            if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                numbers = [float(v) for v in value]
            if numbers is not None:
                return [_finite(option, v, where) for v in numbers]
    elif kind == "float_list":
        if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [_finite(option, float(v), where) for v in value]
    elif kind == "experiments":
        return _experiments(value, where)
    expected = {"float_list_or_auto": 'a list of numbers or "auto"', "float_or_auto": 'a number or "auto"'}.get(kind, kind)
    raise NenyaError(f"{where} must be {expected}, got {json.dumps(value)} ({type(value).__name__})")


def _experiments(value, where: str) -> list:
    """A sweep's experiments: a list of objects, each with a unique ``name``; a NenyaError otherwise."""
    if not isinstance(value, list) or not value:
        raise NenyaError(f"{where} must be a non-empty list of objects like {{\"name\": \"baseline\", "
                         f"\"description\": \"...\", \"epochs\": 10}}, got {json.dumps(value)}")
    names = []
    for number, experiment in enumerate(value, start=1):
        name = experiment.get("name") if isinstance(experiment, dict) else None
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name) \
                or name.startswith("."):
            raise NenyaError(f"{where}: experiment {number} needs a \"name\" made of letters, digits, '-', '_' "
                             f"or '.' (it names the experiment's run folder), got {json.dumps(experiment)}")
        if name in names:
            raise NenyaError(f"{where}: two experiments are named '{name}'; give each a different name")
        names.append(name)
    return [dict(experiment) for experiment in value]


def _finite(option, value: float, where: str) -> float:
    """``value`` when it is a finite number; NaN and infinity are a NenyaError."""
    if not math.isfinite(value):
        allowed = f" ({option.range_text()})" if option.range_text() else ""
        raise NenyaError(f"{where} is {value}; it must be a finite number{allowed}")
    return value


def check_range(option, value, source: str) -> None:
    """A NenyaError unless ``value`` (every element of a list) lies in the option's declared range."""
    if value is None or not option.numeric or isinstance(value, str):
        return
    for number in value if isinstance(value, list) else [value]:
        if not option.in_range(number):
            each = "each element" if isinstance(value, list) else "it"
            raise NenyaError(f"{source}: option '{option.name}' is {json.dumps(value)}; {each} must be "
                             f"{option.range_text()}")


def _check_rules(resolved: dict, source: str) -> None:
    """The conditions between list elements and between options that a range cannot say."""
    crop = resolved["random_cropjitter"]
    if crop is not None and len(crop) not in (0, 2):
        raise NenyaError(f"{source}: option 'random_cropjitter' must be [crop, jitter], got {crop}")
    if crop and crop[0] < 1:
        raise NenyaError(f"{source}: option 'random_cropjitter' is {crop}; the crop must be at least 1 pixel")
    method = resolved["method"]
    if method in LOSSES:  # segment and classify share the loss option, each with its own losses
        resolved["loss"] = resolved["loss"] or DEFAULT_LOSS[method]
        if resolved["loss"] not in LOSSES[method]:
            raise NenyaError(f"{source}: option 'loss' is \"{resolved['loss']}\", which method '{method}' does not "
                             f"have; allowed: {', '.join(LOSSES[method])}")
    mae = method == "mae"
    if resolved["patch_size"] is None:  # the default depends on the method: MAE's [spatial, spectral], hvit's 16
        resolved["patch_size"] = [25, 5] if mae else [16]
    for key, length in (("betas", 2), ("valid_range", 2), ("patch_size", 2 if mae else 1), ("rgb_bands", 3)):
        if resolved[key] is not None and len(resolved[key]) != length:
            raise NenyaError(f"{source}: option '{key}' must hold {length} number{'s' * (length > 1)}, got "
                             f"{resolved[key]}" + (f" (method {resolved['method']})" if key == "patch_size" else ""))
    low_high = resolved["valid_range"]
    if low_high is not None and not low_high[0] < low_high[1]:
        raise NenyaError(f"{source}: option 'valid_range' is {low_high}; it must be [low, high] with low < high")
    if resolved["schedule"] == "plateau" and resolved["cosine"]:
        raise NenyaError(f"{source}: options 'cosine' (true) and 'schedule' (\"plateau\") exclude each other: "
                         f"the plateau schedule sets the rate from the validation metric; set cosine to false "
                         f"or choose schedule \"epoch\"")
    bands = resolved["rgb_bands"]
    if bands is not None and resolved["method"] == "mae" and max(bands) >= resolved["nchannels"]:
        raise NenyaError(f"{source}: option 'rgb_bands' is {bands}; band indices must be below "
                         f"nchannels={resolved['nchannels']}")


def _canonical_names(values: dict, source: str) -> dict:
    """Rename aliases (Nenya's ssl_method / ssl_model, the former cube_flip) to the canonical keys."""
    values = dict(values)
    for alias, name in ALIASES.items():
        if alias not in values:
            continue
        value = values.pop(alias)
        if name in values and values[name] != value:
            raise NenyaError(f"{source}: options '{alias}' ({json.dumps(value)}) and '{name}' "
                             f"({json.dumps(values[name])}) disagree; '{alias}' is another name of '{name}', "
                             f"give one of them")
        if not alias.startswith("ssl_"):
            warnings.warn(f"{source}: option '{alias}' is now called '{name}'; read as {name}={json.dumps(value)}")
        values[name] = value
        values.setdefault(_SPELLED, {})[name] = alias
    return values


def _check_method(resolved: dict, source: str, spelled: str) -> None:
    """Canonical (lower-case) method name, or a NenyaError naming the registered ones."""
    method = resolved["method"].lower()
    if method not in METHODS:
        raise NenyaError(f"{source}: option '{spelled}' is '{resolved['method']}'; "
                         f"allowed: {', '.join(sorted(METHODS))}{did_you_mean(method, METHODS)}")
    resolved["method"] = method


def _warn_unused(given: dict, method: str, source: str) -> None:
    """One warning per option set to a non-default value that ``method`` does not read."""
    for key, value in given.items():
        option = SCHEMA[key]
        if not option.used_by(method) and value != option.default:
            warnings.warn(f"{source}: option '{key}' is not used by method '{method}' (only by "
                          f"{', '.join(option.methods)}); ignored")


def validate(values: dict, source: str = "options", warn_unused: bool = True) -> dict:
    """Check every key and value against the schema and fill defaults; return the resolved dict."""
    values = _canonical_names(values, source)
    spelled = values.pop(_SPELLED, {})
    given = {}
    for key, value in values.items():
        if key in LEGACY_KEYS:
            warnings.warn(f"{source}: option '{key}' is not used by nenya ({LEGACY_KEYS[key]}); ignored")
            continue
        if key not in SCHEMA:
            raise NenyaError(f"{source}: unknown option '{key}'"
                             f"{did_you_mean(key, list(SCHEMA) + list(LEGACY_KEYS) + list(ALIASES))}")
        option = SCHEMA[key]
        value = _coerce(option, value, source)
        elements = value if option.type == "str_list" and value is not None else [value]
        if option.choices is not None and value is not None and any(v not in option.choices for v in elements):
            allowed = ", ".join(map(str, option.choices))
            raise NenyaError(f"{source}: option '{key}' is {json.dumps(value)}; allowed: {allowed}")
        given[key] = value
    resolved = {option.name: given.get(option.name, option.default) for option in OPTIONS}
    _check_method(resolved, source, spelled.get("method", "method"))
    if warn_unused:
        _warn_unused({key: value for key, value in given.items() if not SCHEMA[key].derived},
                     resolved["method"], source)
    for option in OPTIONS:
        check_range(option, resolved[option.name], source)
    _check_rules(resolved, source)
    return resolved


def default_model_name(opt: Params) -> str:
    """Nenya's run name: method, model, rate, decay, batch, temperature (SSL) and trial (+ _cosine, _warm)."""
    temperature = f"_temp_{opt.temp}" if SCHEMA["temp"].used_by(opt.method) else ""
    name = (f"{opt.method}_{opt.model}_lr_{opt.learning_rate}_decay_{opt.weight_decay}"
            f"_bsz_{opt.batch_size_train}{temperature}_trial_{opt.trial}")
    if opt.cosine:
        name += "_cosine"
    if opt.warm:
        name += "_warm"
    return name


def option_preprocess(opt: Params) -> Params:
    """Derive the values training needs (run name, warm-up target, cosine floor, global batch) in place, Nenya's way."""
    opt.world_size = distributed.world_size()
    opt.global_batch_size = opt.batch_size_train * opt.accumulate_grad_batches * opt.world_size
    if opt.blr is not None:
        opt.learning_rate = opt.blr * opt.global_batch_size / 256
    if opt.batch_size_train > 256:
        opt.warm = True
    opt.lr_min = opt.learning_rate * opt.lr_decay_rate ** 3
    if opt.warm:
        if opt.cosine:
            progress = min(opt.warm_epochs / opt.epochs, 1.0)
            opt.warmup_to = opt.lr_min + (opt.learning_rate - opt.lr_min) * (1 + math.cos(math.pi * progress)) / 2
        else:
            opt.warmup_to = opt.learning_rate
    else:
        opt.warmup_to = None
    if not opt.model_name:
        opt.model_name = default_model_name(opt)
    return opt


def get_options(path: str, overrides: dict | None = None) -> Params:
    """Load an opts file, apply overrides, validate and preprocess: the options a run uses."""
    values = _canonical_names(load_options(path), path)
    changes = _canonical_names(overrides or {}, "command line")
    spelled = {**values.pop(_SPELLED, {}), **changes.pop(_SPELLED, {})}
    values.update(changes, **({_SPELLED: spelled} if spelled else {}))
    return option_preprocess(Params(values, source_name=path))


def run_dir(opt: Params) -> str:
    """The run folder ``{model_root}/{model_name}``."""
    return os.path.join(opt.model_root, opt.model_name)
