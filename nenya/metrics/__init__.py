"""Metrics, one file per family: kNN accuracy of embeddings, reconstruction metrics of hyperspectral cubes."""
