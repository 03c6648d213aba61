"""What the orchestration costs per trial, against bare Ray Tune, on this machine.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 1296] [--epochs 1] [--cpus-per-trial 1]

Both sweeps run in one Ray session with the same resources and actor reuse:
  * bare:  a Ray Tune grid of N no-op function trials, each reporting `epochs` results;
  * ours:  the 1296-point factorial coarse plan through the real path (`run_stage`: Hydra config,
           plan, validation, dataset check, MLflow parent + one child run per trial with batched
           epoch logging, a checkpoint every epoch, the status callback), with the training step
           replaced by `orchestration.simulate:constant_step` (no sleep).
It prints seconds per trial for both, the ratio, and the number of child runs MLflow holds.
Targets (issue 4): ours <= 3x bare and <= 0.15 s per trial, with exactly N child runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def bare(n: int, epochs: int, cpus: float, storage: str) -> float:
    from ray import tune

    def noop(config):
        for e in range(1, epochs + 1):
            tune.report({"val/top1": config["x"] / n, "epoch": e})

    started = time.perf_counter()
    tuner = tune.Tuner(tune.with_resources(noop, {"cpu": cpus}), param_space={"x": tune.grid_search(list(range(n)))},
                       tune_config=tune.TuneConfig(reuse_actors=True),
                       run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0))
    grid = tuner.fit()
    assert grid.num_errors == 0 and len(grid) == n
    return time.perf_counter() - started


def ours(n: int, epochs: int, cpus: float, workdir: str) -> tuple[float, int, object]:
    from orchestration.config import compose_config
    from orchestration.stage import run_stage
    from orchestration import tracking

    mode = "factorial" if n == 1296 else "axes"
    cfg = compose_config([
        f"search.mode={mode}", "trial.runner=orchestration.simulate:constant_step", f"trainer.max_epochs={epochs}",
        f"trial.cpus={cpus}", f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
        f"ray.storage_path={workdir}/ray_results", f"data.root={workdir}/data/synthetic",
    ], stage="coarse")
    from rev2net.data import ensure_synthetic
    from orchestration.config import to_objects
    ensure_synthetic(to_objects(cfg).data.root, to_objects(cfg).data.synthetic, progress=False)  # not timed
    started = time.perf_counter()
    result = run_stage(cfg, progress=False)
    wall = time.perf_counter() - started
    c = tracking.client(result.tracking_uri)
    children = list(tracking.child_runs(c, c.get_experiment_by_name(result.experiment).experiment_id,
                                        result.parent_run_id))
    return wall, len(children), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1296, help="1296 = the factorial coarse plan; 21 = axes")
    parser.add_argument("--epochs", type=int, default=1, help="reports (and checkpoints) per trial")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    args = parser.parse_args()
    if args.trials not in (1296, 21):
        parser.error("--trials is 1296 (factorial coarse plan) or 21 (axes)")

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        t_bare = bare(args.trials, args.epochs, args.cpus_per_trial, f"{tmp}/bare")
        t_ours, n_runs, result = ours(args.trials, args.epochs, args.cpus_per_trial, tmp)
    ray.shutdown()
    per_bare, per_ours = t_bare / args.trials, t_ours / args.trials
    print(f"machine: {os.cpu_count()} CPUs · {args.trials} trials × {args.epochs} epoch(s) · "
          f"{args.cpus_per_trial:g} CPU per trial · actor reuse on")
    print(f"bare Ray Tune:       {t_bare:8.1f} s   {per_bare:.4f} s/trial")
    print(f"orchestration path:  {t_ours:8.1f} s   {per_ours:.4f} s/trial   ({per_ours / per_bare:.2f}× bare)")
    print(f"MLflow child runs:   {n_runs} (expected {args.trials})")
    print(f"targets: ≤ 3× bare -> {'met' if per_ours <= 3 * per_bare else 'MISSED'}; "
          f"≤ 0.15 s/trial -> {'met' if per_ours <= 0.15 else 'MISSED'}; "
          f"exactly {args.trials} runs -> {'met' if n_runs == args.trials else 'MISSED'}")


if __name__ == "__main__":
    main()
