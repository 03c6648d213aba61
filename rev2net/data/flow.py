"""Optical flow targets: extraction (TV-L1 or Farneback), storage as JPEG pairs, and reading them back.

Layout (the standard one): under the flow root (default `<root>/flow_tvl1`), a folder per video at
the video's path relative to the dataset root without its extension, e.g.
`flow_tvl1/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01/`, holding one pair of grey JPEGs per
consecutive frame pair: `flow_x_00001.jpg` / `flow_y_00001.jpg` is the flow from frame 0 to
frame 1. Values are clipped at +-20 and quantized `round(255 * (v + 20) / 40)`, in pixels of the
JPEG's own grid: `--flow-size S` computes and stores flow with the frames' short side resized
to S; `S >= short_side / flow_downsample` keeps targets at full detail (e.g. 128 for UCF101's
320x240 videos and 56x56 targets: 3.5x fewer pixels, so a faster extraction and a smaller flow root).
`meta.json` in each folder records grid size, pair count and algorithm.

Each folder is written under a temporary name and renamed when complete, so a folder that exists
is complete; an interrupted run leaves only `.<name>.partial` folders, removed when redone.
One extraction run per flow root at a time.

    python -m rev2net.data.flow --dataset ucf101 --root DIR [--algorithm tvl1|farneback]
        [--preset fast|accurate|opencv] [--workers N] [--flow-size S] [--flow-root DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys

import cv2
import numpy as np

from rev2net.data.config import DATASETS, FLOW_ALGORITHMS
from rev2net.data.jobs import JobSummary, run_jobs
from rev2net.data.layouts import all_videos
from rev2net.data.video import UnreadableVideo, iter_frames, open_video

BOUND = 20.0  # flow is clipped at +-BOUND pixels before quantization
JPEG_QUALITY = 95
META = "meta.json"

# OpenCV Dual TV-L1 parameters (end-point errors and speeds on the generated set: README, Data).
# "opencv" is the library default, as used by denseflow and most released TV-L1 flow; with its
# 0.8 pyramid step it misses displacements beyond a few pixels. "accurate" and "fast" halve the
# image per pyramid level (OpenCV drops levels that would be too small); "fast" also stops the
# solver at a looser tolerance and warps 3 times: much faster than "opencv", and more accurate on
# fast motion.
TVL1_PRESETS = {
    "opencv": dict(tau=0.25, lambda_=0.15, theta=0.3, nscales=5, warps=5, epsilon=0.01,
                   innnerIterations=30, outerIterations=10, scaleStep=0.8, medianFiltering=5),
    "accurate": dict(tau=0.25, lambda_=0.15, theta=0.3, nscales=5, warps=5, epsilon=0.01,
                     innnerIterations=30, outerIterations=10, scaleStep=0.5, medianFiltering=5),
    "fast": dict(tau=0.25, lambda_=0.15, theta=0.3, nscales=5, warps=3, epsilon=0.05,
                 innnerIterations=30, outerIterations=10, scaleStep=0.5, medianFiltering=5),
}
DEFAULT_PRESET = "fast"
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
DEQUANTIZED = np.arange(256, dtype=np.float32) * np.float32(2 * BOUND / 255.0) - np.float32(BOUND)  # uint8 -> pixels


# --- quantization and files ----------------------------------------------------------------------

def quantize(flow: np.ndarray) -> np.ndarray:
    """Flow in pixels -> uint8, clipped at +-BOUND: round(255 * (v + 20) / 40)."""
    return np.round((np.clip(flow, -BOUND, BOUND) + BOUND) * (255.0 / (2 * BOUND))).astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    """uint8 -> flow in pixels (float32), the inverse of `quantize` up to half a step (0.078 px;
    zero flow, 127.5, is stored as 128 and reads back as +0.078)."""
    return DEQUANTIZED[q]


def pair_files(flow_dir: str, pair: int) -> tuple[str, str]:
    """Paths of the x and y JPEGs of pair `pair` (0-based: frame pair -> pair + 1)."""
    return (os.path.join(flow_dir, f"flow_x_{pair + 1:05d}.jpg"), os.path.join(flow_dir, f"flow_y_{pair + 1:05d}.jpg"))


def flow_dir_of(flow_root: str, key: str) -> str:
    return os.path.join(flow_root, key)


def read_pair(flow_dir: str, pair: int, reduce: int = 1) -> np.ndarray:
    """Quantized flow of one pair, uint8 (2, h, w); `reduce` in 1, 2, 4, 8 decodes the JPEG at 1/reduce scale."""
    flag = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
            4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[reduce]
    x_path, y_path = pair_files(flow_dir, pair)
    x, y = cv2.imread(x_path, flag), cv2.imread(y_path, flag)
    if x is None or y is None:
        raise UnreadableVideo(f"{flow_dir}: flow pair {pair + 1} is missing or not a JPEG")
    return np.stack([x, y])


def read_meta(flow_dir: str) -> dict:
    """meta.json of a flow folder; {} for flow from other tools, which have none."""
    meta_path = os.path.join(flow_dir, META)
    if not os.path.isfile(meta_path):
        return {}
    with open(meta_path) as f:
        return json.load(f)


def stored_grid(flow_dir: str) -> tuple[int, int, int]:
    """(height, width, pairs) of a video's stored flow: from meta.json, else from its files."""
    meta = read_meta(flow_dir)
    if meta:
        return meta["height"], meta["width"], meta["pairs"]
    pairs = sum(1 for name in os.listdir(flow_dir) if name.startswith("flow_x_"))
    first = read_pair(flow_dir, 0)
    return first.shape[1], first.shape[2], pairs


def count_pairs(flow_dir: str) -> int:
    """Complete pairs present (both x and y), by listing the folder."""
    names = set(os.listdir(flow_dir))
    return sum(1 for name in names if name.startswith("flow_x_") and "flow_y_" + name[7:] in names)


# --- computing flow ------------------------------------------------------------------------------

class FlowComputer:
    """Flow between two grey uint8 frames, in pixels, float32 (H, W, 2)."""

    def __init__(self, algorithm: str = "tvl1", preset: str = DEFAULT_PRESET):
        if algorithm not in FLOW_ALGORITHMS:
            raise ValueError(f"--algorithm {algorithm!r} is not one of {', '.join(FLOW_ALGORITHMS)}")
        if algorithm == "tvl1" and preset not in TVL1_PRESETS:
            raise ValueError(f"--preset {preset!r} is not one of {', '.join(TVL1_PRESETS)}")
        self.algorithm = algorithm
        self.preset = preset if algorithm == "tvl1" else "default"
        self._tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(**TVL1_PRESETS[preset]) if algorithm == "tvl1" else None

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if self._tvl1 is not None:
            return self._tvl1.calc(prev, nxt, None)
        return cv2.calcOpticalFlowFarneback(prev, nxt, None, **FARNEBACK)


def grey_frames(path: str, flow_size: int | None):
    """Yield the video's frames as grey uint8, short side resized to `flow_size` if given."""
    for frame in iter_frames(open_video(path), path):
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if flow_size is not None and min(grey.shape) != flow_size:
            h, w = grey.shape
            scale = flow_size / min(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        yield grey


def extract_video(path: str, out_dir: str, *, algorithm: str = "tvl1", preset: str = DEFAULT_PRESET,
                  flow_size: int | None = None, quality: int = JPEG_QUALITY) -> int:
    """Compute and store the flow of every consecutive frame pair of one video; returns the pair count.

    Written to `.<name>.partial` beside `out_dir` and renamed at the end (atomic on one filesystem).
    """
    compute = FlowComputer(algorithm, preset)
    with partial_dir(out_dir) as partial:
        pairs, grid = _write_pairs(path, partial, compute, flow_size, quality)
        write_meta(partial, height=grid[0], width=grid[1], pairs=pairs, algorithm=algorithm, preset=compute.preset,
                   source=os.path.basename(path))
    return pairs


@contextlib.contextmanager
def partial_dir(out_dir: str):
    """Yield `.<name>.partial` beside `out_dir` to fill; renamed to `out_dir` when the block ends
    without an error (atomic on one filesystem). An error removes it; a kill leaves it, to be
    removed by the next attempt."""
    parent, name = os.path.split(out_dir.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    partial = os.path.join(parent, f".{name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    os.makedirs(partial)
    try:
        yield partial
    except Exception:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.isdir(out_dir):  # another run finished it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    else:
        os.rename(partial, out_dir)


def write_meta(flow_dir: str, *, height: int, width: int, pairs: int, algorithm: str, **extra) -> None:
    """meta.json of a flow folder: its grid, pair count and how it was made."""
    with open(os.path.join(flow_dir, META), "w") as f:
        json.dump({"height": height, "width": width, "pairs": pairs, "algorithm": algorithm, "bound": BOUND,
                   **extra}, f)


def write_pair(flow_dir: str, pair: int, quantized: np.ndarray, params: list[int]) -> None:
    """Store quantized flow uint8 (H, W, 2) as pair `pair`'s two grey JPEGs (imwrite `params`)."""
    for component, file in zip((quantized[..., 0], quantized[..., 1]), pair_files(flow_dir, pair)):
        ok, data = cv2.imencode(".jpg", component, params)
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {file}")
        with open(file, "wb") as f:
            f.write(data.tobytes())


def _write_pairs(path: str, out: str, compute: FlowComputer, flow_size: int | None,
                 quality: int) -> tuple[int, tuple[int, int]]:
    """Flow JPEGs of every consecutive frame pair into `out`; returns (pairs, (height, width))."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    prev = None
    pairs = 0
    for grey in grey_frames(path, flow_size):
        if prev is not None:
            write_pair(out, pairs, quantize(compute(prev, grey)), params)
            pairs += 1
        prev = grey
    if pairs == 0:
        raise UnreadableVideo(f"{path}: fewer than 2 frames, no flow")
    return pairs, prev.shape


def extract_flow(videos: list[tuple[str, str]], *, algorithm: str = "tvl1", preset: str = DEFAULT_PRESET,
                 flow_size: int | None = None, workers: int | None = None, quality: int = JPEG_QUALITY,
                 progress: bool = True) -> JobSummary:
    """Extract flow for (video path, flow folder) pairs, skipping folders that already exist.

    `workers` processes (default: every core), one video per task; workers=1 runs in this process.
    """
    FlowComputer(algorithm, preset)  # validate before starting workers
    todo = [(path, out, algorithm, preset, flow_size, quality) for path, out in videos if not os.path.isdir(out)]
    summary = JobSummary("flow", "extracted", "frame pairs", skipped=len(videos) - len(todo))
    return run_jobs(_extract_job, todo, summary, workers=workers, progress=progress)


def _extract_job(path: str, out_dir: str, algorithm: str, preset: str, flow_size: int | None, quality: int) -> int:
    return extract_video(path, out_dir, algorithm=algorithm, preset=preset, flow_size=flow_size, quality=quality)


def extraction_command(dataset: str, root: str, flow_root: str | None = None, algorithm: str = "tvl1") -> str:
    """The command line that extracts a dataset's flow (quoted in error messages)."""
    command = f"python -m rev2net.data.flow --dataset {dataset} --root {root} --algorithm {algorithm}"
    if flow_root and os.path.abspath(flow_root) != os.path.abspath(os.path.join(root, f"flow_{algorithm}")):
        command += f" --flow-root {flow_root}"
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rev2net.data.flow", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--flow-root", help="where flow folders go (default: ROOT/flow_ALGORITHM)")
    parser.add_argument("--algorithm", default="tvl1", choices=FLOW_ALGORITHMS)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(TVL1_PRESETS),
                        help="TV-L1 parameters (see TVL1_PRESETS; default %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: every core)")
    parser.add_argument("--flow-size", type=int, help="short side of the grid flow is computed and stored on "
                        "(default: the video's own resolution)")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    flow_root = args.flow_root or os.path.join(args.root, f"flow_{args.algorithm}")
    videos = [(r.path, flow_dir_of(flow_root, r.key)) for r in all_videos(args.dataset, args.root)]
    print(f"{len(videos)} videos listed by {args.dataset} at {args.root}; flow -> {flow_root}", file=sys.stderr)
    summary = extract_flow(videos, algorithm=args.algorithm, preset=args.preset, flow_size=args.flow_size,
                           workers=args.workers, quality=args.jpeg_quality, progress=not args.no_progress)
    print(summary.report())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    # Run the importable copy, so that worker processes unpickle `rev2net.data.flow.*`, not `__main__.*`.
    from rev2net.data.flow import main as _main

    raise SystemExit(_main())
