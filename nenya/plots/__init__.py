"""Figures (matplotlib, Agg), one file per kind: training curves, embeddings, MAE reconstructions."""

import matplotlib

matplotlib.use("Agg")
