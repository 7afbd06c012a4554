"""Image folders: reading PNG/JPEG/TIFF/npy, class order, the stratified split, and their errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from nenya.data.folders import ImageFolder, read_image, stratified_split
from nenya.errors import NenyaError


def make_folder(root, counts=(6, 4, 10), size=8):
    """Classes 'b_cls', 'a_cls', 'c_cls' (created in that order) of RGB PNG images; returns the pixel arrays."""
    rng = np.random.default_rng(0)
    pixels = {}
    for name, count in zip(("b_cls", "a_cls", "c_cls"), counts):
        (root / name).mkdir(parents=True)
        for i in range(count):
            array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"{i:02d}.png")
            pixels[(name, i)] = array
    return pixels


def test_classes_are_sorted_subfolders_and_pixels_are_scaled(tmp_path):
    pixels = make_folder(tmp_path / "images")
    data = ImageFolder(str(tmp_path / "images"))
    assert data.class_names == ["a_cls", "b_cls", "c_cls"] and len(data) == 20
    image, label, index = data[0]
    assert image.shape == (3, 8, 8) and int(label) == 0 and int(index) == 0
    np.testing.assert_allclose(image.numpy(), pixels[("a_cls", 0)].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.labels, [0] * 4 + [1] * 6 + [2] * 10)


def test_split_is_stratified_disjoint_complete_and_drawn_by_seed(tmp_path):
    make_folder(tmp_path / "images")
    root = str(tmp_path / "images")
    train, valid = ImageFolder(root, "train", 0.25, seed=3), ImageFolder(root, "valid", 0.25, seed=3)
    assert not set(train.files) & set(valid.files) and len(train) + len(valid) == 20
    np.testing.assert_array_equal(np.bincount(valid.labels), [1, 2, 2])  # round(0.25 x 4, 6, 10)
    other = ImageFolder(root, "valid", 0.25, seed=4)
    assert other.files != valid.files
    labels = np.repeat([0, 1], [2, 9])
    tr, va = stratified_split(labels, 0.1, 0)
    assert sorted(tr + va) == list(range(11)) and np.bincount(labels[va]).tolist() == [1, 1]


def test_multipage_tiff_and_npy_give_extra_channels(tmp_path):
    pages = [Image.fromarray(np.full((4, 5), v, dtype=np.uint16)) for v in (0, 65535, 32768)]
    pages[0].save(tmp_path / "x.tif", save_all=True, append_images=pages[1:])
    image = read_image(str(tmp_path / "x.tif"))
    assert image.shape == (3, 4, 5)
    np.testing.assert_allclose(image[:, 0, 0], [0, 1, 32768 / 65535], rtol=1e-6)
    np.save(tmp_path / "y.npy", np.arange(4 * 5 * 6, dtype=np.float32).reshape(6, 4, 5))  # [C, H, W]
    assert read_image(str(tmp_path / "y.npy")).shape == (6, 4, 5)
    np.save(tmp_path / "z.npy", np.zeros((4, 5, 3), dtype=np.uint8))  # [H, W, C]
    assert read_image(str(tmp_path / "z.npy")).shape == (3, 4, 5)


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(NenyaError, match="has no class subfolders"):
        (tmp_path / "empty").mkdir()
        ImageFolder(str(tmp_path / "empty"))
    (tmp_path / "one" / "cls").mkdir(parents=True)
    with pytest.raises(NenyaError, match="holds no images"):
        ImageFolder(str(tmp_path / "one"))
    make_folder(tmp_path / "images")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "images" / "c_cls" / "zz.png")
    data = ImageFolder(str(tmp_path / "images"))
    with pytest.raises(NenyaError, match="zz.png has shape \\[3, 9, 9\\]"):
        data[len(data) - 1]
    (tmp_path / "images" / "a_cls" / "bad.png").write_bytes(b"not a png")
    data = ImageFolder(str(tmp_path / "images"))
    with pytest.raises(NenyaError, match="bad.png cannot be read"):
        data[[i for i, name in enumerate(data.files) if name.endswith("bad.png")][0]]


def test_classify_trains_on_a_folder(tmp_path):
    from nenya.train import main as train_main
    from conftest import write_opts
    make_folder(tmp_path / "images", counts=(8, 8, 8))
    opts = write_opts(tmp_path / "o.json", method="classify", model="resnet18", nchannels=3, images_file="images",
                      data_folder=str(tmp_path), model_root=str(tmp_path / "m"), model_name="f", epochs=1,
                      batch_size_train=8, valid_fraction=0.25, save_freq=100)
    metrics = train_main(opts, verbose=False)
    assert 0.0 <= metrics["final"]["acc"] <= 1.0
    assert (tmp_path / "m" / "f" / "figures" / "confusion_epoch1.png").exists()
    assert torch.load(tmp_path / "m" / "f" / "last.pth", weights_only=True)["opts"]["num_classes"] == 3
