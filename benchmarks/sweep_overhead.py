"""What the orchestration costs per trial, against a bare Ray Tune configured like it, on this machine.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 1296] [--epochs 1] [--cpus-per-trial 1]
        [--store sqlite|server] [--profile-dir DIR]

Both sweeps run in one Ray session, with the same resources, actor reuse, Tune settings and
checkpoints, in this order:
  * bare:  a Ray Tune grid of N function trials, each reporting `epochs` results with a small
           checkpoint every epoch; Tune's automatic CSV/JSON/TensorBoard loggers off and
           its output quiet as in ours (tuner.quiet_tune), the same CheckpointConfig
           (tuner.checkpoint_config) and experiment-state snapshot period (ray.snapshot_period_s);
  * ours:  an N-trial coarse plan through the real path (`run_stage`: Hydra config, plan,
           validation of every trial, dataset check, the MLflow parent and one child run per trial,
           one log_batch per epoch, a checkpoint every epoch, the status, heartbeat and JSON-result
           callbacks, the stage's read-back), the training step replaced by
           `orchestration.simulate:constant_step` (no sleep). Its plan: the four weights of
           eq. (3), N values of alpha in factorial mode.
The store (--store): `sqlite`, a file beside the sweep as on the embedded default, or `server`,
an MLflow tracking server on a new PostgreSQL database (the cluster's store: orchestration/cluster/
mlflow_server.sh, through benchmarks/cluster_scale.TrackingServer; PostgreSQL at 127.0.0.1:5432 or
REV2NET_TEST_POSTGRES), where concurrent writers do not queue on one file lock.
It prints seconds per trial for both with the ratio `(R× bare)`: over the whole stage (setup and
read-back included) and over Tune's `fit` alone, and how many child runs MLflow holds (exactly N).
Target (issue 18): ours ≤ 1.2× bare per trial, at any N and any number of epochs.

With --profile-dir, py-spy (pip install py-spy) samples the driver and every Ray worker during
our sweep and writes one file of collapsed stacks per process there (flamegraph.pl or speedscope read them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
REPO = Path(__file__).resolve().parent.parent


def _overrides(n: int, epochs: int, cpus: float, workdir: str, tracking_uri: str) -> list[str]:
    spaces = Path(workdir) / "spaces"
    spaces.mkdir(parents=True, exist_ok=True)
    for name in (REPO / "search_spaces").glob("*.yaml"):
        (spaces / name.name).write_text(name.read_text())
    alphas = [round(1e-4 * (1e5 ** (i / max(1, n - 1))), 12) for i in range(n)] if n > 1 else [0.1]
    alphas = list(dict.fromkeys(alphas))
    if len(alphas) != n:
        raise SystemExit(f"--trials {n}: the values of alpha collide; use fewer trials")
    (spaces / "coarse.yaml").write_text(yaml.safe_dump({
        "values": {"loss.alpha": alphas, "loss.beta": [0.1], "loss.lambda_flow": [0.1], "loss.lambda_im": [0.1]},
        "base": {"loss.alpha": alphas[0], "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1}}))
    return ["search.mode=factorial", "scheduler=fifo", f"search.spaces_dir={spaces}",
            "trial.runner=orchestration.simulate:constant_step", f"trainer.max_epochs={epochs}",
            f"trial.cpus={cpus}", f"mlflow.tracking_uri={tracking_uri or f'sqlite:///{workdir}/mlflow.db'}",
            f"ray.storage_path={workdir}/ray_results", f"data.root={workdir}/data/synthetic"]


def bare(n: int, epochs: int, cpus: float, storage: str, cfg) -> float:
    """Ray Tune alone, configured like ours: Tune's `fit` wall seconds."""
    from ray import tune

    from orchestration import tuner as ours

    def trial(config):
        for e in range(1, epochs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "state.json").write_text(json.dumps({"epoch": e, "x": config["x"]}))
                tune.report({"val/top1": config["x"] / n, "epoch": e}, checkpoint=tune.Checkpoint.from_directory(tmp))

    ours.quiet_tune()
    started = time.perf_counter()
    ours.use_snapshot_period(cfg)
    grid = tune.Tuner(
        tune.with_resources(trial, {"cpu": cpus}), param_space={"x": tune.grid_search(list(range(n)))},
        tune_config=tune.TuneConfig(reuse_actors=True, trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0,
                                  checkpoint_config=ours.checkpoint_config(cfg))).fit()
    assert grid.num_errors == 0 and len(grid) == n
    return time.perf_counter() - started


class _FitTimer:
    """Times Tune's `fit` inside run_stage (orchestration.tuner.build's Tuner)."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        from orchestration import stage, tuner

        self.original = tuner.build

        def build(*args, **kwargs):
            t = self.original(*args, **kwargs)
            fit = t.fit

            def timed():
                started = time.perf_counter()
                try:
                    return fit()
                finally:
                    self.seconds += time.perf_counter() - started

            t.fit = timed
            return t

        stage.tuner.build = build
        return self

    def __exit__(self, *exc):
        from orchestration import tuner

        tuner.build = self.original


def _profile(folder: str) -> list[subprocess.Popen]:
    """py-spy on this process and on every Ray worker (which reuse themselves across trials)."""
    import psutil

    Path(folder).mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    procs = [subprocess.Popen([str(spy), "record", "-p", str(os.getpid()), "-o", f"{folder}/driver.txt", "--format", "raw",
                               "-r", "50", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]

    def watch():
        seen = set()
        while True:
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "default_worker.py" in cmd and p.info["pid"] not in seen:
                    seen.add(p.info["pid"])
                    procs.append(subprocess.Popen([str(spy), "record", "-p", str(p.info["pid"]), "-o",
                                                   f"{folder}/worker-{p.info['pid']}.txt", "--format", "raw", "-r", "50",
                                                   "--nonblocking"],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)

    import threading

    threading.Thread(target=watch, daemon=True).start()
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1296, help="trials in the plan (any N >= 1)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (reports and checkpoints) per trial")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--store", choices=("sqlite", "server"), default="sqlite",
                        help="MLflow store: a SQLite file, or a tracking server on PostgreSQL")
    parser.add_argument("--profile-dir", default="", help="py-spy flame graphs of our sweep's processes here")
    args = parser.parse_args()
    if args.trials < 1 or args.epochs < 1:
        parser.error("--trials and --epochs must be >= 1")

    import ray

    from orchestration import records, tracking
    from orchestration.config import compose_config, to_objects
    from orchestration.stage import run_stage
    from rev2net.data import ensure_synthetic

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        server = None
        if args.store == "server":
            from cluster_scale import TrackingServer

            server = TrackingServer(Path(tmp))
        cfg = compose_config(_overrides(args.trials, args.epochs, args.cpus_per_trial, tmp,
                                        server.uri if server else ""), stage="coarse")
        ensure_synthetic(to_objects(cfg).data.root, to_objects(cfg).data.synthetic, progress=False)  # not timed
        t_bare = bare(args.trials, args.epochs, args.cpus_per_trial, f"{tmp}/bare", cfg)
        print(f"bare Ray Tune: {t_bare:.1f} s", flush=True)
        spies = _profile(args.profile_dir) if args.profile_dir else []
        with _FitTimer() as fit:
            started = time.perf_counter()
            result = run_stage(cfg, progress=False)
            t_ours = time.perf_counter() - started
        for p in spies:
            p.terminate()
        for p in spies:
            p.wait(timeout=60)
        c = tracking.client(result.tracking_uri)
        n_runs = len(list(records.child_runs(c, c.get_experiment_by_name(result.experiment).experiment_id,
                                              result.parent_run_id)))
        if server is not None:
            server.close()
    ray.shutdown()
    n = args.trials
    print(f"machine: {os.cpu_count()} CPUs · {n} trials × {args.epochs} epoch(s) · {args.cpus_per_trial:g} CPU per "
          f"trial · actor reuse on · snapshot every {cfg.ray.snapshot_period_s:g} s · MLflow store: "
          f"{'a tracking server on PostgreSQL' if args.store == 'server' else 'SQLite'}")
    print(f"bare Ray Tune (fit):        {t_bare:8.1f} s   {t_bare / n:.4f} s/trial")
    print(f"orchestration, Tune fit:    {fit.seconds:8.1f} s   {fit.seconds / n:.4f} s/trial   "
          f"({fit.seconds / t_bare:.2f}× bare)")
    print(f"orchestration, whole stage: {t_ours:8.1f} s   {t_ours / n:.4f} s/trial   ({t_ours / t_bare:.2f}× bare)")
    print(f"MLflow child runs:          {n_runs} (expected {n})")
    print(f"targets: whole stage ≤ 1.2× bare -> {'met' if t_ours <= 1.2 * t_bare else 'MISSED'}; "
          f"exactly {n} runs -> {'met' if n_runs == n else 'MISSED'}")


if __name__ == "__main__":
    main()
