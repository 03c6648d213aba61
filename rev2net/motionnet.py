"""MotionNet: unsupervised optical flow from a stack of frames, and flow targets computed on the fly.

Zhu, Lan, Newsam, Hauptmann, "Hidden Two-Stream Convolutional Networks for Action Recognition"
(ACCV 2018), Sec. 3.1. A fully convolutional encoder-decoder takes T consecutive frames stacked on
channels and predicts the flow of every consecutive pair at five scales; it is trained without
flow or labels by reconstructing each frame from the next one through its flow.

    frames (B, 3, T, H, W) in [-1, 1] -> channels stacked (B, 3T, H, W)
      conv1, conv1_1        3x3 stride 1     64     H        ("our first two convolutional layers do not use striding")
      conv2, conv2_1        3x3 s2 / s1      128    H/2
      conv3, conv3_1        3x3 s2 / s1      256    H/4
      conv4, conv4_1        3x3 s2 / s1      512    H/8
      conv5, conv5_1        3x3 s2 / s1      512    H/16
      conv6, conv6_1        3x3 s2 / s1      1024   H/32  -> flow6
      for level 5, 4, 3, 2 (channels 512, 256, 128, 64):
        deconv (4x4 stride 2) of the coarser level's features, a learned 4x4 stride-2 upsampling of
        its flow, and the encoder's conv<level>_1 are concatenated; an extra 3x3 conv between the
        deconvolutions ("CDC": smoother flow) -> flow<level>
    flow2 (H/2) is upsampled bilinearly to H x W: `forward` returns (B, 2, T-1, H, W) in pixels.

Every flow<s> is (B, 2, T-1, ceil(H/2^(s-1)), ceil(W/2^(s-1))): channel 0 = x (right), 1 = y (down),
in pixels of its own grid, from frame t to t+1 (the convention of `rev2net.batch`). Sizes that are
not multiples of 32 work: strided convs round up and each deconvolution is cropped to its skip.

The unsupervised objective (`unsupervised_terms`), eqs. (1)-(6): at each scale s, the frames are
area-resized to the flow's grid, frame t+1 is backward-warped with the flow of pair t
(`warp`, bilinear `grid_sample`: I'_t(p) = I_{t+1}(p + V_t(p))), and
    pixel   = Charbonnier(I_t - I'_t), averaged over the pixels whose flow stays inside the frame
    smooth  = Charbonnier of the flow's forward differences, dV^x/dx + dV^x/dy + dV^y/dx + dV^y/dy (eq. 2)
    ssim    = mean over 8x8 patches at stride 8 of 1 - SSIM(I_t, I'_t), c1 = 1e-4, c2 = 1e-3 (eqs. 3-4)
    L_s = lambda_pixel * pixel + lambda_smooth * smooth + lambda_ssim * ssim;  L = sum_s delta_s * L_s
Images enter the losses in [0, 1] (the SSIM constants' scale). Border masking: a pixel whose
flow points outside the next frame has nothing to be compared with; it is left out of the pixel
term and, for SSIM, its reconstruction is replaced by the target pixel (zero error).

What follows the paper: 3x3 kernels throughout, no striding in the first two convolutions,
strided convolutions instead of pooling, the extra convolution between deconvolutions, five
prediction scales with a weighted sum of per-scale losses, the generalized Charbonnier penalty
rho(x) = (x^2 + eps^2)^alpha for the pixel and smoothness terms, SSIM on 8x8 patches at stride 8 with
c1 = 0.0001 and c2 = 0.001, frames stacked on channels (11 frames -> 10 flows in the paper).

Where it had to choose (the paper defers the details to its supplementary material): the layer
widths and the 4x4 stride-2 deconvolutions are FlowNet-S's (Dosovitskiy, Fischer et al. 2015), on
which MotionNet's encoder-decoder is built, as in the authors' released training configuration,
whose values are also taken for alpha = 0.4 (pixel) and 0.3 (smoothness); LeakyReLU(0.1) after every
convolution except the flow predictions, no normalisation layers; eps = 1e-3; the flow predictions
start near zero; the loss weights `MotionNetLoss` (lambdas, and per-scale deltas "of the same
order"), tuned on the generated dataset (a smoothness weight near the others' keeps the flow at zero
from the start); SSIM patches shrink to the grid at scales smaller than 8 pixels (one patch); the
border mask is "the flow leaves the frame" (the released configuration masks a fixed border strip);
the finest flow (H/2) is brought to H x W bilinearly. The mask has no gradient, so a diverged
network whose flow points every pixel out of the frame sits in a degenerate minimum (nothing left to
compare): the pretraining loop clips gradients and stops with an error if that happens.

A `width` multiplier scales every channel count (1.0 = the network above), so CPU runs train
the same MotionNet, only thinner. A clip of any length T >= 2 is accepted: it is cut into windows
of the network's `frames` that overlap by one frame (the last one padded by repeating its last
frame, those pairs dropped), so every consecutive pair is estimated exactly once.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rev2net.i3d import scale_channels
from rev2net.losses import FLOW_BOUND  # px; flow targets are clipped here, as the TV-L1 targets are
ENCODER_CHANNELS = (64, 128, 256, 512, 512, 1024)  # conv1..conv6 at width 1.0, each level two 3x3 convs
DECODER_CHANNELS = (512, 256, 128, 64)  # levels 5, 4, 3, 2
SCALES = (2, 3, 4, 5, 6)  # flow2 (H/2) .. flow6 (H/32), the paper's names; pyramids are finest first
CHARBONNIER_EPS = 1e-3
PIXEL_ALPHA = 0.4
SMOOTH_ALPHA = 0.3
SSIM_PATCH = 8  # K, also the stride of the sliding window
SSIM_C1 = 1e-4
SSIM_C2 = 1e-3
LEAKY_SLOPE = 0.1
FLOW_INIT_STD = 1e-3  # flow predictions start near zero flow


# --------------------------------------------------------------------------------------- blocks


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (bias) + LeakyReLU(0.1); stride 2 halves the grid, rounding up."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True))


def _crop_to(x: Tensor, like: Tensor) -> Tensor:
    """Crop a deconvolution's output (2x the coarser grid) to the finer grid it joins."""
    return x[..., : like.shape[-2], : like.shape[-1]]


class ExpandLevel(nn.Module):
    """One decoder level: deconv the coarser features, upsample the coarser flow, concatenate with the
    encoder's skip, the extra 3x3 conv (CDC), predict this level's flow."""

    def __init__(self, coarse_channels: int, skip_channels: int, channels: int, flow_channels: int) -> None:
        super().__init__()
        self.deconv = nn.Sequential(nn.ConvTranspose2d(coarse_channels, channels, 4, 2, 1),
                                    nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        self.upsample_flow = nn.ConvTranspose2d(flow_channels, flow_channels, 4, 2, 1)
        self.xconv = _conv(skip_channels + channels + flow_channels, channels)
        self.predict = nn.Conv2d(channels, flow_channels, 3, 1, 1)

    def forward(self, coarse: Tensor, coarse_flow: Tensor, skip: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([skip, _crop_to(self.deconv(coarse), skip), _crop_to(self.upsample_flow(coarse_flow), skip)], 1)
        x = self.xconv(x)
        return x, self.predict(x)


# ---------------------------------------------------------------------------------------- model


class MotionNet(nn.Module):
    """Flow of every consecutive frame pair of a clip.

    Args:
        frames: frames per window the network sees at once (3 * frames input channels; the paper
            uses 11). Clips of any length are cut into windows of this many frames.
        width: channel multiplier (1.0 = the full network).
    """

    def __init__(self, *, frames: int = 11, width: float = 1.0) -> None:
        super().__init__()
        if frames < 2:
            raise ValueError(f"MotionNet frames={frames} must be >= 2 (flow needs a frame pair)")
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"MotionNet width={width!r} must be > 0")
        self.frames = frames
        self.width = width
        pairs = frames - 1
        enc = [scale_channels(c, width) for c in ENCODER_CHANNELS]
        dec = [scale_channels(c, width) for c in DECODER_CHANNELS]
        self.encoder = nn.ModuleList()
        channels = 3 * frames
        for level, out in enumerate(enc):  # conv<level+1> (stride 1 at level 1, else 2) and conv<level+1>_1
            self.encoder.append(nn.Sequential(_conv(channels, out, 1 if level == 0 else 2), _conv(out, out)))
            channels = out
        self.predict6 = nn.Conv2d(enc[5], 2 * pairs, 3, 1, 1)
        # levels 5, 4, 3, 2: skips from conv5_1, conv4_1, conv3_1, conv2_1
        coarse = [enc[5]] + dec[:-1]
        self.decoder = nn.ModuleList(ExpandLevel(c, enc[4 - i], d, 2 * pairs)
                                     for i, (c, d) in enumerate(zip(coarse, dec)))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        for head in [self.predict6] + [level.predict for level in self.decoder]:
            nn.init.normal_(head.weight, std=FLOW_INIT_STD)

    @property
    def config(self) -> dict[str, Any]:
        """What `build_motionnet` needs to rebuild this network (stored in checkpoints)."""
        return {"frames": self.frames, "width": self.width}

    def _window_pyramid(self, frames: Tensor) -> list[Tensor]:
        """Exactly `self.frames` frames (N, 3, F, H, W) -> [flow2, ..., flow6], each (N, 2, F-1, h, w)."""
        n, _, f, height, width = frames.shape
        x = frames.reshape(n, 3 * f, height, width)  # channels: frame-major, RGB within a frame
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        flow = self.predict6(x)
        flows = [flow]
        for i, level in enumerate(self.decoder):
            x, flow = level(x, flow, skips[4 - i])
            flows.append(flow)
        # (N, 2P, h, w), pair-major (x0, y0, x1, y1, ...) -> (N, 2, P, h, w); finest first
        return [f.reshape(n, f.shape[1] // 2, 2, *f.shape[2:]).transpose(1, 2) for f in reversed(flows)]

    def pyramid(self, frames: Tensor) -> list[Tensor]:
        """frames (B, 3, T, H, W) in [-1, 1], any T >= 2 -> [flow2, flow3, flow4, flow5, flow6], finest
        first, each (B, 2, T-1, ceil(H / 2^(s-1)), ceil(W / 2^(s-1))) in pixels of its own grid."""
        if frames.dim() != 5 or frames.shape[1] != 3:
            raise ValueError(f"MotionNet frames must be (B, 3, T, H, W), got {tuple(frames.shape)}")
        b, _, t = frames.shape[:3]
        if t < 2:
            raise ValueError(f"MotionNet needs clips of at least 2 frames, got T={t}")
        windows = window_starts(t, self.frames)
        if windows == [0] and t == self.frames:
            return self._window_pyramid(frames)
        chunks = []
        for start in windows:  # each window's frames, padded by repeating its last frame
            chunk = frames[:, :, start:start + self.frames]
            if chunk.shape[2] < self.frames:
                chunk = torch.cat([chunk, chunk[:, :, -1:].expand(-1, -1, self.frames - chunk.shape[2], -1, -1)], 2)
            chunks.append(chunk)
        flows = self._window_pyramid(torch.cat(chunks, 0))  # windows batched: (W*B, 2, P, h, w)
        out = []
        for flow in flows:
            per_window = flow.reshape(len(windows), b, *flow.shape[1:])
            kept = [per_window[i, :, :, : min(self.frames, t - start) - 1] for i, start in enumerate(windows)]
            out.append(torch.cat(kept, 2))
        return out

    def forward(self, frames: Tensor) -> Tensor:
        """frames (B, 3, T, H, W) in [-1, 1] -> flow (B, 2, T-1, H, W) in pixels of the H x W grid."""
        return resize_flow(self.pyramid(frames)[0], frames.shape[-2:])


def window_starts(frames: int, window: int) -> list[int]:
    """Starts of the windows of `window` frames, overlapping by one, that cover `frames` frames."""
    return list(range(0, max(frames - 1, 1), window - 1))


def build_motionnet(*, frames: int = 11, width: float = 1.0) -> MotionNet:
    """MotionNet seeing `frames` frames at once (the paper: 11), channels scaled by `width`."""
    return MotionNet(frames=frames, width=width)


# ---------------------------------------------------------------------------------- flow tools


def resize_flow(flow: Tensor, size: Sequence[int]) -> Tensor:
    """(B, 2, P, h', w') in pixels of its grid -> (B, 2, P, h, w) in pixels of the h x w grid: area
    averaging when shrinking, bilinear when enlarging; x scaled by w/w', y by h/h'."""
    h, w = int(size[0]), int(size[1])
    src_h, src_w = flow.shape[-2:]
    if (src_h, src_w) == (h, w):
        return flow
    b, c, p = flow.shape[:3]
    planes = flow.reshape(b, c * p, src_h, src_w)
    if h <= src_h and w <= src_w:
        planes = F.interpolate(planes, size=(h, w), mode="area")
    else:
        planes = F.interpolate(planes, size=(h, w), mode="bilinear", align_corners=False)
    scale = flow.new_tensor([w / src_w, h / src_h]).view(1, 2, 1, 1, 1)
    return planes.reshape(b, c, p, h, w) * scale


def _pixel_grid(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Where each pixel's flow points, x and y in pixels: (N, h, w) each, for flow (N, 2, h, w)."""
    h, w = flow.shape[-2:]
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    return xs + flow[:, 0], ys + flow[:, 1]


def warp(image: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """Backward warping: out(p) = image(p + flow(p)), bilinear (spatial transformer, `grid_sample`).

    image (N, C, h, w), flow (N, 2, h, w) in pixels (x, y). Returns the warped image and the mask
    (N, 1, h, w) of pixels whose flow points inside the image (no gradient through the mask);
    outside, the warped value is 0."""
    x, y = _pixel_grid(flow)
    h, w = flow.shape[-2:]
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)  # (N, h, w, 2)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    with torch.no_grad():
        inside = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).unsqueeze(1).to(image.dtype)
    return warped, inside


def charbonnier(x: Tensor, alpha: float, eps: float = CHARBONNIER_EPS) -> Tensor:
    """Generalized Charbonnier penalty (x^2 + eps^2)^alpha, elementwise."""
    return (x.square() + eps * eps).pow(alpha)


def ssim_patches(a: Tensor, b: Tensor, patch: int = SSIM_PATCH, c1: float = SSIM_C1, c2: float = SSIM_C2) -> Tensor:
    """SSIM of corresponding K x K patches at stride K (eq. 3), per channel: (N, C, h//K, w//K).
    Images in [0, 1]; K shrinks to the image where it is smaller."""
    k = max(1, min(patch, a.shape[-2], a.shape[-1]))
    mu_a, mu_b = F.avg_pool2d(a, k, k), F.avg_pool2d(b, k, k)
    var_a = F.avg_pool2d(a * a, k, k) - mu_a.square()
    var_b = F.avg_pool2d(b * b, k, k) - mu_b.square()
    cov = F.avg_pool2d(a * b, k, k) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))


# ---------------------------------------------------------------------------------------- loss

UNSUPERVISED_TERMS = ("pixel", "smooth", "ssim")


@dataclass(frozen=True)
class MotionNetLoss:
    """Weights of the unsupervised objective, eqs. (5)-(6): lambdas per term, a delta per scale."""

    pixel: float = 1.0  # lambda_1, Charbonnier photometric error (images in [0, 1])
    smooth: float = 0.01  # lambda_2, Charbonnier of the flow gradients (pixels per pixel of each scale);
    #                       its penalty is steep at zero (alpha 0.3): much more pins the flow at zero
    ssim: float = 1.0  # lambda_3, mean of 1 - SSIM over 8x8 patches
    scales: tuple[float, ...] = (1.0, 1.0, 1.0, 0.5, 0.25)  # delta_s for flow2 .. flow6 (coarse grids: few pixels)

    def __post_init__(self) -> None:
        for key in ("pixel", "smooth", "ssim"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"MotionNetLoss.{key}={value!r} must be a finite number >= 0")
        if len(self.scales) != len(SCALES) or not all(math.isfinite(d) and d >= 0 for d in self.scales):
            raise ValueError(f"MotionNetLoss.scales={self.scales!r} must be {len(SCALES)} finite weights >= 0 "
                             "(flow2 .. flow6)")

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON, checkpoints)."""
        return {**asdict(self), "scales": list(self.scales)}

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """The weighted sum of eq. (5) over the named terms (each already summed over scales)."""
        return self.pixel * terms["pixel"] + self.smooth * terms["smooth"] + self.ssim * terms["ssim"]


def scale_terms(frames01: Tensor, flow: Tensor) -> dict[str, Tensor]:
    """The three terms at one scale. frames01 (B, 3, T, H, W) in [0, 1] (any size: area-resized to
    the flow's grid), flow (B, 2, T-1, h, w) in pixels of its grid."""
    b, _, pairs, h, w = flow.shape
    images = frames01
    if images.shape[-2:] != (h, w):
        images = F.adaptive_avg_pool3d(images, (images.shape[2], h, w))  # area resize, time kept
    first = images[:, :, :-1].transpose(1, 2).reshape(b * pairs, 3, h, w)  # I_t
    second = images[:, :, 1:].transpose(1, 2).reshape(b * pairs, 3, h, w)  # I_t+1
    vectors = flow.transpose(1, 2).reshape(b * pairs, 2, h, w)
    warped, inside = warp(second, vectors)
    pixel = (charbonnier(first - warped, PIXEL_ALPHA) * inside).sum() / (3 * inside.sum()).clamp_min(1)
    reconstructed = warped * inside + first * (1 - inside)
    ssim = (1 - ssim_patches(first, reconstructed)).mean()
    smooth = vectors.new_zeros(())  # eq. (2): both components, both directions, each a mean over pixels
    for difference in (vectors[..., :, 1:] - vectors[..., :, :-1], vectors[..., 1:, :] - vectors[..., :-1, :]):
        if difference.numel():
            smooth = smooth + charbonnier(difference, SMOOTH_ALPHA).mean(dim=(0, 2, 3)).sum()
    return {"pixel": pixel, "smooth": smooth, "ssim": ssim}


def unsupervised_terms(frames: Tensor, pyramid: Sequence[Tensor],
                       cfg: MotionNetLoss = MotionNetLoss()) -> dict[str, Tensor]:
    """The unsupervised terms, each summed over scales with the deltas: `pixel`, `smooth`, `ssim`
    (unweighted by the lambdas; `cfg.total(terms)` weights them). frames (B, 3, T, H, W) in [-1, 1];
    `pyramid` as `MotionNet.pyramid` returns it (finest first). Computed in float32."""
    if len(pyramid) != len(cfg.scales):
        raise ValueError(f"{len(pyramid)} flow scales but MotionNetLoss.scales has {len(cfg.scales)} weights")
    frames01 = (frames.float() + 1) / 2
    totals = {name: frames01.new_zeros(()) for name in UNSUPERVISED_TERMS}
    for delta, flow in zip(cfg.scales, pyramid):
        if delta == 0:
            continue
        for name, value in scale_terms(frames01, flow.float()).items():
            totals[name] = totals[name] + delta * value
    return totals


# ------------------------------------------------------------------------- targets for Rev2Net


@torch.no_grad()
def flow_targets(motionnet: MotionNet, frames: Tensor, size: Sequence[int]) -> Tensor:
    """Flow targets for a training clip, computed by a frozen MotionNet instead of read from disk.

    frames: the clip the model sees (already cropped and flipped), float (B, 3, T, H, W) in [-1, 1].
    size: (h, w) of the target grid (e.g. the flow decoder's, half the crop).
    Returns float32 (B, 2, T-1, h, w): x then y, in pixels of the h x w grid, clipped at
    +-FLOW_BOUND, on the MotionNet's device: the convention of the TV-L1 targets
    (`rev2net.data.datasets.ClipDataset._flow`). MotionNet sees the flipped crop, so its flow is
    already in that geometry (a flip's negated x included). The network's train/eval mode is left
    as it was; it runs in eval mode.
    """
    device = next(motionnet.parameters()).device
    was_training = motionnet.training
    motionnet.eval()
    try:
        finest = motionnet.pyramid(frames.to(device, torch.float32))[0]  # (B, 2, T-1, H/2, W/2)
    finally:
        motionnet.train(was_training)
    return resize_flow(finest.float(), size).clamp_(-FLOW_BOUND, FLOW_BOUND)


# --------------------------------------------------------------------------------- checkpoints


def motionnet_state(model: MotionNet, **extra: Any) -> dict[str, Any]:
    """A checkpoint dict: the network's config and weights (plus anything in `extra`)."""
    return {"motionnet": model.config, "state_dict": model.state_dict(), **extra}


def load_motionnet(source: Union[str, os.PathLike, Mapping[str, Any]], *, map_location: Any = "cpu") -> MotionNet:
    """Rebuild a MotionNet from a checkpoint written by `motionnet_state` (e.g. by the pretraining
    CLI, `python -m rev2net.motionnet_pretrain`)."""
    if isinstance(source, Mapping):
        state = source
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MotionNet checkpoint {path!r} does not exist (pretrain one with "
                                    "python -m rev2net.motionnet_pretrain --dataset D --root R --out CKPT)")
        state = torch.load(path, map_location=map_location, weights_only=True)
    if "motionnet" not in state or "state_dict" not in state:
        raise ValueError("not a MotionNet checkpoint: expected the keys 'motionnet' (its config) and 'state_dict'")
    model = build_motionnet(**state["motionnet"])
    model.load_state_dict(state["state_dict"])
    return model
