"""Two-stream networks: an RGB and a flow classifier trained side by side and fused late, and the
two-stream I3D built from them.

Carreira & Zisserman, "Quo Vadis, Action Recognition?" (CVPR 2017), "The New: Two-Stream Inflated
3D ConvNets": an RGB I3D on frames and a flow I3D on optical flow (2 input channels), "trained
separately and their predictions averaged at test time". Here:

- the flow I3D (`build_i3d_flow`) is rev2net.i3d's InceptionI3d with `in_channels=2`; its input is
  (B, 2, T, H, W) = the flow of T consecutive frame pairs at the input resolution, channel 0 = x
  (right), 1 = y (down), in pixels / FLOW_BOUND (so in [-1, 1]);
- fusion averages the two softmax scores (weights are an argument; equal by default, as in the
  paper); `forward` returns log(w_rgb * softmax(rgb) + w_flow * softmax(flow)) with the weights
  normalised to sum 1, so softmax(logits) is the fused score and cross-entropy on it is the
  negative log-likelihood of the fused prediction. `fusion="logits"` instead returns the weighted
  mean of the two streams' logits (fusion before the softmax, as TSN's paper tests);
- "trained separately" is `forward_streams`, which returns each stream's logits so that training can
  put a cross-entropy on each (the streams share no parameters, so summing the two losses trains
  each as if alone);
- ImageNet weights for either stream: rev2net.inflate.load_pretrained(model.rgb | model.flow, spec).

`TwoStream` fuses any pair of classifiers with `forward_features -> (B, F)` / `forward_head`
(TSN and TSM use it for their "rgb_flow" modality); I3D streams are pooled through their own head.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rev2net.i3d import InceptionI3d

STREAMS = ("rgb", "flow")
FUSIONS = ("softmax", "logits")


def _pooled_features(stream: nn.Module, x: Tensor) -> Tensor:
    """(B, F) features of one stream; I3D's forward_features is the Mixed_5c map, pooled by its head."""
    if isinstance(stream, InceptionI3d):
        return stream.forward_head(stream.forward_features(x), pre_logits=True)
    return stream.forward_features(x)


def _head(stream: nn.Module, features: Tensor) -> Tensor:
    """(B, F) -> logits of one stream. For I3D: dropout and the 1x1x1 logits conv on the pooled features,
    which equals its head (mean over positions of the conv) in eval mode, the conv being linear."""
    if isinstance(stream, InceptionI3d):
        return stream.logits(stream.dropout(features[:, :, None, None, None])).flatten(1)
    return stream.forward_head(features)


class TwoStream(nn.Module):
    """Late fusion of an RGB and a flow classifier; `forward(frames, flow)` -> fused log-scores (B, classes).

    Args:
        rgb, flow: the two streams (same class count).
        weights: fusion weights (rgb, flow), normalised to sum 1.
        fusion: "softmax" (log of the weighted mean of the softmax scores) or "logits" (weighted mean
            of the logits).
    """

    def __init__(
        self, rgb: nn.Module, flow: nn.Module, *, weights: Sequence[float] = (1.0, 1.0), fusion: str = "softmax"
    ) -> None:
        super().__init__()
        if rgb.num_classes != flow.num_classes:
            raise ValueError(f"the streams disagree on the class count: rgb {rgb.num_classes}, flow {flow.num_classes}")
        if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"fusion weights={tuple(weights)} must be two non-negative numbers (rgb, flow), "
                             "not both zero")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r} is not one of {', '.join(FUSIONS)}")
        self.rgb = rgb
        self.flow = flow
        total = float(sum(weights))
        self.weights = (weights[0] / total, weights[1] / total)  # normalised (rgb, flow)
        self.fusion = fusion
        self.num_features = rgb.num_features + flow.num_features  # forward_features: rgb then flow

    @property
    def num_classes(self) -> int:
        return self.rgb.num_classes

    def reset_classifier(self, num_classes: int) -> None:
        self.rgb.reset_classifier(num_classes)
        self.flow.reset_classifier(num_classes)

    def fuse(self, rgb_logits: Tensor, flow_logits: Tensor) -> Tensor:
        """(B, classes): log(w_rgb * softmax(rgb) + w_flow * softmax(flow)), computed in log space, or
        w_rgb * rgb + w_flow * flow with fusion="logits"."""
        if self.fusion == "logits":
            return self.weights[0] * rgb_logits + self.weights[1] * flow_logits
        terms = [F.log_softmax(logits, dim=-1) + math.log(w)
                 for logits, w in zip((rgb_logits, flow_logits), self.weights) if w > 0]
        return torch.logsumexp(torch.stack(terms), dim=0)

    def forward_streams(self, frames: Tensor, flow: Tensor) -> dict[str, Tensor]:
        """{"rgb": (B, classes), "flow": (B, classes)}: each stream's own logits (one loss per stream)."""
        if frames.shape[0] != flow.shape[0]:
            raise ValueError(f"frames {tuple(frames.shape)} and flow {tuple(flow.shape)} differ in batch size")
        return {"rgb": self.rgb(frames), "flow": self.flow(flow)}

    def forward_features(self, frames: Tensor, flow: Tensor) -> Tensor:
        """(B, F_rgb + F_flow): the two streams' pooled features side by side."""
        return torch.cat([_pooled_features(self.rgb, frames), _pooled_features(self.flow, flow)], dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, F_rgb + F_flow) -> fused log-scores (B, classes)."""
        rgb, flow = features.split([self.rgb.num_features, self.flow.num_features], dim=1)
        return self.fuse(_head(self.rgb, rgb), _head(self.flow, flow))

    def forward(self, frames: Tensor, flow: Tensor) -> Tensor:
        streams = self.forward_streams(frames, flow)
        return self.fuse(streams["rgb"], streams["flow"])


# ------------------------------------------------------------------------------------- builders


def build_i3d_flow(num_classes: int, *, width: float = 1.0, dropout: float = 0.5) -> InceptionI3d:
    """The flow I3D (Carreira & Zisserman 2017): InceptionI3d on (B, 2, T, H, W) flow in [-1, 1]."""
    return InceptionI3d(num_classes, width=width, dropout=dropout, in_channels=2)


def build_two_stream_i3d(
    num_classes: int,
    *,
    width: float = 1.0,
    dropout: float = 0.5,
    fusion_weights: Sequence[float] = (1.0, 1.0),
    fusion: str = "softmax",
) -> TwoStream:
    """RGB I3D + flow I3D, late fusion of softmax scores; `forward(frames, flow)`; see the module docstring."""
    rgb = InceptionI3d(num_classes, width=width, dropout=dropout)
    flow = build_i3d_flow(num_classes, width=width, dropout=dropout)
    return TwoStream(rgb, flow, weights=fusion_weights, fusion=fusion)
