"""Run an experiment matrix: ``python -m nenya.sweep OPTS [--only NAME] [--force] [--dry-run] [key=value ...]``.

OPTS holds the options every experiment shares plus ``"experiments": [{"name", "description", option:
value, ...}]``. Experiment ``NAME`` trains in ``{model_root}/{sweep}/{NAME}/`` (``sweep``: the file's
``model_name``, else the opts file's name without .json) with the shared options, its own, then the
command line's ``key=value`` (which apply to every experiment and win). Finished experiments (their
folder holds metrics.json) are skipped unless ``--force``, which deletes that folder and trains again;
an interrupted one is resumed. A failing experiment is recorded in its row and the others still run.
``{model_root}/{sweep}/experiment_summary.csv`` gets one row per experiment and ``summary.png`` compares them.
"""

import csv
import json
import os
import shutil
import sys
import time
import traceback

import h5py
import torch

from nenya.errors import NenyaError, run_cli
from nenya.io.atomic import atomic_path, write_json
from nenya.params import get_options, load_options, parse_overrides, validate
from nenya.registry import did_you_mean

SUMMARY, FIGURE, LOG = "experiment_summary.csv", "summary.png", "sweep.log"
RESERVED = {"model_name": "the experiment's name names its run folder",
            "model_root": "every experiment of a sweep trains under the sweep's folder; set model_root beside "
                          "'experiments'", "experiments": "experiments do not nest"}
COLUMNS = ["name", "description", "status", "message", "epochs_run", "best_epoch", "monitor", "best_value",
           "wall_time_s", "folder"]


def read_sweep(path: str) -> tuple[str, list[dict]]:
    """(sweep name, experiments) of a sweep opts file; a NenyaError when it is not one."""
    values = load_options(path)
    if values.get("experiments") is None:
        raise NenyaError(f"{path} has no 'experiments' list; a sweep file holds the shared options plus "
                         f"\"experiments\": [{{\"name\": ..., \"description\": ..., option: value}}, ...]")
    experiments = validate({"experiments": values["experiments"]}, path, warn_unused=False)["experiments"]
    for experiment in experiments:
        for key, why in RESERVED.items():
            if key in experiment:
                raise NenyaError(f"{path}: experiment '{experiment['name']}' sets '{key}', which an experiment "
                                 f"cannot set ({why})")
    name = values.get("model_name") or os.path.splitext(os.path.basename(path))[0]
    return name, experiments


def experiment_overrides(sweep: str, experiment: dict, overrides: dict) -> dict:
    """The options an experiment changes: its own, then the command line's, and its run folder."""
    own = {key: value for key, value in experiment.items() if key not in ("name", "description")}
    return {**own, **overrides, "experiments": None, "model_name": f"{sweep}/{experiment['name']}"}


def valid_row(folder: str, epoch: int | None) -> dict:
    """The validation metrics recorded after ``epoch`` in the run's losses_valid.h5 ({} when none)."""
    path = os.path.join(folder, "losses_valid.h5")
    if epoch is None or not os.path.isfile(path):
        return {}
    with h5py.File(path, "r") as handle:
        rows = [i for i, e in enumerate(handle["epoch"][:]) if e == epoch]
        if not rows:
            return {}
        return {f"valid_{name.removesuffix('_valid')}": float(handle[name][rows[-1]]) for name in sorted(handle)
                if name.endswith("_valid") and handle[name].attrs.get("kind") == "epoch"}


def epochs_run(folder: str) -> int:
    """The epochs a run has finished (rows of its training curves)."""
    path = os.path.join(folder, "losses_train.h5")
    if not os.path.isfile(path):
        return 0
    with h5py.File(path, "r") as handle:
        return int(handle["epoch"][:].max()) if handle["epoch"].shape[0] else 0


def summary_row(experiment: dict, folder: str, status: str, message: str, wall: float | None) -> dict:
    """One row of experiment_summary.csv from what the experiment's folder holds."""
    metrics = {}
    if os.path.isfile(os.path.join(folder, "metrics.json")):
        with open(os.path.join(folder, "metrics.json")) as handle:
            metrics = json.load(handle)
        message = message or metrics.get("stopped_early", "")
    best = metrics.get("best") or {}
    return {"name": experiment["name"], "description": experiment.get("description", ""), "status": status,
            "message": message, "epochs_run": epochs_run(folder), "best_epoch": best.get("epoch"),
            "monitor": best.get("metric"), "best_value": best.get("value"),
            "wall_time_s": None if wall is None else round(wall, 2), "folder": folder,
            **valid_row(folder, best.get("epoch"))}


def previous_rows(path: str) -> dict:
    """name -> row of an earlier experiment_summary.csv (empty cells as None), {} when there is none."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as handle:
        return {row["name"]: {key: _cell(key, value) for key, value in row.items()} for row in csv.DictReader(handle)}


def _cell(column: str, text: str):
    """A CSV cell read back: None when empty, numbers for the numeric columns."""
    if text == "" or text is None:
        return None
    if column in ("epochs_run", "best_epoch"):
        return int(float(text))
    if column in ("best_value", "wall_time_s") or column.startswith("valid_"):
        return float(text)
    return text


def write_summary(folder: str, rows: list[dict], dpi: int = 100) -> str:
    """experiment_summary.csv (written atomically) and summary.png; return the CSV's path."""
    path = os.path.join(folder, SUMMARY)
    extra = sorted({key for row in rows for key in row if key not in COLUMNS})
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS + extra, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
    from nenya.plots.sweep import sweep_summary
    sweep_summary(rows, os.path.join(folder, FIGURE), dpi)
    return path


def run_experiment(path: str, experiment: dict, changes: dict, folder: str, force: bool, verbose: bool,
                   log) -> tuple[str, str, float | None]:
    """Train one experiment unless finished; return (status, message, wall time in seconds or None)."""
    from nenya.train import main as train_main
    if os.path.isfile(os.path.join(folder, "metrics.json")):
        if not force:
            return "finished", "skipped: finished earlier (--force trains it again)", None
        shutil.rmtree(folder)
    resume = os.path.isdir(folder) and bool(os.listdir(folder))  # interrupted or failed earlier: continue it
    deterministic = torch.are_deterministic_algorithms_enabled()
    start = time.time()
    try:
        train_main(path, overrides=changes, resume=resume, verbose=verbose)
        return "finished", "", time.time() - start
    except NenyaError as err:
        return "failed", str(err), time.time() - start
    except Exception as err:  # a crash of one experiment must not stop the others
        log(f"experiment '{experiment['name']}' crashed:\n{traceback.format_exc()}")
        return "failed", f"{type(err).__name__}: {err}", time.time() - start
    finally:
        torch.use_deterministic_algorithms(deterministic)


def main(opts_path: str, overrides: dict | None = None, only: str | None = None, force: bool = False,
         dry: bool = False, verbose: bool = True) -> list[dict]:
    """Run (or with ``dry`` check) a sweep's experiments; write and return the summary rows."""
    overrides = dict(overrides or {})
    sweep, experiments = read_sweep(opts_path)
    names = [experiment["name"] for experiment in experiments]
    if only is not None and only not in names:
        raise NenyaError(f"{opts_path}: no experiment named '{only}'; the experiments are: {', '.join(names)}"
                         f"{did_you_mean(only, names)}")
    shared = get_options(opts_path, {**overrides, "experiments": None, "model_name": sweep})
    folder = os.path.join(shared.model_root, sweep)
    chosen = [e for e in experiments if only is None or e["name"] == only]
    say = print if verbose else (lambda *args: None)
    if dry:
        return dry_run(opts_path, sweep, chosen, overrides, folder, say)
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "sweep_options.json"), load_options(opts_path), indent=2)

    def log(text):
        say(text)
        with open(os.path.join(folder, LOG), "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    before = previous_rows(os.path.join(folder, SUMMARY))
    times = {name: float(row["wall_time_s"]) for name, row in before.items() if row.get("wall_time_s")}
    rows = {}
    try:
        for experiment in chosen:
            name = experiment["name"]
            log(f"experiment {name} ({chosen.index(experiment) + 1}/{len(chosen)}): "
                f"{experiment.get('description', '')}")
            status, message, wall = run_experiment(opts_path, experiment, experiment_overrides(sweep, experiment,
                                                                                               overrides),
                                                   os.path.join(folder, name), force, verbose, log)
            log(f"experiment {name}: {status}" + (f": {message}" if message else ""))
            rows[name] = summary_row(experiment, os.path.join(folder, name), status, message,
                                     wall if wall is not None else times.get(name))
    finally:  # also when interrupted: the rows so far, and the other experiments as they stand
        for experiment in experiments:
            name = experiment["name"]
            if name in rows:
                continue
            if name in before and experiment not in chosen:  # not run now (--only): its row as it was
                rows[name] = before[name]
                continue
            there = os.path.isfile(os.path.join(folder, name, "metrics.json"))
            rows[name] = summary_row(experiment, os.path.join(folder, name), "finished" if there else "not run",
                                     "", times.get(name))
        ordered = [rows[name] for name in names]
        path = write_summary(folder, ordered, shared.dpi)
        log(f"summary: {path}")
    failed = [row["name"] for row in ordered if row["status"] == "failed" and any(row["name"] == e["name"]
                                                                                 for e in chosen)]
    if failed:
        raise NenyaError(f"{len(failed)} of {len(chosen)} experiments failed ({', '.join(failed)}); their "
                         f"messages are in {path}")
    return ordered


def dry_run(opts_path: str, sweep: str, chosen: list, overrides: dict, folder: str, say) -> list[dict]:
    """Check every chosen experiment's options and say what a run would do; train nothing, write nothing."""
    rows, bad = [], []
    for experiment in chosen:
        name = experiment["name"]
        changes = experiment_overrides(sweep, experiment, overrides)
        where = os.path.join(folder, name)
        try:
            get_options(opts_path, changes)
        except NenyaError as err:
            bad.append(name)
            rows.append({"name": name, "status": "invalid", "message": str(err), "folder": where})
            say(f"{name}: invalid options: {err}")
            continue
        finished = os.path.isfile(os.path.join(where, "metrics.json"))
        status = "would skip (finished)" if finished else "would train"
        shown = {k: v for k, v in changes.items() if k not in ("experiments", "model_name")}
        say(f"{name}: {status} in {where}; changes {shown}")
        rows.append({"name": name, "status": status, "message": "", "folder": where})
    if bad:
        first = next(row["message"] for row in rows if row["status"] == "invalid")
        raise NenyaError(f"{opts_path}: {len(bad)} of {len(chosen)} experiments have invalid options "
                         f"({', '.join(bad)}); {bad[0]}: {first}" + ("; the others are printed above"
                                                                     if len(bad) > 1 else ""))
    return rows


def cli(argv=None) -> int:
    """Command-line entry point of nenya.sweep."""
    def add_arguments(parser):
        parser.add_argument("opts", help="JSON opts file with an 'experiments' list")
        parser.add_argument("overrides", nargs="*", help="key=value overrides for every experiment (epochs=1)")
        parser.add_argument("--only", metavar="NAME", help="run this experiment only")
        parser.add_argument("--force", action="store_true", help="train finished experiments again (their "
                            "folders are deleted first)")
        parser.add_argument("--dry-run", action="store_true", help="check every experiment's options, train nothing")

    def run(args):
        main(args.opts, parse_overrides(args.overrides), only=args.only, force=args.force, dry=args.dry_run)

    return run_cli("nenya.sweep", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(cli())
