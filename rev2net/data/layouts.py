"""Dataset layouts on disk: which videos belong to a split, and their class indices.

Every layout yields `VideoRecord`s (absolute video path, 0-based label, `key`: the video's path
relative to the dataset root without its extension, which is also where its flow lives under the
flow root). Class indices are stable:

ucf101, synthetic   `root/classInd.txt` order ("1 ApplyEyeMakeup" -> 0), i.e. id - 1
    root/classInd.txt, root/trainlist0N.txt ("Class/v_Class_gGG_cCC.avi 1"), root/testlist0N.txt
    ("Class/v_Class_gGG_cCC.avi"); the split files may also sit in root/ucfTrainTestlist/ and the
    videos in root/UCF-101/ (the official archives' folders). An optional root/vallist0N.txt (lines
    as in trainlist) is a validation list of the layout's own (the generated dataset writes one).
hmdb51              sorted class names (from the split file names)
    root/<class>/<video>.avi, root/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt with
    lines "<video>.avi <code>": 1 = train, 2 = test, 0 = unused in that split.
kinetics400         sorted label names of the train annotations
    root/annotations/{train,validate}.csv (label,youtube_id,time_start,time_end,split[,is_cc]);
    videos in root/train/ and root/val/ (or root/validate/), flat or in label folders, named
    <youtube_id>_<time_start:06d>_<time_end:06d>.<ext>. Split 1 only: train / validate.
generic             root/classInd.txt order if present, else sorted class folder names
    root/<class>/<video>, root/trainlist0N.txt and root/testlist0N.txt with lines
    "<class>/<video> [anything]"; the class is the folder.

A class mapping (`load_class_map`, `apply_class_map`) restricts a dataset to shared classes and
relabels it, for cross-dataset evaluation.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from importlib import resources

import numpy as np

from rev2net.data.config import SPLITS

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
SUBSETS = ("train", "test")

UCF_LAYOUT = ("root/classInd.txt, root/trainlist0N.txt, root/testlist0N.txt (or in root/ucfTrainTestlist/), "
              "videos at root/<Class>/v_<Class>_gGG_cCC.avi (or root/UCF-101/<Class>/...)")
HMDB_LAYOUT = ("root/<class>/<video>.avi and root/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt "
               "with lines '<video>.avi <code>' (1 = train, 2 = test, 0 = unused)")
KINETICS_LAYOUT = ("root/annotations/train.csv and root/annotations/validate.csv "
                   "(label,youtube_id,time_start,time_end,split), videos in root/train/ and root/val/ "
                   "named <youtube_id>_<start:06d>_<end:06d>.mp4, flat or in label folders")
GENERIC_LAYOUT = ("root/<class>/<video>, root/trainlist0N.txt and root/testlist0N.txt with lines "
                  "'<class>/<video>', optional root/classInd.txt ('1 <class>' per line)")
SHIPPED_CLASS_MAPS = ("ucf101_hmdb51_12",)


class LayoutError(FileNotFoundError):
    """A dataset root or split file is missing or malformed; the message names path and layout."""


@dataclass(frozen=True)
class VideoRecord:
    path: str  # absolute path of the video file
    label: int  # 0-based class index
    key: str  # path relative to the dataset root, without extension: the flow folder's relative path
    group: str = ""  # videos sharing a source (UCF "Class_gGG"); held-out validation splits by group


@dataclass(frozen=True)
class Split:
    class_names: list[str]
    train: list[VideoRecord]
    test: list[VideoRecord]
    missing: list[str]  # listed videos whose file does not exist (dropped from train/val/test)
    val: list[VideoRecord] = field(default_factory=list)  # a validation list of the layout's own (vallist0N.txt), if any


def load_split(name: str, root: str, split: int = 1) -> Split:
    """Parse split `split` of dataset `name` at `root` (missing listed files are dropped and reported)."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise LayoutError(f"dataset root {root} does not exist (data.root; {name} layout: {_layout(name)})")
    if name in ("ucf101", "synthetic"):
        return _load_ucf(root, split)
    if name == "hmdb51":
        return _load_hmdb(root, split)
    if name == "kinetics400":
        return _load_kinetics(root, split)
    if name == "generic":
        return _load_generic(root, split)
    raise ValueError(f"data.name={name!r} is not a dataset layout: expected ucf101 | hmdb51 | kinetics400 | "
                     "generic | synthetic")


def exclude_videos(split: Split, exclude: list[str], root: str) -> tuple[Split, int]:
    """`split` without the videos in `exclude` (data.exclude: video files, absolute or relative to
    `root`) in any of its lists, and how many listed videos that left out."""
    if not exclude:
        return split, 0
    root = os.path.abspath(os.path.expanduser(root))
    drop = {os.path.normpath(os.path.join(root, os.path.expanduser(path))) for path in exclude}
    kept = {subset: [r for r in getattr(split, subset) if os.path.normpath(r.path) not in drop]
            for subset in ("train", "val", "test")}
    missing = [path for path in split.missing if os.path.normpath(path) not in drop]
    left_out = sum(len(getattr(split, s)) - len(kept[s]) for s in kept) + len(split.missing) - len(missing)
    return replace(split, missing=missing, **kept), left_out


def all_videos(name: str, root: str, *, subsets: tuple[str, ...] = ("train", "val", "test")) -> list[VideoRecord]:
    """Every video that any split lists in `subsets`, once (sorted by key): what flow extraction
    covers (subsets=("train",): the videos some split trains on, the only ones whose flow is read)."""
    seen: dict[str, VideoRecord] = {}
    for split in range(1, SPLITS[name] + 1):
        try:
            parsed = load_split(name, root, split)
        except LayoutError:
            if split == 1:
                raise
            continue  # datasets that ship only split 1 (e.g. a generic layout)
        for subset in subsets:
            for record in getattr(parsed, subset):
                seen.setdefault(record.key, record)
    return sorted(seen.values(), key=lambda r: r.key)


def _layout(name: str) -> str:
    return {"ucf101": UCF_LAYOUT, "synthetic": UCF_LAYOUT, "hmdb51": HMDB_LAYOUT,
            "kinetics400": KINETICS_LAYOUT, "generic": GENERIC_LAYOUT}.get(name, "")


def _first_existing(candidates: list[str]) -> str | None:
    return next((path for path in candidates if os.path.exists(path)), None)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _read_class_ind(path: str, layout: str) -> list[str]:
    names = []
    for number, line in enumerate(_read_lines(path), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != number:
            raise LayoutError(f"{path}, line {number}: {line!r} is not '<{number}> <ClassName>' (layout: {layout})")
        names.append(parts[1])
    return names


# --- UCF101 (and the generated dataset) ----------------------------------------------------------

def _load_ucf(root: str, split: int) -> Split:
    class_ind = _first_existing([os.path.join(root, "classInd.txt"),
                                 os.path.join(root, "ucfTrainTestlist", "classInd.txt")])
    if class_ind is None:
        raise LayoutError(f"{os.path.join(root, 'classInd.txt')} does not exist (UCF101 layout: {UCF_LAYOUT})")
    list_dir = os.path.dirname(class_ind)
    class_names = _read_class_ind(class_ind, UCF_LAYOUT)
    # class folders match case-insensitively: UCF101 itself mixes HandstandPushups and HandStandPushups
    by_folder = {n.lower(): i for i, n in enumerate(class_names)}
    video_root = root
    if not os.path.isdir(os.path.join(root, class_names[0])) and os.path.isdir(os.path.join(root, "UCF-101")):
        video_root = os.path.join(root, "UCF-101")
    subsets = {}
    missing = []
    for subset, prefix in (("train", "trainlist"), ("val", "vallist"), ("test", "testlist")):
        path = os.path.join(list_dir, f"{prefix}{split:02d}.txt")
        if subset == "val" and not os.path.isfile(path):
            continue  # a validation list is optional (the generated dataset writes one)
        if not os.path.isfile(path):
            raise LayoutError(f"{path} does not exist (UCF101 split {split}; layout: {UCF_LAYOUT})")
        records = []
        for number, line in enumerate(_read_lines(path), 1):
            rel = line.split()[0]
            folder = rel.split("/")[0].lower()
            if folder not in by_folder:
                raise LayoutError(f"{path}, line {number}: class folder of {rel!r} is not in classInd.txt")
            stem = os.path.splitext(os.path.basename(rel))[0]
            match = re.match(r"v_(.+_g\d+)_c\d+$", stem)
            record = VideoRecord(os.path.join(video_root, rel), by_folder[folder], os.path.splitext(rel)[0],
                                 match.group(1) if match else stem)
            if os.path.exists(record.path):
                records.append(record)
            else:
                missing.append(record.path)
        subsets[subset] = records
    return _finish(class_names, subsets, missing)


# --- HMDB51 --------------------------------------------------------------------------------------

def _load_hmdb(root: str, split: int) -> Split:
    split_dir = os.path.join(root, "testTrainMulti_7030_splits")
    files = sorted(glob.glob(os.path.join(split_dir, f"*_test_split{split}.txt")))
    if not files:
        raise LayoutError(f"no {split_dir}/<class>_test_split{split}.txt files (HMDB51 layout: {HMDB_LAYOUT})")
    class_names = sorted(os.path.basename(f)[: -len(f"_test_split{split}.txt")] for f in files)
    subsets: dict[str, list[VideoRecord]] = {"train": [], "test": []}
    missing = []
    for label, class_name in enumerate(class_names):
        path = os.path.join(split_dir, f"{class_name}_test_split{split}.txt")
        for number, line in enumerate(_read_lines(path), 1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise LayoutError(f"{path}, line {number}: {line!r} is not '<video>.avi <0|1|2>' (layout: {HMDB_LAYOUT})")
            if parts[1] == "0":
                continue
            rel = f"{class_name}/{parts[0]}"
            record = VideoRecord(os.path.join(root, rel), label, os.path.splitext(rel)[0],
                                 os.path.splitext(parts[0])[0])
            if os.path.exists(record.path):
                subsets["train" if parts[1] == "1" else "test"].append(record)
            else:
                missing.append(record.path)
    return _finish(class_names, subsets, missing)


# --- Kinetics-400 --------------------------------------------------------------------------------

def _load_kinetics(root: str, split: int) -> Split:
    if split != 1:
        raise ValueError(f"data.split={split} is not allowed: kinetics400 has one split (1 = train / validate)")
    annotations = {
        "train": os.path.join(root, "annotations", "train.csv"),
        "test": _first_existing([os.path.join(root, "annotations", n) for n in ("validate.csv", "val.csv")])
        or os.path.join(root, "annotations", "validate.csv"),
    }
    folders = {"train": ["train"], "test": ["val", "validate", "valid"]}
    rows = {}
    for subset, path in annotations.items():
        if not os.path.isfile(path):
            raise LayoutError(f"{path} does not exist (Kinetics-400 layout: {KINETICS_LAYOUT})")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            needed = {"label", "youtube_id", "time_start", "time_end"}
            if not needed <= set(reader.fieldnames or ()):
                raise LayoutError(f"{path}: header {reader.fieldnames} lacks {sorted(needed)} (layout: {KINETICS_LAYOUT})")
            rows[subset] = list(reader)
    class_names = sorted({row["label"] for row in rows["train"]})
    label_of = {n: i for i, n in enumerate(class_names)}
    subsets: dict[str, list[VideoRecord]] = {}
    missing = []
    for subset in SUBSETS:
        folder = _first_existing([os.path.join(root, f) for f in folders[subset]])
        if folder is None:
            raise LayoutError(f"no video folder {os.path.join(root, folders[subset][0])} (Kinetics-400 layout: {KINETICS_LAYOUT})")
        files = _index_videos(folder)
        records = []
        for row in rows[subset]:
            stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            if row["label"] not in label_of:
                continue  # a validation label absent from train cannot be scored
            path = files.get(stem)
            if path is None:
                missing.append(os.path.join(folder, row["label"], stem + ".mp4"))
                continue
            records.append(VideoRecord(path, label_of[row["label"]],
                                       os.path.splitext(os.path.relpath(path, root))[0], row["youtube_id"]))
        subsets[subset] = records
    return _finish(class_names, subsets, missing)


def _index_videos(folder: str) -> dict[str, str]:
    """stem -> path of every video under `folder` (flat or one level of label folders), one scan."""
    found = {}
    for entry in os.scandir(folder):
        if entry.is_dir():
            for sub in os.scandir(entry.path):
                if sub.name.lower().endswith(VIDEO_EXTENSIONS):
                    found[os.path.splitext(sub.name)[0]] = sub.path
        elif entry.name.lower().endswith(VIDEO_EXTENSIONS):
            found[os.path.splitext(entry.name)[0]] = entry.path
    return found


# --- generic -------------------------------------------------------------------------------------

def _load_generic(root: str, split: int) -> Split:
    lists = {"train": os.path.join(root, f"trainlist{split:02d}.txt"), "test": os.path.join(root, f"testlist{split:02d}.txt")}
    for path in lists.values():
        if not os.path.isfile(path):
            raise LayoutError(f"{path} does not exist (generic layout: {GENERIC_LAYOUT})")
    class_ind = os.path.join(root, "classInd.txt")
    if os.path.isfile(class_ind):
        class_names = _read_class_ind(class_ind, GENERIC_LAYOUT)
    else:  # every class folder named by any split list, so that indices do not change with the split
        every_list = [path for prefix in ("trainlist", "testlist")
                      for path in glob.glob(os.path.join(root, f"{prefix}[0-9][0-9].txt"))]
        class_names = sorted({line.split()[0].split("/")[0] for path in every_list for line in _read_lines(path)})
    label_of = {n: i for i, n in enumerate(class_names)}
    subsets: dict[str, list[VideoRecord]] = {}
    missing = []
    for subset, path in lists.items():
        records = []
        for number, line in enumerate(_read_lines(path), 1):
            rel = line.split()[0]
            if "/" not in rel or rel.split("/")[0] not in label_of:
                raise LayoutError(f"{path}, line {number}: {rel!r} is not '<class>/<video>' with a known class "
                                  f"(layout: {GENERIC_LAYOUT})")
            record = VideoRecord(os.path.join(root, rel), label_of[rel.split("/")[0]], os.path.splitext(rel)[0],
                                 os.path.splitext(rel)[0])
            if os.path.exists(record.path):
                records.append(record)
            else:
                missing.append(record.path)
        subsets[subset] = records
    return _finish(class_names, subsets, missing)


def _finish(class_names: list[str], subsets: dict[str, list[VideoRecord]], missing: list[str]) -> Split:
    if missing:
        warnings.warn(f"{len(missing)} listed videos do not exist and are left out, e.g. {missing[0]}",
                      stacklevel=3)
    return Split(class_names, subsets["train"], subsets["test"], missing, subsets.get("val", []))


# --- the validation split ------------------------------------------------------------------------

def validation_split(split: Split, fraction: float, seed: int = 0) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(train, val) of a split: its own validation list when the layout has one, else `fraction` of
    each class's training groups held out (UCF101's `<Class>_gXX`: clips of one group never straddle
    train and validation; HMDB51's videos and Kinetics' YouTube ids are their own groups), at least
    one group of every class that has two. Deterministic by `seed`: the same on every node and for
    every trial of a sweep, so every trial is selected on the same videos. The test list is never
    touched: hyperparameters are chosen on validation, the test list is scored once."""
    if split.val:
        return split.train, split.val
    if fraction <= 0:
        raise ValueError("this layout has no validation list and data.val_fraction=0: set data.val_fraction > 0 "
                         "(hyperparameters must be selected on held-out training videos, never on the test list)")
    held: set[str] = set()
    for label in sorted({r.label for r in split.train}):
        groups = sorted({r.group for r in split.train if r.label == label})
        if len(groups) < 2:
            continue  # a class with one group keeps it for training
        take = min(len(groups) - 1, max(1, round(fraction * len(groups))))
        order = np.random.default_rng([seed, label]).permutation(len(groups))[:take]
        held |= {groups[i] for i in order}
    return [r for r in split.train if r.group not in held], [r for r in split.train if r.group in held]


# --- cross-dataset class mapping -----------------------------------------------------------------

@dataclass(frozen=True)
class ClassMap:
    """Shared classes (row order = shared label) and, per dataset, which of its classes form each."""

    shared: list[str]
    members: dict[str, list[list[str]]]  # dataset name -> per shared class, that dataset's class names
    source: str


def load_class_map(name_or_path: str) -> ClassMap:
    """Read a mapping file: CSV with a header `shared,<dataset>,<dataset>...`, one shared class per
    row, and in each dataset column its classes joined by '+', e.g.
    `punch,Punch+BoxingPunchingBag+BoxingSpeedBag,punch`. Shipped: ucf101_hmdb51_12 (the public
    12-class UCF-HMDB mapping; the paper's 16-class list is unpublished)."""
    if name_or_path in SHIPPED_CLASS_MAPS:
        path = str(resources.files("rev2net.data") / "class_maps" / f"{name_or_path}.txt")
    else:
        path = os.path.expanduser(name_or_path)
    if not os.path.isfile(path):
        raise LayoutError(f"data.class_map={name_or_path!r}: no such file (give a path, or one of "
                          f"{', '.join(SHIPPED_CLASS_MAPS)})")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row and not row[0].startswith("#")]
    header, body = rows[0], rows[1:]
    if header[0] != "shared" or len(header) < 2 or any(len(row) != len(header) for row in body):
        raise LayoutError(f"{path}: expected a CSV header 'shared,<dataset>,...' and that many columns per row")
    members = {dataset: [row[i].split("+") for row in body] for i, dataset in enumerate(header[1:], 1)}
    return ClassMap([row[0] for row in body], members, path)


def apply_class_map(split: Split, class_map: ClassMap, dataset: str) -> Split:
    """Keep only videos of mapped classes, relabelled to the shared index."""
    if dataset not in class_map.members:
        raise ValueError(f"class map {class_map.source} has no column for {dataset!r} "
                         f"(columns: {', '.join(class_map.members)})")
    index = {n: i for i, n in enumerate(split.class_names)}
    relabel = {}
    for shared_label, names in enumerate(class_map.members[dataset]):
        for name in names:
            if name not in index:
                raise ValueError(f"class map {class_map.source}: {dataset} has no class {name!r}")
            relabel[index[name]] = shared_label

    def restrict(records: list[VideoRecord]) -> list[VideoRecord]:
        return [replace(r, label=relabel[r.label]) for r in records if r.label in relabel]

    return Split(list(class_map.shared), restrict(split.train), restrict(split.test), split.missing,
                 restrict(split.val))
