"""Latents files (shape, determinism) and the kNN monitor against an independent computation."""

import h5py
import numpy as np
import pytest
import torch

from nenya.latents import write_latents
from nenya.metrics.knn import knn_accuracy, knn_predict
from nenya.train import main as train_main


def _knn_by_hand(bank, bank_labels, queries, k):
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    predictions = []
    for query in queries:
        similarity = bank @ query
        nearest = np.argsort(-similarity, kind="stable")[:k]
        counts = np.bincount(bank_labels[nearest], minlength=bank_labels.max() + 1)
        predictions.append(int(np.argmax(counts)))
    return np.array(predictions)


def test_knn_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    bank, queries = rng.normal(size=(200, 6)), rng.normal(size=(50, 6))
    bank_labels, query_labels = rng.integers(0, 4, 200), rng.integers(0, 4, 50)
    for k in (1, 5, 7):  # votes over 4 classes can tie; the tie rule is tested below, here only untied ones
        expected = _knn_by_hand(bank, bank_labels, queries, k)
        got = knn_predict(torch.tensor(bank), torch.tensor(bank_labels), torch.tensor(queries), k).numpy()
        counts = [np.bincount(bank_labels[np.argsort(-(bank / np.linalg.norm(bank, axis=1, keepdims=True))
                                                     @ (q / np.linalg.norm(q)))[:k]], minlength=4)
                  for q in queries]
        untied = np.array([np.sum(c == c.max()) == 1 for c in counts])
        assert untied.sum() >= 20
        np.testing.assert_array_equal(got[untied], expected[untied])


def test_knn_accuracy_on_separable_clusters_and_leave_one_out():
    centres = torch.eye(3) * 10
    labels = torch.arange(3).repeat_interleave(20)
    points = centres[labels] + torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    assert knn_accuracy(points, labels, points, labels, k=5, exclude_self=True) == 1.0
    shuffled = labels[torch.randperm(60, generator=torch.Generator().manual_seed(0))]
    assert knn_accuracy(points, shuffled, points, labels, k=1, exclude_self=True) < 0.7


@pytest.fixture
def trained(tiny_run):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    return folder


def test_latents_shape_and_determinism(trained, tmp_path):
    data = tmp_path / "images.h5"
    first, second = tmp_path / "a_latents.h5", tmp_path / "b_latents.h5"
    shapes = write_latents(str(trained), str(data), str(first), progress=False)
    write_latents(str(trained), str(data), str(second), progress=False)
    assert shapes == {"train": (48, 16), "valid": (24, 16)}
    with h5py.File(first) as a, h5py.File(second) as b:
        assert sorted(a) == ["train", "valid"]
        np.testing.assert_array_equal(a["train"][:], b["train"][:])
        np.testing.assert_allclose(np.linalg.norm(a["valid"][:], axis=1), 1.0, rtol=1e-5)
    encoder = write_latents(str(trained), str(data), str(tmp_path / "enc.h5"), encoder=True, progress=False,
                            partitions=["valid"])
    assert encoder == {"valid": (24, 512)}


def test_latents_refuses_to_overwrite(trained, tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    with pytest.raises(Exception, match="already exists"):
        write_latents(str(trained), str(tmp_path / "images.h5"), str(out), progress=False)
    assert out.read_bytes() == b"precious"


def test_knn_tie_goes_to_the_class_nearer_on_average():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [-1.0, 0.0]])
    bank_labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[1.0, 0.1]])
    # k=2: neighbours are bank 0 (class 0) and bank 2 (class 1), one vote each; class 0 is more similar
    assert knn_predict(bank, bank_labels, query, k=2).item() == 0
