"""Tests for the spectral masked autoencoder: masking, patch order, forward pass, sizes and errors."""

import pytest
import torch

from nenya.errors import NenyaError
from nenya.models import build_model, mae_spectral
from nenya.models.mae_spectral import (MAE_SIZES, MAESpectral, mae_parameter_count,
                                       random_masking)

# 10 bands x 40 x 40 px in 5 x 10 x 10 patches: a 2 x 4 x 4 grid of 32 tokens of 500 values.
SMALL = dict(img_size=40, bands=10, patch_size=10, band_patch=5, embed_dim=64, depth=2, num_heads=4,
             decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=4, mask_ratio=0.75)


def small_model(**overrides) -> MAESpectral:
    """A small seeded MAE; `overrides` replace entries of SMALL."""
    torch.manual_seed(0)
    return MAESpectral(**{**SMALL, **overrides})


def patch_slice(imgs, token, band_patch=5, patch=10, rows=4, cols=4):
    """The cube values of token number `token`, cut out by hand (spectral, then row, then column)."""
    t, rest = divmod(token, rows * cols)
    r, c = divmod(rest, cols)
    return imgs[:, t * band_patch:(t + 1) * band_patch, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]


@pytest.mark.parametrize("length, ratio, keep", [(40, 0.0, 40), (40, 0.25, 30), (40, 0.5, 20),
                                                 (40, 0.9, 4), (40, 0.99, 1), (2400, 0.8, 480),
                                                 (2400, 0.75, 600), (7, 0.5, 3)])
def test_random_masking_keeps_exact_count_and_restores_order(length, ratio, keep):
    torch.manual_seed(0)
    x = torch.randn(4, length, 8)
    visible, mask, ids_restore = random_masking(x, ratio)
    assert visible.shape == (4, keep, 8)
    assert mask.shape == ids_restore.shape == (4, length)
    assert torch.equal((mask == 0).sum(dim=1), torch.full((4,), keep))
    ids_shuffle = ids_restore.argsort(dim=1)
    shuffled = x.gather(1, ids_shuffle[:, :, None].expand(-1, -1, 8))
    assert torch.equal(shuffled[:, :keep], visible)
    assert torch.equal(shuffled.gather(1, ids_restore[:, :, None].expand(-1, -1, 8)), x)
    # The visible tokens are exactly the unmasked ones.
    kept = torch.zeros(4, length, dtype=torch.bool).scatter(1, ids_shuffle[:, :keep], True)
    assert torch.equal(kept, mask == 0)


def test_random_masking_differs_between_samples():
    torch.manual_seed(0)
    _, mask, _ = random_masking(torch.randn(3, 64, 4), 0.5)
    assert not torch.equal(mask[0], mask[1]) and not torch.equal(mask[1], mask[2])


def test_patchify_round_trip_and_token_order_match_the_patch_embedding():
    model = small_model()
    imgs = torch.randn(2, 10, 40, 40)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 32, 500)
    assert torch.equal(model.unpatchify(patches), imgs)
    assert torch.equal(model.reconstruct(patches), imgs)
    for token in (0, 5, 17, 31):
        assert torch.equal(patches[:, token], patch_slice(imgs, token).flatten(1))
    with torch.no_grad():
        conv_tokens = model.embed(imgs) - model.pos_embed
        weight = model.patch_embed.weight.view(64, -1)
        torch.testing.assert_close(conv_tokens, patches @ weight.T + model.patch_embed.bias,
                                   rtol=1e-4, atol=1e-4)


def test_forward_encode_and_reconstruct_shapes():
    model = small_model()
    imgs = torch.randn(3, 10, 40, 40)
    with torch.no_grad():
        pred, mask, ids_restore = model(imgs)
        features = model.encode(imgs)
        _, half_mask, _ = model(imgs, mask_ratio=0.5)
    assert pred.shape == (3, 32, 500)
    assert mask.shape == ids_restore.shape == (3, 32)
    assert torch.equal(mask.sum(dim=1), torch.full((3,), 24.0))
    assert torch.equal(half_mask.sum(dim=1), torch.full((3,), 16.0))
    assert features.shape == (3, 64) and model.dim_out == 64
    assert model.reconstruct(pred).shape == (3, 10, 40, 40)


def test_rectangular_images():
    model = small_model(img_size=(20, 40))
    with torch.no_grad():
        pred, mask, _ = model(torch.randn(2, 10, 20, 40))
    assert model.grid == (2, 2, 4) and pred.shape == (2, 16, 500)


def test_prediction_ignores_masked_patches_but_not_visible_ones():
    model = small_model().eval()
    imgs = torch.randn(2, 10, 40, 40)
    torch.manual_seed(1)
    with torch.no_grad():
        pred, mask, _ = model(imgs)
    masked_token = int(mask[0].nonzero()[0])
    visible_token = int((mask[0] == 0).nonzero()[0])

    def pred_after_changing(token):
        changed = imgs.clone()
        patch_slice(changed, token)[0] += 5.0
        torch.manual_seed(1)
        with torch.no_grad():
            new_pred, new_mask, _ = model(changed)
        assert torch.equal(new_mask, mask)
        return new_pred

    assert torch.equal(pred_after_changing(masked_token), pred)
    assert not torch.allclose(pred_after_changing(visible_token), pred)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(norm_pix_loss, monkeypatch):
    calls, real_checkpoint = [], mae_spectral.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs["use_reentrant"])
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(mae_spectral, "checkpoint", counting_checkpoint)
    imgs = torch.randn(2, 10, 40, 40)
    results = []
    for grad_checkpointing in (False, True):
        model = small_model(grad_checkpointing=grad_checkpointing, norm_pix_loss=norm_pix_loss).train()
        torch.manual_seed(2)
        pred, mask, _ = model(imgs)
        loss = model.loss(imgs, pred, mask)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert calls == [False] * 4  # two encoder and two decoder blocks, checkpointed once each
    model.eval()(imgs)
    assert len(calls) == 4  # never in eval mode
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], msg=name)


def test_loss_is_zero_for_a_perfect_prediction_of_the_masked_patches():
    imgs = torch.randn(2, 10, 40, 40)
    model = small_model()
    mask = torch.ones(2, 32)
    assert model.loss(imgs, model.patchify(imgs), mask) == 0
    normed = small_model(norm_pix_loss=True)
    target = normed.patchify(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(normed.loss(imgs, target, mask), torch.tensor(0.0))


def test_position_embeddings_are_fixed_and_no_weight_decay_names_real_parameters():
    model = small_model()
    names = dict(model.named_parameters())
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    assert model.pos_embed.shape == (1, 32, 64) and model.decoder_pos_embed.shape == (1, 32, 32)
    assert model.no_weight_decay() <= names.keys()
    assert "mask_token" in model.no_weight_decay()


@pytest.mark.parametrize("overrides, option", [
    (dict(patch_size=7), "patch_size 7"),
    (dict(img_size=(40, 45)), "img_size 40x45"),
    (dict(band_patch=3), "band_patch 3"),
    (dict(bands=12), "bands 12"),
    (dict(embed_dim=66), "embed_dim 66"),
    (dict(num_heads=3), "embed_dim 64 is not divisible by num_heads 3"),
    (dict(decoder_num_heads=5), "decoder_embed_dim 32 is not divisible by decoder_num_heads 5"),
    (dict(mask_ratio=1.0), "mask_ratio"),
])
def test_bad_sizes_raise_nenya_error_naming_the_option(overrides, option):
    with pytest.raises(NenyaError, match=option):
        MAESpectral(**{**SMALL, **overrides})


def test_builders_take_overrides_and_reject_unknown_options():
    geometry = dict(img_size=40, patch_size=10, band_patch=5)
    with torch.device("meta"):
        model = build_model("mae_tiny", nchannels=10, mask_ratio=0.5, **geometry)
        assert model.bands == 10 and model.mask_ratio == 0.5
        with pytest.raises(NenyaError, match="feat_dim"):
            build_model("mae_tiny", feat_dim=16, **geometry)
        with pytest.raises(NenyaError, match="nchannels 10 and bands 15 disagree"):
            build_model("mae_tiny", nchannels=10, bands=15, **geometry)


# Encoder (width, depth, heads): the ViT sizes of Dosovitskiy et al. (2021; tiny and small from DeiT, Touvron
# et al. 2021). Decoder (width, depth, heads): the MAE paper's (He et al. 2022: 512 wide, 8 blocks, 16 heads)
# for base, large and huge; nenya's own choices, as docs/mae.rst documents them, for tiny, small and medium.
PUBLISHED = {
    "mae_tiny": ((192, 12, 3), (128, 8, 4)),
    "mae_small": ((384, 12, 6), (256, 8, 8)),
    "mae_base": ((768, 12, 12), (512, 8, 16)),
    "mae_medium": ((512, 16, 16), (256, 8, 8)),
    "mae_large": ((1024, 24, 16), (512, 8, 16)),
    "mae_huge": ((1280, 32, 16), (512, 8, 16)),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_registered_sizes_are_the_published_ones(name):
    (width, depth, heads), (decoder_width, decoder_depth, decoder_heads) = PUBLISHED[name]
    with torch.device("meta"):
        model = build_model(name)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (width, depth, heads)
    assert all(block.attn.num_heads == heads for block in model.blocks)
    assert model.decoder_embed.out_features == decoder_width and len(model.decoder_blocks) == decoder_depth
    assert all(block.attn.num_heads == decoder_heads for block in model.decoder_blocks)


def test_every_registered_size_is_in_the_published_table():
    assert set(MAE_SIZES) == set(PUBLISHED)


def test_the_documented_size_table_matches_the_published_one():
    """docs/mae.rst's table (encoder layers / heads / width, decoder width / heads, parameters at 500 px,
    30 bands, patch [25, 5]) states the same sizes, and parameter counts the models really have."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "mae.rst").read_text()
    rows = re.findall(r"\* - ``(mae_\w+)``.*\n\s+- (\d+) / (\d+) / (\d+)\n\s+- (\d+) / (\d+)\n\s+- ([\d,]+)", text)
    assert sorted(row[0] for row in rows) == sorted(PUBLISHED)
    for name, layers, heads, width, decoder_width, decoder_heads, parameters in rows:
        (w, d, h), (dw, _, dh) = PUBLISHED[name]
        assert (int(width), int(layers), int(heads), int(decoder_width), int(decoder_heads)) == (w, d, h, dw, dh)
        assert int(parameters.replace(",", "")) == mae_parameter_count(name, img_size=500, bands=30, patch_size=25,
                                                                      band_patch=5), name
    assert "decoder 8 layers" in text


def test_parameter_count_without_allocation_matches_the_real_model():
    geometry = dict(img_size=40, bands=10, patch_size=10, band_patch=5)
    real = build_model("mae_tiny", **geometry)
    assert mae_parameter_count("mae_tiny", **geometry) == sum(p.numel() for p in real.parameters())


def test_mae_medium_default_geometry_has_2400_tokens():
    with torch.device("meta"):
        model = build_model("mae_medium")
        tokens = model.embed(torch.empty(1, 30, 500, 500))
    assert model.num_patches == 2400 and model.grid == (6, 20, 20)
    assert tokens.shape == (1, 2400, 512)
    assert model.patch_dim == 5 * 25 * 25
