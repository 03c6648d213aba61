"""DCD: actions recognised from RGB frames alone by disentangling components of dynamics.

Zhao, Xiong, Lin, "Recognize Actions by Disentangling Components of Dynamics" (CVPR 2018), Sec. 3:
a shared low-level layer, then three branches (static appearance, apparent motion, appearance
change), each with its own classifier, their predictions averaged. No optical flow, as input or
as supervision. Shapes for one (3, 8, 224, 224) clip at width 1 with the defaults:

    frames (B, 3, T, H, W) in [-1, 1]
      -> stem: conv1 of every frame, shared (64 ch)                              [8 x 64 x 224 x 224]
         |- static: every 2nd position (= conv1 at stride 2)                     [8 x 64 x 112 x 112]
         |     GoogLeNet from maxpool1, time max-pooled in pairs after conv3,
         |     inception3b, inception4e (8 -> 4 -> 2 -> 1), averaged        -> 1024
         |- frame pairs (t, t+1): cost volume, cosine, (2d+1)^2 offsets           [7 x 81 x 224 x 224]
         |     -> soft-argmax: displacement maps V_t (x, y)                      [7 x 2 x 224 x 224]
         |- motion: V_t / d -> GoogLeNet with 2 input channels, same pooling
         |     (7 -> 4 -> 2 -> 1)                                            -> 1024
         '- change: warp(F_{t+1}, V_t) - F_t -> GoogLeNet from maxpool1         [7 x 64 x 224 x 224]
               (its inception5b is 14 x 14), same pooling                    -> 1024
      features: the three concatenated (B, 3072); logits: each branch's dropout + linear
      classifier, averaged over the branches (B, classes)

What follows the paper:
- the low-level features are conv1's (64 channels, Sec. 3.1 and 4.2), shared by all branches;
- static appearance (Sec. 3.2): 2D convolutions with 3D max pooling inserted gradually, at
  Inception-v1's counterparts of the paper's positions (BN-Inception's pool2, inception3c and
  inception4e are GoogLeNet's maxpool2, maxpool3 and maxpool4; time is pooled right before them,
  max commutes with the spatial max pool), so T=8 frames become one step (Table 1, "gradual");
- the cost volume (Sec. 3.3) is the cosine similarity of f_t(i, j) and f_{t+1}(i + dy, j + dx)
  over a (2d+1) x (2d+1) window, and the displacement map is its soft-argmax, eqs. (1)-(2);
- displacement maps at the frames' resolution: conv1 at stride 1 for the pairs (Table 3's best,
  "224 x 224", and the setting of the runtime Table 9); `displacement_stride=2` gives Table 3's
  112 x 112 (conv1's own stride, 4x cheaper);
- appearance change (Sec. 3.4): the difference of low-level features after bilinear warping by
  the displacement maps, zero where the source lies outside the map;
- every branch is an ImageNet-initialisable 2D network (Sec. 4.1, TSN's cross-modality
  pre-training; `load_dcd_imagenet`); predictions are combined by average (Sec. 3.1).

Where it had to choose (the paper leaves these to its supplementary material or unsaid):
- backbone: BN-Inception in the paper, Inception-v1 (GoogLeNet, rev2net.googlenet) here;
- d = `max_displacement` = 4 stem pixels (a 9 x 9 window) and tau = `temperature` = 0.05
  (cosine similarities of ReLU features lie in [0, 1]; a similarity 0.1 lower gets e^-2 of the
  weight); the displacement maps enter the motion branch divided by d, i.e. in [-1, 1] like the
  project's flow inputs; channel order (x, y) as the project's flow (the paper writes (v^y, v^x));
- temporal pooling: max over non-overlapping pairs ("the highest responses across neighbouring
  frames", Sec. 3.2), an odd last step kept; what is left after the three pools (T > 8) is averaged
  with the space;
- the motion and change branches process each frame pair like the static branch processes each
  frame, with the same 3D pooling over the T-1 pairs (the paper does not say how these sub-networks
  aggregate time; Table 9 gives their cost per frame). The change branch's warped differences are
  conv1-level maps, so its trunk starts at maxpool1; at displacement stride 1 it runs at twice the
  static branch's resolution, as the per-frame times of Table 9 suggest (4.23 vs 1.19 ms);
- warp direction: V_t lives on frame t's grid (C_t(i, j, .) compares f_t(i, j) with frame t+1), so
  the warp samples F_{t+1} at p + V_t(p) (backward warping, `grid_sample`) and the difference
  warp(F_{t+1}, V_t) - F_t is on frame t's grid. The paper writes F_{t+1} - W(F_t, V_t), the same
  difference on frame t+1's grid, which bilinear sampling could only produce with the inverse field;
- fusion: each branch's dropout and linear classifier on its pooled features, the logits averaged
  and trained jointly end to end (the paper trains with per-branch learning rates; parameter groups
  can be built from `model.branches[name]`); dropout 0.5 (the rate is not given);
- "diff" (not in the paper's model): the plain conv1 difference F_{t+1} - F_t without warping,
  the feature-level counterpart of Table 6's RGB-Diff column (Table 4's "no warping, feature" row).
Not part of the model: TSN (Table 5; a clip here is one TSN snippet), partial BN, gradient
clipping.

Branches (`branches=`): "static", "motion", "change", "diff", any distinct subset; the cost volume
is computed when "motion" or "change" is built, and conv1 runs at stride 1 only when a branch
compares frames. `BRANCH_SETS` lists the full model and the single-branch and fusion ablations.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from rev2net.googlenet import BLOCKS, BasicConv2d, GoogLeNet, load_googlenet_state, read_googlenet_state
from rev2net.i3d import LoadReport, scale_channels

NORMALIZE_EPS = 1e-3  # cosine similarity: feature vectors shorter than this count as this long


# ------------------------------------------------------------------------------ dynamics ops
#
# Conventions of the functions below: feature maps (N, C, H, W); a displacement map is
# (N, 2, H, W), channel 0 = x (right), 1 = y (down), in pixels of the feature map (the project's
# flow channel order; the paper writes (v^y, v^x)); window offsets are enumerated row-major,
# index k = (dy + d) * (2d + 1) + (dx + d) for dy, dx in [-d, d].
#
# How the window is computed (CPU speed, the same values): both maps are laid out on rows of
# W + 2d positions and flattened, f1 zero-padded on the right, f2 zero-padded by d all round (and
# one more row below), so that f2(i + dy, j + dx) is f2's flat sequence read at f1's position plus
# one constant offset per window offset. Each of the K = (2d+1)^2 offsets is then one product of
# two contiguous slices summed over the channels, with no gather, and the 2d extra columns per
# row (zeros of f1) are cropped at the end. The work runs over a few samples at a time
# (CHUNK_SAMPLES) so that the temporaries stay in the CPU's cache instead of allocating map-sized
# (K x the features) tensors; `displacement_map` fuses the soft-argmax into the same pass, so the
# (N, K, H, W) cost volume is never held in the model's forward or backward.

CHUNK_SAMPLES = 4  # samples per pass of the window loops (temporaries ~ 4 x K x H x (W + 2d) floats)


def _flat_pair(f1: Tensor, f2: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """f1, f2 (N, C, H, W) -> a (N, C, H * (W + 2d)), b (N, C, (H + 2d + 1) * (W + 2d)): a[q] is
    f1 at q = i * (W + 2d) + j, and b[q + dy' * (W + 2d) + dx'] is f2(i + dy' - d, j + dx' - d), zero
    outside f2, for dy', dx' in [0, 2d]."""
    n, c = f1.shape[:2]
    a = F.pad(f1, (0, 2 * d)).reshape(n, c, -1)  # (N, C, H, W + 2d) flattened
    b = F.pad(f2, (d, d, d, d + 1)).reshape(n, c, -1)  # (N, C, H + 2d + 1, W + 2d) flattened
    return a, b


def _window_row(b: Tensor, d: int, dy: int, row: int, p: int) -> Tensor:
    """The 2d + 1 offsets (dy, 0..2d) of one window row as a view of b (n, C, ...): (n, C, 2d + 1, P),
    [:, :, dx, q] = b[:, :, q + dy * row + dx] (the offsets of a row are consecutive in the flat layout)."""
    n, c = b.shape[:2]
    return b.as_strided((n, c, 2 * d + 1, p), (b.stride(0), b.stride(1), 1, 1), b.storage_offset() + dy * row)


def _correlate_flat(a: Tensor, b: Tensor, d: int, row: int, out: Tensor) -> Tensor:
    """out[n, k, q] = sum_c a[n, c, q] * b[n, c, q + dy' * row + dx'] for window offset k = dy' * (2d + 1)
    + dx' (dy', dx' in [0, 2d]; `_flat_pair`'s layout, row = W + 2d); a (n, C, P), b (n, C, >= P + 2d *
    (row + 1)), out (n, K, P), written in place and returned.
    One product and one channel sum per window row (2d + 1 offsets at once)."""
    k, p = 2 * d + 1, a.shape[-1]
    product = a.new_empty(a.shape[0], a.shape[1], k, p)  # (n, C, 2d + 1, P)
    for dy in range(k):
        torch.mul(a.unsqueeze(2), _window_row(b, d, dy, row, p), out=product)
        torch.sum(product, dim=1, out=out[:, dy * k:(dy + 1) * k])
    return out


def _correlate_flat_backward(a: Tensor, b: Tensor, d: int, row: int, grad: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of `_correlate_flat` for grad (n, K, P) of its output: (n, C, P) for a and the
    shape of b for b (zero where no window reads)."""
    k, p = 2 * d + 1, a.shape[-1]
    grad_a, grad_b = torch.zeros_like(a), torch.zeros_like(b)
    product = a.new_empty(a.shape[0], a.shape[1], k, p)  # (n, C, 2d + 1, P)
    for dy in range(k):
        g = grad[:, dy * k:(dy + 1) * k]  # (n, 2d + 1, P)
        torch.mul(g.unsqueeze(1), _window_row(b, d, dy, row, p), out=product)
        grad_a += product.sum(dim=2)
        # the window row's offsets overlap in b: one in-place product per offset
        for dx in range(k):
            shift = dy * row + dx
            grad_b[:, :, shift:shift + p].addcmul_(g[:, dx:dx + 1], a)
    return grad_a, grad_b


def _correlate(f1: Tensor, f2: Tensor, d: int) -> Tensor:
    """sum_c f1[n, c, i, j] * f2[n, c, i + dy, j + dx] for every offset of the window, f2 zero outside."""
    n, _, h, w = f1.shape
    row = w + 2 * d
    a, b = _flat_pair(f1, f2, d)
    out = a.new_empty(n, (2 * d + 1) ** 2, a.shape[-1])  # (N, K, H * (W + 2d))
    for s in range(0, n, CHUNK_SAMPLES):
        _correlate_flat(a[s:s + CHUNK_SAMPLES], b[s:s + CHUNK_SAMPLES], d, row, out[s:s + CHUNK_SAMPLES])
    return out.view(n, -1, h, row)[..., :w]  # (N, K, H, W), a view on rows of W + 2d


# The correlation is a custom op so that torch.utils.flop_counter counts its multiply-adds
# (C per offset and position; it does not see elementwise loops, and einsum, which it would count,
# becomes a batch of 1 x C x 1 matrix products, much slower) and so that its backward recomputes
# the products instead of keeping K copies of the feature map alive.
@torch.library.custom_op("rev2net::local_correlation", mutates_args=())
def _local_correlation(f1: Tensor, f2: Tensor, max_displacement: int) -> Tensor:
    return _correlate(f1, f2.to(f1.dtype), max_displacement).contiguous()


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
    n, _, h, w = f1.shape
    row = w + 2 * d
    a, b = _flat_pair(f1, f2.to(f1.dtype), d)
    grad = F.pad(grad.to(f1.dtype), (0, 2 * d)).reshape(n, (2 * d + 1) ** 2, -1)  # (N, K, H * (W + 2d))
    grad1, grad2 = torch.empty_like(a), torch.empty_like(b)
    for s in range(0, n, CHUNK_SAMPLES):
        chunk = slice(s, s + CHUNK_SAMPLES)
        grad1[chunk], grad2[chunk] = _correlate_flat_backward(a[chunk], b[chunk], d, row, grad[chunk])
    grad1 = grad1.view(n, -1, h, row)[..., :w]
    grad2 = grad2.view(n, -1, h + 2 * d + 1, row)[:, :, d:d + h, d:d + w]
    return grad1.contiguous(), grad2.to(ctx.f2_dtype).contiguous(), None


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


def _normalize(x: Tensor) -> Tensor:
    """F.normalize(x, dim=1, eps=NORMALIZE_EPS), (N, C, H, W): the same quotient, with the norm as
    a sum of squares (torch's vector-norm reduction over dim 1 is ~20x slower on a CPU). The norm is
    taken in float32 at least, so bf16 features come out float32, as F.normalize's under CUDA
    autocast (its norm runs in float32 there)."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    return x / (wide * wide).sum(dim=1, keepdim=True).sqrt().clamp_min(NORMALIZE_EPS)  # (N, C, H, W)


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
    return _local_correlation(_normalize(f1), _normalize(f2), max_displacement)


def soft_argmax(cost: Tensor, temperature: float) -> Tensor:
    """Displacement map V_t of Zhao et al. 2018, eqs. (1)-(2): the expected offset under a softmax
    of the cost volume over its window, at temperature `temperature`.

    cost (N, (2d+1)^2, H, W) from `cost_volume` -> (N, 2, H, W), (x, y) in feature-map pixels, each
    in [-d, d]. Eq. (2) takes the vertical and horizontal marginals of one joint softmax over the
    window and eq. (1) the mean offset under each; that is the mean (dx, dy) under the joint
    softmax, computed here as one weighted sum (as 2D convolution with the offsets, as the paper
    says). As temperature -> 0 it becomes the winner-take-all offset.
    """
    k = math.isqrt(cost.shape[1]) if cost.dim() == 4 else 0
    if k * k != cost.shape[1] or k % 2 == 0:
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


def displacement_map(f1: Tensor, f2: Tensor, max_displacement: int, temperature: float) -> Tensor:
    """soft_argmax(cost_volume(f1, f2, max_displacement), temperature) in one pass: the displacement
    maps V_t of Zhao et al. 2018, eqs. (1)-(2), for f1 = frame t's and f2 = frame t+1's features.

    f1, f2 (N, C, H, W) -> (N, 2, H, W), (x, y) in feature-map pixels. The same values as the two
    functions one after the other; the cost volume is computed a few samples at a time and never
    kept (the backward recomputes it), which is what the model's forward uses.
    """
    if f1.dim() != 4 or f1.shape != f2.shape:
        raise ValueError(f"displacement_map needs two (N, C, H, W) maps of one shape, got {tuple(f1.shape)} "
                         f"and {tuple(f2.shape)}")
    if not (isinstance(max_displacement, int) and max_displacement >= 0):
        raise ValueError(f"max_displacement={max_displacement!r} must be an integer >= 0")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    return _displacement_map(_normalize(f1), _normalize(f2), max_displacement, float(temperature))


def _softmax_flat(cost: Tensor, temperature: float) -> Tensor:
    """softmax(cost / temperature) over the window, cost (n, K, P) overwritten with it and returned
    (`soft_argmax`'s weights); written out in place: torch.softmax over dim 1 is ~4x slower on a CPU."""
    top = cost.amax(dim=1, keepdim=True)  # (n, 1, P)
    weights = cost.sub_(top).div_(temperature).exp_()  # (n, K, P), unnormalised
    return weights.div_(weights.sum(dim=1, keepdim=True))


@torch.library.custom_op("rev2net::displacement_map", mutates_args=())
def _displacement_map(f1: Tensor, f2: Tensor, max_displacement: int, temperature: float) -> Tensor:
    d = max_displacement
    n, _, h, w = f1.shape
    row = w + 2 * d
    k = (2 * d + 1) ** 2
    offsets = window_offsets(d, device=f1.device).to(f1.dtype)  # (K, 2)
    a, b = _flat_pair(f1, f2.to(f1.dtype), d)  # (N, C, P), (N, C, P + (2d + 1)(W + 2d))
    v = a.new_empty(n, 2, a.shape[-1])  # (N, 2, P), P = H * (W + 2d)
    for s in range(0, n, CHUNK_SAMPLES):
        chunk = slice(s, s + CHUNK_SAMPLES)
        cost = _correlate_flat(a[chunk], b[chunk], d, row, a.new_empty(len(a[chunk]), k, a.shape[-1]))  # (n, K, P)
        v[chunk] = torch.matmul(offsets.t(), _softmax_flat(cost, temperature))  # (2, K) @ (n, K, P) -> (n, 2, P)
    return v.view(n, 2, h, row)[..., :w].contiguous()  # (N, 2, H, W)


@_displacement_map.register_fake
def _(f1: Tensor, f2: Tensor, max_displacement: int, temperature: float) -> Tensor:
    n, _, h, w = f1.shape
    return f1.new_empty(n, 2, h, w)


def _displacement_setup(ctx, inputs, output) -> None:
    f1, f2, ctx.max_displacement, ctx.temperature = inputs
    ctx.f2_dtype = f2.dtype
    ctx.save_for_backward(f1, f2, output)


def _displacement_backward(ctx, grad: Tensor):
    """Recompute each chunk's cost volume and softmax weights p; the gradient of the mean offset v
    with respect to cost k is p_k (offset_k - v) / temperature; then the correlation's backward."""
    f1, f2, v = ctx.saved_tensors
    d, temperature = ctx.max_displacement, ctx.temperature
    n, _, h, w = f1.shape
    row = w + 2 * d
    k = (2 * d + 1) ** 2
    offsets = window_offsets(d, device=f1.device).to(f1.dtype)  # (K, 2)
    a, b = _flat_pair(f1, f2.to(f1.dtype), d)
    grad = F.pad(grad.to(f1.dtype), (0, 2 * d)).reshape(n, 2, -1)  # (N, 2, P), zero on the extra columns
    v = F.pad(v, (0, 2 * d)).reshape(n, 2, -1)  # (N, 2, P)
    grad1, grad2 = torch.empty_like(a), torch.empty_like(b)
    for s in range(0, n, CHUNK_SAMPLES):
        chunk = slice(s, s + CHUNK_SAMPLES)
        cost = _correlate_flat(a[chunk], b[chunk], d, row, a.new_empty(len(a[chunk]), k, a.shape[-1]))  # (n, K, P)
        weights = _softmax_flat(cost, temperature)  # (n, K, P)
        along = torch.matmul(offsets, grad[chunk])  # (K, 2) @ (n, 2, P) -> (n, K, P): grad . offset_k
        along.sub_((grad[chunk] * v[chunk]).sum(dim=1, keepdim=True)).mul_(weights).div_(temperature)
        grad1[chunk], grad2[chunk] = _correlate_flat_backward(a[chunk], b[chunk], d, row, along)
    grad1 = grad1.view(n, -1, h, row)[..., :w]
    grad2 = grad2.view(n, -1, h + 2 * d + 1, row)[:, :, d:d + h, d:d + w]
    return grad1.contiguous(), grad2.to(ctx.f2_dtype).contiguous(), None, None


_displacement_map.register_autograd(_displacement_backward, setup_context=_displacement_setup)


@register_flop_formula(torch.ops.rev2net.displacement_map)
def _displacement_map_flops(f1_shape, f2_shape, max_displacement, temperature, *args, out_shape=None,
                            **kwargs) -> int:
    n, c, h, w = f1_shape
    # C multiply-adds per offset and position for the cost volume, 2 for the mean offset (as the
    # einsum of `soft_argmax` is counted)
    return 2 * n * h * w * (2 * max_displacement + 1) ** 2 * (c + 2)


# -------------------------------------------------------------------------------- 3D pooling


def temporal_max_pool(x: Tensor, steps: int) -> tuple[Tensor, int]:
    """Max over non-overlapping pairs of time steps (kernel 2, stride 2, ceil mode: an odd last step
    is kept as it is). x (B * steps, C, H, W) -> (B * ceil(steps / 2), C, H, W), ceil(steps / 2)."""
    n, c, h, w = x.shape
    x = x.view(n // steps, steps, c, h, w)
    if steps % 2:
        x = torch.cat([x, x[:, -1:]], dim=1)  # the last step pairs with itself
    out = (steps + 1) // 2
    return x.view(n // steps, out, 2, c, h, w).amax(dim=2).flatten(0, 1), out


# ------------------------------------------------------------------------------------- model

BRANCHES = ("static", "motion", "change", "diff")  # see the module docstring
DEFAULT_BRANCHES = ("static", "motion", "change")  # the full model (Sec. 3, Table 6)
# GoogLeNet blocks after which pairs of time steps are max-pooled: the blocks before maxpool2, maxpool3
# and maxpool4, Inception-v1's counterparts of BN-Inception's pool2, inception3c and inception4e, where
# Zhao et al. 2018 pool time ("gradual 3DPool", Sec. 4.2, Table 1)
TEMPORAL_POOL_AFTER = ("conv3", "inception3b", "inception4e")
# the first GoogLeNet block each branch runs: motion sees displacement maps (an image-like input),
# the others see conv1-level feature maps (from the shared stem)
_FIRST_BLOCK = {"static": "maxpool1", "motion": "conv1", "change": "maxpool1", "diff": "maxpool1"}


class DCD(nn.Module):
    """Static appearance, apparent motion and appearance change branches on one shared conv1,
    each a GoogLeNet trunk with 3D pooling and its own classifier; the branches' logits averaged.
    `forward` maps (B, 3, T, H, W) in [-1, 1] to (B, classes). Arguments: see `build_dcd`."""

    def __init__(
        self,
        num_classes: int,
        *,
        frames: int = 8,
        branches: Sequence[str] = DEFAULT_BRANCHES,
        width: float = 1.0,
        dropout: float = 0.5,
        max_displacement: int = 4,
        temperature: float = 0.05,
        displacement_stride: int = 1,
    ) -> None:
        super().__init__()
        branches = tuple(branches)
        _validate(frames, branches, dropout, max_displacement, temperature, displacement_stride)
        self.frames = frames
        self.max_displacement = max_displacement
        self.temperature = temperature
        self.displacement_stride = displacement_stride
        self.dynamics = any(name != "static" for name in branches)  # needs frame pairs (cost volume or differences)
        # conv1 of every branch, shared: at the displacement maps' stride when a branch needs them
        # (the static branch then reads every second position, which is exactly conv1 at stride 2)
        self.stem_stride = displacement_stride if self.dynamics else 2
        self.stem = BasicConv2d(3, scale_channels(64, width), 7, self.stem_stride, 3)
        self.branches = nn.ModuleDict()
        for name in branches:
            trunk = GoogLeNet(num_classes, width=width, in_channels=2 if name == "motion" else 3, dropout=dropout)
            if _FIRST_BLOCK[name] != "conv1":
                # the shared stem is its conv1; an own one would be an unused parameter (DDP refuses those)
                del trunk.conv1
            self.branches[name] = trunk
        self.num_features = sum(trunk.num_features for trunk in self.branches.values())  # 1024 x width per branch

    @property
    def num_classes(self) -> int:
        return next(iter(self.branches.values())).num_classes

    def reset_classifier(self, num_classes: int) -> None:
        """Replace every branch's classifier (fresh heads for another dataset)."""
        for trunk in self.branches.values():
            trunk.reset_classifier(num_classes)

    # --------------------------------------------------------------------------------- forward
    def forward_features(self, frames: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, num_features): the branches' pooled features, concatenated in the
        order of `branches`."""
        b, t = self._check(frames)
        low = self._stem(frames)  # (B*T, C, h, w), h = ceil(H / stem_stride)
        inputs: dict[str, tuple[Tensor, int]] = {}  # branch -> (input maps, time steps)
        if "static" in self.branches:
            inputs["static"] = (low if self.stem_stride == 2 else low[:, :, ::2, ::2], t)  # (B*T, C, H/2, W/2)
        if self.dynamics:
            f1, f2 = self._pairs(low, t)  # (B*(T-1), C, h, w) each: frame t and frame t+1
            if "motion" in self.branches or "change" in self.branches:
                v = displacement_map(f1, f2, self.max_displacement, self.temperature)  # (B*(T-1), 2, h, w)
            if "motion" in self.branches:
                inputs["motion"] = (v / self.max_displacement, t - 1)  # in [-1, 1]
            if "change" in self.branches:
                inputs["change"] = (warp(f2, v) - f1, t - 1)  # warped differences on frame t's grid
            if "diff" in self.branches:
                inputs["diff"] = (f2 - f1, t - 1)
        feats = [self._trunk(name, *inputs[name]) for name in self.branches]  # (B, 1024*width) each
        return torch.cat(feats, dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, num_features) -> logits (B, num_classes): each branch's dropout and linear classifier
        on its own features, averaged over the branches (Sec. 3.1)."""
        chunks = features.split([trunk.num_features for trunk in self.branches.values()], dim=1)
        logits = [trunk.forward_head(chunk) for trunk, chunk in zip(self.branches.values(), chunks)]
        return torch.stack(logits).mean(dim=0)

    def forward(self, frames: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(frames))

    def displacement(self, frames: Tensor) -> Tensor:
        """The displacement maps of a clip, (B, 2, T-1, h, w) with h = ceil(H / displacement_stride):
        (x, y) from frame t to t+1, in pixels of that grid (the project's flow layout, without the
        FLOW_BOUND scaling). For inspection (Fig. 5 of the paper); not part of `forward`."""
        b, t = self._check(frames)
        if self.stem_stride != self.displacement_stride:
            raise ValueError(f"this DCD has no displacement maps (branches={tuple(self.branches)})")
        f1, f2 = self._pairs(self._stem(frames), t)
        v = displacement_map(f1, f2, self.max_displacement, self.temperature)  # (B*(T-1), 2, h, w)
        return v.view(b, t - 1, *v.shape[1:]).transpose(1, 2)

    # -------------------------------------------------------------------------------- internals
    def _check(self, frames: Tensor) -> tuple[int, int]:
        if frames.dim() != 5 or frames.shape[1] != 3:
            raise ValueError(f"DCD expects frames (B, 3, T, H, W), got {tuple(frames.shape)}")
        if frames.shape[2] != self.frames:
            raise ValueError(f"the clip has T={frames.shape[2]} frames but this DCD was built for "
                             f"frames={self.frames}; build it with build_dcd(frames={frames.shape[2]}, ...)")
        return frames.shape[0], frames.shape[2]

    def _stem(self, frames: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> conv1 of every frame (B*T, C, h, w)."""
        return self.stem(frames.transpose(1, 2).flatten(0, 1))

    @staticmethod
    def _pairs(low: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """(B*T, C, h, w) -> frames 0..T-2 and 1..T-1, each (B*(T-1), C, h, w)."""
        low = low.view(-1, steps, *low.shape[1:])
        return low[:, :-1].flatten(0, 1), low[:, 1:].flatten(0, 1)

    def _trunk(self, name: str, x: Tensor, steps: int) -> Tensor:
        """Run branch `name`'s GoogLeNet from its first block on (B*steps, C, h, w), max-pooling pairs
        of time steps after TEMPORAL_POOL_AFTER; -> (B, 1024*width), averaged over what is left."""
        trunk = self.branches[name]
        for block in BLOCKS[BLOCKS.index(_FIRST_BLOCK[name]):]:
            x = trunk._modules[block](x)
            if block in TEMPORAL_POOL_AFTER:
                x, steps = temporal_max_pool(x, steps)
        return x.view(-1, steps, *x.shape[1:]).mean(dim=(1, 3, 4))


def _validate(
    frames: int, branches: tuple[str, ...], dropout: float, max_displacement: int, temperature: float,
    displacement_stride: int,
) -> None:
    """Raise ValueError naming the argument, the bad value and what is allowed."""
    unknown = [name for name in branches if name not in BRANCHES]
    if not branches or unknown or len(set(branches)) != len(branches):
        raise ValueError(f"branches={branches!r} must be distinct names among {', '.join(BRANCHES)}")
    if frames < 1:
        raise ValueError(f"frames={frames} must be >= 1")
    if frames < 2 and any(name != "static" for name in branches):
        raise ValueError(f"frames={frames}: the branches {branches} compare consecutive frames; use frames >= 2")
    if not (math.isfinite(dropout) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    if not (isinstance(max_displacement, int) and max_displacement >= 1):
        raise ValueError(f"max_displacement={max_displacement!r} must be an integer >= 1 (feature-map pixels)")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r} must be > 0")
    if displacement_stride not in (1, 2):
        raise ValueError(f"displacement_stride={displacement_stride!r} must be 1 (maps at the frames' "
                         "resolution, the paper's best) or 2 (conv1's own stride)")


# ---------------------------------------------------------------------------------- checkpoints


def load_dcd_imagenet(model: DCD, source: Union[str, os.PathLike, Mapping[str, Any]]) -> dict[str, LoadReport]:
    """ImageNet GoogLeNet weights (torchvision's layout) into every part of `model`, as the paper
    initialises every branch from ImageNet (Sec. 4.1, TSN's cross-modality pre-training): conv1 into
    the shared stem, the rest into each branch (the motion branch's 2-channel conv1 through
    `cross_modality_kernel`; a classifier of another class count stays freshly initialised).
    Returns a LoadReport per part: {"stem": ..., branch name: ...}."""
    state = read_googlenet_state(source)
    stem_keys = {k[len("conv1."):]: v for k, v in state.items() if k.startswith("conv1.")}
    reports = {"stem": load_googlenet_stem(model.stem, stem_keys)}
    without_conv1 = {k: v for k, v in state.items() if not k.startswith("conv1.")}
    for name, trunk in model.branches.items():
        reports[name] = load_googlenet_state(trunk, state if _FIRST_BLOCK[name] == "conv1" else without_conv1)
    return reports


def load_googlenet_stem(stem: nn.Module, state: Mapping[str, Tensor]) -> LoadReport:
    """A GoogLeNet conv1 unit's weights (keys without the `conv1.` prefix) into `stem`, exactly."""
    own = stem.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    wrong = [f"conv1.{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"the checkpoint's conv1 does not fit the DCD stem: missing {missing}, wrong shape {wrong} "
                         "(torchvision's GoogLeNet has the published widths: build the DCD with width=1.0)")
    stem.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return LoadReport(loaded=sorted(f"conv1.{k}" for k in state if k in own))


# ------------------------------------------------------------------------------------- factory


def build_dcd(
    num_classes: int,
    *,
    frames: int = 8,
    branches: Sequence[str] = DEFAULT_BRANCHES,
    width: float = 1.0,
    dropout: float = 0.5,
    max_displacement: int = 4,
    temperature: float = 0.05,
    displacement_stride: int = 1,
    pretrained: Optional[Union[str, os.PathLike]] = None,
) -> DCD:
    """DCD (Zhao et al. 2018) for clips of `frames` frames.

    Args:
        num_classes: size of each branch's classifier.
        frames: clip length T the model takes (8, the paper's choice, Sec. 4.2, Table 2).
        branches: which components to build, among "static", "motion", "change" (warped feature
            differences) and "diff" (unwarped ones); the default is the full model. See BRANCH_SETS.
        width: channel multiplier of the GoogLeNet trunks and the stem (1.0 = published).
        dropout: drop probability before each branch's classifier (the rate is not given).
        max_displacement: d, the cost volume's window is (2d+1) x (2d+1) positions of the stem's grid.
        temperature: tau of the soft-argmax over cosine similarities.
        displacement_stride: 1 (displacement maps at the frames' resolution; Table 3's best) or 2.
        pretrained: a torchvision GoogLeNet ImageNet checkpoint loaded into every part
            (`load_dcd_imagenet`; needs width 1.0); the reports are kept in `model.pretrained_report`.
    """
    model = DCD(num_classes, frames=frames, branches=branches, width=width, dropout=dropout,
                max_displacement=max_displacement, temperature=temperature,
                displacement_stride=displacement_stride)
    if pretrained is not None:
        model.pretrained_report = load_dcd_imagenet(model, pretrained)
    return model


# The full model and the branch combinations of Tables 5-6 that need no optical flow (the registry's
# DCD variants, rev2net.registry, are named after these).
BRANCH_SETS: dict[str, tuple[str, ...]] = {
    "+".join(DEFAULT_BRANCHES): DEFAULT_BRANCHES,
    "static": ("static",),
    "motion": ("motion",),
    "change": ("change",),
    "static+motion": ("static", "motion"),
    "static+motion+diff": ("static", "motion", "diff"),
}
