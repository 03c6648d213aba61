"""How long analysis.stats takes at the size of a full sweep.

    .venv/bin/python benchmarks/stats.py [--trials 1296] [--videos 1000] [--files 200] [--fanova-trees 64]

Times, on generated data (nothing read from MLflow), each step the report would run:
  * compare_to_reference, per-video: `--trials` single-seed trials × `--videos` test videos
    (the factorial coarse grid), and the ablation's shape (9 variants × 3 seeds × 3 splits);
  * summarize_seeds over `--trials` groups of 3 seeds (10,000 bootstrap resamples each);
  * grid_anova and marginals on the 6⁴ grid, fanova on the same trials (`--fanova-trees`;
    0 skips it: the random forest's tree walks are pure Python);
  * write_predictions + read_predictions + correct for `--files` files of `--videos` rows
    (the per-file figure times `--trials` is the cost of reading a coarse sweep's predictions).
The target is "within seconds" for the first three on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import stats  # noqa: E402
from orchestration import records  # noqa: E402
from orchestration.records import WEIGHTS  # noqa: E402

GRID = (0.0, 0.0001, 0.001, 0.1, 1.0, 10.0)


def line(label: str, seconds: float, note: str = "") -> None:
    print(f"{label + ':':<68}{seconds:6.2f} s" + (f"   {note}" if note else ""))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def per_video(rows: int, seeds: int, splits: int, videos: int, rng: np.random.Generator) -> pd.DataFrame:
    """Correctness of `rows` configurations × seeds × splits on `videos` test videos per split."""
    accuracy = rng.uniform(0.5, 0.8, rows)
    n = rows * seeds * splits * videos
    row = np.repeat(np.arange(rows), seeds * splits * videos)
    return pd.DataFrame({
        "row": row,
        "seed": np.tile(np.repeat(np.arange(seeds), splits * videos), rows),
        "split": np.tile(np.repeat(np.arange(1, splits + 1), videos), rows * seeds),
        "video_id": np.tile(np.arange(videos), rows * seeds * splits),
        "correct": rng.random(n) < accuracy[row],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1296, help="trials (1296 = the factorial coarse grid)")
    parser.add_argument("--videos", type=int, default=1000, help="test videos per trial")
    parser.add_argument("--files", type=int, default=200, help="predictions files written and read back")
    parser.add_argument("--fanova-trees", type=int, default=64, help="trees of the fANOVA forest; 0 skips fanova")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {os.cpu_count()} CPUs · Python {sys.version.split()[0]} · numpy {np.__version__}")

    coarse = per_video(args.trials, 1, 1, args.videos, rng)
    out, t = timed(stats.compare_to_reference, coarse, 0)
    line(f"compare_to_reference, {args.trials} trials × {args.videos} videos, 1 seed", t,
         f"({(~out['indistinguishable']).sum()} rows told apart)")
    ablation = per_video(9, 3, 3, 1260, rng)
    _, t = timed(stats.compare_to_reference, ablation, 0)
    line("compare_to_reference, 9 variants × 3 seeds × 3 splits × 1260 videos", t)

    seeds = pd.DataFrame({"row": np.repeat(np.arange(args.trials), 3), "acc": rng.uniform(0.5, 0.8, 3 * args.trials)})
    _, t = timed(stats.summarize_seeds, seeds, ["row"], "acc")
    line(f"summarize_seeds, {args.trials} groups × 3 seeds, 10,000 resamples", t)

    points = np.array(list(itertools.product(GRID, repeat=4)))
    idx = np.array(list(itertools.product(range(6), repeat=4)))
    trials = pd.DataFrame(points, columns=list(WEIGHTS)).assign(
        **{"val/top1": 0.6 + 0.02 * idx[:, 0] - 0.01 * (idx[:, 1] - 2.5) * (idx[:, 2] - 2.5) / 3
           + rng.normal(0, 0.01, len(points))})
    _, t = timed(stats.grid_anova, trials, "val/top1")
    line("grid_anova, 1296-point grid", t)
    _, t = timed(stats.marginals, trials, "val/top1")
    line("marginals, 1296-point grid (4 weights × 6 values)", t)
    if args.fanova_trees:
        _, t = timed(stats.fanova, trials, "val/top1", n_trees=args.fanova_trees)
        line(f"fanova, 1296 trials, {args.fanova_trees} trees (main + pairwise terms)", t)

    with tempfile.TemporaryDirectory() as tmp:
        frames = []
        for i in range(args.files):
            top5 = np.argsort(-rng.random((args.videos, 101)), axis=1)[:, :5]
            label = rng.integers(0, 101, args.videos)
            frames.append(pd.DataFrame({"video_id": [f"v_{k:05d}.avi" for k in range(args.videos)], "label": label,
                                        "pred": top5[:, 0], "top5": list(top5),
                                        "label_score": rng.random(args.videos)}))
        start = time.perf_counter()
        paths = [records.write_predictions(f, Path(tmp) / f"t{i}" / records.predictions_path("test"))
                 for i, f in enumerate(frames)]
        t_write = time.perf_counter() - start
        start = time.perf_counter()
        for p in paths:
            df = records.read_predictions(p)
            stats.correct(df), stats.top5_correct(df)
        t_read = time.perf_counter() - start
    line(f"write_predictions, {args.files} files × {args.videos} rows", t_write,
         f"({1000 * t_write / args.files:.1f} ms/file)")
    line("read_predictions + correct + top5_correct, same files", t_read,
         f"({1000 * t_read / args.files:.1f} ms/file; × {args.trials} = {t_read / args.files * args.trials:.1f} s)")


if __name__ == "__main__":
    main()
