"""rev2net/data/transforms.py: one crop/resize/flip for frames and flow, vectors rescaled, x negated on a flip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rev2net.data.flow import quantize
from rev2net.data.transforms import (Crop, centre_crop, crop_flow, crop_frames, crop_side, flow_window, random_crop,
                                     reversed_clip)


def test_crop_covers_what_the_resized_short_side_would():
    assert crop_side(240, 320, 224, 256) == 210, "224 of a 256 short side = 210 of 240"
    assert crop_side(256, 340, 224, 256) == 224, "no resize needed"
    assert centre_crop(240, 320, crop_size=224, short_side=256) == Crop(55, 15, 210)
    rng = np.random.default_rng(0)
    crops = [random_crop(240, 320, crop_size=224, short_side=256, rng=rng) for _ in range(200)]
    assert all(0 <= c.x <= 110 and 0 <= c.y <= 30 and c.side == 210 for c in crops)
    assert 60 < sum(c.flip for c in crops) < 140, "flips about half the time"


def test_frames_are_cropped_resized_flipped_and_channels_first():
    ramp = np.tile(np.arange(100, dtype=np.uint8)[None, None, :, None], (4, 80, 1, 3))  # value = x
    out = crop_frames(ramp, Crop(10, 5, 50), 50)
    assert out.shape == (3, 4, 50, 50) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == list(range(10, 60))
    assert crop_frames(ramp, Crop(10, 5, 50, flip=True), 50)[0, 0, 0].tolist() == list(range(59, 9, -1))
    assert crop_frames(ramp, Crop(10, 5, 50), 25).shape == (3, 4, 25, 25)


@pytest.mark.parametrize("stored,size", [((80, 120), 40), ((40, 60), 40), ((80, 120), 10), ((20, 30), 40)])
def test_flow_vectors_follow_the_resize(stored, size):
    """Uniform motion of (+6, -3) frame pixels on 80x120 frames, stored on a grid of `stored`."""
    (sh, sw), (h, w) = stored, (80, 120)
    q = quantize(np.stack([np.full(stored, 6 * sw / w), np.full(stored, -3 * sh / h)]))
    crop = Crop(30, 10, 60)
    window = flow_window(crop, (h, w), stored, size)
    decoded = q[:, :: window.reduce, :: window.reduce]  # what a reduced JPEG decode gives (uniform field)
    out = crop_flow(decoded, window, size, flip=False)
    scale = size / crop.side  # target pixels per frame pixel
    assert out.shape == (2, size, size) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 6 * scale, atol=0.1 * scale * max(1, w / sw))
    np.testing.assert_allclose(out[1], -3 * scale, atol=0.1 * scale * max(1, h / sh))
    flipped = crop_flow(decoded, window, size, flip=True)
    np.testing.assert_allclose(flipped[0], -out[0], atol=1e-5, err_msg="x negated on a flip")
    np.testing.assert_allclose(flipped[1], out[1], atol=1e-5)


def test_large_stored_flow_is_decoded_at_reduced_scale():
    window = flow_window(Crop(55, 15, 210), (240, 320), (240, 320), 56)
    assert window.reduce == 2, "210 px region: 1/2 keeps >= 56 px, 1/4 would not"
    assert (window.width, window.height) == (105, 105)
    assert flow_window(Crop(55, 15, 210), (240, 320), (240, 320), 224).reduce == 1


@pytest.mark.parametrize("seed", range(6))
def test_frames_and_flow_get_the_same_crop_and_flip(seed):
    """Left of x = 48 (frame pixels) is bright and moves right by 4; the rest is dark and moves left."""
    h, w = 72, 96
    frames = np.zeros((2, h, w, 3), np.uint8)
    frames[:, :, :48] = 255
    stored = (36, 48)  # flow stored at half resolution: the edge sits at stored x = 24
    u = np.where(np.arange(stored[1]) < 24, 2.0, -2.0)  # stored-grid pixels (4 frame pixels)
    q = quantize(np.stack([np.tile(u, (stored[0], 1)), np.zeros(stored)]))
    rng = np.random.default_rng(seed)
    crop = random_crop(h, w, crop_size=32, short_side=40, rng=rng)
    size = 16
    window = flow_window(crop, (h, w), stored, size)
    flow = crop_flow(q[:, :: window.reduce, :: window.reduce], window, size, crop.flip)
    bright = crop_frames(frames, crop, size)[0, 0] > 127  # (size, size), the same grid as the flow
    sign = -1 if crop.flip else 1  # mirrored, the bright part moves left
    assert (bright == (sign * flow[0] > 0)).mean() > 0.9, f"{crop}: frames and flow disagree"
    expected = 4 * size / crop.side  # frame pixels -> target pixels
    for part in (bright, ~bright):
        if part.sum() > size:
            assert np.median(np.abs(flow[0][part])) == pytest.approx(expected, rel=0.05)


def test_reversed_clip_reverses_time_only():
    clip = np.arange(2 * 3 * 4 * 2 * 2).reshape(2, 3, 4, 2, 2)  # (B, C, T, H, W)
    np.testing.assert_array_equal(reversed_clip(clip)[:, :, 0], clip[:, :, 3])
    tensor = torch.from_numpy(clip)
    assert torch.equal(reversed_clip(tensor), torch.from_numpy(np.ascontiguousarray(clip[:, :, ::-1])))


@pytest.mark.parametrize("height,width,crop_size,short_side", [
    (240, 320, 224, 256),  # UCF101 at full size: 210 px squares enlarged to 224 (INTER_LINEAR)
    (64, 80, 32, 40),  # shrunk by a non-integer ratio (INTER_AREA): 51 -> 32
    (64, 64, 32, 64),  # no resize
    (240, 320, 56, 120),  # shrunk by an integer ratio: 112 -> 56
])
def test_device_crop_matches_the_cpu_path(height, width, crop_size, short_side):
    """Device-side augmentation (data.augment_on=device) gives the loader's clips to one grey level:
    the same crop, resize and flip from the same seeds."""
    from rev2net.data.transforms import crop_region, device_crop

    rng = np.random.default_rng(height + crop_size)
    frames = rng.integers(0, 256, (3, height, width, 3), dtype=np.uint8)
    crops = [random_crop(height, width, crop_size=crop_size, short_side=short_side, rng=rng) for _ in range(6)]
    crops.append(Crop(0, 0, min(height, width), flip=True))  # a larger square: the batch is padded to it
    cpu = np.stack([crop_frames(frames, c, crop_size) for c in crops]).astype(np.float32)  # (B, 3, T, s, s)
    largest = max(c.side for c in crops)
    regions = torch.zeros(len(crops), 3, largest, largest, 3, dtype=torch.uint8)
    for i, c in enumerate(crops):
        regions[i, :, :c.side, :c.side] = torch.from_numpy(crop_region(frames, c))
    geometry = torch.tensor([[c.side, int(c.flip)] for c in crops])
    device = device_crop(regions, geometry, crop_size).numpy()
    assert device.shape == cpu.shape, (device.shape, cpu.shape)
    difference = np.abs(device - cpu)
    assert difference.max() <= 1.0, f"{difference.max()} grey levels apart"
    assert (difference > 0).mean() < 0.2, "OpenCV's fixed-point rounding aside, the values are the same"
    assert any(c.flip for c in crops) and not all(c.flip for c in crops)


def test_resize_weights_are_opencvs():
    from rev2net.data.transforms import resize_weights

    for source, target in ((224, 112), (210, 224), (51, 32), (7, 7)):
        w = resize_weights(source, target)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, err_msg=f"{source} -> {target}: rows are averages")
        line = np.random.default_rng(0).integers(0, 256, (1, source)).astype(np.float32)
        expected = cv2.resize(line, (target, 1), interpolation=cv2.INTER_AREA if source > target else cv2.INTER_LINEAR)
        np.testing.assert_allclose(line @ w.T, expected, atol=1e-3, err_msg=f"{source} -> {target}")
