"""The batch contract between the data pipeline (`rev2net.data`) and the model/training loop.

A data loader yields dicts; everything travels as compactly as possible (uint8 frames,
float16 flow) and is turned into model inputs on the device by `to_device`, so that loader
workers, pinned memory and the host-to-device copy move 4x fewer bytes than float32 would.

Training batch (from the training dataset):
    frames  uint8    (B, 3, T, H, W)    RGB, 0..255; T = clip length, H = W = crop size
    flow    float16  (B, 2, T-1, h, w)  optional; TV-L1 flow of the T-1 consecutive frame pairs
                                        of the same clip, channel 0 = x (rightwards), 1 = y
                                        (downwards), in pixels *of its own h x w grid*
                                        (vectors are rescaled whenever the grid is resized)
    label   int64    (B,)               class index, 0-based
    index   int64    (B,)               position of the video in the dataset's video list
    skipped int64    (B,)               optional; unreadable videos skipped (and replaced) while
                                        producing this sample; the training loop sums it per
                                        epoch into the `skipped_videos` metric

Evaluation batch (several clips per video, scores averaged over clips):
    frames  uint8    (B, K, 3, T, H, W) K evenly spaced clips per video
    label, index, skipped as above; no flow

`to_device` maps frames to float in [-1, 1] (the I3D convention) and flow to float32.
"""

from __future__ import annotations

from typing import Any

import torch

FRAMES = "frames"
FLOW = "flow"
LABEL = "label"
INDEX = "index"
SKIPPED = "skipped"


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1]; float input is returned unchanged."""
    if frames.dtype == torch.uint8:
        return frames.float().div_(127.5).sub_(1.0)
    return frames


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move a loader batch to `device` (non-blocking from pinned memory) and make model inputs."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
        out[key] = value
    if FRAMES in out:
        out[FRAMES] = normalize_frames(out[FRAMES])
    if FLOW in out and isinstance(out[FLOW], torch.Tensor):
        out[FLOW] = out[FLOW].float()
    return out
