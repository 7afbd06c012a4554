"""Datasets (HDF5 images, built-in data) and tensor augmentations."""
