"""Rev2Net: an I3D encoder and classifier plus two training-only decoders tied by the DDP.

Yao, Wang et al., "Multi-Task Learning of Generalizable Representations for Video Action
Recognition" (ICME 2020), Fig. 3 and eq. (3); the decoders are described in `rev2net.decoders`.

    frames (B, 3, T, H, W) in [-1, 1]
      -> I3D (rev2net.i3d) ---------------------------------> logits (B, classes)      [train + eval]
           |- tap (Conv3d_2c_3x3) -> flow decoder  -> flow   (B, 2, T-1, H/2, W/2)     [train only]
           |                      -> frame decoder -> frames (B, 3, T, H/2, W/2), reversed in time
           '- Mixed_5c, pooled -> Gaussian heads (mu1, logvar1), (mu2, logvar2)
                                  -> samples z1, z2 condition the two decoders (DDP high/both)

In `train()` mode `forward` returns everything the objective needs; `need` (see `Need` and
`rev2net.losses.needs`) says what that is, and what nothing needs is not run: a decoder runs only for
its own loss term or for low-level DDP, and only its trunk for the latter. In `eval()` mode only I3D
runs, so inference costs what I3D costs. What the config switches off is not built at all.

The `model.` keys are `rev2net.spec.ModelConfig`; named variants (the ablations, I3D) are declared
in `rev2net.registry`. Defaults: width 1.0, dropout 0.5, both decoders, DDP "both", decoder_arch "paper",
32 decoder channels, 64-dimensional latents, BatchNorm momentum 0.01 (the port's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from rev2net.spec import ModelConfig
from rev2net.decoders import DECODER_ARCHS, OUTPUT_STRIDE, FlowDecoder, FrameDecoder, GaussianHead
from rev2net.output import ModelOutput
from rev2net.i3d import InceptionI3d, load_i3d_state, scale_channels


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
    ddp_low: bool = False  # pairs of decoder trunk features (beta > 0)
    ddp_high: bool = False  # the two Gaussians (alpha > 0)


class Rev2Net(nn.Module):
    """I3D + flow decoder + reversed-frame decoder + Gaussian heads, as configured by `ModelConfig`."""

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = InceptionI3d(num_classes, width=cfg.width, dropout=cfg.dropout)
        self.arch = DECODER_ARCHS[cfg.decoder_arch]
        high = cfg.ddp in ("high", "both") and cfg.has_decoders
        latent = cfg.latent_dim if high else None
        tap_channels = self.encoder.channels[self.arch.tap]
        channels = scale_channels(cfg.decoder_channels, cfg.width)
        self.flow_decoder = FlowDecoder(self.arch, tap_channels, channels, latent) if cfg.flow_decoder else None
        self.frame_decoder = FrameDecoder(self.arch, tap_channels, channels, latent) if cfg.frame_decoder else None
        self.flow_gaussian = GaussianHead(self.encoder.num_features, cfg.latent_dim) if high else None
        self.frame_gaussian = GaussianHead(self.encoder.num_features, cfg.latent_dim) if high else None
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
        return Need(
            flow=self.flow_decoder is not None,
            frames=self.frame_decoder is not None,
            ddp_low=self.cfg.ddp in ("low", "both"),
            ddp_high=self.flow_gaussian is not None,
        )

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
        # a Gaussian head runs for the KL or to condition its decoder
        run_flow_head = self.flow_gaussian is not None and (need.ddp_high or run_flow)
        run_frame_head = self.frame_gaussian is not None and (need.ddp_high or run_frame)

        taps = [self.arch.tap] if run_flow or run_frame else []
        feats, tapped = self.encoder.forward_intermediates(frames, taps)  # Mixed_5c, {tap: features}
        pooled = feats.mean(dim=(2, 3, 4))  # (B, 1024*width): what the Gaussian heads and a domain head read
        out = ModelOutput(logits=self.encoder.forward_head(feats), features=pooled)
        z_flow = z_frame = None
        if run_flow_head:
            mu1, logvar1 = self.flow_gaussian(pooled)
            z_flow = self._sample(mu1, logvar1)
        if run_frame_head:
            mu2, logvar2 = self.frame_gaussian(pooled)
            z_frame = self._sample(mu2, logvar2)
        if need.ddp_high:
            out.gaussians = (mu1, logvar1, mu2, logvar2)
        t, h, w = flow_size(*frames.shape[2:])
        flow_feats: list[Tensor] = []
        frame_feats: list[Tensor] = []
        if run_flow:
            flow_feats, out.flow = self.flow_decoder(tapped[self.arch.tap], z_flow, (t, h, w), head=need.flow)
        if run_frame:
            frame_feats, out.frames = self.frame_decoder(tapped[self.arch.tap], z_frame, (t + 1, h, w),
                                                         head=need.frames)
        if need.ddp_low:
            out.ddp_pairs = list(zip(flow_feats, frame_feats))
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
                                 "see rev2net.losses.check_compatible")

    def _describe(self) -> str:
        c = self.cfg
        return f"model.flow_decoder={c.flow_decoder}, model.frame_decoder={c.frame_decoder}, model.ddp={c.ddp!r}"


# ------------------------------------------------------------------------------------- factory


def build_model(cfg: ModelConfig, num_classes: int, data: Optional[object] = None) -> Rev2Net:
    """Build Rev2Net from its config; load `cfg.pretrained` into the encoder (classifier replaced
    for `num_classes` when the checkpoint has another count). Any clip size works (`data` unused)."""
    model = Rev2Net(cfg, num_classes)
    if cfg.pretrained is not None:
        model.pretrained_report = load_i3d_state(model.encoder, cfg.pretrained)  # what was loaded, key by key
    return model
