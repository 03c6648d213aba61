"""DCD (Zhao et al. 2018): the cost volume, soft-argmax and warp on feature maps with a known
shift, and the model's variants at tiny widths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rev2net.dcd import (
    BRANCHES,
    BRANCH_SETS,
    build_dcd,
    CHUNK_SAMPLES,
    cost_volume,
    displacement_map,
    load_dcd_imagenet,
    soft_argmax,
    temporal_max_pool,
    warp,
    window_offsets,
)
from rev2net.googlenet import GoogLeNet, cross_modality_kernel
from rev2net.i3d import scale_channels

SHIFTS = [(2, -1), (-3, 0), (0, 0), (1, 3), (-2, -2)]  # (dx, dy), inside a window of d = 3


def _shifted_pair(dx: int, dy: int, channels: int = 32, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """f1 random; f2 = f1 moved by (dx, dy): f2[p + (dx, dy)] = f1[p] wherever p + (dx, dy) is inside."""
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(2, channels, size, size + 2, generator=g)
    return f1, torch.roll(f1, shifts=(dy, dx), dims=(2, 3))


def _interior(dx: int, dy: int, h: int, w: int) -> tuple[slice, slice]:
    """Positions p of f1 whose p + (dx, dy) lies inside the map."""
    return slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))


def _offset_index(dx: int, dy: int, d: int) -> int:
    return (dy + d) * (2 * d + 1) + (dx + d)


def test_window_offsets_are_row_major_dx_dy() -> None:
    offsets = window_offsets(2)
    assert offsets.shape == (25, 2)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            assert offsets[_offset_index(dx, dy, 2)].tolist() == [dx, dy]


def test_cost_volume_is_cosine_similarity_of_every_window_offset() -> None:
    torch.manual_seed(0)
    h, w, d = 4, 5, 2
    f1, f2 = torch.randn(2, 5, h, w), torch.randn(2, 5, h, w)
    cost = cost_volume(f1, f2, d)
    assert cost.shape == (2, 25, h, w), f"cost volume is {tuple(cost.shape)}"
    expected = torch.zeros_like(cost)
    for k, (dx, dy) in enumerate(window_offsets(d).int().tolist()):
        for i in range(h):
            for j in range(w):
                if 0 <= i + dy < h and 0 <= j + dx < w:
                    expected[:, k, i, j] = F.cosine_similarity(f1[:, :, i, j], f2[:, :, i + dy, j + dx], dim=1)
    torch.testing.assert_close(cost, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dx, dy", SHIFTS)
def test_cost_volume_peaks_at_the_shift_and_soft_argmax_returns_it(dx: int, dy: int) -> None:
    d = 3
    f1, f2 = _shifted_pair(dx, dy)
    cost = cost_volume(f1, f2, d)
    rows, cols = _interior(dx, dy, *f1.shape[2:])
    peak = cost.argmax(dim=1)[:, rows, cols]
    assert (peak == _offset_index(dx, dy, d)).all(), f"cost volume peaks off ({dx}, {dy}) at some interior pixels"
    assert torch.allclose(cost[:, _offset_index(dx, dy, d), rows, cols], torch.tensor(1.0), atol=1e-5)
    v = soft_argmax(cost, temperature=0.01)
    assert v.shape == (2, 2, *f1.shape[2:])
    expected = torch.tensor([dx, dy], dtype=v.dtype).view(1, 2, 1, 1)
    err = (v[:, :, rows, cols] - expected).abs().max().item()
    assert err < 1e-3, f"soft-argmax is off the true displacement ({dx}, {dy}) by {err}"


def test_soft_argmax_is_soft_at_a_high_temperature() -> None:
    """A sub-pixel answer: two equally good offsets give their mean, and a flat volume gives 0."""
    cost = torch.zeros(1, 9, 1, 1)
    cost[0, _offset_index(0, 0, 1)] = cost[0, _offset_index(1, 0, 1)] = 1.0
    torch.testing.assert_close(soft_argmax(cost, 1e-3).flatten(), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(soft_argmax(torch.zeros(1, 9, 1, 1), 0.1).flatten(), torch.zeros(2))


@pytest.mark.parametrize("dx, dy", SHIFTS)
def test_warping_the_second_map_by_the_shift_gives_back_the_first(dx: int, dy: int) -> None:
    f1, f2 = _shifted_pair(dx, dy, channels=4)
    v = torch.tensor([dx, dy], dtype=f1.dtype).view(1, 2, 1, 1).expand(2, 2, *f1.shape[2:])
    warped = warp(f2, v)
    rows, cols = _interior(dx, dy, *f1.shape[2:])
    torch.testing.assert_close(warped[:, :, rows, cols], f1[:, :, rows, cols], atol=1e-5, rtol=1e-5)


def test_warp_interpolates_bilinearly_and_is_zero_outside() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    half = warp(x, torch.tensor([0.5, 0.0]).view(1, 2, 1, 1).expand(1, 2, 3, 4).contiguous())
    torch.testing.assert_close(half[..., :3], (x[..., :3] + x[..., 1:]) / 2)
    out = warp(x, torch.tensor([10.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 3, 4).contiguous())
    assert (out == 0).all(), "samples from outside the map must be zero"


def test_correlation_gradients_match_finite_differences() -> None:
    torch.manual_seed(0)
    f1 = torch.randn(1, 2, 3, 4, dtype=torch.double, requires_grad=True)
    f2 = torch.randn(1, 2, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cost_volume(a, b, 1), (f1, f2))
    v = torch.randn(1, 2, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, disp: warp(f, 0.3 * disp), (f1, v))


def test_flop_counter_counts_the_cost_volume_on_the_meta_device() -> None:
    with torch.device("meta"):
        f1, f2 = torch.zeros(3, 8, 10, 12), torch.zeros(3, 8, 10, 12)
        with FlopCounterMode(display=False) as counter:
            cost = cost_volume(f1, f2, 2)
            soft_argmax(cost, 0.1)
    macs = counter.get_total_flops() // 2
    assert cost.shape == (3, 25, 10, 12)
    # C multiply-adds per offset and position, then 2 per offset and position for the expectation
    assert macs == 3 * 10 * 12 * 25 * (8 + 2), f"counted {macs} multiply-adds"


def _reference_cost_volume(f1: torch.Tensor, f2: torch.Tensor, d: int) -> torch.Tensor:
    """The straightforward cost volume, differentiated by autograd: cosine features, f2 zero-padded,
    one shifted product summed over channels per window offset (in window_offsets order)."""
    f1, f2 = F.normalize(f1, dim=1, eps=1e-3), F.normalize(f2, dim=1, eps=1e-3)
    h, w, k = f1.shape[2], f1.shape[3], 2 * d + 1
    padded = F.pad(f2, (d, d, d, d))
    return torch.stack([(f1 * padded[:, :, dy:dy + h, dx:dx + w]).sum(1) for dy in range(k) for dx in range(k)], 1)


def _reference_displacement(f1: torch.Tensor, f2: torch.Tensor, d: int, temperature: float) -> torch.Tensor:
    weights = torch.softmax(_reference_cost_volume(f1, f2, d) / temperature, dim=1)  # (N, K, H, W)
    return torch.einsum("nkhw,ko->nohw", weights, window_offsets(d).to(weights.dtype))


# shapes (N, C, H, W) and d: more samples than one chunk (and a partial last chunk), odd and
# non-square maps, a window wider than the map
SHAPES = [((2 * CHUNK_SAMPLES + 1, 6, 9, 13), 4), ((3, 5, 7, 4), 2), ((1, 3, 2, 3), 3), ((CHUNK_SAMPLES, 12, 16, 16), 1)]


def _pair_and_grad(shape, out_channels: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f1, f2 = (torch.randn(*shape, generator=g, dtype=dtype).requires_grad_() for _ in range(2))
    n, _, h, w = shape
    return f1, f2, torch.randn(n, out_channels, h, w, generator=g, dtype=dtype)


# (values, gradients relative to their largest): float32 rounds differently in another order of
# sums, amplified by 1 / temperature in the gradients; float64 shows that the computation is the same
TOLERANCE = {torch.float32: (1e-5, 1e-3), torch.float64: (1e-10, 1e-10)}


@pytest.mark.parametrize("shape, d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cost_volume_and_its_gradients_equal_the_reference(shape, d: int, dtype: torch.dtype) -> None:
    f1, f2, grad = _pair_and_grad(shape, (2 * d + 1) ** 2, dtype)
    cost = cost_volume(f1, f2, d)
    expected = _reference_cost_volume(f1, f2, d)
    tol, grad_tol = TOLERANCE[dtype]
    assert cost.dtype == dtype
    torch.testing.assert_close(cost, expected, atol=tol, rtol=tol)
    got = torch.autograd.grad(cost, (f1, f2), grad)
    want = torch.autograd.grad(expected, (f1, f2), grad)
    for name, a, b in zip(("f1", "f2"), got, want):
        torch.testing.assert_close(a, b, atol=grad_tol * b.abs().max().item(), rtol=grad_tol,
                                   msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("shape, d", SHAPES)
@pytest.mark.parametrize("temperature", [0.05, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_displacement_map_and_its_gradients_equal_the_reference(shape, d: int, temperature: float,
                                                               dtype: torch.dtype) -> None:
    """The model's fused pass against soft_argmax(cost_volume) written out plainly, and against the
    two public functions."""
    f1, f2, grad = _pair_and_grad(shape, 2, dtype)
    v = displacement_map(f1, f2, d, temperature)
    expected = _reference_displacement(f1, f2, d, temperature)
    tol, grad_tol = TOLERANCE[dtype]
    assert v.shape == (shape[0], 2, *shape[2:]) and v.dtype == dtype
    torch.testing.assert_close(v, expected, atol=tol, rtol=tol)
    torch.testing.assert_close(v, soft_argmax(cost_volume(f1, f2, d), temperature), atol=tol, rtol=tol)
    got = torch.autograd.grad(v, (f1, f2), grad)
    want = torch.autograd.grad(expected, (f1, f2), grad)
    for name, a, b in zip(("f1", "f2"), got, want):
        # gradients scale with 1 / temperature: compare relative to their size
        torch.testing.assert_close(a, b, atol=grad_tol * b.abs().max().item(), rtol=grad_tol,
                                   msg=lambda m: f"grad {name}: {m}")


def test_displacement_map_gradients_match_finite_differences() -> None:
    g = torch.Generator().manual_seed(0)
    f1, f2 = (torch.randn(CHUNK_SAMPLES + 1, 2, 3, 4, dtype=torch.double, generator=g).requires_grad_()
              for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b: displacement_map(a, b, 1, 0.5), (f1, f2))


def test_flop_counter_counts_the_fused_displacement_map_once() -> None:
    """The same multiply-adds as cost_volume + soft_argmax, on the meta device and on real tensors
    (the products inside the op are not counted a second time)."""
    expected = 3 * 10 * 12 * 25 * (8 + 2)
    for device in ("meta", "cpu"):
        f1, f2 = torch.zeros(3, 8, 10, 12, device=device), torch.zeros(3, 8, 10, 12, device=device)
        with FlopCounterMode(display=False) as counter:
            v = displacement_map(f1, f2, 2, 0.1)
        assert v.shape == (3, 2, 10, 12)
        assert counter.get_total_flops() // 2 == expected, f"{device}: counted {counter.get_total_flops() // 2}"


@pytest.mark.parametrize("bad", [
    lambda: cost_volume(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4), 1),
    lambda: cost_volume(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), -1),
    lambda: soft_argmax(torch.zeros(1, 8, 3, 3), 0.1),
    lambda: soft_argmax(torch.zeros(1, 9, 3, 3), 0.0),
    lambda: warp(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4)),
    lambda: displacement_map(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4), 1, 0.1),
    lambda: displacement_map(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), 1, 0.0),
])
def test_ops_refuse_bad_arguments(bad) -> None:
    with pytest.raises(ValueError):
        bad()


# --------------------------------------------------------------------------------------- model

TINY = dict(width=0.125, max_displacement=2)  # 8 stem channels; clips of 8 x 32 x 32


def _clip(batch: int = 2, frames: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_temporal_max_pool_pairs_steps_and_keeps_an_odd_last_one() -> None:
    x = torch.arange(2 * 5, dtype=torch.float32).view(10, 1, 1, 1)  # 2 clips x 5 steps
    pooled, steps = temporal_max_pool(x, 5)
    assert steps == 3 and pooled.flatten().tolist() == [1, 3, 4, 6, 8, 9]


@pytest.mark.parametrize("variant", sorted(BRANCH_SETS))
def test_every_variant_gives_features_and_logits_in_train_and_eval(variant: str) -> None:
    torch.manual_seed(0)
    model = build_dcd(5, branches=BRANCH_SETS[variant], **TINY)
    per_branch = model.branches[BRANCH_SETS[variant][0]].num_features
    assert model.num_features == len(BRANCH_SETS[variant]) * per_branch
    x = _clip()
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features), f"{variant}: features {tuple(feats.shape)}"
    assert model.forward_head(feats).shape == (2, 5) and model(x).shape == (2, 5)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 5) and torch.isfinite(logits).all()
        torch.testing.assert_close(model(x), logits, msg=f"{variant}: eval mode must be deterministic")
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3


def test_head_parameters_are_one_linear_classifier_per_branch() -> None:
    width, classes = 0.25, 7
    with torch.device("meta"):
        model = build_dcd(classes, width=width)
    # inception5b = 384 + 384 + 128 + 128 channels at width 1 (Szegedy et al. 2015, Table 1), each scaled
    features = sum(scale_channels(c, width) for c in (384, 384, 128, 128))
    head = sum(p.numel() for name, p in model.named_parameters() if name.endswith((".fc.weight", ".fc.bias")))
    assert head == 3 * (features * classes + classes), f"head has {head} parameters"
    assert model.num_features == 3 * features


def test_the_head_averages_the_branch_classifiers() -> None:
    model = build_dcd(4, **TINY).eval()
    feats = torch.randn(3, model.num_features)
    chunks = feats.split(model.num_features // 3, dim=1)
    expected = sum(trunk.fc(chunk) for trunk, chunk in zip(model.branches.values(), chunks)) / 3
    torch.testing.assert_close(model.forward_head(feats), expected)


def _translating_clip(dx: int, dy: int, frames: int = 4, size: int = 40) -> torch.Tensor:
    """(1, 3, frames, size, size): frame t is one random image moved by t * (dx, dy) px (rolled)."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return torch.stack([torch.roll(image, (t * dy, t * dx), dims=(2, 3)) for t in range(frames)], dim=2)


def _inner(x: torch.Tensor, dx: int, dy: int, frames: int = 4) -> torch.Tensor:
    """Positions away from the borders: conv1's reach, the rolled seam and the window stay out."""
    margin = 3 + frames * max(abs(dx), abs(dy)) + 3
    return x[..., margin:-margin, margin:-margin]


@pytest.mark.parametrize("dx, dy", [(2, -1), (0, 1)])
def test_displacement_of_a_translating_clip_is_its_motion(dx: int, dy: int) -> None:
    """conv1 is translation-equivariant, so away from the borders the maps from frame t to t+1 read
    (dx, dy) (displacement stride 1: the frames' pixels)."""
    model = build_dcd(3, frames=4, width=0.5, max_displacement=3, temperature=0.005).eval()
    with torch.no_grad():
        v = model.displacement(_translating_clip(dx, dy))
    assert v.shape == (1, 2, 3, 40, 40)
    err = (_inner(v, dx, dy) - torch.tensor([dx, dy], dtype=v.dtype).view(1, 2, 1, 1, 1)).abs().max().item()
    assert err < 0.05, f"displacement off ({dx}, {dy}) by {err}"


def test_branch_inputs_of_a_translating_clip() -> None:
    """Pure motion: the motion branch sees (dx, dy) / d, the warped differences vanish, the plain
    differences do not."""
    dx, dy, d = 2, -1, 3
    model = build_dcd(3, frames=4, branches=BRANCHES, width=0.5, max_displacement=d, temperature=0.005).eval()
    seen: dict[str, torch.Tensor] = {}
    for name in ("motion", "change", "diff"):
        first = model.branches[name].conv1 if name == "motion" else model.branches[name].maxpool1
        first.register_forward_pre_hook(lambda module, args, name=name: seen.__setitem__(name, args[0]))
    with torch.no_grad():
        model(_translating_clip(dx, dy))
    assert seen["motion"].shape == (3, 2, 40, 40) and seen["change"].shape == seen["diff"].shape == (3, 32, 40, 40)
    motion = _inner(seen["motion"], dx, dy)
    torch.testing.assert_close(motion, torch.tensor([dx / d, dy / d]).view(1, 2, 1, 1).expand_as(motion),
                               atol=0.02, rtol=0)
    change, diff = _inner(seen["change"], dx, dy).abs().max(), _inner(seen["diff"], dx, dy).abs().max()
    assert change < 0.05 * diff, f"warped differences {change:.3g} against plain differences {diff:.3g}"


def test_static_branch_is_googlenet_with_3d_pooling() -> None:
    """On a clip of one repeated frame the 3D pooling changes nothing: the static branch's features
    are GoogLeNet's on that frame, with the stem as conv1 (also when the stem runs at stride 1 for the
    displacement maps and the static branch reads every second position)."""
    torch.manual_seed(0)
    model = build_dcd(5, **TINY).eval()
    net = GoogLeNet(5, width=TINY["width"]).eval()
    net.load_state_dict({**model.branches["static"].state_dict(),
                         **{f"conv1.{k}": v for k, v in model.stem.state_dict().items()}})
    frame = torch.rand(2, 3, 33, 35) * 2 - 1  # odd sizes: the stride-2 grid must be the same
    with torch.no_grad():
        static = model.forward_features(frame.unsqueeze(2).expand(-1, -1, 8, -1, -1))[:, :net.num_features]
        expected = net.forward_features(frame)
        # fresh BatchNorm statistics shrink the activations layer after layer: compare relative to their scale
        torch.testing.assert_close(static, expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)


def test_training_steps_lower_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = build_dcd(3, dropout=0.0, **TINY)
    x, y = _clip(), torch.tensor([0, 2])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters()), "every parameter takes part"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"losses {losses}"


def test_a_step_under_bf16_autocast() -> None:
    """The trainer's mixed precision (bf16 autocast, on CUDA there; on CPU here): the cost volume,
    the soft-argmax and the warp take bf16 maps and every gradient comes back finite."""
    torch.manual_seed(0)
    model = build_dcd(3, **TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(_clip()).float(), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("variant", sorted(BRANCH_SETS))
def test_flop_counter_runs_every_variant_on_the_meta_device(variant: str) -> None:
    with torch.device("meta"):
        model = build_dcd(101, branches=BRANCH_SETS[variant]).eval()
        x = torch.zeros(1, 3, 8, 224, 224)
    with FlopCounterMode(display=False) as counter:
        assert model(x).shape == (1, 101)
    assert counter.get_total_flops() > 0


def test_pretrained_googlenet_initialises_every_part() -> None:
    """ImageNet weights (here a random GoogLeNet in torchvision's layout) reach the stem, every
    branch, and the motion branch's 2-channel conv1 through TSN's cross-modality kernel."""
    torch.manual_seed(0)
    source = GoogLeNet(1000, width=TINY["width"]).state_dict()
    model = build_dcd(5, **TINY)
    reports = load_dcd_imagenet(model, source)
    assert set(reports) == {"stem", "static", "motion", "change"}
    torch.testing.assert_close(model.stem.conv.weight, source["conv1.conv.weight"])
    torch.testing.assert_close(model.branches["motion"].conv1.conv.weight,
                               cross_modality_kernel(source["conv1.conv.weight"], 2))
    for name in ("static", "motion", "change"):
        torch.testing.assert_close(model.branches[name].inception4c.branch2[1].conv.weight,
                                   source["inception4c.branch2.1.conv.weight"])
        assert reports[name].replaced == ["fc.bias", "fc.weight"] and not reports[name].missing
        assert not reports[name].unexpected, f"{name}: {reports[name].unexpected}"
    assert "conv1.conv.weight" in reports["motion"].loaded and "conv1.conv.weight" in reports["stem"].loaded


@pytest.mark.parametrize("kwargs, match", [
    (dict(branches=("static", "flow")), "branches"),
    (dict(branches=()), "branches"),
    (dict(branches=("motion", "motion")), "branches"),
    (dict(frames=1), "frames=1"),
    (dict(max_displacement=0), "max_displacement"),
    (dict(temperature=0.0), "temperature"),
    (dict(displacement_stride=4), "displacement_stride"),
    (dict(dropout=1.0), "dropout"),
])
def test_builder_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_dcd(5, **{**TINY, **kwargs})


def test_forward_refuses_a_clip_of_another_length() -> None:
    model = build_dcd(5, **TINY)
    with pytest.raises(ValueError, match=r"T=4 frames .* frames=8"):
        model(_clip(frames=4))
    assert build_dcd(5, frames=1, branches=("static",), **TINY)(_clip(frames=1)).shape == (2, 5)
    assert set(BRANCHES) >= {b for branches in BRANCH_SETS.values() for b in branches}
