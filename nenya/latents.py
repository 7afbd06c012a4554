"""Embeddings of every image: ``python -m nenya.latents RUN_DIR DATA.h5 OUT.h5 [--encoder]``."""

import os
import sys
from functools import partial

import h5py
import torch

from nenya.errors import NenyaError, positive_int, run_cli
from nenya.evaluate import load_run
from nenya.io.atomic import atomic_path
from nenya.train_util import evaluation_pass, make_loader, select_device


def image_partitions(path: str) -> list[str]:
    """Names of the image datasets of an HDF5 file (not labels or masks), in file order."""
    if not os.path.isfile(path):
        raise NenyaError(f"data file {path} does not exist")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise NenyaError(f"{path} is not a readable HDF5 file ({err})") from None
    with handle:
        return [name for name, node in handle.items() if isinstance(node, h5py.Dataset) and node.ndim >= 3
                and not name.endswith(("_labels", "_masks"))]


def check_output(out_path: str, overwrite: bool) -> None:
    """A NenyaError unless ``out_path`` can be written: its folder exists, and it is no folder nor an existing file."""
    if os.path.isdir(out_path):
        raise NenyaError(f"{out_path} is a folder; give the HDF5 file to write")
    if os.path.exists(out_path) and not overwrite:
        raise NenyaError(f"{out_path} already exists; choose another output file or pass --overwrite")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise NenyaError(f"the folder of {out_path} ({folder}) does not exist; create it first")


def write_latents(folder: str, data_path: str, out_path: str, encoder: bool = False, checkpoint: str = "best",
                  partitions=None, batch_size: int = 256, overwrite: bool = False, progress: bool = True) -> dict:
    """Write one [N, D] float32 dataset per partition of ``data_path`` into ``out_path``; return their shapes."""
    check_output(out_path, overwrite)
    if batch_size < 1:
        raise NenyaError(f"batch_size={batch_size} must be at least 1 (--batch-size)")
    opt, method, model = load_run(folder, checkpoint)
    if not os.path.isfile(data_path):
        raise NenyaError(f"data file {data_path} does not exist")
    device = select_device(opt)
    model = model.to(device)
    partitions = partitions or image_partitions(data_path)
    if not partitions:
        raise NenyaError(f"{data_path} holds no image datasets")
    step = partial(method.embed_step, encoder=encoder)
    datasets = {key: method.eval_dataset(data_path, key) for key in partitions}  # prepared as validation is
    for key, dataset in datasets.items():
        if len(dataset) == 0:
            raise NenyaError(f"{data_path}:{key} holds 0 images; leave it out with --keys")
    shapes = {}
    with atomic_path(out_path) as temporary, h5py.File(temporary, "w") as out:
        for key in partitions:
            loader = make_loader(datasets[key], batch_size, False, opt.num_workers, seed=opt.seed)
            latents = evaluation_pass(loader, model, step, device, opt, desc=key, progress=progress)["latents"]
            out.create_dataset(key, data=latents.numpy())
            shapes[key] = tuple(latents.shape)
        out.attrs["run"] = os.path.abspath(folder)
        out.attrs["output"] = "encoder" if encoder else "head"
    return shapes


def cli(argv=None) -> int:
    """Command-line entry point of nenya.latents."""
    def add_arguments(parser):
        parser.add_argument("run", help="run folder (model_root/model_name)")
        parser.add_argument("data", help="HDF5 file in Nenya's layout")
        parser.add_argument("out", help="HDF5 file to write (one dataset per partition)")
        parser.add_argument("--encoder", action="store_true", help="encoder features instead of the head output")
        parser.add_argument("--checkpoint", default="best", help="best, last or a .pth file in the run folder")
        parser.add_argument("--keys", nargs="+", help="partitions to embed (default: every image dataset)")
        parser.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (at least 1)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    def run(args):
        with torch.no_grad():
            shapes = write_latents(args.run, args.data, args.out, args.encoder, args.checkpoint, args.keys,
                                   args.batch_size, args.overwrite)
        for key, shape in shapes.items():
            print(f"{args.out}:{key} {list(shape)}")

    return run_cli("nenya.latents", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(cli())
