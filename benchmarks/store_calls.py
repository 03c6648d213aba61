"""What a trial's MLflow store calls cost with several processes writing at once, per store.

    .venv/bin/python benchmarks/store_calls.py [--processes 3] [--trials 30] [--epochs 1]
        [--stores delete,wal,server]

Each of `--processes` processes (forked, as Ray's trial workers and the driver are separate
processes) runs `--trials` trials' store calls exactly as the sweep makes them: the trial's run
opened (`tracking.ChildRun.open`: one `create_run`), one `log_batch` per epoch of a 30-metric
history (`ChildRun.sync`, the params on the first), and the driver's end of the trial
(`tracking.finish`: the status tag and `set_terminated`). It prints milliseconds per trial, per
process, for each store:
  * delete: a SQLite file in SQLite's default rollback-journal mode (what MLflow leaves it in),
  * wal:    the same on SQLite's write-ahead log (`tracking.open_store` puts every SQLite store on it),
  * server: an MLflow tracking server on a new PostgreSQL database (benchmarks/cluster_scale.TrackingServer;
            PostgreSQL at 127.0.0.1:5432 or REV2NET_TEST_POSTGRES).
The stores alternate over `--repeats` rounds, so a busy moment of a shared machine hits each alike.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestration import tracking  # noqa: E402


def _history(epochs: int) -> list[dict[str, float]]:
    return [{f"metric_{k}": 1.0 / (e + k + 1) for k in range(30)} for e in range(epochs)]


def _trials(uri: str, exp_id: str, parent: str, who: int, trials: int, epochs: int, out: mp.Queue) -> None:
    c = tracking.client(uri)
    c.get_experiment(exp_id)  # the store opened (and, for SQLite, imported) before the clock starts
    started = time.perf_counter()
    for i in range(trials):
        run = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id="bench", key=f"{who}-{i}",
                                     run_name=f"trial {who}-{i}", params={"loss.alpha": 0.1}, tags={},
                                     search=False, epoch_key="metric_0")
        history = _history(epochs)
        for e in range(1, epochs + 1):
            run.sync(history[:e], raise_errors=True)
        tracking.finish(c, run.run_id, status="completed")
    out.put(1000 * (time.perf_counter() - started) / trials)


def measure(store: str, folder: Path, processes: int, trials: int, epochs: int) -> list[float]:
    """Milliseconds per trial's store calls in each of `processes` processes writing at once."""
    server = None
    if store == "server":
        from cluster_scale import TrackingServer

        server = TrackingServer(folder)
        uri = server.uri
    else:
        path = folder / "mlflow.db"
        uri = f"sqlite:///{path}"
    try:
        c = tracking.open_store(uri)  # a SQLite store is put on the write-ahead log here ...
        if store == "delete":         # ... and taken back to the default journal for this one
            with sqlite3.connect(path) as con:
                con.execute("PRAGMA journal_mode=DELETE")
        exp_id = tracking.experiment_id(c, "store-calls")
        parent, _ = tracking.start_parent(c, exp_id, sweep_id="bench", stage="coarse", mode="axes",
                                          run_name="bench", params={}, tags={})
        out: mp.Queue = mp.Queue()
        workers = [mp.Process(target=_trials, args=(uri, exp_id, parent, w, trials, epochs, out))
                   for w in range(processes)]
        for w in workers:
            w.start()
        per_process = sorted(out.get() for _ in workers)
        for w in workers:
            w.join()
        return per_process
    finally:
        if server is not None:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30, help="trials per process")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stores", default="delete,wal,server")
    args = parser.parse_args()
    for key, value in tracking.HTTP_ENV.items():  # as in a trial worker (no "View run" line per run)
        os.environ.setdefault(key, value)
    stores = args.stores.split(",")
    mp.set_start_method("fork")
    results: dict[str, list[float]] = {s: [] for s in stores}
    for _ in range(args.repeats):
        for store in stores:
            with tempfile.TemporaryDirectory() as tmp:
                results[store] += measure(store, Path(tmp), args.processes, args.trials, args.epochs)
    print(f"{args.processes} processes at once · {args.trials} trials each · {args.epochs} epoch(s) of 30 metrics · "
          f"{args.repeats} rounds")
    for store in stores:
        ms = results[store]
        print(f"{store:>7}: {statistics.median(ms):6.1f} ms per trial (median; {min(ms):.1f}-{max(ms):.1f})")


if __name__ == "__main__":
    main()
