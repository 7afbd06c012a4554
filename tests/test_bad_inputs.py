"""The table of bad inputs: every row ends with exit status 2, one ``nenya: error:`` line naming the culprit,
no traceback, and every file that existed before byte-for-byte unchanged (logs may only grow).

The rows run the commands in-process (``nenya.train.cli``, ``nenya.evaluate.cli``, ``nenya.latents.cli``)
against one shared set of tiny trained runs (SimCLR, SupCon, MAE) and bad files made once per module.
A row may create files only inside its own folder (``rows/<id>``) and only when it says so (a run it
starts, a copy it resumes); a file created there must not be empty or a leftover ``*.tmp``.
"""

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import h5py
import matplotlib.figure
import numpy as np
import pytest
import torch

from conftest import write_images_h5, write_opts
from nenya.evaluate import cli as evaluate_cli
from nenya.latents import cli as latents_cli
from nenya.train import cli as train_cli
from nenya.train import main as train_main
from test_methods_mae import BANDS, SIZE, mae_opts

import nenya.io.atomic
import nenya.io.checkpoints
import nenya.io.curves

CLIS = {"train": train_cli, "evaluate": evaluate_cli, "latents": latents_cli}
RUNS = {"simclr": "runs/simclr", "supcon": "runs/supcon", "mae": "models/mae"}


# ---- simulated faults --------------------------------------------------------------------------------

def no_space(*args, **kwargs):
    """Raise what a write on a full disk raises."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullFile:
    """A real file opened for writing whose ``write`` stores ``budget`` bytes, then fails with ENOSPC."""

    def __init__(self, handle, budget=64):
        self._handle, self._budget = handle, budget

    def write(self, data):
        if len(data) > self._budget:
            self._handle.write(data[:self._budget])
            self._budget = 0
            no_space()
        self._budget -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def full_disk_open(path, mode="r", *args, **kwargs):
    """``open`` that gives a FullFile for writing (the disk fills after 64 bytes)."""
    handle = open(path, mode, *args, **kwargs)
    return FullFile(handle) if any(flag in mode for flag in "wax") else handle


def full_disk_savefig(figure, path, *args, **kwargs):
    """Figure.savefig on a full disk: a few bytes reach the file, then ENOSPC."""
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n")
    no_space()


def full_disk_append(handle, name, values, kind):
    """curves._append on a full disk: the dataset grows, then the write fails."""
    real_append(handle, name, values, kind)
    no_space()


real_append = nenya.io.curves._append


def patch_checkpoint_disk(monkeypatch, world):
    monkeypatch.setattr(nenya.io.checkpoints, "open", full_disk_open, raising=False)


def patch_json_disk(monkeypatch, world):
    monkeypatch.setattr(nenya.io.atomic, "open", full_disk_open, raising=False)


def patch_figure_disk(monkeypatch, world):
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk_savefig)


def patch_curve_disk(monkeypatch, world):
    monkeypatch.setattr(nenya.io.curves, "_append", full_disk_append)


def patch_h5_disk(monkeypatch, world):
    monkeypatch.setattr(h5py.Group, "create_dataset", no_space)


def patch_read_only(monkeypatch, world):
    """Make world/readonly unwritable (also for root, who ignores the mode bits)."""
    root = str(world.root / "readonly")
    real = os.makedirs

    def makedirs(path, *args, **kwargs):
        if os.path.abspath(path).startswith(root + os.sep):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", makedirs)


# ---- the shared world: tiny runs and bad files --------------------------------------------------------

def _cube_file(path, cube, key="cube", gzip=False):
    with h5py.File(path, "w") as handle:
        if gzip:
            handle.create_dataset(key, data=cube, compression="gzip", chunks=cube.shape)
        else:
            handle[key] = cube
    return path


def _corrupt_first_chunk(path, key="cube"):
    """Overwrite the compressed bytes of the dataset's first chunk: the metadata reads, the data do not."""
    with h5py.File(path, "r") as handle:
        info = handle[key].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 8:info.byte_offset + info.size] = b"\x55" * (info.size - 8)
    path.write_bytes(bytes(data))


def _make_bad_files(root):
    rng = np.random.default_rng(1)
    with h5py.File(root / "empty.h5", "w") as handle:
        for key in ("train", "valid"):
            handle[key] = np.zeros((0, 1, 8, 8), np.float32)
            handle[f"{key}_labels"] = np.zeros(0, np.int64)
    with h5py.File(root / "empty_cubes.h5", "w") as handle:
        for key in ("train", "valid"):
            handle[key] = np.zeros((0, BANDS, SIZE, SIZE), np.float32)
    with h5py.File(root / "no_valid.h5", "w") as handle:
        handle["train"] = rng.random((32, 1, 8, 8), dtype=np.float32)
        handle["train_labels"] = rng.integers(0, 3, 32)
        handle["valid"] = np.zeros((0, 1, 8, 8), np.float32)
        handle["valid_labels"] = np.zeros(0, np.int64)
    with h5py.File(root / "volumes.h5", "w") as handle:
        for key in ("train", "valid"):
            handle[key] = rng.random((16, 1, 4, 8, 8), dtype=np.float32)
            handle[f"{key}_labels"] = rng.integers(0, 3, 16)
    write_images_h5(root / "neglabels.h5", n_train=32, n_valid=16)
    with h5py.File(root / "neglabels.h5", "a") as handle:
        for key in ("train_labels", "valid_labels"):
            labels = handle[key][:]
            labels[3] = -1
            del handle[key]
            handle[key] = labels
    for name, key in (("nan_train.h5", "train"), ("nan_valid.h5", "valid")):
        write_images_h5(root / name, n_train=32, n_valid=16)
        with h5py.File(root / name, "a") as handle:
            images = handle[key][:]
            images[:, 0, 3, 3] = np.nan  # in every image: the first batch holds some
            images[::2, 0, 1, 1] = np.inf
            handle[key][...] = images
    (root / "nan").mkdir()
    shutil.copyfile(root / "nan_train.h5", root / "nan" / "images.h5")  # same name as the runs' images_file
    (root / "truncated.h5").write_bytes((root / "images.h5").read_bytes()[:3000])
    (root / "truncated_cubes.h5").write_bytes((root / "cubes.h5").read_bytes()[:5000])
    (root / "fake.h5").write_text("these are not the images you are looking for\n")
    (root / "latin1.json").write_bytes('{"method": "simclr", "model_name": "caf\u00e9"}'.encode("latin-1"))
    (root / "optsdir").mkdir()
    (root / "afile").write_text("a file, not a folder\n")
    (root / "readonly").mkdir()
    os.chmod(root / "readonly", 0o555)
    # cube lists for MAE: same size, another size, another band count, one damaged cube
    cubes = root / "cubes"
    cubes.mkdir()
    good = [rng.random((BANDS, SIZE, SIZE), dtype=np.float32) for _ in range(4)]
    for index, cube in enumerate(good):
        _cube_file(cubes / f"c{index}.h5", cube)
    _cube_file(cubes / "c_small.h5", rng.random((BANDS, 12, 12), dtype=np.float32))
    _cube_file(cubes / "c_12bands.h5", rng.random((12, SIZE, SIZE), dtype=np.float32))
    _corrupt_first_chunk(_cube_file(cubes / "c_bad.h5", good[0], gzip=True))
    rows = {"sizes.csv": ["c0", "c1", "c_small"], "bands.csv": ["c0", "c_12bands", "c1"],
            "bad.csv": ["c0", "c1", "c2", "c_bad"]}
    for name, files in rows.items():
        lines = ["path,split"] + [f"cubes/{f}.h5,train" for f in files] + ["cubes/c3.h5,valid"]
        (root / name).write_text("\n".join(lines) + "\n")


class Evil:
    """An object whose unpickling would run a command."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny trained runs (SimCLR, SupCon: 1 epoch on 8x8 images; MAE: 1 epoch on 10-band cubes) and bad files."""
    root = tmp_path_factory.mktemp("world")
    write_images_h5(root / "images.h5", n_train=32, n_valid=16)
    common = dict(images_file="images.h5", data_folder=str(root), model_root=str(root / "runs"),
                  batch_size_train=16, batch_size_valid=16, epochs=1, feat_dim=8, knn_k=3, save_freq=100,
                  print_freq=1, dpi=30)
    opts = {"simclr": write_opts(root / "simclr.json", method="simclr", model_name="simclr", **common),
            "supcon": write_opts(root / "supcon.json", method="supcon", model_name="supcon", **common),
            "mae": mae_opts(root, name="mae.json", epochs=1, save_freq=100)}
    for path in opts.values():
        train_main(path, verbose=False)
    _make_bad_files(root)
    torch.save({"model": {}, "payload": Evil()}, root / "evil.pth")
    yield SimpleNamespace(root=root, opts=opts, run=lambda method: str(root / RUNS[method]))
    os.chmod(root / "readonly", 0o755)


def copy_run(world, here, method, files=None, replace=None, **options):
    """Copy (some files of) a trained run into ``here/method``, as if it had been trained there.

    Its opts.json gets ``model_root`` = ``here`` and ``options``; ``replace``: file name -> bytes written instead.
    """
    source, target = world.root / RUNS[method], here / method
    target.mkdir(parents=True)
    for name in files if files is not None else [p.name for p in source.iterdir() if p.is_file()]:
        shutil.copyfile(source / name, target / name)
    saved = json.loads((source / "opts.json").read_text())
    saved.update(model_root=str(here), **options)
    (target / "opts.json").write_text(json.dumps(saved, indent=2, sort_keys=True))
    for name, data in (replace or {}).items():
        (target / name).write_bytes(data)
    return target


def evil(world):
    """The bytes of a .pth file that holds a pickled call of os.system."""
    return (world.root / "evil.pth").read_bytes()


# ---- the table ---------------------------------------------------------------------------------------

@dataclass
class Row:
    """One bad input: the command, its arguments, the texts its error line names, and the files it may make."""

    id: str
    cli: str
    args: Callable  # (world, here) -> argv
    expect: tuple
    prepare: Callable | None = None  # (world, here) -> None: the row's own files, made before the snapshot
    patch: Callable | None = None  # (monkeypatch, world) -> None: a simulated fault, only during the call
    writes: bool = False  # may create files in here (a run it starts, a resumed copy)
    absent: tuple = ()  # texts the error line must not contain


def train(method, *extra, writes=False, **kwargs):
    """A nenya.train row of ``method``'s opts file with overrides; ``{here}`` in an override is the row folder."""
    def args(world, here):
        return [world.opts[method], *(item.format(here=here, root=world.root) for item in extra)]
    return dict(cli="train", args=args, writes=writes, **kwargs)


def command(name, method, *extra, **kwargs):
    """A nenya.evaluate / nenya.latents row on ``method``'s trained run; ``{here}``/``{root}`` are filled in."""
    def args(world, here):
        return [world.run(method), *(item.format(here=here, root=world.root) for item in extra)]
    return dict(cli=name, args=args, **kwargs)


OPTION_ROWS = [  # (override, texts of the error) for every method
    ("learning_rate=-0.1", ("'learning_rate' is -0.1", "greater than 0")),
    ("learning_rate=NaN", ("'learning_rate' is nan", "finite")),
    ("learning_rate=Infinity", ("'learning_rate' is inf", "finite")),
    ("seed=-1", ("'seed' is -1", "in [0, 4294967295]")),
    ("num_workers=-1", ("'num_workers' is -1", "at least 0")),
    ("overfit_batches=-1", ("'overfit_batches' is -1", "at least 0")),
    ("dpi=0", ("'dpi' is 0", "in [1, 1000]")),
    ("weight_decay=-1", ("'weight_decay' is -1.0", "at least 0")),
    ("batch_size_train=0", ("'batch_size_train' is 0", "at least 1")),
    ("betas=[0.9,1.5]", ("'betas' is [0.9, 1.5]", "each element must be in [0, 1)")),
    ("momentum=2", ("'momentum' is 2.0", "in [0, 1]")),
]
CONTRASTIVE_ROWS = [
    ("temp=0", ("'temp' is 0.0", "greater than 0")),
    ("knn_bank_size=0", ("'knn_bank_size' is 0", "at least 1")),
    ("knn_k=0", ("'knn_k' is 0", "at least 1")),
    ("feat_dim=0", ("'feat_dim' is 0", "at least 1")),
    ("random_cropjitter=[0,1]", ("'random_cropjitter' is [0, 1]", "crop must be at least 1")),
    ("gauss_noise=-0.1", ("'gauss_noise' is -0.1", "at least 0")),
]
MAE_ROWS = [
    ("figure_samples=-1", ("'figure_samples' is -1", "at least 0")),
    ("mask_ratio=1.0", ("'mask_ratio' is 1.0", "in [0, 1)")),
    ("patch_size=[0,5]", ("'patch_size' is [0, 5]", "each element must be at least 1")),
    ("valid_range=[1,0]", ("'valid_range' is [1.0, 0.0]", "low < high")),
    ("cube_crop=0", ("'cube_crop' is 0", "at least 1")),
    ("decoder_depth=0", ("'decoder_depth' is 0", "at least 1")),
    ("rgb_bands=[-1,0,1]", ("'rgb_bands' is [-1, 0, 1]", "at least 0")),
    ("data_range=0", ("'data_range' is 0.0", "greater than 0")),
]

ROWS = [Row(f"train-{method}-{override.split('=')[0]}-{override.split('=')[1]}", **train(method, override),
            expect=expect)
        for method in ("simclr", "supcon", "mae") for override, expect in OPTION_ROWS]
ROWS += [Row(f"train-{method}-{override}", **train(method, override), expect=expect)
         for method in ("simclr", "supcon") for override, expect in CONTRASTIVE_ROWS]
ROWS += [Row(f"train-mae-{override}", **train("mae", override), expect=expect) for override, expect in MAE_ROWS]

ROWS += [
    # opts files
    Row("train-opts-not-utf8", "train", lambda w, h: [str(w.root / "latin1.json")], ("latin1.json", "not UTF-8")),
    Row("train-opts-is-a-folder", "train", lambda w, h: [str(w.root / "optsdir")], ("optsdir", "is a folder")),
    Row("train-mae-unknown-key", **train("mae", "mask_ration=0.5"),
        expect=("unknown option 'mask_ration'", "did you mean 'mask_ratio'")),
    # data
    Row("train-simclr-0-train-images", **train("simclr", "images_file=empty.h5"),
        expect=("empty.h5:train", "hold 0 images")),
    Row("train-mae-0-train-images-dry-run", **train("mae", "images_file=empty_cubes.h5", "--dry-run"),
        expect=("empty_cubes.h5:train", "hold 0 images")),
    Row("train-supcon-0-valid-images", **train("supcon", "images_file=no_valid.h5"),
        expect=("no_valid.h5:valid", "hold 0 images", "valid_key")),
    Row("train-supcon-negative-labels", **train("supcon", "images_file=neglabels.h5"),
        expect=("neglabels.h5:train_labels", "negative labels")),
    Row("train-simclr-volumes-to-2d-model", **train("simclr", "images_file=volumes.h5"),
        expect=("volumes.h5:train", "(16, 1, 4, 8, 8)", "2-D images")),
    Row("train-mae-csv-cube-sizes-differ", **train("mae", "images_file=null", "data_csv=sizes.csv"),
        expect=("c_small.h5", "12x12", "16x16", "cube_crop")),
    Row("train-mae-csv-band-counts-differ", **train("mae", "images_file=null", "data_csv=bands.csv"),
        expect=("c_12bands.h5", "12 bands", "same band count")),
    Row("train-mae-bad-cube-with-workers",
        **train("mae", "images_file=null", "data_csv=bad.csv", "num_workers=2", "model_root={here}", writes=True),
        expect=("c_bad.h5:cube", "cannot be read", "damaged")),
    Row("train-simclr-learning-rate-diverges", **train("simclr", "learning_rate=1e30", "model_root={here}",
                                                       writes=True),
        expect=("training loss is nan at epoch 1, step 2", "learning rate", "lower it")),
    Row("train-simclr-nan-in-training-data", **train("simclr", "images_file=nan_train.h5", "model_root={here}",
                                                     writes=True),
        expect=("training loss is nan at epoch 1, step 1", "non-finite values", "nan_train.h5")),
    Row("train-supcon-nan-in-validation-data", **train("supcon", "images_file=nan_valid.h5", "model_root={here}",
                                                       writes=True),
        expect=("validation loss is nan at initialisation", "nan_valid.h5:valid", "non-finite values")),
    Row("train-simclr-nan-on-resume-keeps-last-pth",
        **train("simclr", "--resume", "epochs=2", "data_folder={root}/nan", "model_root={here}", writes=True),
        prepare=lambda w, h: copy_run(w, h, "simclr", epochs=2, data_folder=f"{w.root}/nan"),
        expect=("at epoch 2, step 1", "non-finite values")),
    # run folders and checkpoints
    Row("train-simclr-plain-start-on-a-dead-end", **train("simclr", "model_root={here}"),
        prepare=lambda w, h: copy_run(w, h, "simclr", ["opts.json", "losses_valid.h5", "training.log"]),
        expect=("stopped before its first checkpoint", "pass --resume to start it again")),
    Row("train-simclr-hostile-checkpoint", **train("simclr", "--resume", "epochs=2", "model_root={here}"),
        prepare=lambda w, h: copy_run(w, h, "simclr", ["opts.json"], {"last.pth": evil(w)}, epochs=2),
        expect=("last.pth is not a nenya checkpoint", "pickled Python objects", "GLOBAL posix.system"),
        absent=("weights_only", "weights-only")),
    Row("train-supcon-corrupt-checkpoint-makes-no-log", **train("supcon", "--resume", "model_root={here}"),
        prepare=lambda w, h: copy_run(w, h, "supcon", ["opts.json"], {"last.pth": b"PK\x03\x04 half a checkpoint"}),
        expect=("last.pth is corrupt",)),
    Row("train-supcon-resume-without-last-pth", **train("supcon", "--resume", "model_root={here}"),
        prepare=lambda w, h: copy_run(w, h, "supcon", ["opts.json"], {"best.pth": b"an older best"}),
        expect=("has no last.pth but holds best.pth", "copy the one to continue from to last.pth")),
    Row("train-supcon-resume-with-other-options", **train("supcon", "--resume", "learning_rate=0.3"),
        expect=("options differ", "learning_rate=0.3")),
    Row("train-mae-resume-of-no-folder", **train("mae", "--resume", "model_root={here}"),
        expect=("nothing to resume", "does not exist")),
    Row("train-simclr-read-only-model-root", **train("simclr", "model_root={root}/readonly"),
        patch=patch_read_only, expect=("readonly/simclr", "cannot create or write the run folder", "model_root")),
    Row("train-mae-model-root-is-a-file", **train("mae", "model_root={root}/afile"),
        expect=("afile/mae", "cannot create or write the run folder")),
    Row("train-simclr-run-folder-is-a-file", **train("simclr", "model_root={root}", "model_name=afile"),
        expect=("afile is a file, not a folder",)),
    # a full disk
    Row("train-simclr-disk-full-at-checkpoint", **train("simclr", "model_root={here}", writes=True),
        patch=patch_checkpoint_disk, expect=("last.pth", "No space left on device", "free", "nothing was written",
                                             "--resume")),
    Row("train-mae-disk-full-at-curves", **train("mae", "model_root={here}", writes=True), patch=patch_curve_disk,
        expect=("losses_valid.h5", "No space left on device", "free", "--resume")),
    Row("train-mae-disk-full-at-curves-on-resume", **train("mae", "--resume", "epochs=2", "model_root={here}",
                                                           writes=True),
        prepare=lambda w, h: copy_run(w, h, "mae", epochs=2), patch=patch_curve_disk,
        expect=("losses_train.h5", "No space left on device", "the previous losses_train.h5 is intact", "--resume")),
    Row("train-supcon-disk-full-at-figure", **train("supcon", "model_root={here}", writes=True),
        patch=patch_figure_disk, expect=(".png", "No space left on device", "free", "--resume")),
    # nenya.evaluate
    Row("evaluate-simclr-out-is-a-file", **command("evaluate", "simclr", "--out", "{root}/afile"),
        expect=("afile", "--out", "is a file")),
    Row("evaluate-simclr-0-images", **command("evaluate", "simclr", "--data", "{root}/empty.h5", "--out", "{here}"),
        expect=("empty.h5:valid", "holds 0 images")),
    Row("evaluate-mae-0-images", **command("evaluate", "mae", "--data", "{root}/empty_cubes.h5", "--out", "{here}"),
        expect=("empty_cubes.h5:valid", "holds 0 images")),
    Row("evaluate-mae-truncated-file", **command("evaluate", "mae", "--data", "{root}/truncated_cubes.h5",
                                                 "--out", "{here}"),
        expect=("truncated_cubes.h5", "not a readable HDF5 file")),
    Row("evaluate-simclr-not-hdf5", **command("evaluate", "simclr", "--data", "{root}/fake.h5", "--out", "{here}"),
        expect=("fake.h5", "not a readable HDF5 file")),
    Row("evaluate-simclr-volumes", **command("evaluate", "simclr", "--data", "{root}/volumes.h5", "--out", "{here}"),
        expect=("volumes.h5:valid", "2-D images")),
    Row("evaluate-supcon-negative-labels", **command("evaluate", "supcon", "--data", "{root}/neglabels.h5",
                                                     "--out", "{here}"),
        expect=("neglabels.h5:valid_labels", "negative labels")),
    Row("evaluate-supcon-unknown-key", **command("evaluate", "supcon", "--key", "nope", "--out", "{here}"),
        expect=("has no dataset 'nope' (--key)",)),
    Row("evaluate-no-run-folder", "evaluate", lambda w, h: [str(h / "norun")], ("norun", "not a nenya run folder")),
    Row("evaluate-mae-missing-checkpoint", **command("evaluate", "mae", "--checkpoint", "ckpt_epoch_9"),
        expect=("ckpt_epoch_9.pth does not exist",)),
    Row("evaluate-simclr-hostile-best", "evaluate", lambda w, h: [str(h / "simclr"), "--out", str(h / "eval")],
        prepare=lambda w, h: copy_run(w, h, "simclr", ["opts.json"], {"best.pth": evil(w)}),
        expect=("best.pth is not a nenya checkpoint", "pickled Python objects"), absent=("weights_only",)),
    Row("evaluate-simclr-disk-full-at-metrics", **command("evaluate", "simclr", "--out", "{here}/eval", writes=True),
        patch=patch_json_disk, expect=("eval_metrics.json", "No space left on device", "free")),
    Row("evaluate-mae-disk-full-at-figure", **command("evaluate", "mae", "--out", "{here}/eval"),
        patch=patch_figure_disk, expect=("mae_reconstruction.png", "No space left on device", "nothing was written")),
    # nenya.latents
    Row("latents-simclr-output-folder-missing", **command("latents", "simclr", "{root}/images.h5",
                                                          "{here}/nofolder/out.h5"),
        expect=("nofolder", "does not exist", "create it first")),
    Row("latents-supcon-output-is-a-folder", **command("latents", "supcon", "{root}/images.h5", "{root}/optsdir"),
        expect=("optsdir is a folder",)),
    Row("latents-simclr-truncated-file", **command("latents", "simclr", "{root}/truncated.h5", "{here}/out.h5"),
        expect=("truncated.h5", "not a readable HDF5 file")),
    Row("latents-mae-not-hdf5", **command("latents", "mae", "{root}/fake.h5", "{here}/out.h5"),
        expect=("fake.h5", "not a readable HDF5 file")),
    Row("latents-simclr-0-images", **command("latents", "simclr", "{root}/empty.h5", "{here}/out.h5"),
        expect=("empty.h5:train", "holds 0 images")),
    Row("latents-mae-0-images", **command("latents", "mae", "{root}/empty_cubes.h5", "{here}/out.h5"),
        expect=("empty_cubes.h5:train", "holds 0 images")),
    Row("latents-simclr-batch-size-0", **command("latents", "simclr", "{root}/images.h5", "{here}/out.h5",
                                                 "--batch-size", "0"),
        expect=("--batch-size", "at least 1", "'0'")),
    Row("latents-mae-batch-size-negative", **command("latents", "mae", "{root}/cubes.h5", "{here}/out.h5",
                                                     "--batch-size=-3"),
        expect=("--batch-size", "'-3'")),
    Row("latents-simclr-volumes", **command("latents", "simclr", "{root}/volumes.h5", "{here}/out.h5"),
        expect=("volumes.h5:train", "2-D images")),
    Row("latents-supcon-negative-labels", **command("latents", "supcon", "{root}/neglabels.h5", "{here}/out.h5"),
        expect=("neglabels.h5:train_labels", "negative labels")),
    Row("latents-mae-disk-full", **command("latents", "mae", "{root}/cubes.h5", "{here}/out.h5"),
        patch=patch_h5_disk, expect=("out.h5", "No space left on device", "nothing was written")),
    Row("latents-supcon-hostile-last", "latents",
        lambda w, h: [str(h / "supcon"), str(w.root / "images.h5"), str(h / "out.h5"), "--checkpoint", "last"],
        prepare=lambda w, h: copy_run(w, h, "supcon", ["opts.json"], {"last.pth": evil(w)}),
        expect=("last.pth is not a nenya checkpoint", "pickled"), absent=("weights_only",)),
    Row("latents-supcon-output-exists", **command("latents", "supcon", "{root}/images.h5", "{root}/afile"),
        expect=("afile already exists", "--overwrite")),
]


# ---- checking a row ----------------------------------------------------------------------------------

_HASHES: dict = {}


def _digest(path: str) -> str:
    """sha256 of a file, recomputed whenever its inode, size or modification time changes."""
    stat = os.stat(path)
    key = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        with open(path, "rb") as handle:
            _HASHES[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _HASHES[key]


def snapshot(root) -> dict:
    """Every file under ``root`` -> its sha256 (logs -> their bytes: they may grow, never change)."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                files[path] = open(path, "rb").read() if name.endswith(".log") else _digest(path)
    return files


def check_files(before: dict, after: dict, here, writes: bool) -> list[str]:
    """What a row did wrong to the files: changed or deleted ones, new ones where none may appear."""
    problems = []
    for path, old in before.items():
        new = after.get(path)
        if new is None:
            problems.append(f"deleted {path}")
        elif new != old and not (path.endswith(".log") and new.startswith(old)):
            problems.append(f"changed {path}")
    for path in sorted(set(after) - set(before)):
        inside = os.path.abspath(path).startswith(str(here) + os.sep)
        if not (writes and inside):
            problems.append(f"new file {path}")
        elif path.endswith(".tmp") or os.path.getsize(path) == 0:
            problems.append(f"left {path} ({os.path.getsize(path)} bytes)")
    return problems


RESULTS: dict = {}


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(world, row, capsys, monkeypatch):
    here = world.root / "rows" / row.id
    here.mkdir(parents=True)
    if row.prepare:
        row.prepare(world, here)
    argv = row.args(world, here)
    before = snapshot(world.root)
    capsys.readouterr()
    if row.patch:
        row.patch(monkeypatch, world)
    code = CLIS[row.cli](argv)
    monkeypatch.undo()
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("nenya: error:")]
    problems = check_files(before, snapshot(world.root), here, row.writes)
    traceback = "Traceback" in out + err
    RESULTS[row.id] = {"cli": row.cli, "exit": code, "error_lines": len(errors), "traceback": traceback,
                       "file_problems": len(problems), "line": errors[0] if errors else err[-300:]}
    assert code == 2, (code, err[-3000:])
    assert len(errors) == 1 and not traceback, err[-3000:]
    for text in row.expect:
        assert text in errors[0], (text, errors[0])
    for text in row.absent:
        assert text not in errors[0], (text, errors[0])
    if "cannot write " in errors[0]:  # the file that could not be written: as before, or still absent
        target = errors[0].split("cannot write ", 1)[1].split(": ", 1)[0]
        assert target in before or not os.path.exists(target), target
    assert not problems, problems


def test_the_table_covers_every_command_and_method():
    assert len(ROWS) >= 60 and len({row.id for row in ROWS}) == len(ROWS)
    assert {row.cli for row in ROWS} == set(CLIS)
    for method in ("simclr", "supcon", "mae"):
        for name in CLIS:
            assert any(row.cli == name and f"-{method}-" in row.id for row in ROWS), (name, method)


def test_table_counts(capsys):
    """Print the table's counts (rows, exit-2 one-liners, tracebacks, changed files) when the rows ran."""
    if len(RESULTS) < len(ROWS):
        pytest.skip("the table did not run in full in this session")
    counts = {"rows": len(RESULTS),
              "exit 2 with one error line": sum(r["exit"] == 2 and r["error_lines"] == 1 for r in RESULTS.values()),
              "tracebacks": sum(r["traceback"] for r in RESULTS.values()),
              "rows that changed files": sum(r["file_problems"] > 0 for r in RESULTS.values()),
              "by command": {name: sum(r["cli"] == name for r in RESULTS.values()) for name in CLIS}}
    with capsys.disabled():
        print("\nbad-input table:", json.dumps(counts))
        if os.environ.get("NENYA_SHOW_TABLE"):
            for name, result in RESULTS.items():
                print(f"{name}: exit {result['exit']}: {result['line']}")
    assert counts["exit 2 with one error line"] == counts["rows"] and counts["tracebacks"] == 0
    assert counts["rows that changed files"] == 0
