"""Tests for the hierarchical ViT (nenya.models.hvit) and the linear classifier on any encoder (heads.py)."""

import math

import pytest
import torch
from torch import nn

from conftest import fails_with, write_images_h5, write_opts
from nenya.errors import NenyaError
from nenya.models import build_model
from nenya.models.heads import EncoderClassifier, LinearClassifier
from nenya.models.hvit import (DropPath, HViTBlock, PatchMerging, WindowAttention, relative_position_index,
                               shift_mask, window_partition, window_reverse)

TINY = dict(img_size=32, patch_size=4, window_size=4, embed_dim=24, depths=(2, 2, 2, 2))


def tiny(**overrides):
    """A tiny hvit (32 px, patch 4, width 24, window 4: token grids 8, 4, 2, 1)."""
    return build_model("hvit", **{"nchannels": 3, "feat_dim": 16, **TINY, **overrides})


def count(model):
    return sum(p.numel() for p in model.parameters())


# --- windows, shift mask, relative positions, against direct loops ---------------------------------------

@pytest.mark.parametrize("grid, window", [((8, 8), (4, 4)), ((4, 8), (2, 4)), ((6, 6), (3, 3))])
def test_window_partition_matches_a_loop_and_reverses(grid, window):
    x = torch.randn(2, *grid, 5)
    windows = window_partition(x, window)
    (height, width), (wh, ww) = grid, window
    expected = []
    for wr in range(height // wh):  # windows row-major, tokens row-major inside
        for wc in range(width // ww):
            expected.append(torch.stack([x[:, wr * wh + r, wc * ww + c] for r in range(wh) for c in range(ww)], 1))
    torch.testing.assert_close(windows, torch.stack(expected, 1), rtol=0, atol=0)
    torch.testing.assert_close(window_reverse(windows, window, height, width), x, rtol=0, atol=0)


@pytest.mark.parametrize("grid, window, shift", [((8, 8), (4, 4), (2, 2)), ((12, 8), (4, 4), (2, 2)),
                                                 ((4, 8), (4, 4), (0, 2)), ((9, 6), (3, 3), (1, 1))])
def test_shift_mask_allows_exactly_the_tokens_that_were_neighbours(grid, window, shift):
    (height, width), (wh, ww), (sh, sw) = grid, window, shift
    mask = shift_mask(grid, window, shift)
    # Direct: rolled position (i, j) holds original pixel ((i + sh) % H, (j + sw) % W); two tokens of one
    # window may attend iff their original positions lie within one window's extent (no wrap-around).
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    origin = torch.stack([(rows + sh) % height, (cols + sw) % width], -1)  # [H, W, 2]
    windows = window_partition(origin[None], window)[0]  # [nW, N, 2]
    for w, tokens in enumerate(windows):
        for a in range(len(tokens)):
            for b in range(len(tokens)):
                dr, dc = (tokens[a] - tokens[b]).abs().tolist()
                allowed = dr < wh and dc < ww
                assert (mask[w, a, b] == 0) == allowed, (w, a, b)
                assert mask[w, a, b] in (0, -math.inf)
    if sh and sw:
        assert (mask == -math.inf).any()  # the corner window is split in four


@pytest.mark.parametrize("window", [(4, 4), (2, 3), (7, 7)])
def test_relative_position_index_matches_a_direct_formula(window):
    wh, ww = window
    index = relative_position_index(window)
    tokens = [(r, c) for r in range(wh) for c in range(ww)]
    for a, (ra, ca) in enumerate(tokens):
        for b, (rb, cb) in enumerate(tokens):
            assert index[a, b] == (ra - rb + wh - 1) * (2 * ww - 1) + (ca - cb + ww - 1)
    assert index.min() == 0 and index.max() == (2 * wh - 1) * (2 * ww - 1) - 1


def test_window_attention_matches_naive_attention_per_window_and_head():
    torch.manual_seed(0)
    dim, heads, window = 12, 3, (2, 2)
    attn = WindowAttention(dim, heads, window)
    nn.init.normal_(attn.relative_position_bias_table)
    x = torch.randn(2, 4, 4, dim)  # [B, nW, N, C]
    mask = shift_mask((4, 4), window, (1, 1))
    out = attn(x, mask)
    hd = dim // heads
    q, k, v = attn.qkv(x).split(dim, dim=-1)
    table, index = attn.relative_position_bias_table, relative_position_index(window)
    expected = torch.zeros_like(out)
    for b in range(2):
        for w in range(4):
            parts = []
            for h in range(heads):
                s = slice(h * hd, (h + 1) * hd)
                logits = q[b, w, :, s] @ k[b, w, :, s].T / math.sqrt(hd)
                logits = logits + table[index, h] + mask[w]
                parts.append(torch.softmax(logits, -1) @ v[b, w, :, s])
            expected[b, w] = attn.proj(torch.cat(parts, -1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_shifted_block_mixes_only_neighbours_inside_shifted_windows():
    torch.manual_seed(0)
    height = width = 8
    wh = ww = 4
    block = HViTBlock(8, 2, (wh, ww), shifted=True).eval()
    assert block.shift((height, width)) == (2, 2)
    x = torch.randn(1, height, width, 8)
    jac = torch.autograd.functional.jacobian(lambda t: block(t).sum(-1), x)  # [1, H, W, 1, H, W, 8]
    depends = jac.abs().sum(dim=(0, 3, 6)) > 0  # [H, W, H, W]: output (r, c) depends on input (r2, c2)
    for r in range(height):
        for c in range(width):
            for r2 in range(height):
                for c2 in range(width):
                    same_window = ((r - 2) % height // wh == (r2 - 2) % height // wh
                                   and (c - 2) % width // ww == (c2 - 2) % width // ww)
                    expected = same_window and abs(r - r2) < wh and abs(c - c2) < ww
                    assert depends[r, c, r2, c2] == expected, (r, c, r2, c2)


def test_a_block_whose_window_is_the_grid_mixes_every_token_with_every_token():
    torch.manual_seed(0)
    block = HViTBlock(8, 2, (4, 4), shifted=True).eval()  # shifted, but one window covers the grid
    jac = torch.autograd.functional.jacobian(lambda t: block(t).sum(-1), torch.randn(1, 4, 4, 8))
    assert bool((jac.abs().sum(dim=(0, 3, 6)) > 0).all())


def test_shift_is_off_where_one_window_covers_the_axis():
    block = HViTBlock(8, 2, (4, 4), shifted=True)
    assert block.shift((4, 4)) == (0, 0) and block.shift((4, 8)) == (0, 2) and block.shift((8, 8)) == (2, 2)
    assert HViTBlock(8, 2, (4, 4), shifted=False).shift((8, 8)) == (0, 0)


# --- patch merging, stages, features ----------------------------------------------------------------

def test_patch_merging_concatenates_the_2x2_neighbourhood_in_order():
    merge = PatchMerging(3)
    x = torch.randn(2, 4, 6, 3)
    seen = {}
    merge.norm.register_forward_hook(lambda module, args, out: seen.setdefault("cat", args[0]))
    out = merge(x)
    assert out.shape == (2, 2, 3, 6)
    cat = seen["cat"]
    for i in range(2):
        for j in range(3):
            expected = torch.cat([x[:, 2 * i, 2 * j], x[:, 2 * i + 1, 2 * j], x[:, 2 * i, 2 * j + 1],
                                  x[:, 2 * i + 1, 2 * j + 1]], -1)
            torch.testing.assert_close(cat[:, i, j], expected, rtol=0, atol=0)


def test_stage_shapes_windows_and_output_shapes():
    model = tiny()
    encoder = model.encoder
    assert encoder.windows == [(4, 4), (4, 4), (2, 2), (1, 1)]  # 8x8 grid, then clipped to 4, 2, 1
    shapes = []
    for stage in encoder.stages:
        stage.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    x = torch.randn(2, 3, 32, 32)
    features, projections = model.encode(x), model(x)
    assert shapes[:4] == [(2, 4, 4, 48), (2, 2, 2, 96), (2, 1, 1, 192), (2, 1, 1, 192)]
    assert model.dim_in == 192 and features.shape == (2, 192) and projections.shape == (2, 16)
    torch.testing.assert_close(projections.norm(dim=1), torch.ones(2))
    # Features are LayerNorm-ed means of the last tokens: zero mean, unit variance per sample (affine 1, 0).
    torch.testing.assert_close(features.mean(1), torch.zeros(2), atol=1e-5, rtol=0)


def test_features_are_the_layer_norm_of_the_mean_of_the_last_tokens():
    model = tiny(img_size=64).eval()  # last grid 2x2
    seen = {}
    model.encoder.stages[-1].register_forward_hook(lambda module, args, out: seen.setdefault("tokens", out))
    x = torch.randn(2, 3, 64, 64)
    features = model.encode(x)
    tokens = seen["tokens"]
    assert tokens.shape == (2, 2, 2, 192)
    mean = tokens.reshape(2, 4, 192).mean(1)
    expected = (mean - mean.mean(1, keepdim=True)) / torch.sqrt(mean.var(1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)


def test_no_weight_decay_names_exactly_the_bias_tables():
    model = tiny()
    names = dict(model.named_parameters())
    skip = model.no_weight_decay()
    assert skip and skip <= set(names)
    assert skip == {n for n in names if "relative_position_bias_table" in n}
    assert len(skip) == 8


def test_global_attention_equals_window_attention_when_the_window_is_the_grid():
    torch.manual_seed(0)
    glob = tiny(attention="global")
    window = tiny(window_size=8)  # 8 >= every grid: one window per stage, clipped, no shift
    assert glob.encoder.windows == window.encoder.windows == [(8, 8), (4, 4), (2, 2), (1, 1)]
    window.load_state_dict(glob.state_dict())
    glob.eval(), window.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(glob.encode(x), window.encode(x), rtol=0, atol=0)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    drop = DropPath(0.5)
    x = torch.randn(400, 3, 4)
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(0)
    out = drop.train()(x)
    kept = (out != 0).flatten(1).all(1)
    dropped = (out == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(out[kept], x[kept] * 2)


def test_drop_path_rates_grow_linearly_over_the_blocks():
    model = tiny(drop_path_rate=0.3)
    rates = [block.drop_path.p for stage in model.encoder.stages for block in stage.blocks]
    assert rates == pytest.approx([0.3 * i / 7 for i in range(8)])
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.encode(x), model.encode(x), rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny(drop_path_rate=0.3)
    ckpt = tiny(drop_path_rate=0.3, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    weights = torch.randn(4, 192)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same drop-path draws
        model.train()
        (model.encode(x) * weights).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0]["encoder.patch_embed.proj.weight"].abs().max() > 1e-2  # a loss with real gradients
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


# --- spectral stream ---------------------------------------------------------------------------------

def test_spectral_fusion_runs_and_receives_gradient():
    torch.manual_seed(0)
    model = tiny(nchannels=5, spectral_channels=2)
    encoder = model.encoder
    calls = []
    encoder.fusion.register_forward_hook(lambda module, args, out: calls.append(args[1].shape))
    x = torch.randn(2, 5, 32, 32)
    model(x).sum().backward()
    assert calls == [torch.Size([2, 8, 8, 24])]
    for name in ("spectral_embed.proj.weight", "fusion.q.weight", "fusion.k.weight", "fusion.v.weight",
                 "fusion.proj.weight", "fusion.mlp.0.weight"):
        grad = dict(encoder.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert encoder.spectral_embed.proj.in_channels == 2 and encoder.patch_embed.proj.in_channels == 3
    # The output depends on the spectral channels (the last two).
    y = x.clone()
    y[:, 3:] = torch.randn(2, 2, 32, 32)
    model.eval()
    assert not torch.allclose(model.encode(x), model.encode(y))


def test_without_spectral_channels_there_is_no_fusion():
    model = tiny()
    assert not hasattr(model.encoder, "fusion") and not hasattr(model.encoder, "spectral_embed")
    assert not any("fusion" in name or "spectral" in name for name, _ in model.named_parameters())


def test_bad_spectral_channels_and_wrong_input_channels_are_errors():
    with pytest.raises(NenyaError, match="spectral_channels 3 must be in"):
        tiny(nchannels=3, spectral_channels=3)
    with pytest.raises(NenyaError, match=r"expects images \[B, 5, H, W\] \(3 image \+ 2 spectral"):
        tiny(nchannels=5, spectral_channels=2)(torch.randn(1, 3, 32, 32))


# --- sizes -------------------------------------------------------------------------------------------

def test_224_with_patch_16_and_window_7_is_explained():
    with pytest.raises(NenyaError) as err:
        build_model("hvit", img_size=224, patch_size=16, window_size=7)
    message = str(err.value)
    for text in ("img_size 224x224", "total stride 128", "14 -> 7 -> 3.5", "use patch_size 4",
                 "56 -> 28 -> 14 -> 7", "img_size 128", "256 (window_size"):
        assert text in message, (text, message)


def test_a_grid_that_is_not_a_multiple_of_the_window_is_explained():
    with pytest.raises(NenyaError) as err:
        build_model("hvit", img_size=256, patch_size=16, window_size=7)
    message = str(err.value)
    assert "stage 1 a 16x16 token grid" in message and "window_size 2, 4, 8, 16" in message


def test_other_input_sizes_run_when_the_windows_stay_and_fail_clearly_otherwise():
    model = tiny().eval()
    assert model.encode(torch.randn(1, 3, 64, 32)).shape == (1, 192)  # same clipped windows: runs
    with pytest.raises(NenyaError, match="img_size 36x36 is not divisible by the total stride 32"):
        model.encode(torch.randn(1, 3, 36, 36))
    glob = tiny(attention="global").eval()
    with pytest.raises(NenyaError, match="built for img_size 32x32"):
        glob.encode(torch.randn(1, 3, 64, 64))


def test_unknown_options_and_attention_are_errors():
    with pytest.raises(NenyaError, match="unknown option.*window"):
        build_model("hvit", windw_size=4)
    with pytest.raises(NenyaError, match="unknown attention 'local'"):
        tiny(attention="local")


def test_parameter_counts_match_swin_t_and_the_full_size_hvit():
    with torch.device("meta"):
        swin_t = build_model("hvit", img_size=224, patch_size=4, window_size=7, drop_path_rate=0.2)
        full = build_model("hvit", img_size=256, patch_size=16, window_size=8)
    # Swin-T (patch 4, window 7, 224 px) with its 1000-class head has 28,288,354 parameters (Liu et al. 2021).
    assert count(swin_t.encoder) + 768 * 1000 + 1000 == 28_288_354
    assert 27.5e6 < count(full.encoder) + 768 * 7 + 7 < 27.7e6  # published HViT: ~27.6 M


# --- any encoder + linear classifier -----------------------------------------------------------------

@pytest.mark.parametrize("name, options, size", [("resnet18", {"nchannels": 1}, 8), ("hvit", TINY, 32)])
def test_encoder_classifier_fine_tunes_any_encoder(name, options, size):
    torch.manual_seed(0)
    ssl = build_model(name, **options)
    model = EncoderClassifier(build_model(name, **options), num_classes=7)
    assert isinstance(model.backbone.head, nn.Identity) and isinstance(model.classifier, LinearClassifier)
    # An SSL run's weights, less the projection head, load into the backbone with nothing missing.
    weights = {k: v for k, v in ssl.state_dict().items() if not k.startswith("head.")}
    result = model.backbone.load_state_dict(weights, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = torch.randn(3, options.get("nchannels", 3), size, size)
    model.eval(), ssl.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.classifier(ssl.encode(x)))
    model.train()
    logits = model(x)
    assert logits.shape == (3, 7)
    logits.sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # DDP would stop on unused parameters
    assert count(model) == count(ssl) - count(ssl.head) + model.dim_in * 7 + 7
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}
    assert bool(model.no_weight_decay()) == (name == "hvit")


def test_encoder_classifier_logits_are_the_linear_map_of_the_encoder_features():
    torch.manual_seed(0)
    model = EncoderClassifier(build_model("hvit", **TINY), num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.backbone.encoder(x)
    torch.testing.assert_close(model(x), features @ model.classifier.weight.T + model.classifier.bias)


def test_encoder_classifier_refuses_a_model_without_encode():
    with pytest.raises(NenyaError, match="cannot be fine-tuned with a linear head"):
        EncoderClassifier(nn.Linear(3, 3), num_classes=2)


# --- geometry through the options and the CLI ----------------------------------------------------------

def hvit_opts(tmp_path, size=64, channels=3, **values):
    """An opts file for a SimCLR run of a small hvit (width 24, one block per stage) on random size x size images."""
    write_images_h5(tmp_path / "rgb.h5", n_train=8, n_valid=4, channels=channels, size=size)
    base = dict(method="simclr", model="hvit", nchannels=channels, images_file="rgb.h5", data_folder=str(tmp_path),
                model_root=str(tmp_path / "models"), batch_size_train=4, batch_size_valid=4, feat_dim=8,
                embed_dim=24, depths=[1, 1, 1, 1], patch_size=4, window_size=4, epochs=1, knn_k=2)
    return write_opts(tmp_path / "opts.json", **{**base, **values})


def test_224_with_patch_16_and_window_7_is_one_error_line_from_the_command_line(tmp_path, capsys):
    opts = hvit_opts(tmp_path)
    fails_with(capsys, [opts, "img_size=224", "patch_size=16", "window_size=7", "--dry-run"],
               "hvit: img_size 224x224", "total stride 128", "14 -> 7 -> 3.5", "use patch_size 4",
               "use img_size 128 (window_size 2, 4, 8) or 256")


def test_data_of_a_size_no_stage_fits_is_one_error_line(tmp_path, capsys):
    opts = hvit_opts(tmp_path, size=48)  # patch 4: total stride 32, 48 is not a multiple
    fails_with(capsys, [opts, "--dry-run"], "hvit: img_size 48x48 is not divisible by the total stride 32",
               "use img_size 32 (window_size 2, 4, 8) or 64")
    fails_with(capsys, [opts, "--dry-run", "patch_size=[4, 5]"], "option 'patch_size' must hold 1 number",
               "method simclr")


def test_img_size_defaults_to_the_data_and_the_options_reach_the_model(tmp_path):
    from nenya.methods import get_method
    from nenya.params import get_options
    opt = get_options(hvit_opts(tmp_path, size=64, channels=5), {"spectral_channels": 2, "attention": "global",
                                                                  "drop_path_rate": 0.2, "grad_checkpointing": True})
    method = get_method(opt)
    method.build_datasets()
    encoder = method.build_model().encoder
    assert opt.img_size == 64 and encoder.img_size == (64, 64) and encoder.patch_size == 4
    assert encoder.windows == [(16, 16), (8, 8), (4, 4), (2, 2)]  # global: each stage's whole grid
    assert encoder.spectral_channels == 2 and encoder.in_chans == 3 and encoder.grad_checkpointing
    assert encoder.dim_out == 24 * 8 and len(encoder.stages[0].blocks) == 1
    assert encoder.stages[-1].blocks[-1].drop_path.p == pytest.approx(0.2)


@pytest.mark.parametrize("size", [32, 64, 96, 160])
def test_global_attention_runs_at_every_multiple_of_the_total_stride(size):
    model = tiny(attention="global", img_size=size, depths=(1, 1, 1, 1)).eval()
    assert model.encode(torch.randn(1, 3, size, size)).shape == (1, 192)


@pytest.mark.parametrize("size, works", [(32, True), (64, True), (96, False), (128, True), (160, False)])
def test_window_attention_runs_where_every_grid_is_a_multiple_of_its_window(size, works):
    # patch 4, window 4: grids size/4, /8, /16, /32; each must be a multiple of min(4, grid)
    grids = [size // 4 // 2 ** s for s in range(4)]
    assert works == all(g % min(4, g) == 0 for g in grids)
    if works:
        assert tiny(img_size=size, depths=(1, 1, 1, 1)).encode(torch.randn(1, 3, size, size)).shape == (1, 192)
    else:
        with pytest.raises(NenyaError, match=f"img_size {size}x{size} gives stage"):
            tiny(img_size=size)


def test_every_parameter_of_the_spectral_stream_receives_gradient():
    torch.manual_seed(0)
    model = tiny(nchannels=6, spectral_channels=3)
    model(torch.randn(2, 6, 32, 32)).pow(2).sum().backward()
    stream = {n: p for n, p in model.encoder.named_parameters() if n.startswith(("fusion.", "spectral_embed."))}
    assert len(stream) == 22  # embedding conv + norm (4); fusion: three norms (6), q, k, v, proj (8), MLP (4)
    for name, parameter in stream.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_output():
    torch.manual_seed(0)
    plain, ckpt = tiny(), tiny(grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    outputs = []
    for model in (plain, ckpt):
        torch.manual_seed(1)
        outputs.append(model.train().encode(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_patch_size_defaults_by_method_and_takes_one_number_for_hvit():
    from nenya.params import Params
    assert Params({"method": "simclr", "model": "hvit"}).patch_size == [16]
    assert Params({"method": "mae", "model": "mae_tiny"}).patch_size == [25, 5]
    assert Params({"method": "simclr", "model": "hvit", "patch_size": 4}).patch_size == [4]
