"""rev2net/data/synthetic.py: motion-defined classes, determinism, idempotent generation, and the
pipeline's own correctness check: TV-L1 end-point error well below zero flow's."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rev2net.data.config import SyntheticConfig
from rev2net.data.layouts import all_videos, load_split
from rev2net.data.synthetic import (MARKER, MOTIONS, check_params, ensure_synthetic, flow_epe, generate_dataset,
                                    ground_truth_flow, main)
from rev2net.data.video import open_video


def test_tvl1_end_point_error_is_well_below_zero_flow(synthetic_root):
    epe = flow_epe(synthetic_root)
    assert epe["pairs"] == 9 * 11
    # most pixels are background panning by < 0.5 px per frame, where TV-L1 (and the +-0.08 px
    # quantization) leave ~0.2 px; on the moving objects zero flow is 7x worse
    assert epe["epe"] < 0.7 * epe["zero_flow_epe"], epe
    assert epe["object_epe"] < 0.25 * epe["object_zero_flow_epe"], epe
    with open(os.path.join(synthetic_root, MARKER)) as f:
        assert json.load(f)["tvl1_vs_ground_truth"] == epe, "the marker records the check"


def test_videos_are_real_encoded_files_in_ucf_layout(synthetic_root):
    split = load_split("ucf101", synthetic_root, 1)
    for record in split.train + split.test:
        assert record.path.endswith(".avi") and os.path.basename(record.path).startswith("v_")
        reader = open_video(record.path)
        assert len(reader) == 12 and reader[0].shape == (64, 64, 3)


def test_classes_are_defined_by_motion(synthetic_root):
    sideways = []
    for record in all_videos("synthetic", synthetic_root):
        flow, objects = ground_truth_flow(synthetic_root, record.key)
        assert flow.shape == (11, 2, 64, 64) and objects.shape == (11, 64, 64)
        motion = np.array([flow[:, c][objects].mean() for c in (0, 1)])  # mean object displacement
        cls = record.key.split("/")[0]
        if cls == "MoveSideways":  # left or right: the class survives horizontal flips
            assert abs(motion[0]) > 0.5 and abs(motion[1]) < 0.3, (record.key, motion)
        else:
            assert motion[1] * (1 if cls == "MoveDown" else -1) > 0.5 and abs(motion[0]) < 0.3, (record.key, motion)
        sideways.append(np.sign(motion[0]) if cls == "MoveSideways" else 0)
        background = flow[0][:, ~objects[0]]
        assert np.abs(background - background[:, :1]).max() < 1e-6, "the background pans uniformly"
    assert {-1, 1} <= set(sideways), "sideways videos go left or right (mirrored at random)"


def test_deterministic_by_seed(tmp_path):
    kwargs = dict(classes=2, videos_per_class=3, frames=4, height=32, width=40)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate_dataset(str(tmp_path / name), seed=seed, **kwargs)
    key = all_videos("synthetic", str(tmp_path / "a"))[0].key
    frames = {n: open_video(str(tmp_path / n / (key + ".avi"))).get_batch([0, 3]).asnumpy() for n in "abc"}
    assert np.array_equal(frames["a"], frames["b"]) and not np.array_equal(frames["a"], frames["c"])
    assert np.array_equal(ground_truth_flow(str(tmp_path / "a"), key)[0], ground_truth_flow(str(tmp_path / "b"), key)[0])
    assert frames["a"].shape == (2, 32, 40, 3), "width and height independent"


def test_ensure_is_idempotent_and_never_overwrites(synthetic_root, synthetic_params, tmp_path):
    marker_path = os.path.join(synthetic_root, MARKER)
    stamp = os.stat(marker_path).st_mtime_ns
    assert ensure_synthetic(synthetic_root, synthetic_params, progress=False)["videos"] == 9
    assert os.stat(marker_path).st_mtime_ns == stamp, "a complete dataset is left alone"
    other = SyntheticConfig(classes=2, videos_per_class=3, frames=12, size=64, seed=0)
    with pytest.raises(ValueError, match=f"data.root={synthetic_root} holds a generated dataset with parameters"):
        ensure_synthetic(synthetic_root, other, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="exists and is not a generated dataset"):
        ensure_synthetic(str(tmp_path / "mine"), other, progress=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_interrupted_generation_leaves_no_root(tmp_path, monkeypatch):
    from rev2net.data import synthetic

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "extract_flow", crash)
    params = SyntheticConfig(classes=1, videos_per_class=3, frames=3, size=32, seed=0)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(str(tmp_path / "d"), params, progress=False)
    assert not (tmp_path / "d").exists(), "only <root>.partial is left behind"
    monkeypatch.undo()
    assert ensure_synthetic(str(tmp_path / "d"), params, progress=False, workers=1)["videos"] == 3
    assert not (tmp_path / "d.partial").exists()


def test_concurrent_calls_build_once(tmp_path, monkeypatch):
    """Callers racing on one root: the lock beside it lets one build while the others wait, then
    read its marker."""
    import threading
    import time

    from rev2net.data import synthetic

    builds, build = [], synthetic._build

    def slow_build(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.5)  # the others reach the lock meanwhile
        return build(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_build", slow_build)
    params = SyntheticConfig(classes=1, videos_per_class=3, frames=3, size=32, seed=0)
    root, markers = str(tmp_path / "d"), []
    callers = [threading.Thread(target=lambda: markers.append(ensure_synthetic(root, params, progress=False,
                                                                               workers=1))) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=120)
    assert len(builds) == 1, f"{len(builds)} builds: the lock did not serialise the callers"
    assert len(markers) == 3 and all(marker == markers[0] for marker in markers), markers
    assert os.path.exists(root + ".lock") and not os.path.exists(root + ".partial")


def test_cli_reports_end_point_errors(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "s"), "--classes", "2", "--videos-per-class", "3", "--frames", "4",
                 "--size", "32", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 videos at" in out and "end-point error vs ground truth over 18 frame pairs: TV-L1" in out


@pytest.mark.parametrize("field,value,message", [
    ("classes", 0, "data.synthetic.classes=0"), ("videos_per_class", 2, "data.synthetic.videos_per_class=2"),
    ("size", 33, "data.synthetic.size=33"), ("frames", 1, "data.synthetic.frames=1"),
])
def test_parameters_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**{field: value})


@pytest.mark.parametrize("field,value,message", [
    ("classes", len(MOTIONS) + 1, f"data.synthetic.classes={len(MOTIONS) + 1} is not allowed: expected an integer "
                                  f"from 1 to {len(MOTIONS)}"),
    ("size", 48, "data.synthetic.size=48 is not allowed: .*decord 0.6.0 cannot read"),
])
def test_parameters_only_this_module_can_judge_are_checked_here(field, value, message, tmp_path):
    params = SyntheticConfig(**{field: value})  # valid on its own: config.py knows neither MOTIONS nor decord
    with pytest.raises(ValueError, match=message):
        check_params(params)
    with pytest.raises(ValueError, match=message):
        ensure_synthetic(str(tmp_path / "d"), params, progress=False)
    assert not os.path.exists(tmp_path / "d") and not os.path.exists(tmp_path / "d.lock"), "refused before any work"
    check_params(SyntheticConfig(classes=len(MOTIONS), size=64))


def test_cli_refuses_what_check_params_refuses(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "s"), "--size", "72", "--no-progress"])
    assert exit_info.value.code == 2 and "data.synthetic.size=72" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def test_a_script_without_a_main_guard_gets_an_error_not_a_hang(tmp_path):
    """The flow pool spawns workers that re-run the calling script; without a `__main__` guard they
    would re-enter ensure_synthetic and wait forever on the parent's lock."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from rev2net.data import ensure_synthetic, SyntheticConfig\n"
                      f"ensure_synthetic({str(tmp_path / 'ds')!r}, SyntheticConfig(classes=1, videos_per_class=3, "
                      "frames=4, size=32), progress=False, workers=2)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "needs `if __name__ == '__main__':`" in done.stderr
