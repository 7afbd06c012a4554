"""Tests for the segmentation models: attention_unet, unet3d, dformer3d (shapes, gates, grouping, parameters)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nenya.errors import NenyaError
from nenya.models import build_model, count_parameters
from nenya.models.attention_unet import AttentionGate
from nenya.models.dformer3d import GroupAttention, group_tokens, padded_size, ungroup_tokens

TINY_DFORMER = dict(widths=[8, 16, 32, 64], depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])


def parameter_counts() -> dict:
    """Parameter counts of the segmentation models at the sizes the docs quote (printed by the test below)."""
    return {
        "attention_unet, widths 32..512, 2 ch, 1 class": count_parameters(build_model("attention_unet", nchannels=2)),
        "attention_unet, widths 64..1024, 2 ch, 1 class": count_parameters(
            build_model("attention_unet", nchannels=2, widths=[64, 128, 256, 512, 1024])),
        "unet3d, widths 32..256, 1 ch, 3 classes": count_parameters(build_model("unet3d", num_classes=3)),
        "dformer3d, defaults, 1 ch, 3 classes": count_parameters(build_model("dformer3d", num_classes=3)),
    }


# ---- analytic parameter counts (written from the architecture, not from the modules) ----

def unet_formula(nchannels, num_classes, widths, dims, gates):
    """Parameters of the (attention) U-Net: conv blocks, transposed convs, gates and the 1x1 head."""
    k3, k2 = 3 ** dims, 2 ** dims
    block = lambda c_in, c_out: k3 * c_in * c_out + k3 * c_out * c_out + 4 * c_out  # 2 convs, 2 norms
    total = sum(block(c_in, c_out) for c_in, c_out in zip([nchannels] + widths, widths))
    for c, c_up in zip(widths[:-1], widths[1:]):
        total += k2 * c_up * c + c + block(2 * c, c)  # transposed conv (with bias) + decoder block
        if gates:
            inner = c // 2
            total += k2 * c * inner + (c_up * inner + inner) + (inner + 1)  # W_x (no bias), W_g, psi
    return total + widths[0] * num_classes + num_classes


def dformer_formula(nchannels, num_classes, widths, depths, patch=(2, 4, 4), aux=False):
    """Parameters of dformer3d: embedding, stages (position conv + blocks), merges, expands, fusions, heads."""
    block = lambda c: 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)
    stage = lambda c, n: 27 * c + c + n * block(c)
    c0 = widths[0]
    total = math.prod(patch) * nchannels * c0 + c0 + 2 * c0  # conv embedding + its LayerNorm
    total += sum(stage(c, n) for c, n in zip(widths, depths))
    total += sum(16 * c + 8 * c * c_next for c, c_next in zip(widths[:-1], widths[1:]))  # merges
    for s in range(len(widths) - 2, -1, -1):
        c, c_next = widths[s], widths[s + 1]
        total += c_next * 8 * c + 2 * c  # expand + norm
        total += 2 * c * c + c + stage(c, depths[s])  # fuse + decoder stage
        if aux and s > 0:
            total += c * num_classes + num_classes
    total += c0 * math.prod(patch) * c0 + 2 * c0  # final expand + norm
    return total + c0 * num_classes + num_classes


DOCUMENTED = {  # the numbers in the model docstrings and docs/segmentation notes
    "attention_unet, widths 32..512, 2 ch, 1 class": 8_024_357,
    "attention_unet, widths 64..1024, 2 ch, 1 class": 32_082_501,
    "unet3d, widths 32..256, 1 ch, 3 classes": 5_601_187,
    "dformer3d, defaults, 1 ch, 3 classes": 44_647_011,
}


def test_parameter_counts_match_the_architecture_and_the_documented_numbers():
    counts = parameter_counts()
    for name, count in counts.items():
        print(f"{name}: {count:,}")
    assert counts == DOCUMENTED
    assert DOCUMENTED["attention_unet, widths 32..512, 2 ch, 1 class"] == unet_formula(
        2, 1, [32, 64, 128, 256, 512], 2, gates=True)
    assert DOCUMENTED["attention_unet, widths 64..1024, 2 ch, 1 class"] == unet_formula(
        2, 1, [64, 128, 256, 512, 1024], 2, gates=True)
    assert DOCUMENTED["unet3d, widths 32..256, 1 ch, 3 classes"] == unet_formula(1, 3, [32, 64, 128, 256], 3, False)
    assert DOCUMENTED["dformer3d, defaults, 1 ch, 3 classes"] == dformer_formula(1, 3, [96, 192, 384, 768],
                                                                                 [2, 2, 6, 2])


@pytest.mark.parametrize("dims, nchannels, num_classes", [(2, 1, 1), (2, 3, 4), (3, 2, 3)])
def test_small_model_parameter_counts_match_the_formula(dims, nchannels, num_classes):
    model = build_model("attention_unet", spatial_dims=dims, nchannels=nchannels, num_classes=num_classes,
                        widths=[4, 8, 16])
    assert count_parameters(model) == unet_formula(nchannels, num_classes, [4, 8, 16], dims, gates=True)
    model = build_model("dformer3d", nchannels=nchannels, num_classes=num_classes, deep_supervision=True,
                        **TINY_DFORMER)
    assert count_parameters(model) == dformer_formula(nchannels, num_classes, [8, 16, 32, 64], [2, 2, 2, 2],
                                                      aux=True)


# ---- attention_unet and unet3d ----

@pytest.mark.parametrize("dims, nchannels, num_classes, size", [
    (2, 2, 1, (32, 32)), (2, 1, 3, (32, 32)), (2, 3, 2, (33, 30)), (2, 2, 1, (7, 5)),
    (3, 1, 3, (16, 16, 16)), (3, 2, 1, (9, 17, 12)),
])
def test_attention_unet_logits_have_the_input_size(dims, nchannels, num_classes, size):
    model = build_model("attention_unet", spatial_dims=dims, nchannels=nchannels, num_classes=num_classes,
                        widths=[4, 8, 16, 32])
    out = model(torch.randn(2, nchannels, *size))
    assert out.shape == (2, num_classes, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(16, 16, 16), (9, 17, 12)])
def test_unet3d_logits_have_the_input_size(size):
    model = build_model("unet3d", nchannels=2, num_classes=3, widths=[4, 8, 16])
    assert model(torch.randn(1, 2, *size)).shape == (1, 3, *size)


def test_an_odd_size_is_padded_with_zeros_and_cropped_back():
    torch.manual_seed(0)
    model = build_model("attention_unet", nchannels=2, num_classes=2, widths=[4, 8, 16]).eval()
    x = torch.randn(1, 2, 13, 10)
    padded = torch.zeros(1, 2, 16, 12)
    padded[:, :, :13, :10] = x  # zeros at the far end up to multiples of 2**2
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[:, :, :13, :10])


def gate_inputs(dims, channels=6, gate_channels=10, size=8, seed=0):
    """A gate and random (skip, g) with g at half the skip's resolution."""
    torch.manual_seed(seed)
    gate = AttentionGate(dims, channels, gate_channels)
    x = torch.randn(2, channels, *[size] * dims, requires_grad=True)
    g = torch.randn(2, gate_channels, *[size // 2] * dims, requires_grad=True)
    return gate, x, g


@pytest.mark.parametrize("dims", [2, 3])
def test_attention_gate_alpha_has_one_channel_at_skip_resolution_in_0_1(dims):
    gate, x, g = gate_inputs(dims)
    alpha = gate.attention(x, g)
    assert alpha.shape == (2, 1, *[8] * dims)
    assert (alpha > 0).all() and (alpha < 1).all()
    assert gate.w_x.out_channels == gate.w_g.out_channels == 3  # inner width C / 2


def direct_gate(gate, x, g):
    """alpha and x * alpha of Oktay et al.'s gate, written from the equation with einsum (2-D)."""
    b, c, h, w = x.shape
    blocks = x.reshape(b, c, h // 2, 2, w // 2, 2)  # 2x2 stride-2 patches of x
    wx = torch.einsum("bcyixj,ocij->boyx", blocks, gate.w_x.weight)
    wg = torch.einsum("bcyx,oc->boyx", g, gate.w_g.weight[:, :, 0, 0]) + gate.w_g.bias[None, :, None, None]
    q = torch.clamp(wx + wg, min=0)
    logit = torch.einsum("boyx,o->byx", q, gate.psi.weight[0, :, 0, 0]) + gate.psi.bias[0]
    coarse = 1 / (1 + torch.exp(-logit))  # [B, H/2, W/2]
    alpha = F.interpolate(coarse[:, None], size=(h, w), mode="bilinear", align_corners=False)
    return alpha, x * alpha


def test_attention_gate_output_is_the_skip_times_alpha_of_the_equation():
    gate, x, g = gate_inputs(2)
    alpha, expected = direct_gate(gate, x, g)
    torch.testing.assert_close(gate.attention(x, g), alpha)
    torch.testing.assert_close(gate(x, g), expected)


@pytest.mark.parametrize("dims", [2, 3])
def test_gradient_reaches_w_x_w_g_and_psi(dims):
    gate, x, g = gate_inputs(dims)
    (gate(x, g) * torch.randn_like(x)).sum().backward()
    for layer in (gate.w_x, gate.w_g, gate.psi):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert g.grad.abs().sum() > 0


def test_the_model_passes_its_skips_through_the_gates():
    torch.manual_seed(0)
    model = build_model("attention_unet", nchannels=1, widths=[4, 8, 16]).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        before = model(x)
        for gate in model.gates:
            gate.psi.bias.fill_(-1e4)  # alpha = 0: every skip is switched off
        after = model(x)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("name, kwargs, fragment", [
    ("attention_unet", {"spatial_dims": 4}, "spatial_dims=4"),
    ("attention_unet", {"widths": [8]}, "widths=[8]"),
    ("attention_unet", {"num_classes": 0}, "num_classes=0"),
    ("attention_unet", {"norm": "layer"}, "norm='layer'"),
    ("unet3d", {"spatial_dims": 2}, "spatial_dims=2"),
    ("dformer3d", {"num_heads": [3, 6, 12, 25]}, "num_heads 25"),
    ("dformer3d", {"depths": [2, 2, 6]}, "depths=[2, 2, 6]"),
    ("dformer3d", {"group_size": [4, 4]}, "group_size=[4, 4]"),
])
def test_bad_model_options_are_one_line_errors(name, kwargs, fragment):
    with pytest.raises(NenyaError, match=fragment.replace("[", r"\[")):
        build_model(name, **kwargs)


def test_an_unknown_model_option_is_not_ignored():
    with pytest.raises(TypeError, match="depth"):
        build_model("attention_unet", depth=3)


# ---- dformer3d ----

@pytest.mark.parametrize("nchannels, num_classes, size", [
    (1, 3, (16, 32, 32)), (2, 1, (16, 32, 32)), (1, 2, (32, 32, 64)), (1, 4, (17, 33, 20)), (3, 2, (5, 9, 7)),
])
def test_dformer3d_logits_have_the_input_size(nchannels, num_classes, size):
    model = build_model("dformer3d", nchannels=nchannels, num_classes=num_classes, **TINY_DFORMER)
    out = model(torch.randn(1, nchannels, *size))
    assert out.shape == (1, num_classes, *size)
    assert torch.isfinite(out).all()


def test_dformer3d_pads_to_sizes_whose_grids_divide_into_groups():
    assert [padded_size(n, 4, 4, 4) for n in (32, 33, 64, 96, 128)] == [32, 64, 64, 128, 128]
    assert [padded_size(n, 2, 4, 4) for n in (16, 17, 48, 64)] == [16, 32, 64, 64]
    for size in range(1, 200):  # every stage grid divides into its (clamped) group
        padded = padded_size(size, 4, 4, 4)
        assert padded >= size and padded % 32 == 0
        assert all((padded // 4 // 2 ** s) % min(4, padded // 4 // 2 ** s) == 0 for s in range(4))


def test_dformer3d_deep_supervision_returns_lower_resolution_logits_in_training_only():
    model = build_model("dformer3d", num_classes=3, deep_supervision=True, **TINY_DFORMER)
    logits, aux = model(torch.randn(2, 1, 16, 32, 32))
    assert logits.shape == (2, 3, 16, 32, 32)
    assert [a.shape for a in aux] == [(2, 3, 4, 4, 4), (2, 3, 2, 2, 2)]  # 1/(patch * 2), 1/(patch * 4)
    model.eval()
    assert model(torch.randn(2, 1, 16, 32, 32)).shape == (2, 3, 16, 32, 32)


def direct_groups(grid, groups, dilated):
    """Group id -> set of token positions, from the definitions: local d // g_d, dilated d % (D / g_d)."""
    counts = [n // g for n, g in zip(grid, groups)]
    members = {}
    for pos in itertools.product(*[range(n) for n in grid]):
        key = tuple(p % c if dilated else p // g for p, c, g in zip(pos, counts, groups))
        members.setdefault(key, set()).add(pos)
    return members


@pytest.mark.parametrize("dilated", [False, True])
@pytest.mark.parametrize("grid, groups", [((4, 8, 6), (2, 4, 3)), ((8, 4, 4), (4, 2, 4)), ((2, 2, 2), (1, 2, 2))])
def test_group_tokens_puts_the_tokens_of_each_group_together(grid, groups, dilated):
    positions = torch.stack(torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij"), dim=-1)[None]
    grouped = group_tokens(positions, groups, dilated)  # [G, T, 3]
    found = {frozenset(map(tuple, g.tolist())) for g in grouped}
    assert found == {frozenset(s) for s in direct_groups(grid, groups, dilated).values()}
    assert grouped.shape == (math.prod(grid) // math.prod(groups), math.prod(groups), 3)
    torch.testing.assert_close(ungroup_tokens(grouped, grid, groups, dilated), positions)


@pytest.mark.parametrize("dilated", [False, True])
def test_group_attention_equals_a_naive_loop_over_groups(dilated):
    torch.manual_seed(0)
    dim, heads, grid, groups = 8, 2, (4, 4, 6), (2, 2, 3)
    attention = GroupAttention(dim, heads, dilated)
    x = torch.randn(2, *grid, dim)
    expected = torch.zeros(2, *grid, dim)
    for b in range(2):
        for members in direct_groups(grid, groups, dilated).values():
            index = sorted(members)
            tokens = torch.stack([x[(b,) + p] for p in index])  # [T, C]
            q, k, v = attention.qkv(tokens).split(dim, dim=1)
            out = []
            for h in range(heads):
                part = slice(h * dim // heads, (h + 1) * dim // heads)
                weights = torch.softmax(q[:, part] @ k[:, part].T / math.sqrt(dim // heads), dim=1)
                out.append(weights @ v[:, part])
            out = attention.proj(torch.cat(out, dim=1))
            for p, row in zip(index, out):
                expected[(b,) + p] = row
    torch.testing.assert_close(attention(x, groups), expected, atol=1e-5, rtol=1e-5)


def test_dformer3d_blocks_alternate_local_and_dilated_groups():
    model = build_model("dformer3d", **TINY_DFORMER)
    for stage in list(model.encoder) + list(model.decoder):
        assert [block.attn.dilated for block in stage.blocks] == [i % 2 == 1 for i in range(len(stage.blocks))]


def test_stage_position_encoding_is_x_plus_a_depthwise_conv():
    from nenya.models.dformer3d import Stage

    torch.manual_seed(0)
    stage = Stage(dim=4, depth=0, num_heads=1, group_size=(2, 2, 2), mlp_ratio=4.0)  # no blocks: the encoding alone
    x = torch.randn(2, 3, 4, 5, 4)  # [B, D, H, W, C]
    channels_first = x.permute(0, 4, 1, 2, 3)
    expected = channels_first + F.conv3d(channels_first, stage.pos.weight, stage.pos.bias, padding=1, groups=4)
    torch.testing.assert_close(stage(x), expected.permute(0, 2, 3, 4, 1))


def test_patch_merging_concatenates_each_2x2x2_neighbourhood():
    from nenya.models.dformer3d import PatchMerging

    merge = PatchMerging(3, 5)
    merge.norm, merge.reduce = torch.nn.Identity(), torch.nn.Identity()  # look at the rearrangement alone
    x = torch.randn(1, 4, 2, 6, 3)
    out = merge(x)  # [1, 2, 1, 3, 24]
    for d, h, w in itertools.product(range(2), range(1), range(3)):
        neighbours = [x[0, 2 * d + i, 2 * h + j, 2 * w + k] for i, j, k in itertools.product(range(2), repeat=3)]
        torch.testing.assert_close(out[0, d, h, w], torch.cat(neighbours))


def test_patch_expanding_puts_each_part_of_a_token_at_its_voxel():
    from nenya.models.dformer3d import PatchExpanding

    expand = PatchExpanding(4, 2, factor=(1, 2, 3))
    expand.norm = torch.nn.Identity()
    x = torch.randn(1, 2, 2, 2, 4)
    out, parts = expand(x), expand.expand(x)  # [1, 2, 4, 6, 2], [1, 2, 2, 2, 12]
    for d, h, w, i, j, k in itertools.product(range(2), range(2), range(2), range(1), range(2), range(3)):
        part = (i * 2 + j) * 3 + k
        torch.testing.assert_close(out[0, d + i, 2 * h + j, 3 * w + k], parts[0, d, h, w, 2 * part:2 * part + 2])
