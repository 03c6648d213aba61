"""The batch contract between the data pipeline (`rev2net.data`) and the model/training loop.

A data loader yields dicts; everything travels as compactly as possible (uint8 frames,
float16 flow) and is turned into model inputs on the device by `to_device`, so that loader
workers, pinned memory and the host-to-device copy move 4x fewer bytes than float32 would.

Training batch (from the training dataset; what a model family declares it needs):
    frames  uint8    (B, 3, T, H, W)    RGB, 0..255; T = clip length (or one frame per segment),
                                        H = W = crop size
    flow    float16  (B, 2, T-1, h, w)  optional; TV-L1 flow of the T-1 consecutive frame pairs
                                        of the same clip, channel 0 = x (rightwards), 1 = y
                                        (downwards), in pixels *of its own h x w grid*
                                        (vectors are rescaled whenever the grid is resized):
                                        the flow decoder's target
    flow_input float16 (B, 2, T*P, H, W) optional; the flow of P consecutive pairs from each of the
                                        T frames, at the crop size, in its pixels: a flow stream's input
    label   int64    (B,)               class index, 0-based (absent from a target domain's clips)
    index   int64    (B,)               position of the video in the dataset's video list
    skipped int64    (B,)               optional; unreadable videos skipped (and replaced) while
                                        producing this sample; the training loop sums it per
                                        epoch into the `skipped_videos` metric
With `data.augment_on=device` a training batch holds, instead of `frames`:
    region  uint8    (B, T, S, S, 3)    the crop's square of each clip as decoded (in its top-left
                                        side x side pixels; S = the batch's largest side)
    geometry int64   (B, 3)             (side, flip, crop size) per clip
and `to_device` makes `frames` from them on the device (rev2net.data.transforms.device_crop).

Evaluation batch (several clips per video, scores averaged over clips):
    frames  uint8    (B, K, 3, T, H, W) K evenly spaced clips per video
    flow_input float16 (B, K, 2, T*P, H, W) when the family reads flow
    label, index, skipped as above; no flow target

`to_device` cuts `region` into frames on the device, maps frames to float in [-1, 1] (the I3D convention), flow targets to float32 pixels,
and the flow input to float in [-1, 1]: pixels / FLOW_BOUND (the bound the stored flow is clipped at).
"""

from __future__ import annotations

from typing import Any

import torch

from rev2net.data.flow import BOUND as FLOW_BOUND
from rev2net.data.transforms import device_crop

FRAMES = "frames"
FLOW = "flow"
FLOW_INPUT = "flow_input"
LABEL = "label"
INDEX = "index"
SKIPPED = "skipped"
REGION = "region"
GEOMETRY = "geometry"


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1]; float input is returned unchanged."""
    if frames.dtype == torch.uint8:
        return frames.float().div_(127.5).sub_(1.0)
    return frames


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move a loader batch to `device` (non-blocking from pinned memory) and make model inputs."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and key != GEOMETRY:  # the geometry is read on the host
            value = value.to(device, non_blocking=True)
        out[key] = value
    if REGION in out:
        geometry = out.pop(GEOMETRY)
        out[FRAMES] = device_crop(out.pop(REGION), geometry[:, :2], int(geometry[0, 2])).div_(127.5).sub_(1.0)
    if FRAMES in out:
        out[FRAMES] = normalize_frames(out[FRAMES])
    if FLOW in out and isinstance(out[FLOW], torch.Tensor):
        out[FLOW] = out[FLOW].float()
    if FLOW_INPUT in out and isinstance(out[FLOW_INPUT], torch.Tensor):
        out[FLOW_INPUT] = (out[FLOW_INPUT].float() / FLOW_BOUND).clamp_(-1.0, 1.0)
    return out
