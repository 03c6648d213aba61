"""I3D (inflated Inception-V1), the Rev2Net encoder and the network that runs at test time.

Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset"
(CVPR 2017); structurally identical to the public PyTorch port (piergiaj/pytorch-i3d):

- endpoint names `Conv3d_1a_7x7` ... `Mixed_5c`, `Logits`; state-dict keys as in the port
  (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`, `logits.conv3d.weight`, ...);
- TF-style "same" padding: the output size is ceil(input / stride) and the padding is split with
  the extra element at the end (so it can be asymmetric: 224 with a 7-tap stride-2 conv pads 2 | 3);
- bias-free convolutions, each followed by BatchNorm3d(eps=1e-3, momentum=0.01) and ReLU;
- the published Inception branch widths; an average pool of [2, 7, 7] (stride 1), dropout and a
  1x1x1 logits conv with bias, averaged over the remaining positions.

With `width=1.0` and 101 classes the network has exactly 12,390,789 parameters and, for a
(B, 3, 32, 224, 224) clip, Conv3d_2c_3x3 is (B, 192, 16, 56, 56) and Mixed_5c (B, 1024, 4, 7, 7)
(about 55.6 G conv multiply-adds per clip).

Two generalisations keep CPU-scale trials real I3D trainings, only thinner and smaller:
- `width` scales every channel count (rounded, at least 1); 1.0 is the published network;
- any clip length and frame size: the head's [2, 7, 7] pool shrinks to the feature map where that
  is smaller (e.g. 2x2x2 for 16 frames of 64x64), so the logits still see the whole clip.

Memory layout: the network runs in whatever layout its weights and input have; on CUDA training
stores them channels-last (torch.channels_last_3d, `trainer.memory_format`, rev2net.train), which
cuDNN's 3D convolutions, BatchNorm and pooling run natively, and every layer keeps it.

Max pooling pads with zeros in the port and with -inf here where the padding is symmetric (there it
uses PyTorch's own padding, which saves a copy); both give identical results because every pooled
tensor is a ReLU output, hence non-negative.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# The network, top to bottom: (endpoint, kind, arguments) with the published widths.
#   conv:  (out_channels, kernel, stride)
#   pool:  (kernel, stride)
#   mixed: Inception branch widths (b0, b1a, b1b, b2a, b2b, b3b) = 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | pool -> 1x1
_LAYOUT: tuple[tuple[str, str, tuple], ...] = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)
_HEAD_POOL = (2, 7, 7)
ENDPOINTS = tuple(name for name, _, _ in _LAYOUT)  # the port's endpoint names, in order (then "Logits")


def _endpoint_strides() -> dict[str, tuple[int, int]]:
    strides, t, s = {}, 1, 1
    for name, kind, args in _LAYOUT:
        if kind != "mixed":
            t, s = t * args[-1][0], s * args[-1][1]
        strides[name] = (t, s)
    return strides


# (temporal, spatial) stride of each endpoint relative to the input clip
ENDPOINT_STRIDES: dict[str, tuple[int, int]] = _endpoint_strides()


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding of one dimension as (front, back): output = ceil(size / stride)."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pads(x: Tensor, kernel: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    return [same_padding(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride)]


def _f_pad(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    (tf, tb), (hf, hb), (wf, wb) = pads
    return (wf, wb, hf, hb, tf, tb)  # F.pad order: last dimension first


def scale_channels(channels: int, width: float) -> int:
    """A published channel count under the width multiplier (rounded half up, at least 1)."""
    return max(1, int(channels * width + 0.5))


# --------------------------------------------------------------------------------------- blocks


class Unit3D(nn.Module):
    """Conv3d (bias-free unless no BN) -> BatchNorm3d -> ReLU, with TF "same" padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        *,
        batch_norm: bool = True,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.activation = activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=not batch_norm)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        pads = _pads(x, self.kernel, self.stride)
        if all(front == back for front, back in pads):
            x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, [p[0] for p in pads])
        else:
            x = self.conv3d(F.pad(x, _f_pad(pads)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TF "same" padding (no parameters)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        pads = _pads(x, self.kernel, self.stride)
        if x.device.type == "cpu" and not x.is_contiguous(memory_format=torch.channels_last_3d):
            # PyTorch's CPU max_pool3d has a vectorised kernel for channels-last tensors only; the
            # usual layout takes the slow path (benchmarks/step.py shows the difference). Same values,
            # handed back in the layout they came in. A channels-last network (trainer.memory_format,
            # rev2net.train.to_channels_last) pools in its own layout on every device.
            return self._pool(x.contiguous(memory_format=torch.channels_last_3d), pads).contiguous()
        return self._pool(x, pads)

    def _pool(self, x: Tensor, pads: list[tuple[int, int]]) -> Tensor:
        if all(front == back for front, back in pads):
            return F.max_pool3d(x, self.kernel, self.stride, [p[0] for p in pads])
        return F.max_pool3d(F.pad(x, _f_pad(pads)), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit3D(in_channels, b0)
        self.b1a = Unit3D(in_channels, b1a)
        self.b1b = Unit3D(b1a, b1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, b2a)
        self.b2b = Unit3D(b2a, b2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# ---------------------------------------------------------------------------------------- model


class InceptionI3d(nn.Module):
    """I3D with the port's module names; `forward` maps (B, 3, T, H, W) in [-1, 1] to (B, classes).

    Args:
        num_classes: size of the logits layer.
        width: channel multiplier (1.0 = published I3D).
        dropout: drop probability before the logits (the port uses 0.5).
        in_channels: 3 for RGB.
    """

    def __init__(self, num_classes: int, *, width: float = 1.0, dropout: float = 0.5, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.width = width
        self.channels: dict[str, int] = {}  # output channels of every endpoint
        channels = in_channels
        for name, kind, args in _LAYOUT:
            if kind == "conv":
                out, kernel, stride = args
                module: nn.Module = Unit3D(channels, scale_channels(out, width), kernel, stride)
                channels = scale_channels(out, width)
            elif kind == "pool":
                module = MaxPool3dSame(*args)
            else:
                module = InceptionModule(channels, [scale_channels(c, width) for c in args])
                channels = module.out_channels
            self.add_module(name, module)
            self.channels[name] = channels
        self.num_features = channels  # Mixed_5c channels (1024 at width 1)
        self.dropout = nn.Dropout(dropout)
        self.logits = Unit3D(channels, num_classes, batch_norm=False, activation=False)

    @property
    def num_classes(self) -> int:
        return self.logits.conv3d.out_channels

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the logits layer (a new, freshly initialised head for another dataset)."""
        device = self.logits.conv3d.weight.device
        self.logits = Unit3D(self.num_features, num_classes, batch_norm=False, activation=False).to(device)

    def forward_intermediates(self, x: Tensor, taps: Iterable[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the encoder; return Mixed_5c (B, C, T/8, H/32, W/32) and the endpoints named in `taps`."""
        taps = set(taps)
        unknown = taps - set(ENDPOINTS)
        if unknown:
            raise ValueError(f"unknown I3D endpoints {sorted(unknown)}; valid: {', '.join(ENDPOINTS)}")
        kept: dict[str, Tensor] = {}
        for name in ENDPOINTS:
            x = self._modules[name](x)
            if name in taps:
                kept[name] = x
        return x, kept

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> Mixed_5c features (B, 1024*width, ceil(T/8), ceil(H/32), ceil(W/32))."""
        return self.forward_intermediates(x)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Mixed_5c features -> logits (B, classes): [2, 7, 7] average pool (smaller where the map is),
        dropout, 1x1x1 conv, mean over the remaining positions. `pre_logits` returns the pooled
        features (B, C) instead."""
        kernel = [min(k, s) for k, s in zip(_HEAD_POOL, x.shape[2:])]
        x = F.avg_pool3d(x, kernel, stride=1)
        if pre_logits:
            return x.mean(dim=(2, 3, 4))
        return self.logits(self.dropout(x)).mean(dim=(2, 3, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------- checkpoints


@dataclass
class LoadReport:
    """What `load_i3d_state` did with a checkpoint, key by key."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model: ignored
    replaced: list[str] = field(default_factory=list)  # classifier keys of another class count: re-initialised


def _read_state(source: Union[str, os.PathLike, Mapping[str, Any]]) -> dict[str, Tensor]:
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"I3D checkpoint {path!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):  # a training checkpoint
        state = dict(state["state_dict"])
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_i3d_state(model: InceptionI3d, source: Union[str, os.PathLike, Mapping[str, Any]]) -> LoadReport:
    """Load I3D weights in the public port's state-dict layout into `model`.

    The classifier (`logits.*`) is kept as initialised when the checkpoint has another class count
    (reported as `replaced`); missing and unexpected keys are logged by name and reported; any other
    shape mismatch raises ValueError naming the key and the reason. `num_batches_tracked`, absent
    from checkpoints of old PyTorch versions, is never reported missing.
    """
    state = _read_state(source)
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            if key.startswith("logits."):
                report.replaced.append(key)
                continue
            why = (
                f"the model was built with width={model.width} and checkpoints in the public layout have the "
                "published widths (set model.width=1.0)"
                if model.width != 1.0
                else "the checkpoint is not an RGB I3D of the published widths"
            )
            raise ValueError(
                f"checkpoint key {key!r} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)}: {why}"
            )
        to_load[key] = value
    report.loaded = sorted(to_load)
    report.replaced.sort()
    report.unexpected.sort()
    report.missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    model.load_state_dict(to_load, strict=False)
    if report.missing:
        log.warning("I3D checkpoint lacks %d keys (left as initialised): %s", len(report.missing), report.missing)
    if report.unexpected:
        log.warning("I3D checkpoint has %d unexpected keys (ignored): %s", len(report.unexpected), report.unexpected)
    if report.replaced:
        log.info(
            "I3D classifier replaced for %d classes (checkpoint: %s)",
            model.num_classes,
            tuple(state["logits.conv3d.weight"].shape[:1]) if "logits.conv3d.weight" in state else "?",
        )
    return report


def endpoint_shapes(
    model: InceptionI3d, frames: int, size: int, device: Union[str, torch.device] = "meta"
) -> dict[str, tuple[int, ...]]:
    """Shape (without batch) of every endpoint and of the logits for a (1, 3, frames, size, size) clip."""
    x = torch.zeros(1, 3, frames, size, size, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats, kept = model.forward_intermediates(x, ENDPOINTS)
        shapes = {name: tuple(t.shape[1:]) for name, t in kept.items()}
        shapes["Logits"] = tuple(model.forward_head(feats).shape[1:])
    model.train(was_training)
    return shapes
