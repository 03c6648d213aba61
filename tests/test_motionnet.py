"""rev2net/motionnet.py: warping, the unsupervised terms, the network's shapes and windows, a real
overfit on a generated clip, and flow targets in the geometry of the TV-L1 targets."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rev2net.batch import normalize_frames
from rev2net.data.datasets import ClipDataset, ClipSpec
from rev2net.data.flow import quantize
from rev2net.data.layouts import load_split
from rev2net.data.synthetic import ground_truth_flow
from rev2net.data.transforms import Crop, crop_flow, crop_frames, flow_window
from rev2net.data.video import open_video, read_frames
from rev2net.motionnet import (
    CHARBONNIER_EPS,
    FLOW_BOUND,
    PIXEL_ALPHA,
    MotionNetLoss,
    build_motionnet,
    flow_targets,
    load_motionnet,
    motionnet_state,
    resize_flow,
    scale_terms,
    ssim_patches,
    unsupervised_terms,
    warp,
)


def translated_pair(dx: int, dy: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two frames (1, 3, 2, size, size) in [0, 1] of a random texture whose content moves by (dx, dy)
    from the first frame to the second, cut from a larger texture (no wrap-around)."""
    texture = torch.rand(3, size + 20, size + 20, generator=torch.Generator().manual_seed(seed))
    first = texture[:, 10:10 + size, 10:10 + size]
    second = texture[:, 10 - dy:10 - dy + size, 10 - dx:10 - dx + size]  # second(p) = first(p - d)
    return torch.stack([first, second], 1)[None], first[None]


# --------------------------------------------------------------------------------------- warping


def test_warping_a_known_translation_back_is_exact_on_interior_pixels():
    frames, first = translated_pair(3, -2)
    flow = torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 32, 32)
    warped, inside = warp(frames[:, :, 1], flow)
    interior = (slice(None), slice(None), slice(2, 32), slice(0, 29))  # p + d stays inside: y >= 2, x <= 28
    torch.testing.assert_close(warped[interior], first[interior], atol=1e-5, rtol=0)
    assert inside[0, 0, 2:, :29].all() and inside.sum() == 30 * 29, "exactly the pixels whose flow stays inside"
    assert warped[..., :, 29:].abs().max() == 0, "outside the frame the warped value is 0"


def test_warping_is_bilinear_at_subpixel_displacements():
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ramp = (0.3 * xs + 0.1 * ys)[None, None]  # a linear image: bilinear interpolation is exact
    flow = torch.tensor([1.5, 0.25]).view(1, 2, 1, 1).expand(1, 2, 16, 16)
    warped, inside = warp(ramp, flow)
    expected = ramp + 0.3 * 1.5 + 0.1 * 0.25
    mask = inside.bool()
    torch.testing.assert_close(warped[mask], expected[mask], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ loss


def test_reconstruction_loss_is_zero_for_the_true_flow_and_larger_for_a_wrong_one():
    frames, _ = translated_pair(2, 1)
    floor = CHARBONNIER_EPS ** (2 * PIXEL_ALPHA)  # rho(0)

    def terms(dx: float, dy: float) -> dict[str, float]:
        flow = torch.tensor([dx, dy]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 32, 32)
        return {k: v.item() for k, v in scale_terms(frames, flow).items()}

    true = terms(2, 1)
    assert true["pixel"] == pytest.approx(floor, rel=1e-4), "no photometric error beyond the Charbonnier floor"
    assert true["ssim"] == pytest.approx(0, abs=1e-4)
    assert true["smooth"] == pytest.approx(4 * CHARBONNIER_EPS ** (2 * 0.3), rel=1e-4), "a constant field is smooth"
    for wrong in ((0, 0), (1, 1), (2, 0), (-2, -1)):
        bad = terms(*wrong)
        assert bad["pixel"] > 10 * floor, f"flow {wrong}: pixel term {bad['pixel']} should exceed the floor"
        assert bad["ssim"] > 0.1, f"flow {wrong}: SSIM term {bad['ssim']}"


def test_ssim_of_identical_images_is_one():
    a = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ssim_patches(a, a), torch.ones(2, 3, 4, 3))
    b = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(2))
    assert ssim_patches(a, b).max() < 0.5
    assert ssim_patches(a[..., :5, :5], a[..., :5, :5]).shape == (2, 3, 1, 1), "one patch on a grid under 8 px"


def test_unsupervised_terms_sum_the_scales_with_their_weights():
    torch.manual_seed(0)
    model = build_motionnet(frames=3, width=0.0625)
    frames = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    pyramid = model.pyramid(frames)
    only_finest = unsupervised_terms(frames, pyramid, MotionNetLoss(scales=(1, 0, 0, 0, 0)))
    direct = scale_terms((frames + 1) / 2, pyramid[0])
    for name in ("pixel", "smooth", "ssim"):
        torch.testing.assert_close(only_finest[name], direct[name])
    doubled = unsupervised_terms(frames, pyramid, MotionNetLoss(scales=(2, 0, 0, 0, 0)))
    torch.testing.assert_close(doubled["pixel"], 2 * direct["pixel"])
    with pytest.raises(ValueError, match="MotionNetLoss.smooth"):
        MotionNetLoss(smooth=-1.0)


# --------------------------------------------------------------------------------------- network


@pytest.mark.parametrize("frames, height, width", [(5, 32, 32), (4, 37, 50)])
def test_flow_of_every_pair_at_five_scales_and_full_resolution(frames, height, width):
    torch.manual_seed(0)
    model = build_motionnet(frames=frames, width=0.0625)
    x = torch.rand(2, 3, frames, height, width) * 2 - 1
    pyramid = model.pyramid(x)
    assert len(pyramid) == 5
    for level, flow in enumerate(pyramid, start=1):
        expected = (2, 2, frames - 1, -(-height // 2**level), -(-width // 2**level))
        assert tuple(flow.shape) == expected, f"flow{level + 1} {tuple(flow.shape)}, expected {expected}"
    assert tuple(model(x).shape) == (2, 2, frames - 1, height, width)


def test_clips_longer_or_shorter_than_the_window_are_cut_into_windows():
    torch.manual_seed(0)
    model = build_motionnet(frames=4, width=0.0625)
    # a flow scale far from zero, so that a wrong window shows
    torch.nn.init.normal_(model.decoder[-1].predict.weight, std=0.1)
    clip = torch.rand(1, 3, 9, 32, 32) * 2 - 1  # windows: frames 0-3, 3-6, 6-8 (+ one repeated frame)
    flow = model.pyramid(clip)[0]
    assert flow.shape[2] == 8
    padded = torch.cat([clip[:, :, 6:9], clip[:, :, 8:9]], 2)
    expected = torch.cat([model.pyramid(clip[:, :, 0:4])[0], model.pyramid(clip[:, :, 3:7])[0],
                          model.pyramid(padded)[0][:, :, :2]], 2)
    torch.testing.assert_close(flow, expected, atol=1e-5, rtol=1e-4)
    assert model.pyramid(clip[:, :, :2])[0].shape[2] == 1, "a single pair"


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_motionnet(frames=3, width=0.0625)
    path = tmp_path / "motionnet.pt"
    torch.save(motionnet_state(model, epoch=1), path)
    loaded = load_motionnet(path)
    assert loaded.config == {"frames": 3, "width": 0.0625}
    x = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(FileNotFoundError, match="pretrain one"):
        load_motionnet(tmp_path / "missing.pt")


# -------------------------------------------------------------------- a real clip, really trained

CROP = Crop(8, 4, 40, flip=True)  # on the 64x64 generated frames, resized to SIZE and mirrored
SIZE = 48


def _mask_through(objects: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """Object pixels (P, H, W) through the clip's crop, resize and flip: bool (P, size, size)."""
    as_frames = np.repeat(objects[..., None].astype(np.uint8) * 255, 3, -1)  # (P, H, W, 3)
    return crop_frames(as_frames, crop, size)[0] > 127


def _gt_through(gt: np.ndarray, crop: Crop, frame_hw: tuple[int, int], size: int) -> np.ndarray:
    """Exact flow (P, 2, H, W) through the same crop, resize and flip as the TV-L1 targets: (2, P, size, size)."""
    window = flow_window(crop, frame_hw, frame_hw, size)
    return np.stack([crop_flow(quantize(pair), window, size, crop.flip) for pair in gt], 1)


@pytest.fixture(scope="module")
def trained_on_flipped_crop(synthetic_root):
    """A thin MotionNet overfitted (unsupervised) on one generated clip of sideways motion, cropped,
    resized and mirrored the way training clips are; with that clip's exact flow and object mask."""
    record = next(r for r in load_split("synthetic", synthetic_root, 1).train if r.key.startswith("MoveSideways/"))
    reader = open_video(record.path)
    frames = read_frames(reader, np.arange(len(reader)), record.path)  # (F, H, W, 3)
    gt, objects = ground_truth_flow(synthetic_root, record.key)
    clip = normalize_frames(torch.from_numpy(crop_frames(frames, CROP, SIZE))[None].contiguous())  # (1, 3, F, S, S)
    torch.manual_seed(0)
    model = build_motionnet(frames=clip.shape[2], width=0.25)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~100 small steps: a second thread only waits on a busy machine
    try:
        for _ in range(100):
            loss = MotionNetLoss().total(unsupervised_terms(clip, model.pyramid(clip)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model, clip, gt, objects, frames.shape[1:3], record


def _epe(flow: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Mean end-point error over the masked pixels; flow, gt (2, P, h, w), mask (P, h, w)."""
    return float(np.sqrt(((flow - gt) ** 2).sum(0))[mask].mean())


def test_motionnet_overfits_one_generated_clip_to_low_end_point_error(trained_on_flipped_crop):
    model, clip, gt, objects, frame_hw, _ = trained_on_flipped_crop
    with torch.no_grad():
        flow = model.eval()(clip)[0].numpy()  # (2, P, S, S), pixels of the clip
    truth = _gt_through(gt, CROP, frame_hw, SIZE)
    on_objects = _mask_through(objects, CROP, SIZE)
    everywhere = np.ones_like(on_objects)
    zero = np.zeros_like(truth)
    assert _epe(zero, truth, on_objects) > 0.8, "the clip's objects do move"
    assert _epe(flow, truth, on_objects) < 0.4 * _epe(zero, truth, on_objects), \
        f"moving objects: EPE {_epe(flow, truth, on_objects):.3f} vs zero flow {_epe(zero, truth, on_objects):.3f}"
    assert _epe(flow, truth, everywhere) < 0.8 * _epe(zero, truth, everywhere)


def test_flow_targets_match_the_tvl1_targets_geometry(trained_on_flipped_crop, synthetic_root):
    """Targets on the flipped crop's half grid agree with the exact flow put through the data
    pipeline's crop, resize and flip at that grid (x negated), and with the TV-L1 targets the
    pipeline delivers for that crop; unflipped or unscaled, they do not."""
    model, clip, gt, objects, frame_hw, record = trained_on_flipped_crop
    model.train()
    half = SIZE // 2
    targets = flow_targets(model, clip, (half, half))
    assert model.training, "the caller's mode is left as it was"
    assert targets.shape == (1, 2, clip.shape[2] - 1, half, half) and targets.dtype == torch.float32
    assert not targets.requires_grad and targets.device == next(model.parameters()).device
    flow = targets[0].numpy()
    truth = _gt_through(gt, CROP, frame_hw, half)
    on_objects = _mask_through(objects, CROP, half)
    epe = _epe(flow, truth, on_objects)
    assert epe < 0.4 * _epe(np.zeros_like(truth), truth, on_objects), f"targets vs exact flow: EPE {epe:.3f} px"
    unflipped = truth * np.array([-1.0, 1.0], np.float32).reshape(2, 1, 1, 1)
    assert _epe(flow, unflipped, on_objects) > 2 * epe, "the flip's negated x is in the targets"
    full_grid = _gt_through(gt, CROP, frame_hw, SIZE)[:, :, ::2, ::2]  # right places, vectors twice too long
    assert _epe(flow, full_grid, on_objects) > 1.5 * epe, "vectors are in pixels of the target grid"
    spec = ClipSpec(frames=clip.shape[2], crop_size=SIZE, short_side=SIZE)
    flow_root = os.path.join(synthetic_root, "flow_tvl1")
    pairs = [[i] for i in range(clip.shape[2] - 1)]  # frame i to i + 1: the targets of a clip at stride 1
    tvl1 = ClipDataset([record], spec, flow_root=flow_root, flow_size=half)._flow(
        flow_root, record, pairs, CROP, frame_hw, half)  # what a training batch carries for this crop
    assert tvl1.shape == flow.shape and tvl1.dtype == flow.dtype
    assert _epe(flow, tvl1, on_objects) < 0.5 * _epe(np.zeros_like(tvl1), tvl1, on_objects)


def test_flow_targets_are_resized_and_clipped_like_tvl1_targets():
    torch.manual_seed(0)
    model = build_motionnet(frames=3, width=0.0625)
    torch.nn.init.normal_(model.decoder[-1].predict.weight, std=5.0)  # large flow, beyond the clip bound
    clip = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    finest = model.eval().pyramid(clip)[0]  # (2, 2, 2, 16, 16)
    at_16 = flow_targets(model, clip, (16, 16))
    torch.testing.assert_close(at_16, finest.clamp(-FLOW_BOUND, FLOW_BOUND))
    assert at_16.abs().max() == FLOW_BOUND
    at_8 = flow_targets(model, clip, (8, 8))
    torch.testing.assert_close(at_8, resize_flow(finest, (8, 8)).clamp(-FLOW_BOUND, FLOW_BOUND))
    small = torch.full((1, 2, 1, 16, 16), 3.0)
    torch.testing.assert_close(resize_flow(small, (8, 4)), torch.stack(
        [torch.full((8, 4), 0.75), torch.full((8, 4), 1.5)])[None, :, None], msg="x by w/w', y by h/h'")
