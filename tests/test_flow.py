"""rev2net/data/flow.py: quantization, the JPEG layout, resumable extraction, failures by video."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from rev2net.data import flow as flowmod
from rev2net.data.flow import (BOUND, count_pairs, dequantize, extract_flow, extract_video, flow_dir_of, main,
                               pair_files, quantize, read_pair, stored_grid)
from rev2net.data.layouts import all_videos

STEP = 2 * BOUND / 255


def test_quantization_is_the_standard_formula_and_round_trips():
    values = np.array([-20.0, -5.3, 0.0, 0.1, 7.77, 20.0], np.float32)
    assert quantize(values).tolist() == np.round(255 * (values + 20) / 40).astype(int).tolist()
    assert quantize(np.array([-100.0, 100.0])).tolist() == [0, 255], "clipped at +-20"
    v = np.random.default_rng(0).uniform(-BOUND, BOUND, 10_000).astype(np.float32)
    assert np.abs(dequantize(quantize(v)) - v).max() <= STEP / 2 + 1e-5
    assert dequantize(quantize(np.zeros(1)))[0] == pytest.approx(STEP / 2, abs=1e-5), "0 -> 128 -> +half a step"


def test_extraction_writes_the_standard_layout(synthetic_root, tmp_path):
    video = all_videos("synthetic", synthetic_root)[0]
    out = str(tmp_path / "v")
    assert extract_video(video.path, out, algorithm="farneback") == 11, "one pair per consecutive frame pair"
    names = sorted(os.listdir(out))
    assert names[0] == "flow_x_00001.jpg" and names[-1] == "meta.json" and "flow_y_00011.jpg" in names
    assert len(names) == 2 * 11 + 1 and count_pairs(out) == 11
    x = cv2.imread(pair_files(out, 0)[0], cv2.IMREAD_UNCHANGED)
    assert x.dtype == np.uint8 and x.shape == (64, 64), "grey JPEG on the video's grid"
    assert stored_grid(out) == (64, 64, 11)
    os.remove(os.path.join(out, "meta.json"))
    assert stored_grid(out) == (64, 64, 11), "grid also known without meta.json (flow from other tools)"
    assert read_pair(out, 0, reduce=2).shape == (2, 32, 32)


def test_reduced_flow_size_scales_the_stored_grid(synthetic_root, tmp_path):
    video = all_videos("synthetic", synthetic_root)[0]
    extract_video(video.path, str(tmp_path / "v"), flow_size=32)
    with open(tmp_path / "v" / "meta.json") as f:
        meta = json.load(f)
    assert (meta["height"], meta["width"], meta["pairs"], meta["algorithm"]) == (32, 32, 11, "tvl1")


def test_stored_tvl1_matches_fresh_computation_up_to_jpeg(synthetic_root):
    video = all_videos("synthetic", synthetic_root)[1]
    frames = list(flowmod.grey_frames(video.path, None))
    fresh = flowmod.FlowComputer("tvl1")(frames[3], frames[4])  # (H, W, 2)
    stored = dequantize(read_pair(flow_dir_of(os.path.join(synthetic_root, "flow_tvl1"), video.key), 3))
    assert np.abs(stored.transpose(1, 2, 0) - fresh).mean() < 0.1, "JPEG q95 + quantization error stays small"


def _jobs(root: str, flow_root: str) -> list[tuple[str, str]]:
    return [(r.path, flow_dir_of(flow_root, r.key)) for r in all_videos("synthetic", root)]


def test_extraction_resumes_after_an_interruption_without_redoing_videos(synthetic_root, tmp_path, monkeypatch):
    flow_root = str(tmp_path / "flow")
    jobs = _jobs(synthetic_root, flow_root)
    calls = {"n": 0}
    real_imencode = cv2.imencode

    def killed_mid_video(*args, **kwargs):  # the run dies inside the 4th video (11 pairs x 2 JPEGs each)
        calls["n"] += 1
        if calls["n"] == 3 * 22 + 5:
            raise KeyboardInterrupt
        return real_imencode(*args, **kwargs)

    monkeypatch.setattr(flowmod.cv2, "imencode", killed_mid_video)
    with pytest.raises(KeyboardInterrupt):
        extract_flow(jobs, algorithm="farneback", workers=1, progress=False)
    monkeypatch.setattr(flowmod.cv2, "imencode", real_imencode)
    done = [out for _, out in jobs if os.path.isdir(out)]
    assert done == [out for _, out in jobs[:3]], "only finished videos have a folder"
    partial = os.path.join(os.path.dirname(jobs[3][1]), "." + os.path.basename(jobs[3][1]) + ".partial")
    assert os.path.isdir(partial), "the interrupted video left only its .partial folder"
    stamps = {out: os.stat(pair_files(out, 0)[0]).st_mtime_ns for out in done}

    summary = extract_flow(jobs, algorithm="farneback", workers=1, progress=False)
    assert (summary.skipped, summary.done, summary.failures) == (3, len(jobs) - 3, {})
    assert all(os.stat(pair_files(out, 0)[0]).st_mtime_ns == stamp for out, stamp in stamps.items()), \
        "finished videos were not redone"
    assert not os.path.exists(partial) and all(count_pairs(out) == 11 for _, out in jobs)


def test_failures_are_summarised_by_video_and_do_not_stop_the_run(synthetic_copy, capsys):
    videos = all_videos("synthetic", synthetic_copy)
    with open(videos[0].path, "wb") as f:
        f.write(b"not a video")
    open(videos[1].path, "wb").close()
    shutil.rmtree(os.path.join(synthetic_copy, "flow_tvl1"))
    code = main(["--dataset", "synthetic", "--root", synthetic_copy, "--algorithm", "farneback", "--workers", "1",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{len(videos) - 2} videos extracted" in out and "2 failed" in out
    assert f"FAILED {videos[0].path}: UnreadableVideo" in out and f"FAILED {videos[1].path}: UnreadableVideo" in out
    assert os.path.isdir(os.path.join(synthetic_copy, "flow_farneback", videos[2].key))


def test_parallel_workers_give_the_same_flow(synthetic_root, tmp_path):
    jobs = _jobs(synthetic_root, str(tmp_path / "flow"))[:2]
    summary = extract_flow(jobs, workers=2, progress=False)
    assert summary.done == 2 and not summary.failures
    reference = os.path.join(synthetic_root, "flow_tvl1", os.path.relpath(jobs[0][1], str(tmp_path / "flow")))
    assert np.array_equal(read_pair(jobs[0][1], 5), read_pair(reference, 5)), "deterministic across processes"


def test_unknown_algorithm_or_preset_is_refused_before_work(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="--algorithm 'pwc'"):
        extract_flow(_jobs(synthetic_root, str(tmp_path)), algorithm="pwc", progress=False)
    with pytest.raises(ValueError, match="--preset 'turbo'"):
        extract_flow(_jobs(synthetic_root, str(tmp_path)), preset="turbo", progress=False)
