"""rev2net/data/layouts.py: split parsing for every layout, stable class indices, class maps."""

from __future__ import annotations

import os
import shutil

import pytest

from rev2net.data.layouts import LayoutError, all_videos, apply_class_map, load_class_map, load_split


def _videos(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".avi"))


def _write(path, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_ucf_layout_follows_class_ind_and_groups(synthetic_root):
    split = load_split("ucf101", synthetic_root, 1)
    assert split.class_names == ["MoveSideways", "MoveUp", "MoveDown"], "classInd.txt order"
    assert (len(split.train), len(split.val), len(split.test)) == (6, 3, 6), \
        "split 1 tests group 1 of the 3 rotating ones per class, and the evaluation videos' test groups"
    assert {r.group for r in split.test} == {f"{c}_{g}" for c in split.class_names for g in ("g01", "g05")}
    assert {r.group for r in split.val} == {f"{c}_g04" for c in split.class_names}
    assert not {r.group for r in split.train} & {r.group for r in split.test}, "groups never straddle train and test"
    for record in split.train + split.test:
        assert split.class_names[record.label] in record.key and os.path.isfile(record.path)
        assert record.key == os.path.splitext(os.path.relpath(record.path, synthetic_root))[0]
    assert len(all_videos("ucf101", synthetic_root)) == 15, "every split's videos once"
    assert len(all_videos("ucf101", synthetic_root, subsets=("train",))) == 9, "those any split trains on"


def test_hmdb_codes_one_train_two_test_zero_unused(synthetic_root, tmp_path):
    source = _videos(synthetic_root)
    for cls, names in (("run", ["a", "b", "c"]), ("brush_hair", ["d", "e", "f"])):
        for name, video in zip(names, source):
            os.makedirs(tmp_path / cls, exist_ok=True)
            shutil.copy(video, tmp_path / cls / f"{name}.avi")
    splits = tmp_path / "testTrainMulti_7030_splits"
    _write(splits / "run_test_split1.txt", "a.avi 1\nb.avi 2\nc.avi 0\n")
    _write(splits / "brush_hair_test_split1.txt", "d.avi 2 \ne.avi 1\nf.avi 1\n")
    split = load_split("hmdb51", str(tmp_path), 1)
    assert split.class_names == ["brush_hair", "run"], "HMDB classes are sorted names"
    assert sorted((r.key, r.label) for r in split.train) == [("brush_hair/e", 0), ("brush_hair/f", 0), ("run/a", 1)]
    assert sorted((r.key, r.label) for r in split.test) == [("brush_hair/d", 0), ("run/b", 1)]
    with pytest.raises(LayoutError, match="testTrainMulti_7030_splits/<class>_test_split2.txt"):
        load_split("hmdb51", str(tmp_path), 2)
    _write(splits / "run_test_split3.txt", "a.avi 7\n")
    _write(splits / "brush_hair_test_split3.txt", "d.avi 1\n")
    with pytest.raises(LayoutError, match=r"run_test_split3.txt, line 1: 'a.avi 7'"):
        load_split("hmdb51", str(tmp_path), 3)


def test_kinetics_csv_with_label_folders_and_flat_folders(synthetic_root, tmp_path):
    video = _videos(synthetic_root)[0]
    header = "label,youtube_id,time_start,time_end,split\n"
    _write(tmp_path / "annotations" / "train.csv", header + "zumba,aaa,10,20,train\nabseiling,bbb,0,10,train\n"
           "abseiling,gone,0,10,train\n")
    _write(tmp_path / "annotations" / "validate.csv", header + "zumba,ccc,5,15,val\n")
    for rel in ("train/zumba/aaa_000010_000020.mp4", "train/abseiling/bbb_000000_000010.mp4", "val/ccc_000005_000015.mp4"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        shutil.copy(video, tmp_path / rel)
    with pytest.warns(UserWarning, match="1 listed videos do not exist"):
        split = load_split("kinetics400", str(tmp_path), 1)
    assert split.class_names == ["abseiling", "zumba"]
    assert sorted((r.key, r.label) for r in split.train) == [("train/abseiling/bbb_000000_000010", 0),
                                                             ("train/zumba/aaa_000010_000020", 1)]
    assert [(r.key, r.label) for r in split.test] == [("val/ccc_000005_000015", 1)]
    assert len(split.missing) == 1 and "gone_000000_000010" in split.missing[0]
    with pytest.raises(ValueError, match="kinetics400 has one split"):
        load_split("kinetics400", str(tmp_path), 2)


def test_generic_layout_sorted_folders_or_class_ind(synthetic_root, tmp_path):
    source = _videos(synthetic_root)
    for rel, video in zip(("walk/1.avi", "walk/2.avi", "jump/3.avi", "jump/4.avi"), source):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        shutil.copy(video, tmp_path / rel)
    _write(tmp_path / "trainlist01.txt", "walk/1.avi\njump/3.avi 2\n")
    _write(tmp_path / "testlist01.txt", "walk/2.avi\njump/4.avi\n")
    split = load_split("generic", str(tmp_path), 1)
    assert split.class_names == ["jump", "walk"]
    assert sorted((r.key, r.label) for r in split.train) == [("jump/3", 0), ("walk/1", 1)]
    _write(tmp_path / "classInd.txt", "1 walk\n2 jump\n")
    assert [(r.key, r.label) for r in load_split("generic", str(tmp_path), 1).test] == [("walk/2", 0), ("jump/4", 1)]


def test_missing_root_and_split_files_name_path_and_layout(synthetic_copy, tmp_path):
    with pytest.raises(LayoutError, match=f"dataset root {tmp_path / 'nope'} does not exist.*classInd.txt"):
        load_split("ucf101", str(tmp_path / "nope"), 1)
    os.remove(os.path.join(synthetic_copy, "testlist02.txt"))
    with pytest.raises(LayoutError, match=r"testlist02.txt does not exist \(UCF101 split 2; layout: root/classInd.txt"):
        load_split("ucf101", synthetic_copy, 2)
    with pytest.raises(LayoutError, match="trainlist01.txt does not exist.*generic layout"):
        load_split("generic", str(tmp_path), 1)


def test_shipped_ucf_hmdb_map_has_the_public_12_classes():
    class_map = load_class_map("ucf101_hmdb51_12")
    assert len(class_map.shared) == 12 and class_map.shared[5] == "punch"
    assert class_map.members["ucf101"][5] == ["Punch", "BoxingPunchingBag", "BoxingSpeedBag"]
    assert class_map.members["hmdb51"][0] == ["climb"]


def test_class_map_restricts_and_relabels(synthetic_root, tmp_path):
    path = tmp_path / "map.txt"
    _write(path, "shared,synthetic,other\nhorizontal,MoveSideways,x\nvertical,MoveUp+MoveDown,y\n")
    split = apply_class_map(load_split("synthetic", synthetic_root, 1), load_class_map(str(path)), "synthetic")
    assert split.class_names == ["horizontal", "vertical"]
    for record in split.train + split.test:
        assert record.label == (0 if "MoveSideways" in record.key else 1), record.key
    assert len(split.train) == 6, "every mapped class kept"
    _write(path, "shared,synthetic\nhorizontal,MoveUp\n")
    only_up = apply_class_map(load_split("synthetic", synthetic_root, 1), load_class_map(str(path)), "synthetic")
    assert {r.key.split("/")[0] for r in only_up.train + only_up.test} == {"MoveUp"}, "unmapped classes dropped"
    with pytest.raises(ValueError, match="has no column for 'hmdb51'"):
        apply_class_map(only_up, load_class_map(str(path)), "hmdb51")
    _write(path, "shared,synthetic\nhorizontal,MoveBackwards\n")
    with pytest.raises(ValueError, match="synthetic has no class 'MoveBackwards'"):
        apply_class_map(load_split("synthetic", synthetic_root, 1), load_class_map(str(path)), "synthetic")
