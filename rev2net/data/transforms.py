"""Spatial geometry applied identically to a clip's frames and its flow targets.

A crop is a square region of the *source* video frame: the region that, after resizing the short
side to `short_side`, would be a `crop_size` square (at a random position for training, centred
for evaluation). Cropping before resizing gives the same picture while resizing only the pixels
kept. The same region, mapped onto the flow's own grid (which may be smaller: `--flow-size`), is
resized to the flow target grid, and the vectors are scaled by that resize's factors; a
horizontal flip mirrors both and negates the flow's x component.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

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
