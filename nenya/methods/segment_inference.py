"""Segmentation inference: whole-image or sliding-window logits, flip test-time augmentation, label maps.

Sliding-window inference is MONAI's ``sliding_window_inference`` (windows of ``roi_size``, ``overlap``,
Gaussian or constant blending); the model runs on the input's device (``sw_device``) and the
windows are stitched on the CPU when ``stitch_cpu`` (``device="cpu"``), so a large volume's logits
never sit in GPU memory. Flip TTA averages the probabilities (sigmoid for one logit channel,
softmax for K) of the image and of its flips along each spatial axis, each flipped back.
"""

import torch


def activation(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities of logits ``[B, K, *S]``: sigmoid for K = 1, softmax over K otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def to_labels(probabilities: torch.Tensor) -> torch.Tensor:
    """Label maps ``[B, *S]`` (int64) of probabilities ``[B, K, *S]``: p > 0.5 for K = 1, else the argmax."""
    if probabilities.shape[1] == 1:
        return (probabilities[:, 0] > 0.5).long()
    return probabilities.argmax(dim=1)


def roi_of(roi_size, spatial_dims: int) -> list[int] | None:
    """Window size per spatial axis from the option (one number for every axis, or one per axis); None: off."""
    if not roi_size:
        return None
    return list(roi_size) * spatial_dims if len(roi_size) == 1 else list(roi_size)


def infer_logits(model, images: torch.Tensor, roi=None, overlap: float = 0.25, mode: str = "gaussian",
                 sw_batch_size: int = 4, stitch_cpu: bool = True) -> torch.Tensor:
    """Float32 logits ``[B, K, *S]`` of images ``[B, C, *S]``, whole or by sliding windows of ``roi``."""
    if roi is None:
        return model(images).float()
    from monai.inferers import sliding_window_inference

    out = sliding_window_inference(images, roi, sw_batch_size, lambda x: model(x).float(), overlap=overlap,
                                   mode=mode, sw_device=images.device,
                                   device=torch.device("cpu") if stitch_cpu else images.device)
    return torch.as_tensor(out).as_subclass(torch.Tensor).float()


def predict(model, images: torch.Tensor, tta: bool = False, **window) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the image as it is, probabilities averaged over flips when ``tta``), both ``[B, K, *S]``."""
    logits = infer_logits(model, images, **window)
    probabilities = activation(logits)
    if tta:
        axes = range(2, images.dim())
        for axis in axes:
            probabilities = probabilities + activation(infer_logits(model, images.flip(axis), **window)).flip(axis)
        probabilities = probabilities / (1 + len(axes))
    return logits, probabilities


def debug_lines(images, masks, logits, parts, loss) -> str:
    """The --debug report of the first training batch: shapes, value ranges, output shape, loss parts."""
    logits, values = logits.detach(), torch.unique(masks).tolist()
    return (f"debug: images {list(images.shape)} {str(images.dtype)[6:]} in [{images.min():.4g}, {images.max():.4g}]"
            f"\ndebug: masks {list(masks.shape)} {str(masks.dtype)[6:]} values {values[:10]}"
            f"\ndebug: model output {list(logits.shape)} in [{logits.min():.4g}, {logits.max():.4g}]"
            f"\ndebug: loss {float(loss.detach()):.6g} = "
            + " + ".join(f"{k} {float(v):.6g}" for k, v in parts.items()))
