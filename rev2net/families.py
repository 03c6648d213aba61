"""The builders of the model families beside Rev2Net, each network adapted to the training loop.

Every family's model takes its inputs in the registry's order (rev2net.registry.input_keys) and
returns a `ModelOutput` (rev2net.output): its class scores, the pooled features a domain head
reads, and, for a two-stream model, each stream's logits (one cross-entropy each; evaluation
scores the fused ones). The networks themselves live in their own modules:

    dcd              rev2net.dcd         Zhao et al. 2018, frames (B, 3, 8, H, W)
    tsn, tsm         rev2net.tsn, .tsm   Wang et al. 2016, Lin et al. 2019: one frame per segment
                                         (B, 3, K, H, W) and/or K stacks of L flow pairs (B, 2, K*L, H, W)
    i3d_flow         rev2net.two_stream  the flow stream of two-stream I3D, (B, 2, T, H, W)
    two_stream_i3d   rev2net.two_stream  RGB and flow I3D, late fusion of softmax scores

Builders take (ModelConfig, num_classes, DataConfig) like Rev2Net's and apply `model.bn_momentum`
to every BatchNorm (short trials need a faster-moving one, as Rev2Net's do).
`model.pretrained=imagenet:/path/googlenet.pth` initialises every 2D Inception-v1 from ImageNet
(flow streams by TSN's cross-modality averaging) and every I3D by inflating it (rev2net.inflate).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from rev2net.data.config import DataConfig
from rev2net.i3d import InceptionI3d
from rev2net.output import ModelOutput
from rev2net.spec import ModelConfig
from rev2net.two_stream import TwoStream

IMAGENET = "imagenet:"  # model.pretrained scheme of a 2D GoogLeNet checkpoint (rev2net.inflate)
TSN_SEGMENTS, TSM_SEGMENTS = 3, 8  # the papers' segments per video (model.segments=0 takes these)


def _logits_and_features(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One stream's (logits (B, classes), pooled features (B, F)) from a single pass of its backbone."""
    if isinstance(net, InceptionI3d):
        fmap = net.forward_features(x)  # (B, C, t, h, w)
        return net.forward_head(fmap), fmap.mean(dim=(2, 3, 4))
    if hasattr(net, "forward_segment_features"):  # TSN, TSM: the consensus of the segments' scores
        per_segment = net.forward_segment_features(x)  # (B, K, F)
        return net.forward_head(per_segment).mean(dim=1), per_segment.mean(dim=1)
    features = net.forward_features(x)  # (B, F)
    return net.forward_head(features), features


class FamilyModel(nn.Module):
    """A family's network as the training loop wants it: forward(*inputs, need=None) -> ModelOutput
    (`need` is Rev2Net's; other families compute the same in training and evaluation)."""

    def __init__(self, net: nn.Module, *, bn_momentum: float) -> None:
        super().__init__()
        self.net = net
        self.num_features = net.num_features
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def forward(self, *inputs: Tensor, need: Optional[Any] = None) -> ModelOutput:
        if isinstance(self.net, TwoStream):  # (frames (B, 3, ...), flow (B, 2, ...))
            rgb, rgb_features = _logits_and_features(self.net.rgb, inputs[0])
            flow, flow_features = _logits_and_features(self.net.flow, inputs[1])
            return ModelOutput(logits=self.net.fuse(rgb, flow), features=torch.cat([rgb_features, flow_features], 1),
                               stream_logits=[rgb, flow])
        logits, features = _logits_and_features(self.net, *inputs)
        return ModelOutput(logits=logits, features=features)


def _imagenet(cfg: ModelConfig) -> Optional[str]:
    """The 2D GoogLeNet checkpoint of `model.pretrained`, for families built from 2D Inception-v1."""
    if cfg.pretrained is None:
        return None
    if not cfg.pretrained.startswith(IMAGENET):
        raise ValueError(f"model.pretrained={cfg.pretrained!r}: model.name={cfg.name} starts from a 2D Inception-v1; "
                         f"give its ImageNet checkpoint as {IMAGENET}/path/googlenet.pth")
    return cfg.pretrained[len(IMAGENET):]


def _inflated(net: InceptionI3d, cfg: ModelConfig) -> InceptionI3d:
    if cfg.pretrained is not None:
        from rev2net.inflate import load_pretrained

        net.pretrained_report = load_pretrained(net, cfg.pretrained)
    return net


def _load_2d(net: nn.Module, path: Optional[str]) -> nn.Module:
    """ImageNet weights into every GoogLeNet of a TSN/TSM (one or two streams)."""
    if path is not None:
        from rev2net.googlenet import load_googlenet_state

        for stream in (net.rgb, net.flow) if isinstance(net, TwoStream) else (net,):
            stream.pretrained_report = load_googlenet_state(stream.backbone, path)
    return net


def build_dcd(cfg: ModelConfig, num_classes: int, data: Optional[DataConfig] = None) -> FamilyModel:
    from rev2net import dcd

    net = dcd.build_dcd(num_classes, frames=data.frames if data is not None else 8, branches=tuple(cfg.branches),
                        width=cfg.width, dropout=cfg.dropout, pretrained=_imagenet(cfg))
    return FamilyModel(net, bn_momentum=cfg.bn_momentum)


def build_tsn(cfg: ModelConfig, num_classes: int, data: Optional[DataConfig] = None) -> FamilyModel:
    from rev2net import tsn

    net = tsn.build_tsn(num_classes, modality=cfg.modality, segments=cfg.segments or TSN_SEGMENTS,
                        new_length=cfg.new_length, width=cfg.width, fusion=cfg.fusion)
    return FamilyModel(_load_2d(net, _imagenet(cfg)), bn_momentum=cfg.bn_momentum)


def build_tsm(cfg: ModelConfig, num_classes: int, data: Optional[DataConfig] = None) -> FamilyModel:
    from rev2net import tsm

    net = tsm.build_tsm(num_classes, modality=cfg.modality, segments=cfg.segments or TSM_SEGMENTS,
                        new_length=cfg.new_length, width=cfg.width, dropout=cfg.dropout, fusion=cfg.fusion)
    return FamilyModel(_load_2d(net, _imagenet(cfg)), bn_momentum=cfg.bn_momentum)


def build_i3d_flow(cfg: ModelConfig, num_classes: int, data: Optional[DataConfig] = None) -> FamilyModel:
    from rev2net.two_stream import build_i3d_flow as build

    return FamilyModel(_inflated(build(num_classes, width=cfg.width, dropout=cfg.dropout), cfg),
                       bn_momentum=cfg.bn_momentum)


def build_two_stream_i3d(cfg: ModelConfig, num_classes: int, data: Optional[DataConfig] = None) -> FamilyModel:
    from rev2net.two_stream import build_two_stream_i3d as build

    net = build(num_classes, width=cfg.width, dropout=cfg.dropout, fusion=cfg.fusion)
    _inflated(net.rgb, cfg)
    _inflated(net.flow, cfg)
    return FamilyModel(net, bn_momentum=cfg.bn_momentum)
