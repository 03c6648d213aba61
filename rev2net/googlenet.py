"""GoogLeNet (2D Inception-v1), the frame-level backbone of TSN, TSM and the DCD baseline, and the
source of ImageNet weights for I3D (see rev2net.inflate).

Szegedy et al., "Going Deeper with Convolutions" (CVPR 2015), in the form of torchvision's
`googlenet`, whose ImageNet checkpoint this module loads without torchvision:

- the state dict has exactly torchvision's keys (`conv1.conv.weight`, `conv1.bn.running_mean`,
  `inception3a.branch2.1.conv.weight`, `inception4e.branch4.1.bn.bias`, ..., `fc.weight`);
- BasicConv2d = bias-free conv -> BatchNorm2d(eps=1e-3) -> ReLU (batch norm is torchvision's
  addition; the paper predates it);
- the "5x5" branch uses a 3x3 convolution, torchvision's known deviation from the paper (its
  ImageNet weights have it, and so does I3D, which was inflated from the same Inception-v1);
- max pools with ceil_mode (the Caffe original's rounding);
- no auxiliary classifiers: a checkpoint's `aux1.*` / `aux2.*` keys are reported as unexpected (not
  used) when loading; global average pooling, dropout (0.4, the paper's Table 1; torchvision uses
  0.2) and a linear classifier.

Inputs are (N, in_channels, H, W) in [-1, 1]. torchvision's ImageNet weights expect exactly that
range: its `transform_input=True` maps ImageNet-normalised inputs back to (x - 0.5) / 0.5. Our frames
are already in [-1, 1] (and flow is in [-1, 1] as pixels / FLOW_BOUND), so nothing is transformed here.

What this module offers (a stable interface; other model files build on it):
- `GoogLeNet(num_classes, *, width=1.0, in_channels=3, dropout=0.4)` (or `build_googlenet`, same
  arguments); `width` scales every channel
  count like rev2net.i3d.scale_channels (1.0 = the published network, 6,624,904 parameters with
  1000 classes), `in_channels` is e.g. 10 for a TSN stack of 5 flow pairs;
- `forward_intermediates(x, names) -> (inception5b map, {name: map})` for the names in `BLOCKS`
  (conv1 ... inception5b, pools included), `forward_features(x) -> (N, num_features)` pooled,
  `forward_head(features) -> (N, num_classes)`, `forward(x)`, `reset_classifier(n)`,
  `num_features`, `num_classes`, `channels` (output channels of every block);
- `load_googlenet_state(model, path_or_state_dict) -> LoadReport` (rev2net.i3d's report):
  missing and unexpected keys by name, mis-shaped keys in a ValueError naming each; a classifier of
  another class count is re-initialised (`replaced`); for `in_channels != 3` the RGB conv1 kernel is
  averaged over its input channels and replicated (TSN's cross-modality initialisation).
Weights are PyTorch's default initialisation (as rev2net.i3d), not torchvision's truncated normal.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rev2net.i3d import LoadReport, _read_state, scale_channels

log = logging.getLogger(__name__)

BN_EPS = 1e-3
DEFAULT_DROPOUT = 0.4  # Szegedy et al. 2015, Table 1

# The network, top to bottom: (block, kind, arguments) with the published widths, torchvision's names.
#   conv:      (out_channels, kernel, stride, padding)
#   pool:      (kernel, stride), ceil_mode, no padding
#   inception: (branch1, branch2 1x1, branch2 3x3, branch3 1x1, branch3 "5x5" (a 3x3), branch4 pool proj)
_LAYOUT: tuple[tuple[str, str, tuple], ...] = (
    ("conv1", "conv", (64, 7, 2, 3)),
    ("maxpool1", "pool", (3, 2)),
    ("conv2", "conv", (64, 1, 1, 0)),
    ("conv3", "conv", (192, 3, 1, 1)),
    ("maxpool2", "pool", (3, 2)),
    ("inception3a", "inception", (64, 96, 128, 16, 32, 32)),
    ("inception3b", "inception", (128, 128, 192, 32, 96, 64)),
    ("maxpool3", "pool", (3, 2)),
    ("inception4a", "inception", (192, 96, 208, 16, 48, 64)),
    ("inception4b", "inception", (160, 112, 224, 24, 64, 64)),
    ("inception4c", "inception", (128, 128, 256, 24, 64, 64)),
    ("inception4d", "inception", (112, 144, 288, 32, 64, 64)),
    ("inception4e", "inception", (256, 160, 320, 32, 128, 128)),
    ("maxpool4", "pool", (2, 2)),
    ("inception5a", "inception", (256, 160, 320, 32, 128, 128)),
    ("inception5b", "inception", (384, 192, 384, 48, 128, 128)),
)
BLOCKS = tuple(name for name, _, _ in _LAYOUT)  # every block, in order (forward_intermediates names)
INCEPTION_BLOCKS = tuple(name for name, kind, _ in _LAYOUT if kind == "inception")
CONV_UNITS = ("conv1", "conv2", "conv3")  # the BasicConv2d units outside the Inception blocks


# --------------------------------------------------------------------------------------- blocks


class BasicConv2d(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d(eps=1e-3) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        b1, b2a, b2b, b3a, b3b, b4 = widths
        self.branch1 = BasicConv2d(in_channels, b1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, b2a), BasicConv2d(b2a, b2b, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, b3a), BasicConv2d(b3a, b3b, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), BasicConv2d(in_channels, b4))
        self.out_channels = b1 + b2b + b3b + b4

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, out_channels, H, W)
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


# ---------------------------------------------------------------------------------------- model


class GoogLeNet(nn.Module):
    """Inception-v1 with torchvision's module names; `forward` maps (N, C, H, W) in [-1, 1] to (N, classes).

    Args:
        num_classes: size of the linear classifier (`fc`).
        width: channel multiplier (1.0 = the published network).
        in_channels: 3 for RGB, 2 * L for a stack of L flow pairs (x1, y1, ..., xL, yL).
        dropout: drop probability before `fc`.
    """

    def __init__(
        self, num_classes: int, *, width: float = 1.0, in_channels: int = 3, dropout: float = DEFAULT_DROPOUT
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        if width <= 0:
            raise ValueError(f"width={width} must be > 0 (1.0 is the published network)")
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels} must be >= 1 (3 for RGB, 2 * L for L flow pairs)")
        self.width = width
        self.in_channels = in_channels
        self.channels: dict[str, int] = {}  # output channels of every block
        channels = in_channels
        for name, kind, args in _LAYOUT:
            if kind == "conv":
                out, kernel, stride, padding = args
                module: nn.Module = BasicConv2d(channels, scale_channels(out, width), kernel, stride, padding)
                channels = scale_channels(out, width)
            elif kind == "pool":
                module = nn.MaxPool2d(*args, ceil_mode=True)
            else:
                module = Inception(channels, tuple(scale_channels(c, width) for c in args))
                channels = module.out_channels
            self.add_module(name, module)
            self.channels[name] = channels
        self.num_features = channels  # inception5b channels (1024 at width 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def reset_classifier(self, num_classes: int) -> None:
        """Replace `fc` (a new, freshly initialised head for another dataset)."""
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)

    def forward_intermediates(self, x: Tensor, names: Iterable[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the blocks on (N, C, H, W); return inception5b (N, F, H/32, W/32) and the blocks named in `names`."""
        names = set(names)
        unknown = names - set(BLOCKS)
        if unknown:
            raise ValueError(f"unknown GoogLeNet blocks {sorted(unknown)}; valid: {', '.join(BLOCKS)}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"GoogLeNet expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        kept: dict[str, Tensor] = {}
        for name in BLOCKS:
            x = self._modules[name](x)
            if name in names:
                kept[name] = x
        return x, kept

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> globally average-pooled inception5b features (N, num_features)."""
        return self.forward_intermediates(x)[0].mean(dim=(2, 3))

    def forward_head(self, features: Tensor) -> Tensor:
        """Pooled features (..., num_features) -> logits (..., num_classes): dropout, then `fc`."""
        return self.fc(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def build_googlenet(
    num_classes: int, *, width: float = 1.0, in_channels: int = 3, dropout: float = DEFAULT_DROPOUT
) -> GoogLeNet:
    """GoogLeNet (Szegedy et al. 2015) in torchvision's layout; see the module docstring."""
    return GoogLeNet(num_classes, width=width, in_channels=in_channels, dropout=dropout)


# ---------------------------------------------------------------------------------- checkpoints


def read_googlenet_state(source: Union[str, os.PathLike, Mapping[str, Any]]) -> dict[str, Tensor]:
    """A GoogLeNet state dict from a file or a mapping (training-checkpoint and DataParallel wrappers removed)."""
    if not isinstance(source, Mapping) and not os.path.isfile(os.fspath(source)):
        raise FileNotFoundError(f"GoogLeNet checkpoint {os.fspath(source)!r} does not exist")
    return _read_state(source)


def cross_modality_kernel(weight: Tensor, in_channels: int) -> Tensor:
    """An RGB first-layer kernel (O, 3, ...) for `in_channels` inputs: averaged over its input channels
    and replicated (Wang et al. 2016, TSN, "cross modality pre-training")."""
    return weight.mean(dim=1, keepdim=True).expand(-1, in_channels, *weight.shape[2:]).contiguous()


def _is_known_extra(key: str) -> bool:
    """torchvision keys this model deliberately lacks (the auxiliary classifiers)."""
    return key.startswith(("aux1.", "aux2."))


def load_googlenet_state(model: GoogLeNet, source: Union[str, os.PathLike, Mapping[str, Any]]) -> LoadReport:
    """Load weights in torchvision's `googlenet` layout into `model`; return what happened, key by key.

    - `loaded`: keys copied (conv1 through the cross-modality kernel when `model.in_channels != 3`);
    - `missing`: model keys the checkpoint lacks, left as initialised (`num_batches_tracked` is never
      reported: old checkpoints lack it);
    - `unexpected`: checkpoint keys the model lacks, ignored (`aux1.*`, `aux2.*` in torchvision's file);
    - `replaced`: `fc.*` of another class count, left freshly initialised.
    Any other shape mismatch raises one ValueError naming every mis-shaped key and the likely cause.
    """
    state = read_googlenet_state(source)
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    mis_shaped: list[str] = []
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        want = tuple(own[key].shape)
        if key == "conv1.conv.weight" and value.dim() == 4 and value.shape[1] == 3 and want[1] != 3:
            value = cross_modality_kernel(value, want[1])
            log.info("GoogLeNet conv1: RGB kernel averaged over its channels for %d input channels", want[1])
        if tuple(value.shape) != want:
            if key.startswith("fc."):
                report.replaced.append(key)
            else:
                mis_shaped.append(f"{key!r} {tuple(value.shape)} (model: {want})")
            continue
        to_load[key] = value
    if mis_shaped:
        why = (f"the model was built with width={model.width} and torchvision's checkpoint has the published "
               "widths (build it with width=1.0)" if model.width != 1.0
               else "the checkpoint is not a GoogLeNet of the published widths")
        raise ValueError(f"GoogLeNet checkpoint keys of the wrong shape: {', '.join(mis_shaped)}; {why}")
    report.loaded = sorted(to_load)
    report.replaced.sort()
    report.unexpected.sort()
    report.missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    model.load_state_dict(to_load, strict=False)
    if report.missing:
        log.warning("GoogLeNet checkpoint lacks %d keys (left as initialised): %s", len(report.missing), report.missing)
    surprising = [k for k in report.unexpected if not _is_known_extra(k)]
    if surprising:
        log.warning("GoogLeNet checkpoint has %d unexpected keys (ignored): %s", len(surprising), surprising)
    if report.replaced:
        log.info("GoogLeNet classifier replaced for %d classes", model.num_classes)
    return report
