"""Rev2Net: an I3D encoder and classifier plus two training-only decoders tied by the DDP.

Yao, Wang et al., "Multi-Task Learning of Generalizable Representations for Video Action
Recognition" (ICME 2020), Fig. 3 and eq. (3); the decoders, the reversed frame target and the
Gaussian path are described in `rev2net.decoders`.

    frames (B, 3, T, H, W) in [-1, 1]
      -> I3D (rev2net.i3d) ---------------------------------> logits (B, classes)      [train + eval]
           |- Mixed_5c, pooled -> Gaussian heads (mu1, logvar1), (mu2, logvar2) -> samples z1, z2
           |- tap (Conv3d_2c_3x3), z1 -> flow decoder  -> flow   (B, 2, T-1, H/2, W/2) [train only]
           '- tap (Conv3d_2c_3x3), z2 -> frame decoder -> frames (B, 3, T, H/2, W/2), frame i compared
                                                          with input frame T-1-i (model.frame_target)

In `train()` mode `forward` returns everything the objective needs; `need` (see `Need` and
`rev2net.losses.needs`) says what that is, and what nothing needs is not run: a decoder (with the
Gaussian head it decodes from) runs only for its own loss term or for low-level DDP, and then only
as deep as the `model.ddp_layers` it hands over. In `eval()` mode only I3D runs, so inference costs
what I3D costs. A decoder the config switches off is not built at all; the Gaussian heads and the
DDP layers exist whenever both decoders do (the loss weights switch the DDP forms on and off).

The `model.` keys are `rev2net.spec.ModelConfig`; named variants (the ablations, I3D) are declared
in `rev2net.registry`. Defaults: width 1.0, dropout 0.5, both decoders, reversed frame target, DDP
over the trunk-trunk and trunk-refine pairs, decoder_arch "paper", 32 decoder channels,
64-dimensional latents, BatchNorm momentum 0.01 (the port's). `model.pretrained` initialises the
encoder (`rev2net.inflate.load_pretrained`: ImageNet GoogLeNet inflated, or an I3D checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from rev2net.spec import ModelConfig
from rev2net.decoders import DECODER_ARCHS, OUTPUT_STRIDE, FlowDecoder, FrameDecoder, GaussianHead, ddp_pair
from rev2net.inflate import load_pretrained
from rev2net.output import ModelOutput
from rev2net.i3d import InceptionI3d, scale_channels


def flow_stride(cfg: Optional[ModelConfig] = None) -> int:
    """Spatial stride of the flow decoder's output relative to the input frames (every variant: 2)."""
    return OUTPUT_STRIDE


def flow_size(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T-1, h, w) of the flow the decoder predicts for a clip of frames x height x width."""
    return frames - 1, math.ceil(height / OUTPUT_STRIDE), math.ceil(width / OUTPUT_STRIDE)


@dataclass(frozen=True)
class Need:
    """What a training forward must produce (the objective's terms with weight > 0)."""

    flow: bool = False  # flow prediction (lambda_flow > 0)
    frames: bool = False  # reversed-frame reconstruction (lambda_im > 0)
    ddp_low: bool = False  # the decoder feature pairs of model.ddp_layers (beta > 0)
    ddp_high: bool = False  # the two Gaussians (alpha > 0)


class Rev2Net(nn.Module):
    """I3D + flow decoder + reversed-frame decoder + a Gaussian head per decoder, as configured by `ModelConfig`."""

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = InceptionI3d(num_classes, width=cfg.width, dropout=cfg.dropout)
        self.arch = DECODER_ARCHS[cfg.decoder_arch]
        tap_channels = self.encoder.channels[self.arch.tap]
        channels = scale_channels(cfg.decoder_channels, cfg.width)
        latent, features = cfg.latent_dim, self.encoder.num_features
        self.flow_decoder = FlowDecoder(self.arch, tap_channels, channels, latent) if cfg.flow_decoder else None
        self.frame_decoder = FrameDecoder(self.arch, tap_channels, channels, latent) if cfg.frame_decoder else None
        self.flow_gaussian = GaussianHead(features, latent) if cfg.flow_decoder else None
        self.frame_gaussian = GaussianHead(features, latent) if cfg.frame_decoder else None
        self.ddp_layer_pairs = [ddp_pair(p) for p in cfg.ddp_layers]  # (flow layer, frame layer)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = cfg.bn_momentum

    # ------------------------------------------------------------------------------ properties
    flow_stride = OUTPUT_STRIDE  # spatial stride of the decoders' output grid (flow targets are wanted there)

    @property
    def num_classes(self) -> int:
        return self.encoder.num_classes

    def built(self) -> Need:
        """Everything this model can produce in training (the default `need` in train mode)."""
        both = self.flow_decoder is not None and self.frame_decoder is not None
        return Need(flow=self.flow_decoder is not None, frames=self.frame_decoder is not None, ddp_low=both,
                    ddp_high=both)

    @property
    def num_features(self) -> int:
        """Width of the pooled features (`ModelOutput.features`) a domain head reads."""
        return self.encoder.num_features

    def inference_parameters(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters())

    # --------------------------------------------------------------------------------- forward
    def forward_features(self, frames: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> Mixed_5c (B, 1024*width, T/8, H/32, W/32)."""
        return self.encoder.forward_features(frames)

    def forward_head(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        """Mixed_5c -> logits (B, classes) (or pooled features with `pre_logits`)."""
        return self.encoder.forward_head(feats, pre_logits)

    def reset_classifier(self, num_classes: int) -> None:
        self.encoder.reset_classifier(num_classes)

    def forward(self, frames: Tensor, need: Optional[Need] = None) -> ModelOutput:
        """frames (B, 3, T, H, W) in [-1, 1]. `need` defaults to everything built in train mode and to
        nothing (logits only: plain I3D) in eval mode."""
        if frames.dim() != 5 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (B, 3, T, H, W), got {tuple(frames.shape)}")
        if need is None:
            need = self.built() if self.training else Need()
        self._check(need)
        run_flow = self.flow_decoder is not None and (need.flow or need.ddp_low)
        run_frame = self.frame_decoder is not None and (need.frames or need.ddp_low)
        if run_flow and frames.shape[2] < 2:
            raise ValueError(f"the flow decoder needs clips of at least 2 frames, got T={frames.shape[2]}")

        taps = [self.arch.tap] if run_flow or run_frame else []
        feats, tapped = self.encoder.forward_intermediates(frames, taps)  # Mixed_5c, {tap: features}
        pooled = feats.mean(dim=(2, 3, 4))  # (B, 1024*width): what the Gaussian heads and a domain head read
        out = ModelOutput(logits=self.encoder.forward_head(feats), features=pooled)
        if need.ddp_high or run_flow:
            mu1, logvar1 = self.flow_gaussian(pooled)  # (B, L) each
        if need.ddp_high or run_frame:
            mu2, logvar2 = self.frame_gaussian(pooled)
        if need.ddp_high:
            out.gaussians = (mu1, logvar1, mu2, logvar2)
        t, h, w = flow_size(*frames.shape[2:])
        flow_layers = [a for a, _ in self.ddp_layer_pairs] if need.ddp_low else []
        frame_layers = [b for _, b in self.ddp_layer_pairs] if need.ddp_low else []
        flow_feats: dict[str, Tensor] = {}
        frame_feats: dict[str, Tensor] = {}
        if run_flow:
            flow_feats, out.flow = self.flow_decoder(tapped[self.arch.tap], self._sample(mu1, logvar1), (t, h, w),
                                                     layers=flow_layers, head=need.flow)
        if run_frame:
            frame_feats, out.frames = self.frame_decoder(tapped[self.arch.tap], self._sample(mu2, logvar2),
                                                         (t + 1, h, w), layers=frame_layers, head=need.frames)
            out.frame_target = self.cfg.frame_target
        if need.ddp_low:
            for a, b in self.ddp_layer_pairs:
                fa, fb = flow_feats[a], frame_feats[b]
                if fa.shape != fb.shape:
                    raise ValueError(f"model.ddp_layers pair {a}-{b} compares layers of shapes {tuple(fa.shape)} "
                                     f"and {tuple(fb.shape)}")
                out.ddp_pairs.append((fa, fb))
        return out

    def _sample(self, mean: Tensor, logvar: Tensor) -> Tensor:
        if not self.training:
            return mean
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def _check(self, need: Need) -> None:
        built = self.built()
        for name in ("flow", "frames", "ddp_low", "ddp_high"):
            if getattr(need, name) and not getattr(built, name):
                raise ValueError(f"need.{name} asked of a model that does not build it ({self._describe()}); "
                                 "see rev2net.registry.check_compatible")

    def _describe(self) -> str:
        c = self.cfg
        return f"model.flow_decoder={c.flow_decoder}, model.frame_decoder={c.frame_decoder}"


# ------------------------------------------------------------------------------------- factory


def build_model(cfg: ModelConfig, num_classes: int, data: Optional[object] = None) -> Rev2Net:
    """Build Rev2Net from its config (any clip size works: `data` is unused); initialise the encoder
    from `cfg.pretrained` (`rev2net.inflate.load_pretrained`: `imagenet:` inflates a 2D GoogLeNet,
    `i3d:` or a bare path loads an I3D checkpoint; the classifier is replaced for `num_classes` when
    the checkpoint has none or another count). The decoders and Gaussian heads start fresh either way."""
    model = Rev2Net(cfg, num_classes)
    if cfg.pretrained is not None:
        model.pretrained_report = load_pretrained(model.encoder, cfg.pretrained)  # what was loaded, key by key
    return model
