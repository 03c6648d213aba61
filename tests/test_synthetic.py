"""rev2net/data/synthetic.py: motion-defined classes, determinism, idempotent generation, and the
pipeline's own correctness check: TV-L1 end-point error well below zero flow's. The shifted domain:
same classes and splits, another look, exact flow with camera shake; the default left unchanged."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import cv2
import numpy as np
import pytest

from rev2net.data.config import SyntheticConfig
from rev2net.data.layouts import all_videos, load_split
from rev2net.data.synthetic import (MARKER, MOTIONS, check_params, ensure_synthetic, flow_epe, generate_dataset,
                                    ground_truth_flow, main, render_video)
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
    assert ensure_synthetic(synthetic_root, synthetic_params, progress=False)["videos"] == 15
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
    ("domain", "Shifted", "data.synthetic.domain='Shifted'"),
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


# --------------------------------------------------------------------------- the shifted domain

@pytest.fixture(scope="module")
def two_domains(tmp_path_factory) -> dict[str, str]:
    """The same tiny dataset in both looks (videos and exact flow, no TV-L1)."""
    base = tmp_path_factory.mktemp("domains")
    roots = {}
    for domain in ("default", "shifted"):
        roots[domain] = str(base / domain)
        generate_dataset(roots[domain], classes=3, videos_per_class=3, frames=4, height=32, width=32, seed=0,
                         domain=domain)
    return roots


def test_shifted_domain_has_the_same_classes_and_splits(two_domains):
    default, shifted = two_domains["default"], two_domains["shifted"]
    for name in ["classInd.txt"] + [f"{kind}list0{s}.txt" for kind in ("train", "test") for s in (1, 2, 3)]:
        with open(os.path.join(default, name)) as a, open(os.path.join(shifted, name)) as b:
            assert a.read() == b.read(), name
    assert [r.key for r in all_videos("synthetic", default)] == [r.key for r in all_videos("synthetic", shifted)]
    for record in all_videos("synthetic", shifted):
        assert os.path.isfile(os.path.join(shifted, "flow_gt", record.key + ".npz"))


def _saturation_value_histogram(path: str) -> np.ndarray:
    """A video's joint histogram of HSV saturation and value (8 x 8 bins, sums to 1): its colour
    statistics whatever the hue."""
    reader = open_video(path)
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    hsv = np.concatenate([cv2.cvtColor(frame, cv2.COLOR_RGB2HSV) for frame in frames])
    hist = cv2.calcHist([hsv], [1, 2], None, [8, 8], [0, 256, 0, 256]).ravel()
    return hist / hist.sum()


def test_shifted_domain_looks_different(two_domains):
    hists = {d: [_saturation_value_histogram(r.path) for r in all_videos("synthetic", root)]
             for d, root in two_domains.items()}
    def distance(a: np.ndarray, b: np.ndarray) -> float:  # total variation, 0..1
        return 0.5 * float(np.abs(a - b).sum())

    within = [distance(a, b) for h in hists.values() for a, b in itertools.combinations(h, 2)]
    between = [distance(a, b) for a in hists["default"] for b in hists["shifted"]]
    assert min(between) > max(within), (min(between), max(within))
    assert np.mean(between) > 3 * np.mean(within), (np.mean(between), np.mean(within))


@pytest.mark.parametrize("motion", ["MoveSideways", "Circle", "Stay"])
def test_shifted_ground_truth_flow_is_exact(motion, monkeypatch):
    """Frame t+1 sampled at p + flow_t(p) reproduces frame t better than at any flow 0.5 px off, on
    the objects and on the background (camera shake included). Sensor noise changes no geometry and
    would bury sub-pixel differences: it is switched off here. Both frames are blurred (sigma 1 px)
    so that the resampling's own smoothing does not dominate; the background is compared away from
    the objects of either frame (occlusions)."""
    from rev2net.data import synthetic

    monkeypatch.setattr(synthetic, "SHIFTED_NOISE", 0.0)
    size = 96
    video, flow, objects = render_video(next(m for m in MOTIONS if m.name == motion), frames=7, height=size,
                                        width=size, rng=np.random.default_rng(1),
                                        background_rng=np.random.default_rng(2), domain="shifted")
    blurred = np.stack([cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 1.0) for frame in video])
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    background_flow = []
    for t in range(len(flow) - 1):
        object_px = cv2.erode(objects[t].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        near_objects = cv2.dilate((objects[t] | objects[t + 1]).astype(np.uint8), np.ones((7, 7), np.uint8))
        background_px = ~near_objects.astype(bool)
        assert object_px.sum() > 100 and background_px.sum() > 1000
        background = flow[t][:, ~objects[t]]
        assert np.ptp(background, axis=1).max() < 1e-6, "the background moves as one (pan + shake)"
        background_flow.append(background[:, 0])
        errors = {}
        for dx, dy in ((0, 0), (0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5)):
            mx, my = xx + flow[t, 0] + dx, yy + flow[t, 1] + dy
            warped = cv2.remap(blurred[t + 1], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            error = np.abs(warped - blurred[t]).mean(2)
            seen = (mx >= 1) & (mx <= size - 2) & (my >= 1) & (my <= size - 2)
            errors[dx, dy] = (error[object_px & seen].mean(), error[background_px & seen].mean())
        exact = errors.pop((0, 0))
        for off, error in errors.items():
            assert exact[0] < error[0] and exact[1] < error[1], (t, exact, off, error)
    assert np.std(background_flow, axis=0).max() > 0.1, "the camera shakes: the background's flow changes every frame"


def test_shifted_domain_gets_tv_l1_flow(tmp_path):
    params = SyntheticConfig(classes=2, videos_per_class=3, frames=8, size=64, seed=0, domain="shifted")
    marker = ensure_synthetic(str(tmp_path / "shifted"), params, progress=False, workers=1)
    assert marker["params"]["domain"] == "shifted"
    epe = marker["tvl1_vs_ground_truth"]
    assert epe["pairs"] == 6 * 7
    assert epe["object_epe"] < 0.5 * epe["object_zero_flow_epe"], epe


def test_default_domain_is_unchanged(tmp_path):
    """The explicit default is the implicit one, byte for byte (videos and exact flow)."""
    kwargs = dict(classes=2, videos_per_class=3, frames=4, height=32, width=40, seed=3)
    generate_dataset(str(tmp_path / "implicit"), **kwargs)
    generate_dataset(str(tmp_path / "explicit"), domain="default", **kwargs)
    generate_dataset(str(tmp_path / "shifted"), domain="shifted", **kwargs)
    files = sorted(p.relative_to(tmp_path / "implicit") for p in (tmp_path / "implicit").rglob("*") if p.is_file())
    assert any(p.suffix == ".avi" for p in files) and any(p.suffix == ".npz" for p in files)
    for rel in files:
        assert (tmp_path / "implicit" / rel).read_bytes() == (tmp_path / "explicit" / rel).read_bytes(), rel
    key = all_videos("synthetic", str(tmp_path / "implicit"))[0].key
    assert not np.array_equal(ground_truth_flow(str(tmp_path / "implicit"), key)[0],
                              ground_truth_flow(str(tmp_path / "shifted"), key)[0])


def test_the_domain_is_part_of_the_marker(synthetic_copy, synthetic_params):
    """A shifted request never reuses a default dataset; a marker written before domains existed is
    the default domain's."""
    shifted = dataclasses.replace(synthetic_params, domain="shifted")
    with pytest.raises(ValueError, match="holds a generated dataset with parameters"):
        ensure_synthetic(synthetic_copy, shifted, progress=False)
    path = os.path.join(synthetic_copy, MARKER)
    with open(path) as f:
        marker = json.load(f)
    assert marker["params"].pop("domain") == "default"
    with open(path, "w") as f:
        json.dump(marker, f)
    stamp = os.stat(path).st_mtime_ns
    assert ensure_synthetic(synthetic_copy, synthetic_params, progress=False)["params"]["domain"] == "default"
    assert os.stat(path).st_mtime_ns == stamp, "accepted as it is, not rebuilt"


def test_cli_takes_a_domain(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "--domain" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["--out", str(tmp_path / "s"), "--domain", "fancy"])
    assert done.value.code == 2
    assert "data.synthetic.domain='fancy' is not allowed: expected default | shifted" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
