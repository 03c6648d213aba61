"""DCD: recognising actions by disentangling components of dynamics, from RGB frames alone.

Zhao, Xiong, Lin, "Recognize Actions by Disentangling Components of Dynamics" (CVPR 2018), Sec. 3.

(Model docstring: written with the model below.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

NORMALIZE_EPS = 1e-3  # cosine similarity: feature vectors shorter than this count as this long


# ------------------------------------------------------------------------------ dynamics ops
#
# Conventions of the three functions below: feature maps (N, C, H, W); a displacement map is
# (N, 2, H, W), channel 0 = x (right), 1 = y (down), in pixels of the feature map (the project's
# flow channel order; the paper writes (v^y, v^x)); window offsets are enumerated row-major,
# index k = (dy + d) * (2d + 1) + (dx + d) for dy, dx in [-d, d].


def _correlate(f1: Tensor, f2: Tensor, d: int) -> Tensor:
    """sum_c f1[n, c, i, j] * f2[n, c, i + dy, j + dx] for every offset of the window, f2 zero outside."""
    h, w = f1.shape[-2:]
    f2 = F.pad(f2, (d, d, d, d))  # (N, C, H + 2d, W + 2d)
    k = 2 * d + 1
    return torch.stack(
        [(f1 * f2[:, :, dy:dy + h, dx:dx + w]).sum(1) for dy in range(k) for dx in range(k)], dim=1
    )  # (N, K, H, W)


# The correlation is a custom op so that torch.utils.flop_counter counts its multiply-adds
# (C per offset and position; an elementwise loop is invisible to it, and einsum, which it would
# count, runs 5-10x slower) and so that its backward recomputes the products instead of keeping K
# copies of the feature map alive.
@torch.library.custom_op("rev2net::local_correlation", mutates_args=())
def _local_correlation(f1: Tensor, f2: Tensor, max_displacement: int) -> Tensor:
    return _correlate(f1, f2.to(f1.dtype), max_displacement)


@_local_correlation.register_fake
def _(f1: Tensor, f2: Tensor, max_displacement: int) -> Tensor:
    n, _, h, w = f1.shape
    return f1.new_empty(n, (2 * max_displacement + 1) ** 2, h, w)


def _correlation_setup(ctx, inputs, output) -> None:
    f1, f2, ctx.max_displacement = inputs
    ctx.f2_dtype = f2.dtype
    ctx.save_for_backward(f1, f2)


def _correlation_backward(ctx, grad: Tensor):
    f1, f2 = ctx.saved_tensors
    d = ctx.max_displacement
    h, w = f1.shape[-2:]
    k = 2 * d + 1
    f2 = F.pad(f2.to(f1.dtype), (d, d, d, d))
    grad1 = torch.zeros_like(f1)
    grad2 = torch.zeros_like(f2)  # on the padded grid, cropped at the end
    for index in range(k * k):
        dy, dx = divmod(index, k)
        g = grad[:, index:index + 1]  # (N, 1, H, W)
        grad1 += g * f2[:, :, dy:dy + h, dx:dx + w]
        grad2[:, :, dy:dy + h, dx:dx + w] += g * f1
    return grad1, grad2[:, :, d:d + h, d:d + w].to(ctx.f2_dtype), None


_local_correlation.register_autograd(_correlation_backward, setup_context=_correlation_setup)


@register_flop_formula(torch.ops.rev2net.local_correlation)
def _local_correlation_flops(f1_shape, f2_shape, max_displacement, *args, out_shape=None, **kwargs) -> int:
    n, c, h, w = f1_shape
    return 2 * n * c * h * w * (2 * max_displacement + 1) ** 2  # FLOPs = 2 x multiply-adds


def window_offsets(max_displacement: int, device=None) -> Tensor:
    """(K, 2) offsets (dx, dy) of the (2d+1) x (2d+1) window, in the cost volume's channel order."""
    r = torch.arange(-max_displacement, max_displacement + 1, device=device, dtype=torch.float32)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)


def cost_volume(f1: Tensor, f2: Tensor, max_displacement: int) -> Tensor:
    """Cost volume C_t of Zhao et al. 2018, Sec. 3.3: cosine similarity between f1 at (i, j) and f2
    at (i + dy, j + dx) for every offset of a (2d+1) x (2d+1) window, d = `max_displacement`.

    f1, f2 (N, C, H, W) -> (N, (2d+1)^2, H, W), offsets in `window_offsets` order; a window position
    outside f2 has similarity 0.
    """
    if f1.dim() != 4 or f1.shape != f2.shape:
        raise ValueError(f"cost_volume needs two (N, C, H, W) maps of one shape, got {tuple(f1.shape)} "
                         f"and {tuple(f2.shape)}")
    if max_displacement < 0:
        raise ValueError(f"max_displacement={max_displacement} must be >= 0")
    f1 = F.normalize(f1, dim=1, eps=NORMALIZE_EPS)
    f2 = F.normalize(f2, dim=1, eps=NORMALIZE_EPS)
    return _local_correlation(f1, f2, max_displacement)


def soft_argmax(cost: Tensor, temperature: float) -> Tensor:
    """Displacement map V_t of Zhao et al. 2018, eqs. (1)-(2): the expected offset under a softmax
    of the cost volume over its window, at temperature `temperature`.

    cost (N, (2d+1)^2, H, W) from `cost_volume` -> (N, 2, H, W), (x, y) in feature-map pixels, each
    in [-d, d]. Eq. (2) takes the vertical and horizontal marginals of one joint softmax over the
    window and eq. (1) the mean offset under each; that is the mean (dx, dy) under the joint
    softmax, computed here as one weighted sum (as 2D convolution with the offsets, as the paper
    says). As temperature -> 0 it becomes the winner-take-all offset.
    """
    k = math.isqrt(cost.shape[1])
    if cost.dim() != 4 or k * k != cost.shape[1] or k % 2 == 0:
        raise ValueError(f"soft_argmax needs a cost volume (N, (2d+1)^2, H, W), got {tuple(cost.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    weights = torch.softmax(cost / temperature, dim=1)  # (N, K, H, W)
    offsets = window_offsets(k // 2, device=cost.device).to(cost.dtype)  # (K, 2)
    return torch.einsum("nkhw,ko->nohw", weights, offsets)  # (N, 2, H, W)


def warp(features: Tensor, displacement: Tensor) -> Tensor:
    """`features` sampled at p + displacement(p) for every position p (bilinear, zeros outside).

    features (N, C, H, W), displacement (N, 2, H, W) in pixels, (x, y) -> (N, C, H, W). For the
    displacement map V_t from frame t to t+1, warp(F_{t+1}, V_t) is frame t+1's features brought
    back onto frame t's grid (Zhao et al. 2018, Sec. 3.4; see the module docstring for the
    direction).
    """
    n, _, h, w = features.shape
    if displacement.shape != (n, 2, h, w):
        raise ValueError(f"warp: displacement {tuple(displacement.shape)} must be (N, 2, H, W) = {(n, 2, h, w)}")
    if h < 2 or w < 2:
        raise ValueError(f"warp needs maps of at least 2 x 2 positions, got {h} x {w}")
    ys = torch.arange(h, device=features.device, dtype=displacement.dtype).view(1, h, 1)
    xs = torch.arange(w, device=features.device, dtype=displacement.dtype).view(1, 1, w)
    # align_corners=True: -1 and 1 are the centres of the first and last pixel, so pixel i is 2i/(size-1) - 1
    gx = (xs + displacement[:, 0]) * (2.0 / (w - 1)) - 1.0  # (N, H, W)
    gy = (ys + displacement[:, 1]) * (2.0 / (h - 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(features.dtype)  # (N, H, W, 2)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
