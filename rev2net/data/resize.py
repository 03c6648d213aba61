"""A copy of a dataset with its videos at a lower resolution, for loaders that decode less.

Clips cut at reduced fidelity (the coarse stage's 16x112x112 clips resize the short side to 128)
spend most of their loading time decoding and shrinking frames they could have read small:
UCF101 and HMDB51 are 320x240. This writes the same dataset at short side S once, so that every
epoch of every trial reads the small copy (`benchmarks/loader.py` measures the gain).

    python -m rev2net.data.resize --dataset ucf101 --root /data/UCF101 --out /data/UCF101-128 --short-side 128
        [--flow link|resample|none] [--flow-size S] [--flow-root DIR] [--workers N]

Then train with `data.root=/data/UCF101-128` (same `data.name`; `data.short_side` <= S keeps
frames from being upscaled). Under OUT it writes:

- every listed video at the same relative path, re-encoded with its short side at S (the long side
  in proportion, rounded to even), with the same frame count (checked after writing) and frame
  rate. A video whose short side is already <= S is copied unchanged. Codec by container, from
  OpenCV's bundled FFmpeg (it has no H.264 encoder): .avi and .mkv XVID, .mp4/.m4v/.mov MPEG-4
  Part 2, .webm VP8, .mpg/.mpeg MPEG-1. Re-encoding a lossy source adds a little loss of its own
  (the benchmark prints the PSNR against the source frames resized).
- the split and annotation files: every .txt and .csv under ROOT outside the flow root, at the
  same relative path, so that the copy lists the same videos with the same class indices.
- flow targets (`--flow`):
    link (default)  OUT/flow_<algorithm> is a symbolic link to the source's flow root. Flow is
                    stored in pixels of its own grid and read in proportion to the frames
                    (rev2net.data.transforms.flow_window), so it serves the copy unchanged.
    resample        every flow folder rewritten with its short side at `--flow-size` (default S,
                    the copy's own grid), vectors scaled by the same factor and quantized in the
                    standard convention. Smaller JPEGs read faster; the price is precision: one
                    quantization step (0.157 px) is a pixel of the smaller grid. Below S it buys
                    little more speed for twice the rounding (benchmarks/loader.py). Videos
                    without source flow (a generated dataset's validation and test videos get
                    theirs when a model reads them) stay without; resize.json counts them.
    none            no flow: extract it on the copy (rev2net.data.flow) or set data.flow_root.
- resize.json: the source, the settings and the counts of the last run.

Resumable like the flow extraction: a video is written under `.<name>.partial<ext>` and a flow
folder under `.<name>.partial`, each renamed when complete; a run skips what already exists and
lists failures by video at the end (exit status 1 when any).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import cv2
import numpy as np

from rev2net.data.config import DATASETS, FLOW_ALGORITHMS
from rev2net.data.flow import (JPEG_QUALITY, dequantize, flow_dir_of, partial_dir, quantize, read_meta, read_pair,
                               stored_grid,
                               write_meta, write_pair)
from rev2net.data.jobs import JobSummary, run_jobs
from rev2net.data.layouts import all_videos
from rev2net.data.video import DECORD_BAD_WIDTHS, UnreadableVideo, iter_frames, open_video

MARKER = "resize.json"
FLOW_MODES = ("link", "resample", "none")
ANNOTATION_EXTENSIONS = (".txt", ".csv")
FOURCC = {".avi": "XVID", ".mkv": "XVID", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".webm": "VP80",
          ".mpg": "PIM1", ".mpeg": "PIM1"}


def scaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side at `short_side` and the long side in proportion, even."""
    long_side = max(2, 2 * round(max(height, width) * short_side / min(height, width) / 2))  # codecs want even
    return (short_side, long_side) if height <= width else (long_side, short_side)


# --- videos --------------------------------------------------------------------------------------

def resize_video(source: str, target: str, short_side: int) -> int:
    """Write `source` at `target` with its short side at `short_side` (a copy if already that small);
    returns the frame count. The file appears only when complete and checked."""
    reader = open_video(source)
    frames = len(reader)
    height, width = reader[0].shape[:2]
    stem, ext = os.path.splitext(target)
    partial = os.path.join(os.path.dirname(target), f".{os.path.basename(stem)}.partial{ext}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        if min(height, width) <= short_side:
            shutil.copyfile(source, partial)
        else:
            _encode(reader, source, partial, scaled_size(height, width, short_side))
        written = len(open_video(partial))
        if written != frames:
            raise UnreadableVideo(f"{target}: wrote {written} frames of {frames}")
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    os.replace(partial, target)
    return frames


def _encode(reader, source: str, path: str, size: tuple[int, int]) -> None:
    height, width = size
    if width in DECORD_BAD_WIDTHS:
        raise ValueError(f"{source}: a {width}-pixel wide copy would not be readable by decord; "
                         "choose another --short-side")
    ext = os.path.splitext(path)[1].lower()
    if ext not in FOURCC:
        raise ValueError(f"{source}: no encoder for {ext!r} videos (known: {', '.join(FOURCC)})")
    fps = reader.get_avg_fps() or 25.0
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*FOURCC[ext]), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {FOURCC[ext]} video {path} ({width}x{height})")
    try:
        for frame in iter_frames(reader, source):  # (H, W, 3) RGB
            small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            writer.write(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


# --- flow ----------------------------------------------------------------------------------------

def resample_flow(source_dir: str, target_dir: str, flow_size: int, quality: int = JPEG_QUALITY) -> int:
    """Rewrite a flow folder with its short side at `flow_size`; vectors are scaled with the grid.
    Returns the pair count."""
    height, width, pairs = stored_grid(source_dir)
    new_h, new_w = scaled_size(height, width, flow_size) if min(height, width) > flow_size else (height, width)
    scale = np.array([new_w / width, new_h / height], np.float32)[:, None, None]  # (2, 1, 1): x, y
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    meta = read_meta(source_dir)
    with partial_dir(target_dir) as partial:
        for pair in range(pairs):
            flow = dequantize(read_pair(source_dir, pair)) * scale  # (2, h, w), pixels of the new grid
            if (new_h, new_w) != (height, width):
                flow = np.stack([cv2.resize(c, (new_w, new_h), interpolation=cv2.INTER_AREA) for c in flow])
            write_pair(partial, pair, quantize(flow.transpose(1, 2, 0)), params)
        write_meta(partial, height=new_h, width=new_w, pairs=pairs, algorithm=meta.get("algorithm", "unknown"),
                   **{k: v for k, v in meta.items() if k not in ("height", "width", "pairs", "algorithm", "bound")},
                   resampled_from=[height, width])
    return pairs


# --- the dataset ---------------------------------------------------------------------------------

def resize_dataset(dataset: str, root: str, out: str, *, short_side: int, flow: str = "link",
                   flow_size: int | None = None, flow_root: str | None = None, algorithm: str = "tvl1",
                   workers: int | None = None, progress: bool = True) -> dict:
    """Write the copy (module docstring); returns what resize.json records, with both summaries."""
    root, out = os.path.abspath(root), os.path.abspath(out)
    _validate(root, out, short_side, flow, flow_size, algorithm)
    records = all_videos(dataset, root)  # a broken layout fails here, naming what is missing
    source_flow = os.path.abspath(flow_root or os.path.join(root, f"flow_{algorithm}"))
    target_flow = os.path.join(out, f"flow_{algorithm}")
    _check_flow_target(flow, source_flow, target_flow)  # before any work
    size = (flow_size or short_side) if flow == "resample" else None
    os.makedirs(out, exist_ok=True)
    annotations = _copy_annotations(root, out, skip=(source_flow, out))
    jobs = [(r.path, os.path.join(out, os.path.relpath(r.path, root)), short_side) for r in records]
    todo = [job for job in jobs if not os.path.exists(job[1])]
    videos = run_jobs(resize_video, todo, JobSummary("resize", "resized", "frames", skipped=len(jobs) - len(todo)),
                      workers=workers, progress=progress)
    flows, unflowed = None, []
    if flow == "link":
        _link(source_flow, target_flow)
    elif flow == "resample":
        jobs = [(flow_dir_of(source_flow, r.key), flow_dir_of(target_flow, r.key), size) for r in records]
        unflowed = [job[0] for job in jobs if not os.path.isdir(job[0])]   # e.g. test videos nothing trains on
        jobs = [job for job in jobs if os.path.isdir(job[0])]
        todo = [job for job in jobs if not os.path.isdir(job[1])]
        flows = run_jobs(resample_flow, todo, JobSummary("flow", "resampled", "frame pairs",
                                                         skipped=len(jobs) - len(todo)),
                         workers=workers, progress=progress)
    marker = {"dataset": dataset, "source": root, "short_side": short_side, "videos": len(records),
              "annotations": annotations, "flow": flow, "flow_source": source_flow, "flow_size": size,
              "failed_videos": sorted(videos.failures),
              "failed_flow": sorted(flows.failures) if flows else [], "without_flow": len(unflowed),
              "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(os.path.join(out, MARKER), "w") as f:
        json.dump(marker, f, indent=2)
    return {**marker, "video_summary": videos, "flow_summary": flows}


def _validate(root: str, out: str, short_side: int, flow: str, flow_size: int | None, algorithm: str) -> None:
    if short_side < 32 or short_side % 2:
        raise ValueError(f"--short-side {short_side} is not allowed: expected an even number >= 32")
    if flow not in FLOW_MODES:
        raise ValueError(f"--flow {flow!r} is not one of {', '.join(FLOW_MODES)}")
    if flow_size is not None and (flow_size < 8 or flow_size % 2):
        raise ValueError(f"--flow-size {flow_size} is not allowed: expected an even number >= 8")
    if algorithm not in FLOW_ALGORITHMS:
        raise ValueError(f"--algorithm {algorithm!r} is not one of {', '.join(FLOW_ALGORITHMS)}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root} is not a folder")
    if os.path.commonpath([root, out]) in (root, out):  # the same folder, or one inside the other
        raise ValueError(f"--out {out} must be outside --root {root} (and not contain it)")


def _copy_annotations(root: str, out: str, skip: tuple[str, ...]) -> list[str]:
    """Copy every .txt and .csv under `root` (outside the `skip` folders) to the same place under `out`."""
    copied = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if os.path.join(folder, d) not in skip and not d.startswith(".")]
        for name in files:
            if name.lower().endswith(ANNOTATION_EXTENSIONS):
                relative = os.path.relpath(os.path.join(folder, name), root)
                os.makedirs(os.path.dirname(os.path.join(out, relative)), exist_ok=True)
                shutil.copyfile(os.path.join(root, relative), os.path.join(out, relative))
                copied.append(relative)
    return sorted(copied)


def _check_flow_target(flow: str, source_flow: str, target_flow: str) -> None:
    """Refuse a flow mode that would clash with what an earlier run left at `target_flow`."""
    if flow == "resample" and os.path.islink(target_flow):
        raise ValueError(f"{target_flow} is a link to the source's flow (an earlier --flow link); "
                         "remove the link before --flow resample, which writes there")
    linked = os.path.islink(target_flow) and os.path.realpath(target_flow) == os.path.realpath(source_flow)
    if flow == "link" and os.path.lexists(target_flow) and not linked:
        raise ValueError(f"{target_flow} exists and is not a link to {source_flow}; "
                         "remove it (or keep it with --flow none)")


def _link(source_flow: str, target_flow: str) -> None:
    if os.path.lexists(target_flow):  # the same link, from an earlier run (_check_flow_target)
        return
    if not os.path.isdir(source_flow):
        print(f"no flow at {source_flow}: the copy has none (extract it with python -m rev2net.data.flow, "
              "or give --flow-root)", file=sys.stderr)
        return
    os.symlink(source_flow, target_flow, target_is_directory=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rev2net.data.resize", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="the dataset to copy")
    parser.add_argument("--out", required=True, help="where the copy goes (a new folder outside ROOT)")
    parser.add_argument("--short-side", type=int, required=True, help="the copy's short side, pixels (e.g. 128)")
    parser.add_argument("--flow", default="link", choices=FLOW_MODES, help="flow targets (default %(default)s)")
    parser.add_argument("--flow-size", type=int, help="--flow resample: short side of the flow grid "
                        "(default: SHORT_SIDE, the copy's own grid)")
    parser.add_argument("--flow-root", help="the source's flow (default: ROOT/flow_ALGORITHM)")
    parser.add_argument("--algorithm", default="tvl1", choices=FLOW_ALGORITHMS, help="which flow (default %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: every core)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = resize_dataset(args.dataset, args.root, args.out, short_side=args.short_side, flow=args.flow,
                                flow_size=args.flow_size, flow_root=args.flow_root, algorithm=args.algorithm,
                                workers=args.workers, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result['videos']} videos listed by {args.dataset} at {result['source']}; "
          f"{len(result['annotations'])} split/annotation files copied")
    print(result["video_summary"].report())
    if result["flow_summary"] is not None:
        print(result["flow_summary"].report())
    name = "ucf101" if args.dataset == "synthetic" else args.dataset  # the generated set is in the UCF101 layout
    print(f"train on it with: data.name={name} data.root={os.path.abspath(args.out)}"
          f" (data.short_side <= {args.short_side})")
    return 1 if result["failed_videos"] or result["failed_flow"] else 0


if __name__ == "__main__":
    # Run the importable copy, so that worker processes unpickle `rev2net.data.resize.*`, not `__main__.*`.
    from rev2net.data.resize import main as _main

    raise SystemExit(_main())
