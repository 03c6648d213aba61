"""rev2net/data/check.py: a dataset is verified before a sweep; problems are listed and fail the exit status."""

from __future__ import annotations

import json
import os
import shutil

from rev2net.data.check import check_dataset, main
from rev2net.data.config import DataConfig
from rev2net.data.flow import pair_files
from rev2net.data.layouts import load_split

KEYS = {"classes", "train_videos", "val_videos", "test_videos", "unreadable", "missing_flow", "too_short"}


def _run(capsys, *args: str) -> tuple[int, dict]:
    code = main(["--dataset", "synthetic", "--json", "--frames", "8", *args])
    return code, json.loads(capsys.readouterr().out)


def test_good_dataset_passes(synthetic_root, capsys):
    code, report = _run(capsys, "--root", synthetic_root)
    assert code == 0 and KEYS <= set(report)
    assert (report["classes"], report["train_videos"], report["val_videos"], report["test_videos"]) == (3, 6, 3, 6)
    assert report["unreadable"] == report["missing_flow"] == report["too_short"] == [] and report["ok"]
    assert _run(capsys, "--root", synthetic_root, "--deep", "--split", "3")[0] == 0


def test_every_problem_is_listed_and_fails(synthetic_copy, capsys):
    split = load_split("synthetic", synthetic_copy, 1)
    flow_root = os.path.join(synthetic_copy, "flow_tvl1")
    broken, empty, no_flow, incomplete = split.train[0], split.train[1], split.train[4], split.train[2]
    with open(broken.path, "wb") as f:
        f.write(b"\x00" * 1000)
    open(empty.path, "wb").close()
    shutil.rmtree(os.path.join(flow_root, no_flow.key))
    for pair in (9, 10):  # the last pair may be missing (FLOW_TOLERANCE), not the last two
        os.remove(pair_files(os.path.join(flow_root, incomplete.key), pair)[0])
    os.remove(split.train[3].path)
    code, report = _run(capsys, "--root", synthetic_copy)
    assert code == 1 and not report["ok"] and report["problems"] == 5
    assert sorted(report["unreadable"]) == sorted([broken.path, empty.path])
    assert sorted(report["missing_flow"]) == sorted([no_flow.path, incomplete.path])
    assert report["missing_videos"] == [split.train[3].path]
    assert "no flow folder" in report["details"][no_flow.path] and "empty file" in report["details"][empty.path]


def test_deep_mode_decodes_flow_images(synthetic_copy, capsys):
    record = load_split("synthetic", synthetic_copy, 1).train[0]
    with open(pair_files(os.path.join(synthetic_copy, "flow_tvl1", record.key), 4)[1], "wb") as f:
        f.write(b"garbage")
    assert _run(capsys, "--root", synthetic_copy)[0] == 0, "the fast mode only checks presence"
    code, report = _run(capsys, "--root", synthetic_copy, "--deep")
    assert code == 1 and report["missing_flow"] == [record.path]


def test_short_videos_follow_the_policy_unless_strict(synthetic_root, capsys):
    code, report = _run(capsys, "--root", synthetic_root, "--frames", "16")
    assert code == 0 and len(report["too_short"]) == 15 and report["short_video_policy"] == "loop"
    assert _run(capsys, "--root", synthetic_root, "--frames", "16", "--strict-length")[0] == 1


def test_flow_is_required_only_where_it_is_read(synthetic_copy, capsys):
    split = load_split("synthetic", synthetic_copy, 1)
    flow_root = os.path.join(synthetic_copy, "flow_tvl1")
    assert not os.path.isdir(os.path.join(flow_root, split.val[0].key)), "evaluation videos get no flow"
    assert _run(capsys, "--root", synthetic_copy)[0] == 0, "flow targets are read for training videos only"
    report = check_dataset(DataConfig(name="synthetic", root=synthetic_copy, frames=8), flow_everywhere=True)
    assert split.val[0].path in report.missing_flow, "a flow stream reads its input flow at evaluation too"


def test_a_layout_without_validation_videos_is_refused(synthetic_copy, capsys):
    for n in (1, 2, 3):
        os.remove(os.path.join(synthetic_copy, f"vallist0{n}.txt"))
    code, report = _run(capsys, "--root", synthetic_copy)
    assert code == 0 and report["val_videos"] == 3, "held out of the training list, one group per class"
    code, report = _run(capsys, "--root", synthetic_copy, "--val-fraction", "0")
    assert code == 2 and "data.val_fraction=0" in report["layout_error"] and "never on the test list" in report["layout_error"]


def test_broken_layout_exits_2_and_names_the_path(tmp_path, capsys):
    code, report = _run(capsys, "--root", str(tmp_path / "absent"))
    assert code == 2 and f"{tmp_path / 'absent'} does not exist" in report["layout_error"]


def test_the_function_the_orchestration_calls(synthetic_root):
    report = check_dataset(DataConfig(name="synthetic", root=synthetic_root, frames=12))
    assert report.ok and report.too_short == [] and "OK" in report.summary()


def test_many_videos_are_checked_in_worker_processes_with_the_same_report(synthetic_copy, monkeypatch):
    from rev2net.data import check

    split = load_split("synthetic", synthetic_copy, 1)
    with open(split.train[0].path, "wb") as f:
        f.write(b"\x00" * 1000)
    cfg = DataConfig(name="synthetic", root=synthetic_copy, frames=12)
    alone = check_dataset(cfg, workers=2)  # fewer videos than PARALLEL_FROM: checked in this process
    monkeypatch.setattr(check, "PARALLEL_FROM", 2)
    pooled = check_dataset(cfg, workers=2)
    assert pooled.unreadable == [split.train[0].path] and pooled.to_dict() == alone.to_dict()


def cut_to_decodable_prefix(path: str) -> int:
    """Cut the video file to the longest prefix (in 5% steps, below 100%) that still opens and
    decodes, as an interrupted download leaves it; the frames it then decodes."""
    from rev2net.data.video import open_video

    data = open(path, "rb").read()
    for percent in range(90, 40, -5):
        with open(path, "wb") as f:
            f.write(data[: len(data) * percent // 100])
        try:
            reader = open_video(path)
            reader.get_batch(list(range(len(reader))))
        except Exception:  # noqa: BLE001 - cut inside the header: try no other prefix length
            continue
        return len(reader)
    raise AssertionError(f"no prefix of {path} decodes")


def test_deep_mode_reports_a_video_cut_to_a_prefix_against_its_containers_claim(synthetic_copy, capsys):
    record = load_split("synthetic", synthetic_copy, 1).train[0]
    frames = cut_to_decodable_prefix(record.path)
    assert 2 <= frames <= 10, f"the cut video should decode fewer of its 12 frames, decodes {frames}"
    code, report = _run(capsys, "--root", synthetic_copy, "--frames", "2")
    assert code == 0 and report["truncated"] == [], "the fast mode does not decode: it cannot tell"
    code, report = _run(capsys, "--root", synthetic_copy, "--frames", "2", "--deep")
    assert code == 1 and report["truncated"] == [record.path] and report["problems"] == 1
    assert report["details"][record.path] == f"{frames} frames decode, its container claims 12: cut short"


def test_the_summary_names_each_problem_once_and_exclude_leaves_videos_out(synthetic_copy, capsys):
    split = load_split("synthetic", synthetic_copy, 1)
    empty, other = split.train[0], split.test[0]
    open(empty.path, "wb").close()
    open(other.path, "wb").close()
    assert main(["--dataset", "synthetic", "--root", synthetic_copy, "--frames", "8", "--limit", "1"]) == 1
    text = capsys.readouterr().out
    assert f"    {empty.path}: empty file\n" in text and "... and 1 more" in text and "FAILED: 2 problems" in text
    relative = os.path.relpath(other.path, synthetic_copy)
    code, report = _run(capsys, "--root", synthetic_copy, "--exclude", empty.path, "--exclude", relative)
    assert code == 0 and report["excluded"] == 2 and report["train_videos"] + report["test_videos"] == 10
    assert main(["--dataset", "synthetic", "--root", synthetic_copy, "--exclude", relative]) == 1
    assert "(1 more left out by data.exclude)" in capsys.readouterr().out


def test_the_command_reproduces_the_check(synthetic_copy, capsys):
    import shlex

    from rev2net.data.check import command

    video = os.path.relpath(load_split("synthetic", synthetic_copy, 1).train[0].path, synthetic_copy)
    flow_root = os.path.join(synthetic_copy, "flow_tvl1")
    cfg = DataConfig(name="synthetic", root=synthetic_copy, frames=8, flow_root=flow_root, exclude=[video])
    line = command(cfg, flow_everywhere=True)
    assert line == (f"python -m rev2net.data.check --dataset synthetic --root {synthetic_copy} --split 1 --frames 8 "
                    f"--flow-root {flow_root} --flow-everywhere --exclude {video} --limit 0")
    code, report = _run(capsys, *shlex.split(line)[5:])
    assert code == 1 and report == check_dataset(cfg, flow_everywhere=True).to_dict()
    assert report["excluded"] == 1 and report["missing_flow"], "the validation videos have no flow"
