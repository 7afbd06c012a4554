"""Latents files (eval-mode forward passes, batch- and process-independent) and kNN against direct computations."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import knn_by_hand
from nenya.latents import write_latents
from nenya.metrics.knn import knn_accuracy, knn_predict
from nenya.models import build_model
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


def test_knn_accuracy_on_separable_clusters():
    centres = torch.eye(3) * 10
    labels = torch.arange(3).repeat_interleave(20)
    points = centres[labels] + torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    assert knn_accuracy(points, labels, points, labels, k=5, exclude_self=True) == 1.0


@pytest.mark.parametrize("k", [1, 4])
def test_leave_one_out_excludes_each_point_itself(k):
    """Random labels: with itself among its neighbours a point would vote for its own label (k=1: always)."""
    generator = torch.Generator().manual_seed(3)
    points, labels = torch.randn(60, 5, generator=generator), torch.randint(0, 3, (60,), generator=generator)
    expected = knn_by_hand(points.numpy(), labels.numpy(), points.numpy(), k, leave_one_out=True)
    assert knn_predict(points, labels, points, k, exclude_self=True).tolist() == expected.tolist()
    loo = knn_accuracy(points, labels, points, labels, k, exclude_self=True)
    assert loo == pytest.approx(np.mean(expected == labels.numpy())) and loo < 0.6
    with_itself = np.mean(knn_by_hand(points.numpy(), labels.numpy(), points.numpy(), k) == labels.numpy())
    assert with_itself > loo + 0.2


@pytest.fixture
def trained(tiny_run):
    """Folder of a one-epoch SimCLR run trained on demeaned images (tmp_path/images.h5)."""
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1, "demean": True}, verbose=False)
    return folder


def _direct(folder, data, key, encoder=False, train_mode=False):
    """Embeddings of every image of ``key``: one forward pass of the saved weights, each image demeaned by hand."""
    model = build_model("resnet18", nchannels=1, feat_dim=16)
    state = torch.load(folder / "best.pth", weights_only=True)["model"]
    model.probe = torch.nn.Linear(512, 3)  # the online linear probe: 3 label values in the data
    model.load_state_dict(state)
    with h5py.File(data) as handle:
        images = torch.tensor(handle[key][:])
    images = images - images.mean(dim=(1, 2, 3), keepdim=True)
    model.train(train_mode)
    with torch.no_grad():
        return (model.encode(images) if encoder else model(images)).numpy()


def test_latents_are_an_eval_forward_pass_of_images_demeaned_as_in_training(trained, tmp_path):
    data, out = tmp_path / "images.h5", tmp_path / "latents.h5"
    shapes = write_latents(str(trained), str(data), str(out), batch_size=7, progress=False)
    assert shapes == {"train": (48, 16), "valid": (24, 16)}
    with h5py.File(out) as handle:
        assert sorted(handle) == ["train", "valid"] and handle.attrs["output"] == "head"
        for key in ("train", "valid"):
            np.testing.assert_allclose(handle[key][:], _direct(trained, data, key), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(handle["valid"][:], axis=1), 1.0, rtol=1e-5)
    encoder = write_latents(str(trained), str(data), str(tmp_path / "enc.h5"), encoder=True, progress=False,
                            partitions=["valid"])
    assert encoder == {"valid": (24, 512)}
    with h5py.File(tmp_path / "enc.h5") as handle:
        np.testing.assert_allclose(handle["valid"][:], _direct(trained, data, "valid", encoder=True),
                                   rtol=1e-4, atol=1e-5)


def test_an_embedding_does_not_depend_on_the_other_images_in_its_batch(trained, tmp_path):
    data = tmp_path / "images.h5"
    write_latents(str(trained), str(data), str(tmp_path / "one.h5"), batch_size=1, progress=False)
    write_latents(str(trained), str(data), str(tmp_path / "all.h5"), batch_size=48, progress=False)
    with h5py.File(tmp_path / "one.h5") as one, h5py.File(tmp_path / "all.h5") as every:
        for key in ("train", "valid"):
            np.testing.assert_allclose(one[key][:], every[key][:], rtol=1e-4, atol=1e-5)
    # what it guards against: in training mode BatchNorm mixes the images of a batch
    train_mode = _direct(trained, data, "valid", train_mode=True)
    assert np.abs(train_mode - _direct(trained, data, "valid")).max() > 1e-3


def test_latents_written_by_another_process_equal_these(trained, tmp_path):
    data = tmp_path / "images.h5"
    write_latents(str(trained), str(data), str(tmp_path / "here.h5"), partitions=["valid"], progress=False)
    done = subprocess.run([sys.executable, "-m", "nenya.latents", str(trained), str(data),
                           str(tmp_path / "there.h5"), "--keys", "valid", "--batch-size", "5"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "there.h5:valid [24, 16]" in done.stdout
    with h5py.File(tmp_path / "here.h5") as here, h5py.File(tmp_path / "there.h5") as there:
        np.testing.assert_allclose(there["valid"][:], here["valid"][:], rtol=1e-4, atol=1e-5)


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


def test_knn_majority_beats_a_single_closer_neighbour():
    bank = torch.tensor([[1.0, 0.0], [-0.2, 0.98], [-0.2, -0.98], [-1.0, 0.0]])
    bank_labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[1.0, 0.0]])
    # k=3: bank 0 (class 0, similarity 1) and banks 1, 2 (class 1, similarity -0.2 each): two votes to one
    assert knn_by_hand(bank.numpy(), bank_labels.numpy(), query.numpy(), 3).tolist() == [1]
    assert knn_predict(bank, bank_labels, query, k=3).item() == 1
