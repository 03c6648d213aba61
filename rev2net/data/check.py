"""Verify a dataset before a sweep spends GPU hours on it.

    python -m rev2net.data.check --dataset NAME --root DIR [--split N] [--json] [--deep]

Checks that the split files parse, every listed video exists and opens (with `--deep`: decodes
every frame, and compares the frames that decode with the count its container claims: a file cut
to a prefix that still decodes is listed in `truncated`), its length covers a clip (shorter videos
are listed in `too_short` and served by data.short_video_policy: not a failure unless
`--strict-length`), and its flow folder is present and complete (with `--deep`: every flow JPEG
decodes). The default mode opens each video and reads its length from the container index, without
decoding; flow completeness is the presence of the last pair's JPEGs (folders written by
rev2net.data.flow appear only when complete). Videos in data.exclude (`--exclude`) are left out,
as the trials leave them out. The exit status is 1 when any problem is found, 2 when the layout
itself is broken.

A sweep runs this check before its first trial (orchestration/plan.py `prepare_data`): a broken
video refuses the start, unless data.max_broken_fraction tolerates it (`CheckReport.broken`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from dataclasses import asdict, dataclass, field

import cv2

from rev2net.data.config import DATASETS, DataConfig
from rev2net.data.flow import count_pairs, flow_dir_of, pair_files, read_pair
from rev2net.data.jobs import map_with_progress
from rev2net.data.layouts import (LayoutError, VideoRecord, apply_class_map, exclude_videos, load_class_map,
                                  load_split, validation_split)
from rev2net.data.video import UnreadableVideo, open_video

FLOW_TOLERANCE = 1  # frame pairs a flow folder may lack at the end (some extractors drop the last)
PARALLEL_FROM = 256  # videos; fewer are checked in this process
PROBLEM_LISTS = ("missing_videos", "unreadable", "truncated", "missing_flow")  # a video in one is broken


@dataclass
class CheckReport:
    dataset: str
    root: str
    split: int
    classes: int = 0
    train_videos: int = 0  # what trials train on (the validation videos held out of the training list excluded)
    val_videos: int = 0  # the validation split (the layout's own list, or held out of the training list)
    test_videos: int = 0
    clip_frames: int = 0  # source frames a clip spans
    short_video_policy: str = "loop"
    layout_error: str = ""  # the split files themselves are missing or malformed
    missing_videos: list[str] = field(default_factory=list)  # listed, no file
    unreadable: list[str] = field(default_factory=list)
    missing_flow: list[str] = field(default_factory=list)  # no flow folder, or incomplete
    truncated: list[str] = field(default_factory=list)  # --deep: fewer frames decode than the container claims
    too_short: list[str] = field(default_factory=list)  # fewer frames than a clip spans
    details: dict[str, str] = field(default_factory=dict)  # video -> what is wrong
    excluded: int = 0  # listed videos left out by data.exclude
    strict_length: bool = False

    @property
    def problems(self) -> int:
        return len(self.broken()) + bool(self.layout_error)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    @property
    def videos(self) -> int:
        """Listed videos the check looked at (the missing ones included, data.exclude's not)."""
        return self.train_videos + self.val_videos + self.test_videos + len(self.missing_videos)

    def broken(self) -> dict[str, str]:
        """Every broken video -> what is wrong with it, in list order: missing, unreadable, truncated,
        without its flow (and too short, with strict_length). What data.max_broken_fraction tolerates."""
        names = PROBLEM_LISTS + (("too_short",) if self.strict_length else ())
        return {path: self.details.get(path, name) for name in names for path in getattr(self, name)}

    def to_dict(self) -> dict:
        return {**asdict(self), "problems": self.problems, "ok": self.ok}

    def summary(self, limit: int = 10) -> str:
        if self.layout_error:
            return f"FAILED {self.dataset} at {self.root}: {self.layout_error}"
        lines = [f"{self.dataset} split {self.split} at {self.root}: {self.classes} classes, "
                 f"{self.train_videos} train + {self.val_videos} validation + {self.test_videos} test videos, "
                 f"clips span {self.clip_frames} frames"
                 + (f" ({self.excluded} more left out by data.exclude)" if self.excluded else "")]
        for name in (*PROBLEM_LISTS, "too_short"):
            items = getattr(self, name)
            if items:
                lines.append(f"  {name}: {len(items)}")
                lines += [f"    {path}: {self.details.get(path, '')}" for path in items[:limit]]
                lines += [f"    ... and {len(items) - limit} more"] if len(items) > limit else []
        if self.too_short and not self.strict_length:
            lines.append(f"  (too_short videos are served by short_video_policy={self.short_video_policy})")
        lines.append("OK" if self.ok else f"FAILED: {self.problems} problems")
        return "\n".join(lines)


def check_dataset(cfg: DataConfig, *, deep: bool = False, strict_length: bool = False,
                  workers: int | None = None, progress: bool = False, flow_everywhere: bool = False) -> CheckReport:
    """Check cfg's dataset and split, and its validation split. With cfg.flow, the flow of the
    videos that read it: the training videos (flow targets), and every video with `flow_everywhere`
    (a flow stream's input is read at evaluation too). Never raises on bad data: read the report."""
    report = CheckReport(cfg.name, os.path.abspath(cfg.root), cfg.split, clip_frames=cfg.clip_span,
                         short_video_policy=cfg.short_video_policy, strict_length=strict_length)
    try:
        with warnings.catch_warnings():  # missing videos are reported below
            warnings.simplefilter("ignore", UserWarning)
            split = load_split(cfg.name, cfg.root, cfg.split)
        if cfg.class_map is not None:
            split = apply_class_map(split, load_class_map(cfg.class_map), cfg.name)
    except (LayoutError, ValueError) as error:
        report.layout_error = str(error)
        return report
    split, report.excluded = exclude_videos(split, cfg.exclude, cfg.root)
    report.classes, report.test_videos = len(split.class_names), len(split.test)
    report.missing_videos = list(split.missing)
    report.details.update({path: "listed but no file" for path in split.missing})
    try:
        report.train_videos, report.val_videos = map(len, validation_split(split, cfg.val_fraction, cfg.val_seed))
    except ValueError as error:
        report.layout_error = str(error)
        return report
    flow_root = cfg.resolved_flow_root() if cfg.flow else None
    read_flow = {r.key for r in split.train} if not flow_everywhere else None  # None: every video
    records = split.train + split.val + split.test
    jobs = [(record, flow_root if read_flow is None or record.key in read_flow else None, deep) for record in records]
    results = list(map_with_progress(_check_video, jobs, desc="check", workers=workers, chunksize=64,
                                     parallel_from=PARALLEL_FROM, progress=progress))
    for record, (length, video_error, flow_error, claimed) in zip(records, results):
        if video_error:
            report.unreadable.append(record.path)
            report.details[record.path] = video_error
            continue
        found = []  # (list, what is wrong); the details join them
        if claimed - length > truncation_tolerance(claimed):
            found.append((report.truncated, f"{length} frames decode, its container claims {claimed}: cut short"))
        if length < cfg.clip_span:
            found.append((report.too_short, f"{length} frames < {cfg.clip_span}"))
        if flow_error:
            found.append((report.missing_flow, flow_error))
        for items, _ in found:
            items.append(record.path)
        if found:
            report.details[record.path] = "; ".join(what for _, what in found)
    return report


def truncation_tolerance(claimed: int) -> int:
    """Frames a container's claim may exceed the decodable frames by without the file being cut
    short: 1, or 2% of the claim (containers that store a duration, not a count, round it)."""
    return max(1, round(0.02 * claimed))


def claimed_frames(path: str) -> int:
    """The frame count the container's header claims (OpenCV's CAP_PROP_FRAME_COUNT, read without
    decoding: AVI's stream header, MP4's sample table, or duration x rate); 0 when it claims none."""
    capture = cv2.VideoCapture(path)
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) if capture.isOpened() else 0
    finally:
        capture.release()


def _check_video(job: tuple[VideoRecord, str | None, bool]) -> tuple[int, str, str, int]:
    """(length, video problem, flow problem, frames the container claims: --deep only, else 0) of
    one video. decord's length of a file cut short is the frames it finds (an AVI without its index
    is scanned), so only the header's claim tells the cut."""
    record, flow_root, deep = job
    claimed = 0
    try:
        reader = open_video(record.path)
        length = len(reader)
        if length < 2:
            raise UnreadableVideo(f"{length} frame: no frame pair")
        if deep:
            for begin in range(0, length, 64):
                reader.get_batch(list(range(begin, min(begin + 64, length))))
            claimed = claimed_frames(record.path)
    except Exception as error:  # decord raises assorted types on broken files
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        return 0, message.removeprefix(f"{record.path}: "), "", 0
    if flow_root is None:
        return length, "", "", claimed
    return length, "", _check_flow(flow_dir_of(flow_root, record.key), length, deep), claimed


def _check_flow(flow_dir: str, length: int, deep: bool) -> str:
    needed = max(1, length - 1 - FLOW_TOLERANCE)
    if not os.path.isdir(flow_dir):
        return f"no flow folder {flow_dir}"
    if not deep:
        if not all(os.path.isfile(path) for path in pair_files(flow_dir, needed - 1)):
            return f"flow incomplete: pair {needed} missing in {flow_dir}"
        return ""
    present = count_pairs(flow_dir)
    if present < needed:
        return f"flow incomplete: {present} of {length - 1} pairs in {flow_dir}"
    for pair in range(present):
        try:
            read_pair(flow_dir, pair)
        except UnreadableVideo as error:
            return str(error)
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rev2net.data.check", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--deep", action="store_true", help="decode every frame and flow JPEG")
    parser.add_argument("--frames", type=int, default=DataConfig.frames, help="clip length (default %(default)s)")
    parser.add_argument("--frame-stride", type=int, default=DataConfig.frame_stride)
    parser.add_argument("--short-video-policy", default=DataConfig.short_video_policy, choices=["loop", "pad"])
    parser.add_argument("--strict-length", action="store_true", help="videos shorter than a clip are problems")
    parser.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction,
                        help="share of training groups held out for validation when the layout has no list of its own")
    parser.add_argument("--no-flow", action="store_true", help="do not check flow")
    parser.add_argument("--flow-root", help="default: ROOT/flow_tvl1")
    parser.add_argument("--flow-everywhere", action="store_true",
                        help="check the flow of every video, not only the training videos' (a flow stream reads it)")
    parser.add_argument("--class-map", help="check only the mapped classes")
    parser.add_argument("--exclude", action="append", default=[], metavar="VIDEO",
                        help="leave this video out, as data.exclude does (repeatable; relative to --root)")
    parser.add_argument("--limit", type=int, default=10, help="videos listed per problem (default %(default)s; 0: all)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        cfg = DataConfig(name=args.dataset, root=args.root, split=args.split, frames=args.frames,
                         frame_stride=args.frame_stride, short_video_policy=args.short_video_policy,
                         flow=not args.no_flow, flow_root=args.flow_root, class_map=args.class_map,
                         val_fraction=args.val_fraction, exclude=args.exclude)
    except ValueError as error:
        parser.error(str(error))
    report = check_dataset(cfg, deep=args.deep, strict_length=args.strict_length, workers=args.workers,
                           progress=sys.stderr.isatty(), flow_everywhere=args.flow_everywhere)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary(limit=args.limit or sys.maxsize))
    if report.layout_error:
        return 2
    return 0 if report.ok else 1


def command(cfg: DataConfig, *, flow_everywhere: bool = False, deep: bool = False) -> str:
    """The command line that runs `check_dataset(cfg, flow_everywhere=...)` and lists every problem."""
    args = ["python", "-m", "rev2net.data.check", "--dataset", cfg.name, "--root", cfg.root, "--split", str(cfg.split)]
    defaults = DataConfig()
    for flag, key in (("--frames", "frames"), ("--frame-stride", "frame_stride"),
                      ("--short-video-policy", "short_video_policy"), ("--val-fraction", "val_fraction"),
                      ("--flow-root", "flow_root"), ("--class-map", "class_map")):
        if getattr(cfg, key) != getattr(defaults, key):
            args += [flag, str(getattr(cfg, key))]
    if not cfg.flow:
        args.append("--no-flow")
    elif cfg.flow_root is None and cfg.flow_algorithm != defaults.flow_algorithm:
        args += ["--flow-root", cfg.resolved_flow_root()]
    args += ["--flow-everywhere"] if flow_everywhere and cfg.flow else []
    args += ["--deep"] if deep else []
    for video in cfg.exclude:
        args += ["--exclude", video]
    return shlex.join(args + ["--limit", "0"])


if __name__ == "__main__":
    from rev2net.data.check import main as _main

    raise SystemExit(_main())


def check_target(cfg: DataConfig) -> list[str]:
    """What is wrong with a cross-dataset target (data.eval_name at data.eval_root through
    data.class_map), one line each: a missing root or split file, a mapped class either dataset
    lacks, a shared class without training (its unlabelled clips) or test videos in the target, a
    target whose classes are not the source's when no map is given. Empty when all is well."""
    if cfg.eval_name is None:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            source = load_split(cfg.name, cfg.root, cfg.split)
            target = load_split(cfg.eval_name, cfg.eval_root, cfg.split)
            if cfg.class_map is not None:
                mapping = load_class_map(cfg.class_map)
                source = apply_class_map(source, mapping, cfg.name)
                target = apply_class_map(target, mapping, cfg.eval_name)
    except (LayoutError, ValueError) as error:
        return [f"cross-dataset target: {error}"]
    if cfg.class_map is None and source.class_names != target.class_names:
        return [f"cross-dataset target {cfg.eval_name} at {cfg.eval_root} has the classes {target.class_names}, "
                f"not the source's {source.class_names}: give data.class_map"]
    problems = []
    for subset in ("train", "test"):
        labels = {r.label for r in getattr(target, subset)}
        empty = [name for i, name in enumerate(target.class_names) if i not in labels]
        if empty:
            problems.append(f"cross-dataset target {cfg.eval_name} at {cfg.eval_root}: no {subset} videos of the "
                            f"shared class(es) {', '.join(empty)} (split {cfg.split})")
    return problems
