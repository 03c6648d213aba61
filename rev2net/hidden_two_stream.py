"""Hidden two-stream networks: MotionNet stacked under a temporal-stream I3D, late-fused with an RGB I3D.

Zhu, Lan, Newsam, Hauptmann, "Hidden Two-Stream Convolutional Networks for Action Recognition"
(ACCV 2018), Secs. 3.2-3.3, with I3D as both streams' backbone (Table 4, "Ours (I3D)", the
paper's strongest variant):

    frames (B, 3, T, H, W) in [-1, 1]
      |-> spatial stream: RGB I3D ------------------------------------------> logits_s (B, classes)
      '-> MotionNet (rev2net.motionnet) -> flow (B, 2, T-1, H, W), pixels
            -> / FLOW_BOUND, clipped to [-1, 1] -> temporal stream: I3D, in_channels=2 -> logits_t
    forward: log( w_s * softmax(logits_s) + w_t * softmax(logits_t) ), w_s + w_t = 1 (late fusion)

The temporal stream's input follows the project's flow convention (pixels / 20, the TV-L1 clip
bound, in [-1, 1]); the paper clips at 20 px and rescales with its own normalisation layer (Sec. 3.2).

Fine-tuning the stacked temporal stream (Sec. 3.2, Table 1), `variant`:
    "a"  MotionNet frozen: no gradient, weights unchanged, run under no_grad in eval mode
    "b"  end to end, the action loss only
    "c"  end to end, the action loss plus MotionNet's unsupervised losses (multi-task; the paper's best)
`forward_streams` returns each stream's logits (for a cross-entropy per stream) and, for "c", the
unsupervised terms `pixel`, `smooth`, `ssim` (named, not weighted by the lambdas);
`objective` adds them up.

Interface, as for every classifier here: the features are both streams' pooled Mixed_5c
features concatenated, (B, num_features) with num_features = spatial's + temporal's (what a domain
classifier or a new head reads); `forward_head` splits them, applies each stream's dropout and
1x1x1 logits layer, and fuses. Because the logits layer is linear, this equals I3D's own head
(pool, dropout, logits, mean over positions) in eval mode; in training, dropout acts on the pooled
features rather than on every position. `reset_classifier` replaces both streams' logits layers.

Choices where the paper is silent or differs: equal fusion weights by default (the paper fuses
spatial:temporal = 1:1.5, `temporal_weight=1.5`); the streams' clips have the same T frames
(the temporal stream sees the T-1 flows, where the paper stacks 10 flows from 11 frames); both
I3Ds share `width` and `dropout`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rev2net.i3d import InceptionI3d
from rev2net.losses import FLOW_BOUND
from rev2net.motionnet import MotionNet, MotionNetLoss, build_motionnet, load_motionnet, resize_flow, unsupervised_terms

VARIANTS = ("a", "b", "c")


@dataclass
class TwoStreamOutput:
    """What `HiddenTwoStream.forward_streams` returns."""

    logits: Tensor  # (B, classes): fused, log of the weighted average of the softmaxes
    spatial: Tensor  # (B, classes): the RGB stream's logits
    temporal: Tensor  # (B, classes): the stacked temporal stream's logits
    flow: Tensor  # (B, 2, T-1, H, W): MotionNet's flow, pixels
    unsupervised: dict[str, Tensor] = field(default_factory=dict)  # pixel, smooth, ssim (variant "c" in training)
    features: Optional[Tensor] = None  # (B, num_features): both streams' pooled features (forward_features)


class HiddenTwoStream(nn.Module):
    """RGB I3D + (MotionNet -> flow I3D), late fusion of class scores. See the module docstring."""

    def __init__(self, num_classes: int, *, variant: str = "c", width: float = 1.0, dropout: float = 0.5,
                 motionnet: Optional[MotionNet] = None, motionnet_width: float = 1.0, motionnet_frames: int = 11,
                 temporal_weight: float = 1.0, loss: MotionNetLoss = MotionNetLoss()) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"hidden two-stream variant={variant!r} is not one of {', '.join(VARIANTS)} (a: MotionNet "
                             "frozen, b: end to end with the action loss, c: plus the unsupervised losses)")
        if not (math.isfinite(temporal_weight) and temporal_weight >= 0):
            raise ValueError(f"temporal_weight={temporal_weight!r} must be a finite number >= 0")
        self.variant = variant
        self.loss = loss
        self.fusion = (1.0 / (1.0 + temporal_weight), temporal_weight / (1.0 + temporal_weight))  # (spatial, temporal)
        self.spatial = InceptionI3d(num_classes, width=width, dropout=dropout)
        self.motionnet = motionnet if motionnet is not None else build_motionnet(frames=motionnet_frames,
                                                                                  width=motionnet_width)
        self.temporal = InceptionI3d(num_classes, width=width, dropout=dropout, in_channels=2)
        if variant == "a":
            self.motionnet.requires_grad_(False)
            self.motionnet.eval()

    # ------------------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return self.spatial.num_classes

    @property
    def num_features(self) -> int:
        return self.spatial.num_features + self.temporal.num_features

    def train(self, mode: bool = True) -> "HiddenTwoStream":
        super().train(mode)
        if self.variant == "a":
            self.motionnet.eval()  # frozen: always the inference network
        return self

    def reset_classifier(self, num_classes: int) -> None:
        self.spatial.reset_classifier(num_classes)
        self.temporal.reset_classifier(num_classes)

    # --------------------------------------------------------------------------------- forward
    def _flow(self, frames: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """MotionNet's flow (B, 2, T-1, H, W) in pixels, and the unsupervised terms where they train it."""
        if self.variant == "a":
            with torch.no_grad():
                return self.motionnet(frames), {}
        pyramid = self.motionnet.pyramid(frames)
        terms = unsupervised_terms(frames, pyramid, self.loss) if self.variant == "c" and self.training else {}
        return resize_flow(pyramid[0], frames.shape[-2:]), terms

    @staticmethod
    def flow_input(flow: Tensor) -> Tensor:
        """Flow in pixels -> the temporal stream's input: / FLOW_BOUND, clipped to [-1, 1]."""
        return (flow / FLOW_BOUND).clamp(-1.0, 1.0)

    def _features(self, frames: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if frames.dim() != 5 or frames.shape[1] != 3 or frames.shape[2] < 2:
            raise ValueError(f"frames must be (B, 3, T, H, W) with T >= 2, got {tuple(frames.shape)}")
        flow, terms = self._flow(frames)
        spatial = self.spatial.forward_head(self.spatial.forward_features(frames), pre_logits=True)  # (B, Fs)
        temporal = self.temporal.forward_head(self.temporal.forward_features(self.flow_input(flow)), pre_logits=True)
        return torch.cat([spatial, temporal], 1), flow, terms

    def forward_features(self, frames: Tensor) -> Tensor:
        """frames (B, 3, T, H, W) -> both streams' pooled features concatenated (B, num_features)."""
        return self._features(frames)[0]

    def _stream_logits(self, features: Tensor) -> tuple[Tensor, Tensor]:
        spatial, temporal = features.split([self.spatial.num_features, self.temporal.num_features], 1)
        logits = []
        for stream, pooled in ((self.spatial, spatial), (self.temporal, temporal)):
            x = stream.dropout(pooled[:, :, None, None, None])
            logits.append(stream.logits(x).flatten(1))
        return logits[0], logits[1]

    def fuse(self, spatial: Tensor, temporal: Tensor) -> Tensor:
        """Late fusion: log(w_s * softmax(spatial) + w_t * softmax(temporal)), computed stably."""
        w_s, w_t = self.fusion
        parts = [F.log_softmax(x.float(), 1) + math.log(w) for x, w in ((spatial, w_s), (temporal, w_t)) if w > 0]
        return torch.logsumexp(torch.stack(parts), 0)

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, num_features) -> fused logits (B, classes)."""
        return self.fuse(*self._stream_logits(features))

    def forward_streams(self, frames: Tensor) -> TwoStreamOutput:
        """Fused and per-stream logits, the flow, and (variant "c", training) the unsupervised terms."""
        features, flow, terms = self._features(frames)
        spatial, temporal = self._stream_logits(features)
        return TwoStreamOutput(self.fuse(spatial, temporal), spatial, temporal, flow, terms, features)

    def forward(self, frames: Tensor) -> Tensor:
        """frames (B, 3, T, H, W) in [-1, 1] -> fused logits (B, classes)."""
        return self.forward_head(self.forward_features(frames))

    # ------------------------------------------------------------------------------- objective
    def objective(self, out: TwoStreamOutput, label: Tensor, *, unsupervised_weight: float = 1.0) -> dict[str, Tensor]:
        """Training loss terms: `ce_spatial`, `ce_temporal` (cross-entropy of each stream), for variant
        "c" `pixel`, `smooth`, `ssim` (unweighted) and `unsupervised` (their lambda-weighted sum), and
        `total` = ce_spatial + ce_temporal + unsupervised_weight * unsupervised."""
        terms = {"ce_spatial": F.cross_entropy(out.spatial.float(), label),
                 "ce_temporal": F.cross_entropy(out.temporal.float(), label)}
        total = terms["ce_spatial"] + terms["ce_temporal"]
        if out.unsupervised:
            terms.update(out.unsupervised)
            terms["unsupervised"] = self.loss.total(out.unsupervised)
            total = total + unsupervised_weight * terms["unsupervised"]
        terms["total"] = total
        return terms


def build_hidden_two_stream(num_classes: int, *, variant: str = "c", width: float = 1.0, dropout: float = 0.5,
                            motionnet_width: Optional[float] = None, motionnet_frames: Optional[int] = None,
                            motionnet_checkpoint: Optional[Union[str, os.PathLike]] = None,
                            temporal_weight: float = 1.0, loss: MotionNetLoss = MotionNetLoss()) -> HiddenTwoStream:
    """Hidden two-stream I3D (Zhu et al., Table 4).

    Args:
        num_classes: classes of both streams.
        variant: "a" (MotionNet frozen), "b" (end to end, action loss), "c" (plus unsupervised losses).
        width, dropout: of both I3D streams.
        motionnet_width, motionnet_frames: MotionNet's channel multiplier and window; default: the
            checkpoint's when one is given, else `width` and 11 (the paper's window).
        motionnet_checkpoint: a pretrained MotionNet (`python -m rev2net.motionnet_pretrain ... --out CKPT`);
            without one MotionNet starts from scratch (pretraining it first is the paper's recipe).
        temporal_weight: the temporal stream's fusion weight against 1 for the spatial stream
            (1.0: the plain average of the softmaxes; the paper fuses 1:1.5).
        loss: MotionNet's lambdas and per-scale weights (variant "c").
    """
    motionnet = None
    if motionnet_checkpoint is not None:
        motionnet = load_motionnet(motionnet_checkpoint)
        for key, asked in (("motionnet_width", motionnet_width), ("motionnet_frames", motionnet_frames)):
            stored = motionnet.config[key.split("_")[1]]
            if asked is not None and asked != stored:
                raise ValueError(f"{key}={asked} but motionnet_checkpoint={os.fspath(motionnet_checkpoint)!r} holds a "
                                 f"MotionNet with {key.split('_')[1]}={stored}; pass {key}=None (or {stored})")
    return HiddenTwoStream(num_classes, variant=variant, width=width, dropout=dropout, motionnet=motionnet,
                           motionnet_width=width if motionnet_width is None else motionnet_width,
                           motionnet_frames=11 if motionnet_frames is None else motionnet_frames,
                           temporal_weight=temporal_weight, loss=loss)
