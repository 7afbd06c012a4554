"""Data sets (HDF5 images, CSV-listed cubes, built-in data) and the augmentation vocabulary."""

from nenya.data import builtin, synthetic, synthetic_segmentation  # noqa: F401  (registers the built-in data sets)
