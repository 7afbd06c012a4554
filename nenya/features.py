"""Features of a whole data set through a model, in eval mode, without augmentation."""

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm


@torch.no_grad()
def extract_features(encode, dataset, batch_size: int, device, progress: bool = False, num_workers: int = 0,
                     desc: str = "features"):
    """Run ``encode`` over ``dataset`` in order; return (features [N, D] float32 CPU, labels [N])."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features, labels = [], []
    for images, batch_labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
        features.append(encode(images.to(device, non_blocking=True)).float().cpu())
        labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels)
