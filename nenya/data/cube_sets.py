"""The cube data sets a run's options describe: training, validation and evaluation cubes, checked and prepared.

Data: the cubes listed in ``data_csv`` (rows of ``train_split`` / ``valid_split``, dataset ``csv_key`` in
each file) when it is set, else ``train_key`` / ``valid_key`` of ``images_file`` (Nenya's HDF5 layout).
Relative ``data_csv`` and ``band_stats`` paths are under ``data_folder``, like ``images_file``.

Geometry: the model is built for square ``img_size`` x ``img_size`` inputs, where ``img_size`` is the
option, else ``cube_crop``, else the height (= width) of the training cubes; ``patch_size`` is
[spatial, spectral]. Training cubes are randomly cropped (``cube_crop``), rotated and flipped;
validation and evaluation cubes are only centre-cropped to ``cube_crop``. Every step is checked when
the data sets are built, so a mismatch is one clear error before training starts.
"""

import hashlib
import os
import warnings

from nenya.data.band_stats import BandNormalize, load_or_compute_band_stats
from nenya.data.builtin import images_path
from nenya.data.cubes import CubeCSV
from nenya.data.hdf5 import HDF5Images, check_channels
from nenya.data.transforms import Compose, CubeCenterCrop, build_cube_augmentation
from nenya.errors import NenyaError


def where(dataset) -> str:
    """'file:key' or 'file.csv (split S, dataset K)' for error messages."""
    if isinstance(dataset, CubeCSV):
        return f"{dataset.path} (split {dataset.split}, dataset '{dataset.key}')"
    return f"{dataset.path}:{dataset.key}"


def cube_sizes(dataset) -> list:
    """(where, height, width) of every cube of a data set: each file of a CSV list, or the one HDF5 dataset."""
    if isinstance(dataset, CubeCSV):
        return dataset.sizes()
    _, height, width = dataset.image_shape
    return [(where(dataset), height, width)]


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


class CubeSets:
    """Training, validation and evaluation cubes of one run's options, checked against the MAE's geometry."""

    def __init__(self, opt):
        self.opt = opt
        self._plain = {}
        self._geometry = None
        self._normalize = None
        self._valid = None
        self._valid_built = False

    def _csv_path(self) -> str:
        return os.path.join(self.opt.data_folder, self.opt.data_csv)

    def open(self, part: str):
        """The un-normalised, un-augmented 'train' or 'valid' cubes of the options' data (None: no such part)."""
        opt = self.opt
        if opt.data_csv:
            split = opt.train_split if part == "train" else opt.valid_split
            if part == "valid" and split is None:
                return None
            return CubeCSV(self._csv_path(), split=split, key=opt.csv_key)
        key = opt.train_key if part == "train" else opt.valid_key
        if key is None:
            return None
        return HDF5Images(images_path(opt), key, preload=opt.preload, key_option=f"{part}_key")

    def plain(self, part: str):
        """``open(part)``, checked to hold cubes with nchannels bands, opened once."""
        if part not in self._plain:
            dataset = self.open(part)
            if dataset is not None:
                self.check_cubes(dataset)
            self._plain[part] = dataset
        return self._plain[part]

    def check_cubes(self, dataset) -> None:
        """Cubes (C, H, W) with nchannels bands, or a NenyaError naming the data."""
        shape = dataset.image_shape
        if len(shape) != 3:
            raise NenyaError(f"{where(dataset)} holds images of shape {tuple(shape)}; the MAE needs cubes "
                             f"(C, H, W), stored as (N, C, H, W)")
        check_channels(dataset, self.opt.nchannels)

    def geometry(self) -> dict:
        """The model's bands, img_size, patch_size and band_patch, checked against the training cubes."""
        if self._geometry is None:
            opt = self.opt
            train = self.plain("train")
            bands, height, width = train.image_shape
            crop = opt.cube_crop or None
            if crop is not None:
                if crop > min(height, width):
                    raise NenyaError(f"cube_crop={crop} is larger than the {height}x{width} cubes of "
                                     f"{where(train)}; use a crop of at most {min(height, width)}")
                if opt.img_size is not None and opt.img_size != crop:
                    raise NenyaError(f"img_size={opt.img_size} but cube_crop={crop}: the model sees the "
                                     f"{crop}x{crop} crops; set img_size to {crop} or null")
                size, source = crop, f"cube_crop={crop}"
            else:
                if height != width:
                    raise NenyaError(f"the cubes of {where(train)} are {height}x{width} but the MAE needs square "
                                     f"inputs (img_size); set cube_crop to a square crop of at most "
                                     f"{min(height, width)}")
                if opt.img_size is not None and opt.img_size != height:
                    raise NenyaError(f"img_size={opt.img_size} but the cubes of {where(train)} are "
                                     f"{height}x{width}; set img_size to {height} (or null), or "
                                     f"cube_crop={opt.img_size} to crop them")
                size, source = height, f"the {height}x{width} cubes of {where(train)}"
            self.check_sizes(train, crop, (height, width))
            spatial, spectral = opt.patch_size
            if size % spatial:
                raise NenyaError(f"patch_size={opt.patch_size}: the spatial patch {spatial} does not divide "
                                 f"img_size {size} ({source}); use one of {_divisors(size)}")
            if bands % spectral:
                raise NenyaError(f"patch_size={opt.patch_size}: the spectral patch {spectral} does not divide the "
                                 f"{bands} bands of {where(train)}; use one of {_divisors(bands)}")
            self._geometry = {"bands": bands, "img_size": size, "patch_size": spatial, "band_patch": spectral}
        return self._geometry

    def check_sizes(self, dataset, crop, size) -> None:
        """Every cube at least ``crop`` pixels per side, or (without a crop) exactly ``size`` (height, width)."""
        for name, height, width in cube_sizes(dataset):
            if crop and min(height, width) < crop:
                raise NenyaError(f"{name} holds {height}x{width} cubes, smaller than cube_crop={crop} (the model's "
                                 f"img_size)")
            if not crop and (height, width) != tuple(size):
                raise NenyaError(f"{name} holds {height}x{width} cubes but the model takes {size[0]}x{size[1]} "
                                 f"(img_size, from {where(dataset)}); set cube_crop to crop every cube to one size")

    def _stats_path(self) -> str:
        opt = self.opt
        if opt.band_stats:
            return os.path.join(opt.data_folder, opt.band_stats)
        if opt.data_csv:
            return f"{self._csv_path()}.{opt.train_split}.bandstats.json"
        return f"{images_path(opt)}.{opt.train_key}.bandstats.json"

    def fingerprint(self) -> str:
        """What the training statistics describe: the cube list's content (CSV) or the dataset's shape (HDF5)."""
        opt = self.opt
        if opt.data_csv:
            with open(self._csv_path(), "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            return f"csv sha256 {digest}, split {opt.train_split}, dataset {opt.csv_key}"
        train = self.plain("train")
        return f"{os.path.basename(train.path)}:{train.key} shape {list(train.stored_shape)}"

    def normalizer(self, like=None):
        """BandNormalize with the training data's statistics (read, or computed once and cached), or None.

        ``like``: a data set whose band count the statistics file is checked against when it exists
        (so evaluation does not need the training data); otherwise the training cubes are used.
        """
        if not self.opt.normalize_bands:
            return None
        if self._normalize is None:
            path = self._stats_path()
            source = like if like is not None and os.path.exists(path) else self.plain("train")
            fingerprint = None if like is not None and source is like else self.fingerprint()
            mean, std = load_or_compute_band_stats(path, source, fingerprint=fingerprint)
            self._normalize = BandNormalize(mean, std)
        return self._normalize

    @staticmethod
    def prepared(dataset, augment, normalize):
        """``dataset`` returning normalised, then augmented cubes."""
        if isinstance(dataset, CubeCSV):
            dataset.normalize, dataset.transform = normalize, augment
        else:
            steps = [step for step in (normalize, augment) if step is not None]
            dataset.transform = Compose(steps) if steps else None
        return dataset

    def _eval_transform(self):
        return CubeCenterCrop(self.opt.cube_crop) if self.opt.cube_crop else None

    def check_eval_size(self, dataset) -> None:
        """Cubes the validation transform turns into img_size x img_size, or a NenyaError."""
        size = self.geometry()["img_size"]
        self.check_sizes(dataset, self.opt.cube_crop, (size, size))

    def check_value_range(self, dataset, samples: int = 4) -> tuple[float, float] | None:
        """Warn when sampled cubes fall outside valid_range or span more than data_range; return (min, max).

        The metrics and the range penalty are computed in the units the model sees (normalised bands
        when normalize_bands is on), so that is where the values are checked.
        """
        opt = self.opt
        if len(dataset) == 0:
            return None
        picks = sorted({round(i * (len(dataset) - 1) / max(samples - 1, 1)) for i in range(min(samples, len(dataset)))})
        values = [dataset[i][0] for i in picks]
        low, high = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
        units = "normalised (normalize_bands)" if opt.normalize_bands else "data"
        problems = []
        if opt.valid_range is not None:
            lo, hi = opt.valid_range
            slack = 0.05 * (hi - lo)
            if low < lo - slack or high > hi + slack:
                problems.append(f"valid_range is {opt.valid_range} (set it to null or to the data's range)")
        if high - low > 1.05 * opt.data_range:
            problems.append(f"data_range is {opt.data_range} (PSNR and SSIM need the data's span, about "
                            f"{high - low:.4g})")
        if problems:
            warnings.warn(f"{where(dataset)}: {len(values)} sampled training cubes hold {units} values in "
                          f"[{low:.4g}, {high:.4g}] but {'; '.join(problems)}")
        return low, high

    def train_set(self):
        """Training cubes, normalised and augmented (crop, rot90, flip)."""
        opt = self.opt
        self.geometry()
        augment = build_cube_augmentation(opt.flip, opt.cube_rot90, opt.cube_crop)
        if opt.augment_on == "device":  # the method augments each batch on the device (nenya.data.device_augment)
            augment = None
        return self.prepared(self.open("train"), augment, self.normalizer())

    def valid_set(self):
        """The validation cubes as validation and the metrics see them (None when there are none)."""
        if not self._valid_built:
            valid = self.open("valid")
            if valid is not None:
                self.check_cubes(valid)
                self.check_eval_size(valid)
                valid = self.prepared(valid, self._eval_transform(), self.normalizer())
            self._valid, self._valid_built = valid, True
        return self._valid

    def eval_set(self, path=None, key=None):
        """Cubes to evaluate on, prepared like the validation cubes (normalised with the run's statistics).

        ``path``: an HDF5 file in Nenya's layout (default: the run's own data); ``key``: its dataset
        (default: valid_key), or with the run's own data_csv the split (default: valid_split).
        """
        opt = self.opt
        if path is None and key is None:
            valid = self.valid_set()
            if valid is None:
                raise NenyaError("the run has no validation data (valid_split / valid_key is null); pass --key")
            return valid
        if path is None and opt.data_csv:
            dataset = CubeCSV(self._csv_path(), split=key, key=opt.csv_key)
        else:
            key = key if key is not None else opt.valid_key
            if key is None:
                raise NenyaError("the run has no valid_key; pass --key to name the dataset to evaluate")
            if path is not None and not os.path.isfile(path):
                raise NenyaError(f"data file {path} does not exist (--data)")
            dataset = HDF5Images(path if path is not None else images_path(opt), key, key_option="--key")
        self.check_cubes(dataset)
        self.check_eval_size(dataset)
        return self.prepared(dataset, self._eval_transform(), self.normalizer(like=dataset))
