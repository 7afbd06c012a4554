"""Data sets (HDF5 images, CSV-listed cubes, built-in data) and the augmentation vocabulary."""

from nenya.data import builtin, synthetic  # noqa: F401  (registers the built-in data sets)
