"""Files of a segmentation evaluation: per-image metrics CSV and predicted masks HDF5 (written atomically)."""

import csv
import io

import numpy as np

from nenya.io.atomic import atomic_path, write_h5


def write_per_image_csv(path: str, outputs: dict, rows, class_names) -> str:
    """One line per image: item, data row, mean Dice / IoU / boundary F1 over classes, pixel accuracy, per class."""
    scores = {name: outputs[f"score_{name}"].double().numpy() for name in ("dice", "iou", "boundary_f1",
                                                                            "empty_both", "empty_one")}
    several = len(class_names) > 1
    header = ["item", "row", "dice", "iou", "boundary_f1", "pixel_accuracy", "empty_both", "empty_one"]
    if several:
        header += [f"{metric}_{name}" for metric in ("dice", "iou", "boundary_f1") for name in class_names]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for item in range(len(scores["dice"])):
        line = [item, int(rows[item]), *(f"{scores[m][item].mean():.6g}" for m in ("dice", "iou", "boundary_f1")),
                f"{float(outputs['pixel_accuracy'][item]):.6g}", int(scores["empty_both"][item].sum()),
                int(scores["empty_one"][item].sum())]
        if several:
            line += [f"{scores[m][item, k]:.6g}" for m in ("dice", "iou", "boundary_f1")
                     for k in range(len(class_names))]
        writer.writerow(line)
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        handle.write(text.getvalue())
    return path


def write_masks(path: str, masks, dataset, target_label=None) -> str:
    """Predicted label maps ``[N, *S]`` as ``masks`` (uint8, or uint16 above 255) with the data rows they belong to."""
    masks = np.asarray(masks)
    dtype = np.uint8 if masks.size == 0 or masks.max() < 256 else np.uint16
    attrs = {"data": dataset.path, "key": dataset.key, "target_label": -1 if target_label is None else target_label,
             "description": "predicted label maps, one per evaluated image; rows: the image's row in the data"}
    return write_h5(path, {"masks": masks.astype(dtype), "rows": np.asarray(dataset.rows, np.int64)}, attrs)
