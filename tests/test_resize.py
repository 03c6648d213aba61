"""rev2net/data/resize.py: a lower-resolution copy of a dataset lists the same videos, keeps every
frame, serves the same flow targets, resumes, and reports bad videos by name."""

from __future__ import annotations

import filecmp
import json
import os

import cv2
import numpy as np
import pytest

from rev2net.batch import FLOW, FRAMES
from rev2net.data.check import check_dataset
from rev2net.data.config import DataConfig
from rev2net.data.datasets import ClipDataset, ClipSpec, build_loaders
from rev2net.data.flow import dequantize, flow_dir_of, quantize, read_pair, stored_grid, write_meta, write_pair
from rev2net.data.layouts import all_videos, load_split
from rev2net.data.resize import MARKER, main, resample_flow, resize_dataset, scaled_size
from rev2net.data.transforms import Crop
from rev2net.data.video import open_video

SHORT = 32  # the tiny generated set is 64x64: the copy is exactly half


def _resize(root: str, out: str, **options) -> dict:
    return resize_dataset("synthetic", root, out, short_side=options.pop("short_side", SHORT), workers=1,
                          progress=False, **options)


def _frames(path: str) -> np.ndarray:
    reader = open_video(path)
    return reader.get_batch(list(range(len(reader)))).asnumpy()  # (F, H, W, 3)


def test_scaled_size_keeps_the_aspect_with_even_sides():
    assert scaled_size(240, 320, 128) == (128, 170)
    assert scaled_size(320, 240, 128) == (170, 128), "portrait: the width is the short side"
    assert scaled_size(64, 64, 32) == (32, 32)


def test_copy_lists_the_same_videos_at_the_new_size(synthetic_root, tmp_path):
    out = str(tmp_path / "copy")
    result = _resize(synthetic_root, out)
    assert result["video_summary"].done == len(all_videos("synthetic", synthetic_root)) and not result["failed_videos"]
    for split in (1, 2, 3):
        source, copy = load_split("synthetic", synthetic_root, split), load_split("ucf101", out, split)
        assert copy.class_names == source.class_names
        for subset in ("train", "test"):
            assert [(r.key, r.label, r.group) for r in getattr(copy, subset)] == \
                   [(r.key, r.label, r.group) for r in getattr(source, subset)], f"split {split} {subset}"
            assert all(r.path.startswith(out) for r in getattr(copy, subset)), "the copy's videos, not the source's"
    for record in all_videos("synthetic", synthetic_root):
        source = _frames(record.path)
        small = _frames(os.path.join(out, os.path.relpath(record.path, synthetic_root)))
        assert small.shape == (len(source), SHORT, SHORT, 3), f"{record.key}: every frame, at the new size"
        expected = np.stack([cv2.resize(f, (SHORT, SHORT), interpolation=cv2.INTER_AREA) for f in source])
        mse = np.mean((small.astype(np.float64) - expected) ** 2)
        assert 10 * np.log10(255**2 / mse) > 25, f"{record.key}: the copy shows the same picture"
    with open(os.path.join(out, MARKER)) as f:
        marker = json.load(f)
    assert (marker["short_side"], marker["videos"], marker["flow"]) == (SHORT, len(all_videos("synthetic", synthetic_root)), "link")
    assert "classInd.txt" in marker["annotations"] and "trainlist01.txt" in marker["annotations"]
    assert not os.path.exists(os.path.join(out, "synthetic.json")), "only split and annotation files are copied"


def test_linked_flow_serves_the_copy_with_identical_targets(synthetic_root, tmp_path):
    out = str(tmp_path / "copy")
    _resize(synthetic_root, out)
    linked = os.path.realpath(os.path.join(out, "flow_tvl1"))
    assert linked == os.path.realpath(os.path.join(synthetic_root, "flow_tvl1"))
    spec = ClipSpec(frames=6, crop_size=28, short_side=32)
    source_records, copy_records = (load_split("ucf101", r, 1).train for r in (synthetic_root, out))
    source = ClipDataset(source_records, spec, flow_root=os.path.join(synthetic_root, "flow_tvl1"), flow_size=14)
    copy = ClipDataset(copy_records, spec, flow_root=os.path.join(out, "flow_tvl1"), flow_size=14)
    pairs = [[i] for i in range(3, 8)]  # the targets of frames 3..8 at stride 1
    for flip in (False, True):  # the same region of the picture: half the pixels on the copy
        a = source._flow(source.flow_root, source_records[1], pairs, Crop(6, 4, 56, flip), (64, 64), 14)
        b = copy._flow(copy.flow_root, copy_records[1], pairs, Crop(3, 2, 28, flip), (32, 32), 14)
        assert a.shape == b.shape == (2, 5, 14, 14)
        np.testing.assert_array_equal(a, b, err_msg=f"flip={flip}: flow is read in proportion to the frames")
    report = check_dataset(DataConfig(name="ucf101", root=out, frames=8, crop_size=28, short_side=32), deep=True)
    assert report.ok, report.summary()
    cfg = DataConfig(name="ucf101", root=out, frames=8, crop_size=28, short_side=32, flow_downsample=2,
                     batch_size=2, num_workers=0)
    batch = next(iter(build_loaders(cfg, seed=0).train))
    assert tuple(batch[FRAMES].shape) == (2, 3, 8, 28, 28) and tuple(batch[FLOW].shape) == (2, 2, 7, 14, 14)


def test_resampling_scales_flow_vectors_with_the_grid(tmp_path):
    height, width, pairs = 48, 64, 2
    columns = (np.arange(width) + 0.5) / width  # pixel centres, 0..1
    source = str(tmp_path / "source")
    os.makedirs(source)
    for pair in range(pairs):  # x: a ramp from 2 to 10 px (+1 per pair); y: -6 px everywhere
        x = np.broadcast_to(2 + 8 * columns + pair, (height, width))
        flow = np.stack([x, np.full((height, width), -6.0)], -1)  # (H, W, 2)
        write_pair(source, pair, quantize(flow), [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_meta(source, height=height, width=width, pairs=pairs, algorithm="tvl1", preset="fast")
    assert resample_flow(source, str(tmp_path / "small"), 24) == pairs
    assert stored_grid(str(tmp_path / "small")) == (24, 32, pairs), "short side 24, aspect kept"
    with open(tmp_path / "small" / "meta.json") as f:
        meta = json.load(f)
    assert (meta["algorithm"], meta["preset"], meta["resampled_from"]) == ("tvl1", "fast", [48, 64])
    small_columns = (np.arange(32) + 0.5) / 32
    for pair in range(pairs):
        x, y = dequantize(read_pair(str(tmp_path / "small"), pair))  # pixels of the 24x32 grid: half the source's
        for got, want in ((x, (2 + 8 * small_columns + pair) / 2), (y, -3.0)):
            error = np.abs(got - want)  # a quantization step is 0.157 px; JPEG adds a little
            assert error.mean() < 0.08 and error.max() < 0.3, f"pair {pair}: {error.mean():.3f}, {error.max():.3f}"


def test_resampled_flow_serves_nearly_the_same_targets(synthetic_root, tmp_path):
    out = str(tmp_path / "copy")
    result = _resize(synthetic_root, out, flow="resample")
    flow_root = os.path.join(synthetic_root, "flow_tvl1")
    flowed = [r for r in all_videos("synthetic", synthetic_root) if os.path.isdir(flow_dir_of(flow_root, r.key))]
    assert result["flow_summary"].done == len(flowed) and not result["failed_flow"] and result["flow_size"] == SHORT
    assert result["without_flow"] == len(all_videos("synthetic", synthetic_root)) - len(flowed)
    for record in flowed:
        source_pairs = stored_grid(flow_dir_of(os.path.join(synthetic_root, "flow_tvl1"), record.key))[2]
        assert stored_grid(flow_dir_of(os.path.join(out, "flow_tvl1"), record.key)) == (SHORT, SHORT, source_pairs)
    # same region, same target grid: only the smaller grid's rounding differs (a quantization step
    # is 0.157 px of the stored grid: 0.04 px of these 14-pixel targets from 64-pixel flow, 0.08 from 32)
    spec = ClipSpec(frames=6, crop_size=28, short_side=32)
    records = load_split("ucf101", out, 1).train
    linked = ClipDataset(records, spec, flow_root=os.path.join(synthetic_root, "flow_tvl1"), flow_size=14)
    resampled = ClipDataset(records, spec, flow_root=os.path.join(out, "flow_tvl1"), flow_size=14)
    for record in records:
        pairs = [[i] for i in range(5)]  # a 6-frame clip's targets at stride 1
        a = linked._flow(linked.flow_root, record, pairs, Crop(2, 2, 28), (32, 32), 14)
        b = resampled._flow(resampled.flow_root, record, pairs, Crop(2, 2, 28), (32, 32), 14)
        assert np.abs(a - b).mean() < 0.04, record.key


def test_rerun_skips_what_is_done_and_redoes_what_was_interrupted(synthetic_root, tmp_path):
    out = str(tmp_path / "copy")
    _resize(synthetic_root, out)
    records = all_videos("synthetic", synthetic_root)
    videos = [os.path.join(out, os.path.relpath(r.path, synthetic_root)) for r in records]
    mtimes = {v: os.stat(v).st_mtime_ns for v in videos}
    victim = videos[4]
    os.remove(victim)  # as if the run was killed while writing it: only its partial file is there
    folder, name = os.path.split(victim)
    partial = os.path.join(folder, "." + name.replace(".avi", ".partial.avi"))
    with open(partial, "wb") as f:
        f.write(b"half a video")
    result = _resize(synthetic_root, out)
    summary = result["video_summary"]
    assert (summary.done, summary.skipped, summary.failures) == (1, len(videos) - 1, {})
    assert len(open_video(victim)) == 12 and not os.path.exists(partial), "redone, the partial file replaced"
    assert all(os.stat(v).st_mtime_ns == mtimes[v] for v in videos if v != victim), "finished videos untouched"


def test_a_bad_video_is_reported_by_name_and_the_rest_is_written(synthetic_copy, tmp_path, capsys):
    records = all_videos("synthetic", synthetic_copy)
    with open(records[2].path, "wb") as f:
        f.write(b"\x00" * 500)
    out = str(tmp_path / "copy")
    code = main(["--dataset", "synthetic", "--root", synthetic_copy, "--out", out, "--short-side", str(SHORT),
                 "--workers", "2", "--no-progress"])  # worker processes: failures come back by name
    printed = capsys.readouterr().out
    assert code == 1 and f"FAILED {records[2].path}" in printed and f"{len(records) - 1} videos resized" in printed
    assert "data.name=ucf101" in printed, "says how to train on the copy"
    bad = os.path.join(out, os.path.relpath(records[2].path, synthetic_copy))
    assert not os.path.exists(bad) and not [n for n in os.listdir(os.path.dirname(bad)) if "partial" in n]
    with open(os.path.join(out, MARKER)) as f:
        assert json.load(f)["failed_videos"] == [records[2].path]


def test_videos_already_small_enough_are_copied_unchanged(synthetic_root, tmp_path):
    out = str(tmp_path / "copy")
    _resize(synthetic_root, out, short_side=64, flow="none")
    for record in all_videos("synthetic", synthetic_root):
        assert filecmp.cmp(record.path, os.path.join(out, os.path.relpath(record.path, synthetic_root)), shallow=False)
    assert not os.path.lexists(os.path.join(out, "flow_tvl1")), "--flow none: no flow"


@pytest.mark.parametrize("args, message", [
    (["--short-side", "33"], "--short-side 33 is not allowed"),
    (["--short-side", "32", "--flow", "resample", "--flow-size", "7"], "--flow-size 7 is not allowed"),
    (["--short-side", "32", "--out", "{root}/small"], "must be outside --root"),
    (["--short-side", "32", "--root", "{root}/nowhere"], "is not a folder"),
])
def test_bad_arguments_are_refused_before_any_work(synthetic_root, tmp_path, capsys, args, message):
    argv = ["--dataset", "synthetic", "--root", synthetic_root, "--out", str(tmp_path / "copy"), "--no-progress"]
    argv += [a.format(root=synthetic_root) for a in args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(synthetic_root, "small"))


def test_switching_flow_modes_never_writes_through_the_link(synthetic_root, tmp_path):
    out = str(tmp_path / "copy")
    _resize(synthetic_root, out)  # link
    first = all_videos("synthetic", synthetic_root)[0]
    os.remove(os.path.join(out, os.path.relpath(first.path, synthetic_root)))
    with pytest.raises(ValueError, match="remove the link before --flow resample"):
        _resize(synthetic_root, out, flow="resample")
    assert not os.path.exists(os.path.join(out, os.path.relpath(first.path, synthetic_root))), "refused before any work"
    os.remove(os.path.join(out, "flow_tvl1"))
    _resize(synthetic_root, out, flow="resample")
    with pytest.raises(ValueError, match="exists and is not a link"):
        _resize(synthetic_root, out)  # link onto the resampled folder
