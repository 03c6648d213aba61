"""Reading a 1296-trial coarse sweep back from MLflow: how long `load_runs`, the per-video
predictions and the whole report (statistics included) take.

    .venv/bin/python benchmarks/collect.py [--runs 1296] [--epochs 10] [--videos 1000] [--store DIR] [--repeat 3]

Fills a fresh SQLite store through MLflow's own client, laid out as the sweep writes it (a parent
run, then per trial: `create_run` with the trial's tags, one `log_batch` with its params, every
epoch's metrics, its test and cost metrics and its final status, its per-video test predictions
(`records.write_predictions`, `--videos` rows, logged with `log_artifacts`), `set_terminated`):
the factorial coarse grid, 15 metrics per epoch (the loss terms only where their weight is > 0),
values from orchestration.simulate.score. Filling is not timed against a target (a few minutes).
With --store DIR an existing filled store there is reused.

Then it times, in this process:
  * load_runs: the DataFrame with final and best-epoch metrics (first call: with MLflow's engine
    and schema check; then warm calls), the target being < 5 s for 1296 runs on 2 cores;
  * its parts: search_runs alone with the garbage collector running and paused, and the bulk
    val/top1 + val/top5 histories;
  * load_predictions: every trial's test predictions (the columns the paired tests read);
  * analysis.report: build (load, predictions, tables with their statistics, figures) and write
    (md/csv/tex/png) for the experiment: the target is load + build + write < 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GRID = (0.0, 0.0001, 0.001, 0.1, 1.0, 10.0)
EXPERIMENT = "rev2net-synthetic"
TERMS = {"ddp_high": "loss.alpha", "ddp_low": "loss.beta", "flow": "loss.lambda_flow", "im": "loss.lambda_im"}


def predictions(i: int, target: float, videos: int, classes: int = 101):
    """A trial's per-video test predictions at about `target` accuracy (deterministic in i)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(i)
    label = np.arange(videos) % classes
    right = rng.random(videos) < target
    pred = np.where(right, label, (label + 1 + rng.integers(0, classes - 1, videos)) % classes)
    top5 = (pred[:, None] + np.arange(5)[None, :]) % classes
    return pd.DataFrame({"video_id": [f"v_{k:05d}.avi" for k in range(videos)], "label": label, "pred": pred,
                         "top5": list(top5), "label_score": np.where(right, 0.7, 0.05)})


def fill(uri: str, n_runs: int, epochs: int, videos: int) -> float:
    """The coarse factorial sweep's MLflow layout, `n_runs` trials of `epochs` epochs; returns seconds."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from orchestration import records as R
    from orchestration.simulate import score

    started = time.perf_counter()
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(EXPERIMENT, artifact_location=str(Path(R.sqlite_path(uri)).parent / "mlartifacts"))
    sweep = "coarse-factorial-bench"
    parent = c.create_run(exp, run_name="coarse · factorial · bench", tags={
        R.TAG_ROLE: R.ROLE_STAGE, R.TAG_STAGE: "coarse", R.TAG_MODE: "factorial", R.TAG_SWEEP: sweep,
        R.TAG_GIT: "bench"}).info.run_id
    c.log_batch(parent, params=[Param(k, str(v)) for k, v in {
        "stage": "coarse", "mode": "factorial", "algorithm": "grid", "trials": n_runs, "scheduler": "fifo",
        "data.name": "synthetic", "trainer.max_epochs": epochs, "search.metric": "val/top1"}.items()])
    points = list(itertools.product(GRID, repeat=4))[:n_runs]
    for i, (a, b, f, im) in enumerate(points):
        weights = {"loss.alpha": a, "loss.beta": b, "loss.lambda_flow": f, "loss.lambda_im": im}
        run = c.create_run(exp, run_name=R.run_name(weights), tags={
            R.PARENT: parent, R.TAG_ROLE: R.ROLE_TRIAL, R.TAG_SWEEP: sweep, R.TAG_TRIAL_KEY: f"bench{i:05d}",
            R.TAG_STAGE: "coarse", R.TAG_RAY_TRIAL: f"bench_{i:05d}", R.TAG_STATUS: R.RUNNING,
            R.TAG_LOGGED_EPOCH: "0"}).info.run_id
        params = {**weights, "model.flow_decoder": True, "model.frame_decoder": True, "model.frame_target": "reversed",
                  "model.decoder_arch": "paper", "model.width": 0.25, "model.pretrained": None, "data.name": "synthetic",
                  "data.split": 1, "data.frames": 16, "data.frame_stride": 1, "data.crop_size": 64,
                  "data.class_map": None, "data.eval_name": None, "trainer.seed": 0, "trainer.max_epochs": epochs,
                  "trainer.lr": 0.05, "trainer.schedule": "cosine", "data.batch_size": 8}
        target = score(SimpleNamespace(alpha=a, beta=b, lambda_flow=f, lambda_im=im))
        now = int(time.time() * 1000)
        metrics = []
        for e in range(1, epochs + 1):
            p = e / epochs
            val = target * (0.5 + 0.5 * p) + 0.001 * ((i * 7 + e) % 5)
            values = {"train/loss": 2.0 - p, "train/ce": 1.8 - 0.9 * p, "train/top1": min(1.0, val + 0.05),
                      "train/top5": min(1.0, val + 0.1), "val/loss": 2.2 - p, "val/top1": val,
                      "val/top5": min(1.0, val + 0.08), "lr": 0.05 * (1 - p), "clips_per_s": 40.0,
                      "epoch_time_s": 12.0, "skipped_videos": 0.0}
            values.update({f"train/{t}": 1.0 / e for t, k in TERMS.items() if weights[k] > 0})
            metrics.extend(Metric(k, v, now + e, e) for k, v in values.items())
        cost = R.trial_cost(wall_s=600.0 + i % 7, gpu_fraction=0.25, cpu_s=1800.0, clips=4000.0)
        test = {"test/top1": target, "test/top5": min(1.0, target + 0.1), "test/loss": 2.0 - target, **cost}
        metrics.extend(Metric(k, v, now + epochs, epochs) for k, v in test.items())
        c.log_batch(run, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                    tags=[RunTag(R.TAG_LOGGED_EPOCH, str(epochs)), RunTag(R.TAG_STATUS, R.COMPLETED)])
        if videos:
            with tempfile.TemporaryDirectory() as tmp:
                R.write_predictions(predictions(i, target, videos), Path(tmp) / R.predictions_path(R.TEST))
                c.log_artifacts(run, tmp)
        c.set_terminated(run, "FINISHED")
    c.set_terminated(parent, "FINISHED")
    return time.perf_counter() - started


def timed(fn, repeat: int = 1) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1296, help="child runs (1296 = the factorial coarse grid)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--videos", type=int, default=1000, help="test videos per trial's predictions (0: none)")
    parser.add_argument("--store", help="folder for mlflow.db (kept; reused when already filled); default: a temp dir")
    parser.add_argument("--repeat", type=int, default=3, help="warm repetitions of each timing")
    args = parser.parse_args()

    tmp = None if args.store else tempfile.TemporaryDirectory(prefix="collect-bench-")
    folder = Path(args.store or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    uri = f"sqlite:///{db.resolve()}"

    t = time.perf_counter()
    from mlflow import MlflowClient

    from analysis import report
    from orchestration.records import ROLE_TRIAL, _gc_paused, _histories, load_predictions, load_runs, trial_filter
    t_import = time.perf_counter() - t

    filled = db.exists()
    t_fill = 0.0 if filled else fill(uri, args.runs, args.epochs, args.videos)

    cold, frame = timed(lambda: load_runs(uri, EXPERIMENT))
    warm, frame = timed(lambda: load_runs(uri, EXPERIMENT), args.repeat)
    no_best, _ = timed(lambda: load_runs(uri, EXPERIMENT, best_epoch=False), args.repeat)

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id

    def search():
        return client.search_runs([exp_id], trial_filter(role=ROLE_TRIAL), max_results=5000)

    gc_on, runs = timed(search, args.repeat)
    with _gc_paused():
        gc_off, _ = timed(search, args.repeat)
    ids = [r.info.run_id for r in runs]
    with _gc_paused():
        hist, h = timed(lambda: _histories(uri, ids, ["val/top1", "val/top5"]), args.repeat)

    ids = frame["run_id"].tolist()
    roots = dict(zip(frame["run_id"], frame["artifact_uri"]))
    preds, p = timed(lambda: load_predictions(uri, ids, "test", columns=report.PREDICTION_COLUMNS, artifact_uri=roots),
                     args.repeat)
    out = folder / "report"
    t_build, built = timed(lambda: report.build(uri, EXPERIMENT))
    t_write, paths = timed(lambda: report.write(built, out))

    med = statistics.median
    print(f"machine: {os.cpu_count()} CPUs · Python {sys.version.split()[0]} · store {uri}")
    print(f"store:   {len(frame)} child runs × {args.epochs} epochs, {len(h)} val/top1+val/top5 points"
          + (" (reused)" if filled else f", filled in {t_fill:.1f} s through MlflowClient"))
    print(f"import analysis (mlflow, pandas, matplotlib):   {t_import:6.2f} s")
    print(f"load_runs, first call (engine + schema check):  {cold[0]:6.2f} s")
    print(f"load_runs, warm (median of {args.repeat}):               {med(warm):6.2f} s   "
          f"target < 5 s -> {'met' if max(cold[0], med(warm)) < 5 else 'MISSED'}")
    print(f"  without best-epoch columns:                   {med(no_best):6.2f} s")
    print(f"  search_runs alone, gc running / paused:       {med(gc_on):6.2f} s / {med(gc_off):.2f} s")
    print(f"  best-epoch histories (2 bulk queries):        {med(hist):6.2f} s")
    print(f"load_predictions, {len(p):,} rows (median of {args.repeat}): {med(preds):6.2f} s   (3 columns, roots from load_runs)")
    print(f"report.build (load, predictions, {len(built.tables)} tables, {len(built.figures)} figures): {t_build[0]:6.2f} s")
    print(f"report.write ({len(paths)} files: md/csv/tex/png):        {t_write[0]:6.2f} s   -> {out}")
    whole = t_build[0] + t_write[0]
    print(f"whole report (build + write):                   {whole:6.2f} s   target < 10 s -> "
          f"{'met' if whole < 10 else 'MISSED'}")
    gc.collect()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
