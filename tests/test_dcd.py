"""DCD (Zhao et al. 2018): the cost volume, soft-argmax and warp on feature maps with a known
shift, and the model's variants at tiny widths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rev2net.dcd import cost_volume, soft_argmax, warp, window_offsets

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


@pytest.mark.parametrize("bad", [
    lambda: cost_volume(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4), 1),
    lambda: cost_volume(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), -1),
    lambda: soft_argmax(torch.zeros(1, 8, 3, 3), 0.1),
    lambda: soft_argmax(torch.zeros(1, 9, 3, 3), 0.0),
    lambda: warp(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4)),
])
def test_ops_refuse_bad_arguments(bad) -> None:
    with pytest.raises(ValueError):
        bad()
