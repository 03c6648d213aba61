"""Rev2Net's training-only parts: the flow decoder, the reversed-frame decoder, the Gaussian heads.

Wang, Yao et al., "Reversing Two-Stream Networks with Decoding Discrepancy Penalty" (arXiv 2018,
Sec. 5) and Yao, Wang et al., "Multi-Task Learning of Generalizable Representations for Video Action
Recognition" (ICME 2020, Sec. 4): two TransposeConv3D layers in the flow decoder, three in the frame
decoder plus a Conv3D background branch, both standing on Conv3d_2c_3x3 (16x56x56), kept weak on
purpose; the encoder also outputs two Gaussians N(mu1, s1) "used for optical flow prediction" and
N(mu2, s2) "used for reversed frames reconstruction", and "the decoders can be trained in a similar
way as variational autoencoders". Everything here runs only in training; at test time Rev2Net is I3D.

Architecture "paper" (the default). Shapes for a (B, 3, T, H, W) clip; D = Conv3d_2c channels
(192 x width), C = decoder_channels x width (32 at width 1), L = latent_dim (64); [..] = T=32,
H=W=224, width 1:

     Conv3d_2c_3x3 (B, D, T/2, H/4, W/4) [192x16x56x56]     Mixed_5c pooled (B, 1024) -> Gaussian heads
            |                                                  (mu1, logvar1) -> z1    (mu2, logvar2) -> z2
            |                                                   z -> Linear -> (B, C, 4, 7, 7) -> resized
     .------'---------------------------.                       to the trunk's grid: the z-map
  flow decoder                           frame decoder
  trunk  TConv 1x1x1 D->C + z1-map, BN   trunk   TConv 1x1x1 D->C + z2-map, BN, ReLU   [32x16x56x56]
         ReLU             <-- DDP low: trunk-trunk, trunk-refine (pre-activations) -->
  head   TConv k=(3,4,4) s=2 p=1, C->2   refine  TConv 3x3x3 p=1, BN, ReLU              [32x16x56x56]
  flow   (B, 2, T-1, H/2, W/2)           out     TConv k=4 s=2 p=1, C->4:
         [2x31x112x112]                          fg = tanh(ch 0-2), mask = sigmoid(ch 3)
         one field per frame pair        bg      time-mean of refine, Conv3d (1,3,3) C->3, tanh,
                                                 x2 upsampled: (B, 3, 1, H/2, W/2)
                                         frames  mask * fg + (1 - mask) * bg: (B, 3, T, H/2, W/2)
                                                 [3x32x112x112], output frame i at clip position i

The reversed order (`model.frame_target`, rev2net.spec.FRAME_TARGETS). "Reconstructing the input
frames in a reversed order from encoded 3D feature volume, which can be viewed as an information
bottleneck": output frame i is compared with input frame T-1-i, and nothing reorders the decoder's
output. The decoder is time-aligned: output frame i comes from the trunk steps around i/2, which
saw the input frames within about 8 of frame i (Conv3d_1a's 7 frames at stride 2, then the 3 steps
of Conv3d_2c and of the refine block). So output frame 0, built from the clip's first tap steps,
must show input frame 31, and output frame 31 input frame 0; only near the middle do the two
coincide. Transposed convolutions are time-equivariant with a receptive field of a few steps, so
the decoder cannot carry content from one end of the clip to the other (BatchNorm's batch
statistics aside): what it must show at the far end reaches it only through z2, decoded from
Mixed_5c pooled over the whole clip, an L-dimensional bottleneck. The task thus makes the encoder's high-level features
describe how the clip evolves over its whole length (the long-term motion this decoder is for),
while the flow decoder's targets tie each step to its neighbour (the short term). Flipping the
output as well as the target, or flipping the features inside the decoder, would compare each
output frame with the input frame it was built next to: forward reconstruction, a local task
(`frame_target=forward`, the `forward_frames` ablation; with a common reordering of output and
target the Frobenius term is the same number).

The Gaussian path (high-level DDP; the papers do not say how a sample enters a decoder that also
stands on Conv3d_2c). Each decoder decodes from its own sample: z = mu + exp(logvar / 2) * eps in
training (the mean in eval), projected by a Linear to a C x 4 x 7 x 7 volume (Mixed_5c's grid for
a 32x224x224 clip: the map keeps a layout in time and space, which a tiled vector would not),
trilinearly resized to the trunk's grid and added to the trunk's transposed convolution before its
BatchNorm. That is the trunk applied to the tap features concatenated with the z-map (a 1x1x1
layer over [tap | map] is the sum of one over each), without the 1x1x1 conv over C more channels;
z is an input of every decoder, not a modulation, and the forward needs it. BatchNorm right after
keeps the sum's scale in range without a prior term (eq. (3) has none, so none is added: the KL
between the two Gaussians is the only term on them). The heads are Linear(Mixed_5c averaged over
T, H, W -> 2L), mean and log-variance, the log-variance soft-bounded to +-8 by tanh so that exp()
never overflows. Both heads exist whenever both decoders do, whatever the loss weights: "w/o DDP"
is this network with alpha = beta = 0.

Low-level DDP (`model.ddp_layers`): the paper sums ||f_D1^l - f_D2^l||_F over "a set of
convolutional layers" L without listing it. The flow decoder's only hidden layer is its trunk and
the frame decoder's are its trunk and refine block, all C x T/2 x H/4 x W/4 (`LAYERS`); the
outputs differ in channels and grid. The pairs of equal shape are trunk-trunk (the layers that
stand on the tap, aligned from the input) and trunk-refine (each decoder's last hidden layer,
aligned from the output); the default compares both. Features are compared before their ReLU:
after it, the penalty's cheapest solution is to silence both layers, and a dead ReLU never
recovers, which would cut the decoders off for good.

- Cheap by construction: the decoders work on the tap's 56x56 grid with C channels and upsample
  (x2 in time and space) only in their last layer, so no hidden tensor is larger than the tap's,
  and the D -> C reduction is a pointwise layer (a full-width 3x3x3 TConv on the tap would take
  192 x 192 x 27 multiply-adds at each of 16x56x56 positions, about as many as I3D itself).
  `python -m rev2net.summary` counts every part.
- Output grid: stride 2 in space and 1 in time (112x112 for 224 crops), cropped to exactly
  (T-1 | T, ceil(H/2), ceil(W/2)); `OUTPUT_STRIDE` is what the data pipeline should deliver flow at.
  Half resolution keeps the decoders weak and halves the flow targets' storage.
- Time: the flow head's kernel 3 (stride 2, padding 1) maps the T/2 tap steps to the T-1 frame
  pairs; the frame head's kernel 4 gives T frames.
- Compositing follows the two-stream video generator the background branch comes from (Vondrick et
  al., 2016): a moving foreground, a mask and one static background frame made by the Conv3D
  branch from the time-averaged features, broadcast over time.

Variants (`DECODER_ARCHS`; the paper ablates "three types of architectures for the decoder streams"
without describing them):
- "paper": as drawn above.
- "plain": no background branch and no mask: the frame head gives RGB directly (tanh); ablates the
  compositing.
- "deep": the decoders stand on Mixed_3c (480 x 16 x 28 x 28, two Inception blocks deeper: "more
  layers in the encoder and its reversed decoder counterparts"); the trunk is a TConv with kernel =
  stride = (1, 2, 2) that upsamples back to the 56x56 grid. Same output grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rev2net.spec import DDP_LAYER_PAIRS
from rev2net.spec import DECODER_ARCHS as ARCH_NAMES
from rev2net.spec import DECODER_OUTPUT_STRIDE as OUTPUT_STRIDE  # every decoder's output grid, relative to the input
from rev2net.i3d import BN_EPS, BN_MOMENTUM, ENDPOINT_STRIDES

LOGVAR_BOUND = 8.0  # |log-variance| of the Gaussian heads stays below this (tanh soft bound)
LATENT_GRID = (4, 7, 7)  # (t, h, w) a latent z is decoded to before it meets the trunk: Mixed_5c at 32x224x224
# The hidden layers each decoder can hand to low-level DDP (pre-activations, C x T/2 x H/4 x W/4 each).
LAYERS = {"flow": ("trunk",), "frame": ("trunk", "refine")}


def ddp_pair(name: str) -> tuple[str, str]:
    """'trunk-refine' -> ('trunk', 'refine'): (flow decoder layer, frame decoder layer)."""
    flow, _, frame = name.partition("-")
    return flow, frame


assert all(ddp_pair(p)[0] in LAYERS["flow"] and ddp_pair(p)[1] in LAYERS["frame"] for p in DDP_LAYER_PAIRS), \
    "model.ddp_layers' pairs (rev2net.spec) name hidden layers of the two decoders"


@dataclass(frozen=True)
class DecoderArch:
    """One decoder architecture: where it stands and what its layers are."""

    tap: str  # I3D endpoint both decoders read
    trunk_stride: tuple[int, int, int]  # the first TConv's kernel = stride (1 = channel reduction, 2 = upsampling)
    background: bool  # frame decoder composites foreground, mask and a static background

    def __post_init__(self) -> None:
        t_stride, s_stride = ENDPOINT_STRIDES[self.tap]
        grid = (t_stride // self.trunk_stride[0], s_stride // self.trunk_stride[1])
        if grid != (2, 2 * OUTPUT_STRIDE):  # the last layer upsamples by 2 in time and space
            raise ValueError(f"decoder on {self.tap} with trunk stride {self.trunk_stride} works at stride {grid}, "
                             f"expected (2, {2 * OUTPUT_STRIDE})")


DECODER_ARCHS: dict[str, DecoderArch] = {
    "paper": DecoderArch("Conv3d_2c_3x3", (1, 1, 1), background=True),
    "plain": DecoderArch("Conv3d_2c_3x3", (1, 1, 1), background=False),
    "deep": DecoderArch("Mixed_3c", (1, 2, 2), background=True),
}
assert tuple(DECODER_ARCHS) == ARCH_NAMES, "model.decoder_arch's values (rev2net.spec) name these architectures"


# --------------------------------------------------------------------------------------- blocks


class GaussianHead(nn.Module):
    """High-level features (B, F) -> diagonal Gaussian (mean, log-variance), each (B, latent_dim)."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, 2 * latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.proj(h).chunk(2, dim=1)
        return mean, LOGVAR_BOUND * torch.tanh(raw / LOGVAR_BOUND)


class LatentMap(nn.Module):
    """Latent z (B, L) -> (B, C, *size): a Linear to a C x 4 x 7 x 7 volume, trilinearly resized."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.proj = nn.Linear(latent_dim, channels * math.prod(LATENT_GRID))

    def forward(self, z: Tensor, size: Sequence[int], channels_last: bool = False) -> Tensor:
        volume = self.proj(z).view(z.shape[0], self.channels, *LATENT_GRID)  # (B, C, 4, 7, 7)
        if channels_last:  # the trunk's layout (trainer.memory_format): the interpolation keeps it
            volume = volume.contiguous(memory_format=torch.channels_last_3d)
        return F.interpolate(volume, size=tuple(size), mode="trilinear", align_corners=False)


class TrunkBlock(nn.Module):
    """[tap features | z-map] -> TransposeConv3D with kernel = stride (no overlap) -> BN. Returns the
    pre-activation (what low-level DDP compares); the caller applies the ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.tconv = nn.ConvTranspose3d(in_channels, out_channels, tuple(stride), tuple(stride), bias=False)
        self.latent = LatentMap(latent_dim, out_channels)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        x = self.tconv(x)  # (B, C, T/2, H/4, W/4)
        layout = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
        return self.bn(x + self.latent(z, x.shape[2:], channels_last=layout))


class RefineBlock(nn.Module):
    """TransposeConv3D 3x3x3, stride 1 (same size) -> BN; returns the pre-activation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.tconv = nn.ConvTranspose3d(channels, channels, 3, 1, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.tconv(x))


# ------------------------------------------------------------------------------------- decoders


class _Decoder(nn.Module):
    """What both decoders share: the trunk, which decodes [tap | z-map] (compared by low-level DDP)."""

    kind = ""  # "flow" | "frame": the key of its hidden layers in LAYERS

    def __init__(self, arch: DecoderArch, in_channels: int, channels: int, latent_dim: int) -> None:
        super().__init__()
        self.arch = arch
        self.trunk = TrunkBlock(in_channels, channels, arch.trunk_stride, latent_dim)

    def _check_layers(self, layers: Collection[str]) -> None:
        unknown = set(layers) - set(LAYERS[self.kind])
        if unknown:
            raise ValueError(f"the {self.kind} decoder has no hidden layer {sorted(unknown)}; "
                             f"it has {', '.join(LAYERS[self.kind])}")


class FlowDecoder(_Decoder):
    """Tap features and z1 -> flow of the T-1 consecutive frame pairs, (B, 2, T-1, ceil(H/2), ceil(W/2)),
    in units of `rev2net.losses.FLOW_BOUND` pixels of that grid."""

    kind = "flow"

    def __init__(self, arch: DecoderArch, in_channels: int, channels: int, latent_dim: int) -> None:
        super().__init__(arch, in_channels, channels, latent_dim)
        # time: 2 * T/2 - 1 = T-1 steps, step o centred between frames o and o+1; space: x2
        self.head = nn.ConvTranspose3d(channels, 2, (3, 4, 4), (2, 2, 2), padding=(1, 1, 1))

    def forward(
        self, x: Tensor, z: Tensor, size: tuple[int, int, int], layers: Collection[str] = (), head: bool = True
    ) -> tuple[dict[str, Tensor], Optional[Tensor]]:
        """`size` = (T-1, h, w) of the output; returns ({layer: pre-activation} for `layers`, flow or
        None if not `head`)."""
        self._check_layers(layers)
        pre = self.trunk(x, z)
        feats = {"trunk": pre} if "trunk" in layers else {}
        if not head:
            return feats, None
        t, h, w = size
        return feats, self.head(F.relu(pre))[:, :, :t, :h, :w]


class FrameDecoder(_Decoder):
    """Tap features and z2 -> (B, 3, T, ceil(H/2), ceil(W/2)) in [-1, 1], time-aligned with the clip
    (output frame i at clip position i; the objective says which input frame it is compared with)."""

    kind = "frame"

    def __init__(self, arch: DecoderArch, in_channels: int, channels: int, latent_dim: int) -> None:
        super().__init__(arch, in_channels, channels, latent_dim)
        self.refine = RefineBlock(channels)
        self.out = nn.ConvTranspose3d(channels, 4 if arch.background else 3, 4, 2, padding=1)  # x2 in time and space
        self.background = nn.Conv3d(channels, 3, (1, 3, 3), padding=(0, 1, 1)) if arch.background else None

    def forward(
        self, x: Tensor, z: Tensor, size: tuple[int, int, int], layers: Collection[str] = (), head: bool = True
    ) -> tuple[dict[str, Tensor], Optional[Tensor]]:
        """`size` = (T, h, w) of the output; returns ({layer: pre-activation} for `layers`, frames or
        None if not `head`). Only the layers asked for run."""
        self._check_layers(layers)
        pre = {"trunk": self.trunk(x, z)}
        if head or "refine" in layers:
            pre["refine"] = self.refine(F.relu(pre["trunk"]))
        feats = {name: pre[name] for name in layers}
        if not head:
            return feats, None
        t, h, w = size
        x = F.relu(pre["refine"])
        y = self.out(x)[:, :, :t, :h, :w]
        if self.background is None:
            return feats, torch.tanh(y)
        foreground, mask = torch.tanh(y[:, :3]), torch.sigmoid(y[:, 3:])
        background = torch.tanh(self.background(x.mean(dim=2, keepdim=True)))  # (B, 3, 1, H/4, W/4)
        background = F.interpolate(background, scale_factor=(1, 2, 2), mode="trilinear")[:, :, :, :h, :w]
        return feats, mask * foreground + (1.0 - mask) * background  # (B, 3, T, h, w)
