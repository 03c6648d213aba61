"""TSM: the Temporal Shift Module in a TSN on a 2D Inception-v1.

Lin, Gan, Han, "TSM: Temporal Shift Module for Efficient Video Understanding" (ICCV 2019). A TSN
(rev2net.tsn) whose 2D backbone exchanges information between neighbouring segments by shifting
part of the channels along time, at no extra parameters or multiply-adds:

- `temporal_shift`: of C channels, the first C/8 take the next segment's values (shifted backward
  in time), the next C/8 the previous segment's (shifted forward), the rest stay; the ends are
  zero-padded (the paper's shift proportion 1/4 in all, 1/8 each way; `shift_div` = 8);
- 8 segments by default (the paper's), one frame (or one flow stack) per segment, average consensus;
- the same modalities as TSN: "rgb", "flow" (new_length flow pairs per segment) and "rgb_flow".

Where this chooses: the paper inserts the shift in the residual branch of ResNet blocks ("residual
shift"), so that the unshifted features still pass through the shortcut. Inception-v1 has no
shortcut; here the shift is applied to the input of every Inception block (inception3a ... 5b, 9
places), i.e. the paper's "in-place shift" at the block level. The stem (conv1 to conv3) is not
shifted. Dropout defaults to 0.5 (ours; TSN's 0.8 / 0.7 was set for training from ImageNet on UCF101).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rev2net.googlenet import BLOCKS, INCEPTION_BLOCKS
from rev2net.tsn import MODALITIES, TSN
from rev2net.two_stream import TwoStream

SHIFT_DIV = 8  # 1/8 of the channels shifted each way (Lin et al. 2019)


def temporal_shift(x: Tensor, segments: int, shift_div: int = SHIFT_DIV) -> Tensor:
    """(B * T, C, H, W) -> the same shape with channels [0, C/d) taken from t + 1, [C/d, 2C/d) from
    t - 1 (d = shift_div) and zeros where t + 1 or t - 1 leaves the clip; the other channels unchanged."""
    nt, c, h, w = x.shape
    if nt % segments:
        raise ValueError(f"temporal_shift: {nt} snippets are not a whole number of clips of {segments} segments")
    x = x.reshape(nt // segments, segments, c, h, w)  # (B, T, C, H, W)
    fold = c // shift_div
    backward = F.pad(x[:, 1:, :fold], (0, 0, 0, 0, 0, 0, 0, 1))  # t <- t + 1; zeros at the last step
    forward = F.pad(x[:, :-1, fold:2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))  # t <- t - 1; zeros at the first
    return torch.cat([backward, forward, x[:, :, 2 * fold:]], dim=2).reshape(nt, c, h, w)


class TSM(TSN):
    """TSN whose backbone shifts 2/shift_div of the channels in time before every Inception block.

    Args: those of `TSN` (segments default 8, dropout 0.5) and `shift_div`.
    """

    def __init__(self, num_classes: int, *, segments: int = 8, dropout: float = 0.5,
                 shift_div: int = SHIFT_DIV, **kwargs) -> None:
        super().__init__(num_classes, segments=segments, dropout=dropout, **kwargs)
        if shift_div < 2:
            raise ValueError(f"shift_div={shift_div} must be >= 2 (1/shift_div of the channels moves each way)")
        self.shift_div = shift_div

    def snippet_features(self, snippets: Tensor, segments: int) -> Tensor:
        """(B * K, C', H, W) -> pooled features (B * K, F), shifting in time before each Inception block."""
        x = snippets
        for name in BLOCKS:
            if name in INCEPTION_BLOCKS:
                x = temporal_shift(x, segments, self.shift_div)
            x = self.backbone._modules[name](x)
        return x.mean(dim=(2, 3))


def build_tsm(
    num_classes: int,
    *,
    modality: str = "rgb",
    segments: int = 8,
    new_length: int = 5,
    width: float = 1.0,
    dropout: float = 0.5,
    shift_div: int = SHIFT_DIV,
    partial_bn: bool = False,
    fusion_weights: Sequence[float] = (1.0, 1.0),
    fusion: str = "softmax",
) -> nn.Module:
    """TSM (Lin et al. 2019) for `modality` "rgb" | "flow" (a `TSM`, forward(x)) or "rgb_flow" (a
    `TwoStream` of both, forward(frames, flow)); see the module docstring."""
    if modality not in MODALITIES:
        raise ValueError(f"TSM modality={modality!r} is not one of {', '.join(MODALITIES)}")

    def stream(kind: str) -> TSM:
        return TSM(num_classes, modality=kind, segments=segments, new_length=new_length, width=width,
                   dropout=dropout, shift_div=shift_div, partial_bn=partial_bn)

    if modality == "rgb_flow":
        return TwoStream(stream("rgb"), stream("flow"), weights=fusion_weights, fusion=fusion)
    return stream(modality)
