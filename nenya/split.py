"""Grouped train/validation split manifest: ``python -m nenya.split DATA.h5 --key train --valid-fraction 0.2``.

Rows of ``{key}`` that share a value in ``{key}_groups`` (patches of one sample, slide or patient)
land on the same side; without ``{key}_groups`` every row is its own group. Groups are shuffled
with ``--seed`` and taken into the validation split until it holds at least ``valid_fraction`` of
the rows. The manifest (JSON: file, key, seed, valid_fraction, groups, train and valid row numbers)
goes to ``--out`` (default ``DATA_split.json`` beside the data); an existing one is kept unless
``--overwrite``. Training reads it through the ``split_manifest`` option.
"""

import os
import sys

import h5py
import numpy as np

from nenya.errors import NenyaError, run_cli
from nenya.io.atomic import write_json


def grouped_split(groups, valid_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train rows, valid rows), sorted: whole groups, shuffled by ``seed``, go to valid until the fraction is met."""
    groups = np.asarray(groups)
    if not 0.0 < valid_fraction < 1.0:
        raise NenyaError(f"--valid-fraction {valid_fraction} is invalid; use a fraction strictly between 0 and 1")
    unique = np.unique(groups)
    if len(unique) < 2:
        raise NenyaError(f"the rows form {len(unique)} group; a split needs at least two groups")
    order = np.random.default_rng(seed).permutation(len(unique))
    wanted, valid = valid_fraction * len(groups), np.zeros(len(groups), bool)
    for group in unique[order][:-1]:  # the last group always stays in training
        if valid.sum() >= wanted:
            break
        valid |= groups == group
    rows = np.arange(len(groups))
    return rows[~valid].tolist(), rows[valid].tolist()


def write_manifest(path: str, key: str = "train", valid_fraction: float = 0.2, seed: int = 0, out: str | None = None,
                   overwrite: bool = False) -> str:
    """Split ``key`` of ``path`` by ``{key}_groups`` and write the manifest; return its path."""
    out = out or os.path.splitext(path)[0] + "_split.json"
    if os.path.exists(out) and not overwrite:
        raise NenyaError(f"{out} already exists; choose another --out or pass --overwrite")
    if not os.path.isfile(path):
        raise NenyaError(f"data file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if not isinstance(f.get(key), h5py.Dataset):
                raise NenyaError(f"{path} has no dataset '{key}' (--key); it has: {', '.join(sorted(f))}")
            rows = f[key].shape[0]
            node = f.get(f"{key}_groups")
            groups = np.arange(rows) if node is None else node[()]
    except OSError as err:
        raise NenyaError(f"{path} is not a readable HDF5 file ({err})") from None
    if node is not None and (groups.ndim != 1 or len(groups) != rows):
        raise NenyaError(f"{path}:{key}_groups has shape {groups.shape}; expected ({rows},), one group per row")
    if groups.dtype.kind in "SO":
        groups = np.asarray([g.decode() if isinstance(g, bytes) else str(g) for g in groups])
    train, valid = grouped_split(groups, valid_fraction, seed)
    write_json(out, {"file": os.path.abspath(path), "key": key, "seed": seed, "valid_fraction": valid_fraction,
                     "groups": f"{key}_groups" if node is not None else None, "n_train": len(train),
                     "n_valid": len(valid), "train": train, "valid": valid}, indent=1)
    return out


def cli(argv=None) -> int:
    """Command-line entry point of nenya.split."""
    def add_arguments(parser):
        parser.add_argument("data", help="HDF5 file in Nenya's layout")
        parser.add_argument("--key", default="train", help="dataset to split (groups from KEY_groups)")
        parser.add_argument("--valid-fraction", type=float, default=0.2, help="fraction of rows for validation")
        parser.add_argument("--seed", type=int, default=0, help="seed of the group shuffle")
        parser.add_argument("--out", help="manifest path (default: DATA_split.json beside the data)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest")

    def run(args):
        out = write_manifest(args.data, args.key, args.valid_fraction, args.seed, args.out, args.overwrite)
        print(f"wrote {out}")

    return run_cli("nenya.split", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(cli())
