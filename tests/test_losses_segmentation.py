"""Segmentation losses against direct formulas (and MONAI's DiceCELoss where no weights are set)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from nenya.errors import NenyaError
from nenya.losses.segmentation import auto_class_weights, label_counts, segmentation_loss


def example(num_classes, dims=2, seed=0):
    """Random logits [2, K, *S] and labels [2, *S] (every class present)."""
    torch.manual_seed(seed)
    size = (5, 6) if dims == 2 else (3, 4, 5)
    logits = torch.randn(2, num_classes, *size) * 2
    target = torch.randint(0, max(num_classes, 2), (2, *size))
    target.view(-1)[: max(num_classes, 2)] = torch.arange(max(num_classes, 2))
    return logits, target


def hand_dice(probs, onehot, smooth=1e-5):
    """1 - (2 sum p t + s) / (sum p + sum t + s) per image and channel, averaged (written out)."""
    dims = tuple(range(2, probs.dim()))
    intersection = (probs * onehot).sum(dims)
    return (1 - (2 * intersection + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)).mean()


def hand_ce(logits, target, weights=None):
    """Weighted mean of -log softmax at the true class, from the definition."""
    log_p = logits.log_softmax(1).gather(1, target.unsqueeze(1))[:, 0]
    w = torch.ones_like(log_p) if weights is None else torch.tensor(weights)[target]
    return -(w * log_p).sum() / w.sum()


@pytest.mark.parametrize("dims", [2, 3])
def test_cross_entropy_with_class_weights(dims):
    logits, target = example(3, dims)
    weights = [0.2, 1.0, 3.0]
    torch.testing.assert_close(segmentation_loss("ce", 3)(logits, target), hand_ce(logits, target))
    torch.testing.assert_close(segmentation_loss("ce", 3, class_weights=weights)(logits, target),
                               hand_ce(logits, target, weights))
    torch.testing.assert_close(segmentation_loss("ce", 3, class_weights=weights)(logits, target),
                               F.cross_entropy(logits, target, weight=torch.tensor(weights)))


def test_bce_with_pos_weight():
    logits, target = example(1)
    z, y, w = logits[:, 0], target.float(), 3.0
    expected = -(w * y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    torch.testing.assert_close(segmentation_loss("bce", 1, pos_weight=w)(logits, target), expected)


@pytest.mark.parametrize("dims", [2, 3])
def test_dice_multiclass_and_binary_by_hand(dims):
    logits, target = example(3, dims)
    onehot = F.one_hot(target, 3).movedim(-1, 1).float()
    torch.testing.assert_close(segmentation_loss("dice", 3)(logits, target), hand_dice(logits.softmax(1), onehot))
    logits, target = example(1, dims)
    torch.testing.assert_close(segmentation_loss("dice", 1)(logits, target),
                               hand_dice(torch.sigmoid(logits), target.unsqueeze(1).float()))


def test_dice_on_a_tiny_example_worked_by_hand():
    logits = torch.tensor([[[[10.0, -10.0], [10.0, -10.0]]]])  # sigmoid ~ [[1, 0], [1, 0]]
    target = torch.tensor([[[1, 1], [0, 0]]])
    # intersection 1, sum p 2, sum t 2: dice loss = 1 - 2 / 4 = 0.5
    torch.testing.assert_close(segmentation_loss("dice", 1)(logits, target), torch.tensor(0.5), atol=1e-4, rtol=0)


def test_dice_ce_is_dice_plus_cross_entropy_and_equals_monai_without_weights():
    from monai.losses import DiceCELoss

    logits, target = example(3)
    onehot = F.one_hot(target, 3).movedim(-1, 1).float()
    weights = [0.5, 1.0, 2.0]
    torch.testing.assert_close(segmentation_loss("dice_ce", 3, class_weights=weights)(logits, target),
                               hand_dice(logits.softmax(1), onehot) + hand_ce(logits, target, weights))
    monai = DiceCELoss(softmax=True, to_onehot_y=True)(logits, target.unsqueeze(1))
    torch.testing.assert_close(segmentation_loss("dice_ce", 3)(logits, target), monai)
    logits, target = example(1)
    monai = DiceCELoss(sigmoid=True)(logits, target.unsqueeze(1).float())
    torch.testing.assert_close(segmentation_loss("dice_ce", 1)(logits, target), monai)


def test_focal_loss_by_hand():
    logits, target = example(3)
    gamma, weights = 2.0, [0.5, 1.0, 2.0]
    p = logits.softmax(1)
    onehot = F.one_hot(target, 3).movedim(-1, 1).float()
    w = torch.tensor(weights).view(1, 3, 1, 1)
    # softmax focal: -w_c (1 - p_c)^gamma log p_c at the true class, averaged over every element of [B, K, *S]
    expected = -(w * onehot * (1 - p) ** gamma * p.log()).mean()
    torch.testing.assert_close(segmentation_loss("focal", 3, class_weights=weights, focal_gamma=gamma)(logits, target),
                               expected)
    logits, target = example(1)
    q, y = torch.sigmoid(logits[:, 0]), target.float()
    p_true = torch.where(y > 0, q, 1 - q)
    expected = -((1 - p_true) ** gamma * p_true.log()).mean()
    torch.testing.assert_close(segmentation_loss("focal", 1, focal_gamma=gamma)(logits, target), expected)


@pytest.mark.parametrize("name, num_classes", [("ce", 3), ("bce", 1), ("dice", 3), ("dice_ce", 1), ("focal", 3)])
def test_losses_are_float32_under_bf16_autocast(name, num_classes):
    logits, target = example(num_classes)
    half = logits.bfloat16()
    expected = segmentation_loss(name, num_classes)(half.float(), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = segmentation_loss(name, num_classes)(half, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected)


def test_auto_class_weights_are_sklearns_balanced_weights():
    rng = np.random.default_rng(0)
    masks = rng.choice(3, size=(4, 10, 10), p=[0.7, 0.25, 0.05])
    counts = label_counts(masks, 3)
    np.testing.assert_array_equal(counts, [np.sum(masks == c) for c in range(3)])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=masks.ravel())
    np.testing.assert_allclose(auto_class_weights(counts), expected)
    loss = segmentation_loss("ce", 3, class_weights="auto", label_counts=counts)
    np.testing.assert_allclose(loss.class_weights.numpy(), expected, rtol=1e-6)
    loss = segmentation_loss("bce", 1, pos_weight="auto", label_counts=[30, 10])
    assert loss.pos_weight.item() == 3.0
    assert auto_class_weights([5, 0]) == [0.5 * 5 / 5, 0.5 * 5 / 1]  # an absent class counts as 1


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name="hinge", num_classes=2), "not a segmentation loss"),
    (dict(name="ce", num_classes=1), "use 'bce'"),
    (dict(name="bce", num_classes=3), "use 'ce'"),
    (dict(name="dice", num_classes=3, class_weights=[1, 1, 1]), "class_weights apply"),
    (dict(name="ce", num_classes=3, class_weights=[1, 2]), "list of 3"),
    (dict(name="ce", num_classes=3, class_weights="auto"), "label counts"),
    (dict(name="focal", num_classes=1, pos_weight=2.0), "pos_weight applies"),
    (dict(name="bce", num_classes=1, pos_weight=-1.0), "positive number"),
])
def test_options_a_loss_cannot_use_are_errors(kwargs, fragment):
    with pytest.raises(NenyaError, match=fragment):
        segmentation_loss(**kwargs)


def test_label_counts_refuse_labels_beyond_num_classes():
    with pytest.raises(NenyaError, match="label 3"):
        label_counts(np.array([0, 1, 3]), 3)
