"""Control-plane scale: the 1296-trial factorial coarse plan on a simulated 4-node, 32-GPU cluster.

    .venv/bin/python benchmarks/cluster_scale.py [--trials 1296] [--epochs 2] [--epoch-s 5]
        [--nodes 4] [--gpus-per-node 8] [--cpus-per-node 8] [--gpus-per-trial 1] [--cpus-per-trial 1]
        [--profile] [--writers 8] [--batches 200]

Everything is real but the GPUs and the training step: a `ray.cluster_utils.Cluster` of `--nodes`
raylets on this machine, each declaring `--gpus-per-node` GPUs; a real MLflow tracking server on a
fresh PostgreSQL database (started by orchestration/cluster/mlflow_server.sh, no auth); and the
sweep's real path (`run_stage`: Ray Tune, a child run per trial with batched epoch logging over
HTTP, a checkpoint every epoch on the shared storage path, the status and heartbeat callbacks),
with `orchestration.simulate:constant_step` sleeping `--epoch-s` per epoch instead of training.

It prints
  * trials/s, and the scheduler's concurrency (most trials running at once, and the mean over the
    sweep) against the cluster's capacity;
  * per-trial overhead: slot-seconds each trial took (wall x capacity / trials) against the
    theoretical minimum (epochs x epoch_s), and the wall time against ceil(trials / capacity) waves
    (target: within 20%); then where it goes: inside a trial, between two trials on a reused
    worker (together: the steady-state overhead), and the workers' cold start;
  * MLflow write throughput against PostgreSQL: during the sweep (metrics and runs per second), and
    flat out (`--writers` threads sending `--batches` log_batch calls of 11 metrics each);
  * with --profile: where the driver's time went (cProfile of the driver process, grouped).
Needs PostgreSQL at 127.0.0.1:5432 with trust auth (REV2NET_BENCH_POSTGRES to point elsewhere).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
PG = os.environ.get("REV2NET_BENCH_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432")
METRICS_PER_EPOCH = 11  # what constant_step reports each epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """`mlflow server` on a new PostgreSQL database, through the deployment script."""

    def __init__(self, folder: Path):
        import psycopg2

        rest = PG.split("://", 1)[1]
        userhost, _, port = rest.rpartition(":")
        user, _, host = userhost.rpartition("@")
        self.admin = psycopg2.connect(host=host, port=int(port), user=user or None, dbname="postgres")
        self.admin.autocommit = True
        self.db = f"rev2net_bench_{uuid.uuid4().hex[:10]}"
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.db}"')
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"{PG}/{self.db}", "MLFLOW_ARTIFACTS_DESTINATION":
               str(folder / "artifacts"), "MLFLOW_PORT": str(self.port), "MLFLOW_WORKERS": "2", "MLFLOW_AUTH": "0",
               "MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow")}
        self.process = subprocess.Popen(["bash", str(REPO / "orchestration/cluster/mlflow_server.sh")], env=env,
                                        stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError((folder / "server.log").read_text()[-2000:])
                time.sleep(0.25)

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        with self.admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        self.admin.close()


def concurrency(records: list[dict], wall: tuple[float, float]) -> tuple[int, float]:
    """Most attempts running at once, and the mean number running over `wall`."""
    events = sorted([(r["start"], 1) for r in records] + [(r.get("end", wall[1]), -1) for r in records])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    busy = sum(r.get("end", wall[1]) - r["start"] for r in records)
    return most, busy / (wall[1] - wall[0])


def overhead_parts(records: list[dict], epochs: int, epoch_s: float) -> tuple[float, float, float]:
    """Where a trial's slot-seconds beyond `epochs x epoch_s` go, from the attempts' records (mean s):
    inside the trial (per-epoch MLflow logging, checkpoint, report), between two trials on the same
    reused worker (Tune's bookkeeping, placement group, the next trial's MLflow run), and each
    worker's cold start (process start and imports, before its first trial)."""
    inside = [r["end"] - r["start"] - epochs * epoch_s for r in records if "end" in r]
    by_worker: dict[int, list[dict]] = {}
    for r in records:
        by_worker.setdefault(r["pid"], []).append(r)
    gaps = []
    for attempts in by_worker.values():
        attempts.sort(key=lambda r: r["start"])
        gaps += [b["start"] - a["end"] for a, b in zip(attempts, attempts[1:]) if "end" in a]
    first = min(r["start"] for r in records)
    cold = [min(r["start"] for r in attempts) - first for attempts in by_worker.values()]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return mean(inside), mean(gaps), mean(cold)


def write_throughput(uri: str, writers: int, batches: int) -> tuple[float, float]:
    """log_batch calls/s and metrics/s with `writers` threads, each on its own run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(f"write-throughput-{uuid.uuid4().hex[:6]}")
    runs = [c.create_run(exp).info.run_id for _ in range(writers)]

    def write(run_id: str) -> None:
        for step in range(batches):
            now = int(time.time() * 1000)
            c.log_batch(run_id, metrics=[Metric(f"m{i}", float(i), now, step) for i in range(METRICS_PER_EPOCH)],
                        synchronous=True)

    threads = [threading.Thread(target=write, args=(r,)) for r in runs]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    calls = writers * batches
    return calls / seconds, calls * METRICS_PER_EPOCH / seconds


GROUPS = {  # where the driver's time goes, by the file a function lives in
    "Tune event loop (controller, scheduler, trial bookkeeping)": ("ray/tune/execution", "ray/tune/experiment",
                                                                  "ray/tune/schedulers", "ray/air/execution",
                                                                  "ray/tune/search"),
    "experiment state snapshots and checkpoint bookkeeping": ("ray/train/_internal/storage", "ray/tune/utils/serialization",
                                                              "ray/train/_checkpoint", "pyarrow/fs", "ray/tune/impl/tuner_internal"),
    "MLflow HTTP calls from the driver (callbacks, setup, summary)": ("mlflow/", "requests/", "urllib3/"),
    "our callbacks (status, heartbeat, progress)": ("orchestration/callbacks",),
    "waiting on Ray (ray.get / wait, idle)": ("ray/_private/worker", "ray/_raylet"),
}


def profile_groups(profile: cProfile.Profile) -> list[tuple[str, float]]:
    stats = pstats.Stats(profile)
    totals = {g: 0.0 for g in GROUPS}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():
        for group, parts in GROUPS.items():
            if any(p in filename for p in parts):
                totals[group] += tottime
                break
    return sorted(totals.items(), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1296, help="1296: the factorial coarse plan; 21: axes")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--epoch-s", type=float, default=5.0, help="the constant-time step's epoch")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-node", type=int, default=8)
    parser.add_argument("--gpus-per-trial", type=float, default=1.0)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="cProfile the driver (adds its own overhead)")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    if args.trials not in (1296, 21):
        parser.error("--trials is 1296 (factorial coarse plan) or 21 (axes)")

    import ray
    from ray.cluster_utils import Cluster

    from orchestration.config import compose_config
    from orchestration.stage import run_stage
    from rev2net.data.synthetic import ensure_synthetic
    from orchestration.config import to_objects

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    capacity = int(min(args.nodes * args.gpus_per_node / args.gpus_per_trial,
                       args.nodes * (args.cpus_per_node // args.cpus_per_trial)))
    tmp = Path(tempfile.mkdtemp(prefix="cluster-scale-"))
    server = TrackingServer(tmp)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    try:
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=args.cpus_per_node, num_gpus=args.gpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        cfg = compose_config([
            f"search.mode={'factorial' if args.trials == 1296 else 'axes'}", "scheduler=fifo",
            "trial.runner=orchestration.simulate:constant_step", f"trainer.max_epochs={args.epochs}",
            f"+trial.runner_args.epoch_s={args.epoch_s}", f"+trial.runner_args.placement_dir={tmp / 'placement'}",
            f"trial.gpus={args.gpus_per_trial:g}", f"trial.cpus={args.cpus_per_trial:g}",
            f"ray.address={cluster.address}", f"ray.storage_path={tmp / 'ray_results'}",
            f"mlflow.tracking_uri={server.uri}", f"data.root={tmp / 'data'}",
        ], stage="coarse")
        data = to_objects(cfg).data
        ensure_synthetic(data.root, data.synthetic, progress=False)  # not timed
        profile = cProfile.Profile() if args.profile else None
        started = time.time()
        if profile:
            profile.enable()
        result = run_stage(cfg, progress=False)
        if profile:
            profile.disable()
        ended = time.time()
        wall = ended - started
        records = [json.loads(p.read_text()) for p in (tmp / "placement").glob("*.json")]
        first = min(r["start"] for r in records)
        most, mean = concurrency(records, (first, ended))
        runs = len([t for t in result.trials if t["mlflow_run_id"]])
        minimum_per_trial = args.epochs * args.epoch_s
        per_trial = wall * capacity / args.trials
        waves = math.ceil(args.trials / capacity) * minimum_per_trial
        print(f"cluster: {args.nodes} nodes x ({args.gpus_per_node} GPUs, {args.cpus_per_node} CPUs) simulated on "
              f"{os.cpu_count()} cores · trial: {args.gpus_per_trial:g} GPU, {args.cpus_per_trial:g} CPU · "
              f"capacity {capacity} trials at once")
        print(f"sweep: {args.trials} trials x {args.epochs} epochs x {args.epoch_s:g} s in {wall:.1f} s "
              f"({args.trials / wall:.2f} trials/s); {runs} MLflow child runs; complete={result.complete}")
        print(f"scheduler concurrency: most {most} at once, mean {mean:.1f} over the sweep (capacity {capacity}); "
              f"first trial started {first - started:.1f} s after the command")
        print(f"per-trial overhead: {per_trial:.2f} slot-s per trial vs {minimum_per_trial:.2f} minimum "
              f"(+{100 * (per_trial / minimum_per_trial - 1):.0f}%); wall {wall:.0f} s vs {waves:.0f} s for "
              f"{math.ceil(args.trials / capacity)} full waves (+{100 * (wall / waves - 1):.0f}%; target <= +20%)")
        inside, between, cold = overhead_parts(records, args.epochs, args.epoch_s)
        workers = len({r["pid"] for r in records})
        print(f"per-trial overhead, where it goes: {inside:.2f} s inside the trial (epoch logging, checkpoints), "
              f"{between:.2f} s between two trials on a reused worker; {workers} workers, each started "
              f"{cold:.0f} s after the first trial on average (cold start: process, imports)")
        steady = inside + between
        print(f"steady state (every worker warm): {steady:.2f} s per trial over the {minimum_per_trial:.2f} s minimum "
              f"(+{100 * steady / minimum_per_trial:.0f}%; target <= +20%); the rest of the wall time is the cold "
              f"start of {workers} workers on {os.cpu_count()} cores, which a real cluster does on each node's own CPUs")
        logged = args.trials * args.epochs * METRICS_PER_EPOCH
        print(f"MLflow during the sweep: {logged} metrics in {args.trials * args.epochs} log_batch calls, "
              f"{logged / wall:.0f} metrics/s, {args.trials / wall:.2f} runs created/s")
        calls, metrics = write_throughput(server.uri, args.writers, args.batches)
        print(f"MLflow flat out ({args.writers} writers, PostgreSQL): {calls:.0f} log_batch/s, {metrics:.0f} metrics/s")
        if profile:
            total = pstats.Stats(profile).total_tt
            print(f"driver profile ({total:.0f} s of driver CPU+wait in profiled functions):")
            for group, seconds in profile_groups(profile):
                print(f"  {group:62s} {seconds:7.1f} s ({100 * seconds / total:4.1f}%)")
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
            print("\n".join(out.getvalue().splitlines()[6:22]))
    finally:
        ray.shutdown()
        cluster.shutdown()
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
