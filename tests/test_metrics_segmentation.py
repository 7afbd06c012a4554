"""Segmentation metrics against scikit-learn, scikit-image and numpy, including empty masks, in 2-D and 3-D."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import ball, disk
from skimage.segmentation import find_boundaries
from sklearn.metrics import f1_score, jaccard_score

from nenya.metrics.segmentation import (METRICS, SegmentationScores, labels_from_logits, per_image_scores,
                                        score_totals, summarize)


def blob_labels(rng, shape, num_classes):
    """Label maps [N, *S] of smooth random blobs with values 0 .. num_classes - 1."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=[0] + [2] * (len(shape) - 1))
    edges = np.quantile(field, np.linspace(0, 1, num_classes + 1)[1:-1])
    return np.digitize(field, edges)


def label_pairs(dims, seed=0, n=5, num_classes=3):
    """(pred, true) label maps with empty cases: image 0 lacks class 2 in both, image 1 only in pred."""
    rng = np.random.default_rng(seed)
    shape = (n,) + ((24, 20) if dims == 2 else (10, 12, 9))
    true = blob_labels(rng, shape, num_classes)
    pred = np.where(rng.random(shape) < 0.1, rng.integers(0, num_classes, shape), true)  # noisy copy
    pred = np.where(ndimage.binary_dilation(true == 1, iterations=1) & (rng.random(shape) < 0.5), 1, pred)
    true[0][true[0] == 2] = 0
    pred[0][pred[0] == 2] = 0
    true[1][true[1] == 2] = 0  # class 2 predicted but absent
    return pred, true


def expected_overlap(pred, true, metric):
    """Dice (sklearn f1_score) or IoU (sklearn jaccard_score) of flat binary masks; 1 / 0 for empty cases."""
    if not pred.any() and not true.any():
        return 1.0
    if not pred.any() or not true.any():
        return 0.0
    score = f1_score if metric == "dice" else jaccard_score
    return score(true.ravel(), pred.ravel())


def expected_boundary_f1(pred, true, tolerance):
    """Boundary F1 from skimage's inner boundaries and a disk / ball dilation (scipy), in numpy; empty rules first."""
    if pred.any() != true.any():
        return 0.0
    footprint = disk(tolerance) if pred.ndim == 2 else ball(tolerance)
    pred_b = find_boundaries(pred, mode="inner", connectivity=1)
    true_b = find_boundaries(true, mode="inner", connectivity=1)
    if not pred_b.any() and not true_b.any():
        return 1.0
    if not pred_b.any() or not true_b.any():
        return 0.0
    precision = (pred_b & ndimage.binary_dilation(true_b, structure=footprint)).sum() / pred_b.sum()
    recall = (true_b & ndimage.binary_dilation(pred_b, structure=footprint)).sum() / true_b.sum()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def scores_of(pred, true, classes, tolerance=2):
    """per_image_scores of numpy label maps, as numpy arrays."""
    scores = per_image_scores(torch.from_numpy(pred), torch.from_numpy(true), classes, tolerance)
    return {key: value.numpy() for key, value in scores.items()}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_per_image_scores_match_sklearn_skimage_and_numpy(dims, tolerance):
    pred, true = label_pairs(dims, seed=dims + tolerance)
    classes = [0, 1, 2]
    scores = scores_of(pred, true, classes, tolerance)
    for metric in METRICS:
        assert scores[metric].shape == (len(pred), 3)
        assert np.isfinite(scores[metric]).all()
    for i in range(len(pred)):
        for k, c in enumerate(classes):
            p, t = pred[i] == c, true[i] == c
            np.testing.assert_allclose(scores["dice"][i, k], expected_overlap(p, t, "dice"), rtol=1e-5)
            np.testing.assert_allclose(scores["iou"][i, k], expected_overlap(p, t, "iou"), rtol=1e-5)
            np.testing.assert_allclose(scores["accuracy"][i, k], np.mean(p == t), rtol=1e-6)
            np.testing.assert_allclose(scores["boundary_f1"][i, k], expected_boundary_f1(p, t, tolerance),
                                       rtol=1e-5)


def test_the_metrics_are_not_trivially_one():
    pred, true = label_pairs(2)
    scores = scores_of(pred, true, [1, 2])
    for metric in METRICS:
        assert 0.3 < scores[metric][2:].mean() < 0.999, metric


@pytest.mark.parametrize("dims", [2, 3])
def test_empty_masks_score_one_when_both_are_empty_and_zero_when_one_is(dims):
    pred, true = label_pairs(dims)
    scores = scores_of(pred, true, [1, 2])
    for metric in ("dice", "iou", "boundary_f1"):
        assert scores[metric][0, 1] == 1.0  # class 2: absent in both
        assert scores[metric][1, 1] == 0.0  # class 2: predicted, absent in truth
    assert scores["empty_both"][:, 1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert scores["empty_one"][:, 1].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert not scores["empty_both"][:, 0].any() and not scores["empty_one"][:, 0].any()


def test_all_empty_and_all_filled_images_are_never_nan():
    zeros, ones = np.zeros((1, 8, 8), np.int64), np.ones((1, 8, 8), np.int64)
    for pred, true, expected in ((zeros, zeros, 1.0), (ones, ones, 1.0), (zeros, ones, 0.0), (ones, zeros, 0.0)):
        scores = scores_of(pred, true, [1])
        assert scores["dice"][0, 0] == scores["iou"][0, 0] == scores["boundary_f1"][0, 0] == expected
        assert scores["accuracy"][0, 0] == expected


@pytest.mark.parametrize("dims", [2, 3])
def test_summary_averages_over_images_and_classes_and_counts_empty_cases(dims):
    pred, true = label_pairs(dims)
    classes = [1, 2]
    direct = scores_of(pred, true, classes)
    meter = SegmentationScores(classes, class_names=["organ", "tumour"])
    for batch in (slice(0, 2), slice(2, 5)):  # two batches
        meter.update(torch.from_numpy(pred[batch]), torch.from_numpy(true[batch]))
    summary = meter.summary()
    for metric in METRICS:
        np.testing.assert_allclose(summary[metric], direct[metric].mean(), rtol=1e-6)
        np.testing.assert_allclose(summary[f"{metric}_organ"], direct[metric][:, 0].mean(), rtol=1e-6)
        np.testing.assert_allclose(summary[f"{metric}_tumour"], direct[metric][:, 1].mean(), rtol=1e-6)
    assert (summary["images"], summary["empty_both"], summary["empty_one"]) == (5, 1, 1)
    assert meter.per_image()["dice"].shape == (5, 2)


def test_totals_from_two_ranks_add_up_to_the_whole():
    pred, true = (torch.from_numpy(a) for a in label_pairs(2))
    whole = score_totals(per_image_scores(pred, true, [1, 2]))
    ranks = [score_totals(per_image_scores(pred[s], true[s], [1, 2])) for s in (slice(0, 3), slice(3, 5))]
    added = {key: ranks[0][key] + ranks[1][key] for key in whole}  # what an all-reduce SUM gives
    assert summarize(added) == pytest.approx(summarize(whole))


def test_labels_from_logits_thresholds_one_channel_and_takes_the_argmax_of_several():
    logits = torch.tensor([[[-0.5, 0.0, 2.0]]])  # [B=1, K=1, 3]
    assert labels_from_logits(logits).tolist() == [[0, 0, 1]]
    logits = torch.randn(2, 4, 5, 6)
    np.testing.assert_array_equal(labels_from_logits(logits).numpy(), np.argmax(logits.numpy(), axis=1))


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        per_image_scores(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), [1])
