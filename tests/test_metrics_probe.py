"""What embeddings are worth: retrieval, the linear probe, and the online probe of contrastive runs."""

import numpy as np
import pytest
import torch

from nenya.metrics.probe import feature_metrics, linear_probe_accuracy, retrieval_top1
from nenya.train import main as train_main


def test_retrieval_top1_matches_a_direct_loop():
    generator = torch.Generator().manual_seed(0)
    originals = torch.randn(40, 8, generator=generator)
    queries = originals + 0.8 * torch.randn(40, 8, generator=generator)
    a, b = queries.numpy(), originals.numpy()
    cosine = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    expected = np.mean([np.argmax(cosine[i]) == i for i in range(40)])
    assert 0 < expected < 1 and retrieval_top1(queries, originals) == pytest.approx(expected)


def test_linear_probe_separates_clusters_and_not_random_labels():
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(200) % 4
    centres = 3 * torch.randn(4, 16, generator=generator)
    features = centres[labels] + torch.randn(200, 16, generator=generator)
    assert linear_probe_accuracy(features[:150], labels[:150], features[150:], labels[150:]) == 1.0
    noise = torch.randn(200, 16, generator=generator)
    assert linear_probe_accuracy(noise[:150], labels[:150], noise[150:], labels[150:]) < 0.5


def test_the_online_probe_accuracy_is_its_argmax_against_the_labels():
    probe = torch.nn.Linear(3, 2)
    with torch.no_grad():
        probe.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        probe.bias.zero_()
    queries = {"features": torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [3.0, 0, 0]]),
               "labels": torch.tensor([0, 1, 0, 0])}
    assert feature_metrics(queries, None, k=1, probe=probe)["probe_acc"] == 0.75


def test_every_contrastive_run_logs_the_online_probe_and_it_trains_on_detached_features(tiny_run):
    opts, folder = tiny_run
    metrics = train_main(opts, overrides={"epochs": 2}, verbose=False)
    for name in ("knn_acc", "probe_acc", "linear_probe_acc", "retrieval_top1"):
        assert 0 <= metrics["final"][name] <= 1, name
    state = torch.load(folder / "last.pth", weights_only=True)
    assert state["model"]["probe.weight"].shape == (3, 512)  # 3 label values in the tiny data

    from nenya.methods import get_method
    from nenya.params import get_options
    method = get_method(get_options(opts))
    torch.manual_seed(0)
    model = method.build_model()
    views, labels = torch.rand(6, 2, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, extras = method.loss(model, (views, labels))
    encoder_grads = torch.autograd.grad(loss + extras["aux_loss"], list(model.encoder.parameters()),
                                        retain_graph=True)
    without_probe = torch.autograd.grad(loss, list(model.encoder.parameters()))
    for a, b in zip(encoder_grads, without_probe):
        assert torch.equal(a, b)  # the probe's loss does not reach the encoder
    assert extras["probe_loss"] > 0
