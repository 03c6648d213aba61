"""Rev2Net's training-only parts: the flow decoder, the reversed-frame decoder, the Gaussian heads.

Wang, Yao et al., "Reversing Two-Stream Networks with Decoding Discrepancy Penalty" (arXiv 2018)
and Yao, Wang et al., "Multi-Task Learning of Generalizable Representations for Video Action
Recognition" (ICME 2020): two TransposeConv3D layers in the flow decoder, three in the frame decoder
plus a Conv3D background branch, both standing on Conv3d_2c_3x3 (16x56x56), kept weak on purpose.
Everything here runs only in training; at test time Rev2Net is I3D.

Architecture "paper" (the default). Shapes for a (B, 3, T, H, W) clip; D = Conv3d_2c channels
(192 x width), C = decoder_channels x width (32 at width 1); [..] = T=32, H=W=224, width 1:

                 Conv3d_2c_3x3 (B, D, T/2, H/4, W/4)            [192 x 16 x 56 x 56]
              .-----------------'-----------------.
   flow decoder                                   frame decoder
   trunk  TConv 1x1x1 D->C, BN,  <-- DDP low -->  trunk   TConv 1x1x1 D->C, BN,      [32 x 16 x 56 x 56]
          FiLM(z1), then ReLU                             FiLM(z2), then ReLU
   head   TConv k=(3,4,4) s=2 p=1, C->2           refine  TConv 3x3x3 p=1, BN, ReLU  [32 x 16 x 56 x 56]
   flow   (B, 2, T-1, H/2, W/2)                   out     TConv k=4 s=2 p=1, C->4:
          [2 x 31 x 112 x 112]                            fg = tanh(ch 0-2), mask = sigmoid(ch 3)
          one field per frame pair                bg      time-mean of refine, Conv3d (1,3,3) C->3,
                                                          tanh, x2 upsampled: (B, 3, 1, H/2, W/2)
                                                  frames  mask * fg + (1 - mask) * bg, flipped in time:
                                                          (B, 3, T, H/2, W/2)   [3 x 32 x 112 x 112]

- Cheap by construction: the decoders work on the tap's 56x56 grid with C channels and upsample
  (x2 in time and space) only in their last layer, so no hidden tensor is larger than the tap's
  and the 192 -> 32 reduction is a pointwise layer. A full-width 3x3x3 TConv on the tap would
  alone cost 50 G multiply-adds.
- Output grid: stride 2 in space and 1 in time (112x112 for 224 crops), cropped to exactly
  (T-1 | T, ceil(H/2), ceil(W/2)); `OUTPUT_STRIDE` is what the data pipeline should deliver flow at.
  Half resolution keeps the decoders weak and halves the flow targets' storage.
- Time: the flow head's kernel 3 (stride 2, padding 1) maps the T/2 tap steps to the T-1 frame
  pairs; the frame head's kernel 4 gives T frames.
- Compositing follows the two-stream video generator the background branch comes from (Vondrick et
  al., 2016): a moving foreground, a mask and one static background frame made by the Conv3D
  branch from the time-averaged features, broadcast over time.
- Reversed order: transposed convolutions are time-equivariant with a receptive field of a few
  steps, so no convolutional decoder can move content from one end of the clip to the other. The
  frame decoder's layers therefore stay time-aligned with the flow decoder's (low-level DDP compares
  the same clip positions) and its output is read out in reversed time (a flip, free); long-range
  context reaches the decoders through the Gaussian latents, which see the whole clip.
- Low-level DDP compares the trunk layers, equal in shape by construction, before their ReLU: after
  it, the penalty's cheapest solution is to silence both layers, and a dead ReLU never recovers (no
  gradient), which would cut the decoders off for good.
- Gaussian heads (DDP high/both): Linear(Mixed_5c averaged over T, H, W -> 2 x latent_dim) giving
  mean and log-variance (soft-bounded to +-8 by tanh so that exp() never overflows). A
  reparameterised sample z = mu + exp(logvar / 2) * eps (the mean in eval mode) conditions its
  decoder by FiLM on the trunk: x * (1 + gamma) + beta with (gamma, beta) = tanh(Linear(z)), bounded
  because eq. (3) has no prior term to keep z in range (unbounded, it blew training up), and
  zero-initialised so that training starts from the unconditioned decoder.

Variants (`DECODER_ARCHS`; the paper ablates "three types of architectures for the decoder streams"
without describing them):
- "paper": as drawn above.
- "plain": no background branch and no mask: the frame head gives RGB directly (tanh); ablates the
  compositing.
- "deep": the decoders stand on Mixed_3c (480 x 16 x 28 x 28, two Inception blocks deeper: "more
  layers in the encoder and its reversed decoder counterparts"); the trunk is a TConv with kernel =
  stride = (1, 2, 2) that upsamples back to the 56x56 grid. Same output grid.

Multiply-adds per clip at T=32, 224x224, width 1 (torch.utils.flop_counter; I3D itself: 55.58 G):
    paper: flow decoder 0.46 G, frame decoder 2.11 G, Gaussian heads 0.26 M (training forward: 1.046x I3D)
    plain: flow decoder 0.46 G, frame decoder 2.00 G
    deep:  flow decoder 0.92 G, frame decoder 2.57 G
(`python -m rev2net.summary --decoder-arch ...` prints these for any size.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rev2net.spec import DECODER_ARCHS as ARCH_NAMES
from rev2net.spec import DECODER_OUTPUT_STRIDE as OUTPUT_STRIDE  # every decoder's output grid, relative to the input
from rev2net.i3d import BN_EPS, BN_MOMENTUM, ENDPOINT_STRIDES

LOGVAR_BOUND = 8.0  # |log-variance| of the Gaussian heads stays below this (tanh soft bound)


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


class TrunkBlock(nn.Module):
    """TransposeConv3D with kernel = stride (no overlap) -> BN -> optional FiLM. Returns the
    pre-activation (what low-level DDP compares); the caller applies the ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int]) -> None:
        super().__init__()
        self.tconv = nn.ConvTranspose3d(in_channels, out_channels, tuple(stride), tuple(stride), bias=False)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor, film: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        x = self.bn(self.tconv(x))
        if film is not None:
            gamma, beta = film  # (B, C) each
            x = x * (1.0 + gamma[:, :, None, None, None]) + beta[:, :, None, None, None]
        return x


class RefineBlock(nn.Sequential):
    """TransposeConv3D 3x3x3, stride 1 (same size) -> BN -> ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.ConvTranspose3d(channels, channels, 3, 1, padding=1, bias=False),
            nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )


class FiLM(nn.Module):
    """Latent z (B, L) -> per-channel (gamma, beta), (B, C) each, bounded by tanh; zero-initialised
    (the identity at the start)."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(latent_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        gamma, beta = torch.tanh(self.proj(z)).chunk(2, dim=1)  # scale 1 + gamma in (0, 2), shift in (-1, 1)
        return gamma, beta


class GaussianHead(nn.Module):
    """High-level features (B, F) -> diagonal Gaussian (mean, log-variance), each (B, latent_dim)."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, 2 * latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.proj(h).chunk(2, dim=1)
        return mean, LOGVAR_BOUND * torch.tanh(raw / LOGVAR_BOUND)


# ------------------------------------------------------------------------------------- decoders


class _Decoder(nn.Module):
    """What both decoders share in structure: the trunk layer (compared by low-level DDP) and the
    FiLM conditioning on it."""

    def __init__(self, arch: DecoderArch, in_channels: int, channels: int, latent_dim: Optional[int]) -> None:
        super().__init__()
        self.arch = arch
        self.trunk = TrunkBlock(in_channels, channels, arch.trunk_stride)
        self.film = FiLM(latent_dim, channels) if latent_dim else None

    def run_trunk(self, x: Tensor, z: Optional[Tensor]) -> tuple[list[Tensor], Tensor]:
        """-> ([trunk pre-activation], trunk output after ReLU), both (B, C, T/2, H/4, W/4)."""
        if (z is None) != (self.film is None):
            raise ValueError("a conditioned decoder needs a latent z and an unconditioned one takes none")
        pre = self.trunk(x, self.film(z) if self.film is not None else None)
        return [pre], F.relu(pre)


class FlowDecoder(_Decoder):
    """Tap features -> flow of the T-1 consecutive frame pairs, (B, 2, T-1, ceil(H/2), ceil(W/2)),
    in units of `rev2net.losses.FLOW_BOUND` pixels of that grid."""

    def __init__(self, arch: DecoderArch, in_channels: int, channels: int, latent_dim: Optional[int]) -> None:
        super().__init__(arch, in_channels, channels, latent_dim)
        # time: 2 * T/2 - 1 = T-1 steps, step o centred between frames o and o+1; space: x2
        self.head = nn.ConvTranspose3d(channels, 2, (3, 4, 4), (2, 2, 2), padding=(1, 1, 1))

    def forward(
        self, x: Tensor, z: Optional[Tensor], size: tuple[int, int, int], head: bool = True
    ) -> tuple[list[Tensor], Optional[Tensor]]:
        """`size` = (T-1, h, w) of the output; returns (trunk features, flow or None if not `head`)."""
        feats, x = self.run_trunk(x, z)
        if not head:
            return feats, None
        t, h, w = size
        return feats, self.head(x)[:, :, :t, :h, :w]


class FrameDecoder(_Decoder):
    """Tap features -> the clip's frames in reversed time order, (B, 3, T, ceil(H/2), ceil(W/2)) in [-1, 1]."""

    def __init__(self, arch: DecoderArch, in_channels: int, channels: int, latent_dim: Optional[int]) -> None:
        super().__init__(arch, in_channels, channels, latent_dim)
        self.refine = RefineBlock(channels)
        self.out = nn.ConvTranspose3d(channels, 4 if arch.background else 3, 4, 2, padding=1)  # x2 in time and space
        self.background = nn.Conv3d(channels, 3, (1, 3, 3), padding=(0, 1, 1)) if arch.background else None

    def forward(
        self, x: Tensor, z: Optional[Tensor], size: tuple[int, int, int], head: bool = True
    ) -> tuple[list[Tensor], Optional[Tensor]]:
        """`size` = (T, h, w) of the output; returns (trunk features, reversed frames or None)."""
        feats, x = self.run_trunk(x, z)
        if not head:
            return feats, None
        t, h, w = size
        x = self.refine(x)
        y = self.out(x)[:, :, :t, :h, :w]
        if self.background is None:
            frames = torch.tanh(y)
        else:
            foreground, mask = torch.tanh(y[:, :3]), torch.sigmoid(y[:, 3:])
            background = torch.tanh(self.background(x.mean(dim=2, keepdim=True)))  # (B, 3, 1, H/4, W/4)
            background = F.interpolate(background, scale_factor=(1, 2, 2), mode="trilinear")[:, :, :, :h, :w]
            frames = mask * foreground + (1.0 - mask) * background  # (B, 3, T, h, w)
        return feats, frames.flip(2)
