"""Spatial geometry applied identically to a clip's frames and its flow targets.

A crop is a square region of the *source* video frame: the region that, after resizing the short
side to `short_side`, would be a `crop_size` square (at a random position for training, centred
for evaluation). Cropping before resizing gives the same picture while resizing only the pixels
kept. The same region, mapped onto the flow's own grid (which may be smaller: `--flow-size`), is
resized to the flow target grid, and the vectors are scaled by that resize's factors; a
horizontal flip mirrors both and negates the flow's x component.

Device-side augmentation (`data.augment_on=device`): the loader ships the crop's square region of
the frames as it was decoded (uint8, not resized, not flipped) with its geometry, and
`device_crop` resizes and flips it on the trial's device as two batched matrix products per clip,
`W_y @ region @ W_x^T`, whose weights (`resize_weights`) are OpenCV's: INTER_AREA's exact pixel
areas when shrinking, INTER_LINEAR's half-pixel interpolation when enlarging (what `crop_frames`
uses), a flip being W_x with its rows reversed; the result is rounded like OpenCV's uint8 output,
so both paths agree to one grey level (tests/test_transforms.py). Flow targets keep the CPU path
(they are small, and decoded at reduced scale from JPEG).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from rev2net.data.flow import DEQUANTIZED


@dataclass(frozen=True)
class Crop:
    x: int  # left, source pixels
    y: int  # top, source pixels
    side: int  # square side, source pixels
    flip: bool = False  # mirror horizontally after cropping


def crop_side(height: int, width: int, crop_size: int, short_side: int) -> int:
    """Source pixels that become `crop_size` once the short side is resized to `short_side`."""
    return max(1, min(height, width, round(crop_size * min(height, width) / short_side)))


def random_crop(height: int, width: int, *, crop_size: int, short_side: int, rng: np.random.Generator) -> Crop:
    side = crop_side(height, width, crop_size, short_side)
    x = int(rng.integers(0, width - side + 1))
    y = int(rng.integers(0, height - side + 1))
    return Crop(x, y, side, flip=bool(rng.random() < 0.5))


def centre_crop(height: int, width: int, *, crop_size: int, short_side: int) -> Crop:
    side = crop_side(height, width, crop_size, short_side)
    return Crop((width - side) // 2, (height - side) // 2, side)


def _interpolation(source: int, target: int) -> int:
    return cv2.INTER_AREA if source > target else cv2.INTER_LINEAR


def crop_frames(frames: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (3, T, size, size): crop, resize, flip, channels first."""
    region = frames[:, crop.y:crop.y + crop.side, crop.x:crop.x + crop.side]
    if crop.side != size:
        interpolation = _interpolation(crop.side, size)
        region = np.stack([cv2.resize(frame, (size, size), interpolation=interpolation) for frame in region])
    if crop.flip:
        region = region[:, :, ::-1]
    return np.ascontiguousarray(region.transpose(3, 0, 1, 2))


def crop_region(frames: np.ndarray, crop: Crop) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, side, side, 3): the crop's square as decoded (device-side
    augmentation resizes and flips it: `device_crop`)."""
    return np.ascontiguousarray(frames[:, crop.y:crop.y + crop.side, crop.x:crop.x + crop.side])


def resize_weights(source: int, target: int) -> np.ndarray:
    """(target, source) float64 weights of a 1D resize as OpenCV does it in `crop_frames`: INTER_AREA
    (each output pixel the area-weighted mean of the source pixels it covers) when shrinking,
    INTER_LINEAR (half-pixel centres, edges clamped) otherwise. Each row sums to 1."""
    weights = np.zeros((target, source))
    scale = source / target
    if source > target:  # cv2's computeResizeAreaTab
        for x in range(target):
            start, end = x * scale, (x + 1) * scale
            cell = min(scale, source - start)
            first, last = int(np.ceil(start)), int(np.floor(end))
            if first - start > 1e-3:
                weights[x, first - 1] = (first - start) / cell
            weights[x, first:min(last, source)] = 1.0 / cell
            if end - last > 1e-3 and last < source:
                weights[x, last] = min(min(end - last, 1.0), cell) / cell
    else:
        for x in range(target):
            f = (x + 0.5) * scale - 0.5
            left = int(np.floor(f))
            f -= left
            if left < 0:
                left, f = 0, 0.0
            if left >= source - 1:
                left, f = source - 1, 0.0
            weights[x, left] += 1.0 - f
            if f > 0:
                weights[x, left + 1] += f
    return weights


@lru_cache(maxsize=64)
def _padded_weights(side: int, padded: int, size: int) -> np.ndarray:
    weights = np.zeros((size, padded))
    weights[:, :side] = resize_weights(side, size)
    return weights


def device_crop(regions: torch.Tensor, geometry: torch.Tensor, size: int) -> torch.Tensor:
    """The device half of `crop_frames`: uint8 regions (B, T, S, S, 3) on the device, each sample's
    square in its top-left side x side pixels (a batch of videos of several heights is padded to the
    largest), with `geometry` (B, 2) = (side, flip) on the CPU -> float (B, 3, T, size, size) in 0..255,
    rounded (half up) to whole levels as OpenCV's uint8 output is. Two matrix products per clip, in float32."""
    count, _, padded = regions.shape[:3]
    rows = []
    cols = []
    for side, flip in geometry.tolist():  # the geometry is a CPU tensor: no device synchronisation
        w = _padded_weights(side, padded, size)
        rows.append(w)
        cols.append(w[::-1] if flip else w)
    device = regions.device
    wy = torch.from_numpy(np.stack(rows)).float().to(device, non_blocking=True)[:, None, None]  # (B, 1, 1, size, S)
    wx = torch.from_numpy(np.stack(cols)).float().to(device, non_blocking=True)[:, None, None]
    x = regions.permute(0, 4, 1, 2, 3).float()  # (B, 3, T, S, S)
    return torch.matmul(torch.matmul(wy, x), wx.transpose(-1, -2)).add_(0.5).floor_().clamp_(0, 255)


@dataclass(frozen=True)
class FlowWindow:
    """Where a crop falls on a video's stored flow and how to read it."""

    reduce: int  # decode the JPEGs at 1/reduce scale (1, 2, 4, 8)
    x: int  # region on the decoded grid
    y: int
    width: int
    height: int
    scale_x: float  # stored-grid pixels -> target-grid pixels
    scale_y: float


def flow_window(crop: Crop, frame_hw: tuple[int, int], stored_hw: tuple[int, int], size: int) -> FlowWindow:
    """Map `crop` (on frames of `frame_hw`) onto flow stored at `stored_hw` for a `size` target."""
    (height, width), (stored_h, stored_w) = frame_hw, stored_hw
    region_w, region_h = crop.side * stored_w / width, crop.side * stored_h / height  # stored pixels
    reduce = 1
    while reduce < 8 and min(region_w, region_h) / (2 * reduce) >= size:
        reduce *= 2  # JPEG decoding at 1/2, 1/4, 1/8 scale is nearly free; keep >= size pixels
    decoded_w, decoded_h = -(-stored_w // reduce), -(-stored_h // reduce)
    fx, fy = decoded_w / width, decoded_h / height  # decoded pixels per frame pixel
    x, y = min(round(crop.x * fx), decoded_w - 1), min(round(crop.y * fy), decoded_h - 1)
    w = max(1, min(round(crop.side * fx), decoded_w - x))
    h = max(1, min(round(crop.side * fy), decoded_h - y))
    # a decoded pixel spans stored_w / decoded_w stored pixels
    return FlowWindow(reduce, x, y, w, h, size * decoded_w / (w * stored_w), size * decoded_h / (h * stored_h))


def crop_flow(quantized: np.ndarray, window: FlowWindow, size: int, flip: bool) -> np.ndarray:
    """Quantized flow of one pair on the decoded grid, uint8 (2, h, w) -> float32 (2, size, size) in
    target-grid pixels (mirrored and x negated when flipped)."""
    region = quantized[:, window.y:window.y + window.height, window.x:window.x + window.width]
    if flip:
        region = region[:, :, ::-1]
    out = np.empty((2, size, size), np.float32)
    interpolation = _interpolation(max(window.width, window.height), size)
    for channel, scale in enumerate((-window.scale_x if flip else window.scale_x, window.scale_y)):
        component = (DEQUANTIZED * np.float32(scale))[region[channel]]  # dequantize and rescale in one lookup
        if component.shape == (size, size):
            out[channel] = component
        else:
            cv2.resize(component, (size, size), dst=out[channel], interpolation=interpolation)
    return out


def reversed_clip(frames):
    """The frame-reconstruction target: the clip reversed in time, for (..., 3, T, H, W) arrays or tensors."""
    if isinstance(frames, np.ndarray):
        return frames[..., ::-1, :, :]
    return frames.flip(-3)
