"""ImageNet initialisation of I3D by inflating a 2D Inception-v1, and one entry point for I3D weights.

Carreira & Zisserman, "Quo Vadis, Action Recognition?" (CVPR 2017), "Inflating 2D ConvNets into 3D"
and "Bootstrapping 3D filters from 2D Filters": every N x N 2D kernel becomes a t x N x N kernel (t the
3D kernel's time extent) by repeating it t times along time and dividing by t, so that on a "boring
video" (one image repeated) each inflated layer gives the 2D layer's output wherever the temporal
padding does not reach. BatchNorm parameters and statistics are copied as they are.

The source is torchvision's `googlenet` checkpoint (rev2net.googlenet's layout). Its blocks map one
to one onto the public I3D port's (rev2net.i3d), with the same branch widths:

    conv1 / conv2 / conv3            -> Conv3d_1a_7x7 / Conv3d_2b_1x1 / Conv3d_2c_3x3
    inception3a, 3b                  -> Mixed_3b, Mixed_3c
    inception4a ... 4e               -> Mixed_4b ... Mixed_4f
    inception5a, 5b                  -> Mixed_5b, Mixed_5c
    branch1 | branch2.0, 2.1 | branch3.0, 3.1 | branch4.1  -> b0 | b1a, b1b | b2a, b2b | b3b
    <unit>.conv.weight, <unit>.bn.*  -> <unit>.conv3d.weight, <unit>.bn.*

The 2D classifier `fc` has no counterpart (I3D's head is a 1x1x1 conv over another class set): the
I3D `logits.*` stay freshly initialised and are reported as `replaced`; `fc.*` and torchvision's
auxiliary classifiers are reported as `unexpected` (not used). An I3D with `in_channels != 3` (the
flow I3D, 2 channels) gets the RGB conv1 kernel averaged over its input channels and replicated,
TSN's cross-modality initialisation (Wang et al. 2016), before it is inflated.

This lives in its own module rather than in i3d.py so that I3D does not depend on the 2D network and
googlenet.py does not depend on I3D's layout; `load_pretrained` is the one place that tells the two
kinds of I3D initialisation apart.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Union

from torch import Tensor

from rev2net.googlenet import INCEPTION_BLOCKS, cross_modality_kernel, read_googlenet_state
from rev2net.i3d import LoadReport, InceptionI3d, load_i3d_state
from rev2net.spec import IMAGENET_SCHEME, split_pretrained

log = logging.getLogger(__name__)

_UNITS = {"Conv3d_1a_7x7": "conv1", "Conv3d_2b_1x1": "conv2", "Conv3d_2c_3x3": "conv3"}
_MIXED = dict(zip(("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
                   "Mixed_5b", "Mixed_5c"), INCEPTION_BLOCKS))
_BRANCHES = {"b0": "branch1", "b1a": "branch2.0", "b1b": "branch2.1", "b2a": "branch3.0", "b2b": "branch3.1",
             "b3b": "branch4.1"}


def googlenet_key(i3d_key: str) -> Optional[str]:
    """The torchvision googlenet key an I3D key is inflated from (None for the classifier `logits.*`)."""
    block, *rest = i3d_key.split(".")
    if block in _UNITS:
        unit = _UNITS[block]
    elif block in _MIXED and rest and rest[0] in _BRANCHES:
        unit = f"{_MIXED[block]}.{_BRANCHES[rest[0]]}"
        rest = rest[1:]
    else:
        return None
    if rest == ["conv3d", "weight"]:
        return f"{unit}.conv.weight"
    if len(rest) == 2 and rest[0] == "bn":
        return f"{unit}.bn.{rest[1]}"
    return None


def inflate_kernel(weight: Tensor, time: int) -> Tensor:
    """(O, I, kh, kw) -> (O, I, time, kh, kw): repeated over time and divided by `time` (Carreira & Zisserman 2017)."""
    return weight.unsqueeze(2).repeat(1, 1, time, 1, 1) / time


def inflate_googlenet_into_i3d(
    i3d: InceptionI3d, source: Union[str, os.PathLike, Mapping[str, Any]]
) -> LoadReport:
    """Initialise `i3d` from a 2D GoogLeNet checkpoint in torchvision's layout (a path or a state dict).

    Report: `loaded` = I3D keys initialised; `missing` = I3D keys whose 2D source is absent (left as
    initialised; `num_batches_tracked` never reported); `replaced` = `logits.*` (fresh classifier);
    `unexpected` = checkpoint keys not used (`fc.*`, `aux1.*`, `aux2.*`, anything unknown). Keys whose
    shapes do not match (another width, a non-Inception-v1 checkpoint) raise one ValueError naming each.
    Both networks must be built with the same `width` (1.0 for torchvision's weights).
    """
    state = read_googlenet_state(source)
    own = i3d.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    mis_shaped: list[str] = []
    used: set[str] = set()
    for key, target in own.items():
        src_key = googlenet_key(key)
        if src_key is None:
            report.replaced.append(key)  # the classifier: no 2D counterpart
            continue
        if src_key not in state:
            if not key.endswith("num_batches_tracked"):
                report.missing.append(key)
            continue
        used.add(src_key)
        value = state[src_key]
        if key.endswith("conv3d.weight"):
            if value.dim() == 4 and value.shape[1] == 3 and target.shape[1] != 3:
                value = cross_modality_kernel(value, target.shape[1])
            if value.dim() == 4:
                value = inflate_kernel(value, target.shape[2])
        if tuple(value.shape) != tuple(target.shape):
            mis_shaped.append(f"{src_key!r} -> {key!r} {tuple(value.shape)} (I3D: {tuple(target.shape)})")
            continue
        to_load[key] = value.to(target.dtype)
    if mis_shaped:
        why = ("build the I3D with the checkpoint's width (1.0 for torchvision's weights; model width is "
               f"{i3d.width})")
        raise ValueError(f"GoogLeNet keys that do not inflate to the I3D shape: {', '.join(mis_shaped)}; {why}")
    report.loaded = sorted(to_load)
    report.replaced.sort()
    report.unexpected = sorted(k for k in state if k not in used)
    i3d.load_state_dict(to_load, strict=False)
    if report.missing:
        log.warning("GoogLeNet checkpoint lacks the sources of %d I3D keys (left as initialised): %s",
                    len(report.missing), report.missing)
    log.info("I3D inflated from GoogLeNet: %d keys; classifier %s fresh; unused: %s",
             len(report.loaded), report.replaced, report.unexpected)
    return report


def load_pretrained(model: InceptionI3d, spec: str) -> LoadReport:
    """Initialise an I3D from `spec` (the value of `model.pretrained`; `rev2net.spec.split_pretrained`
    reads it):

    - `imagenet:/path/googlenet.pth` inflates torchvision's 2D GoogLeNet (`inflate_googlenet_into_i3d`);
    - `i3d:/path/rgb_imagenet.pt` or a bare path loads the public I3D port's checkpoint (`load_i3d_state`).
    Raises ValueError naming the spec for an unknown scheme or a file that does not exist.
    """
    scheme, path = split_pretrained("pretrained", spec)
    if scheme == IMAGENET_SCHEME:
        return inflate_googlenet_into_i3d(model, path)
    return load_i3d_state(model, path)
