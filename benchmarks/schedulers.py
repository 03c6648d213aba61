"""What the schedulers save, measured: FIFO, ASHA and Optuna's TPE on the same coarse plan and seed.

    .venv/bin/python benchmarks/schedulers.py [--epochs 7] [--tpe-samples 10] [--sim] [extra overrides...]

Each scheduler runs the embedded default's coarse stage (the real path, `run_stage`, real training
unless --sim, which swaps in orchestration.simulate:constant_step) in a store of its own, with the
same seed. For each it prints:
  * trial-epochs measured (Σ over the child runs of the epochs they logged) beside the dry run's
    promise (orchestration.plan.trial_epochs: for ASHA the synchronous successive-halving count,
    which Ray's asynchronous ASHA can exceed or undercut);
  * wall time, and device-seconds (the parent run's cost/device_s: CPU- or GPU-seconds, every
    trial's training and evaluation);
  * whether it found FIFO's best configuration, or one that cannot be told apart from it
    (records.best_config's `tied_with`: the same value).
TPE samples `--tpe-samples` points of the coarse values (search=optuna, same seed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCHEDULERS = {"fifo": ["scheduler=fifo"], "asha": ["scheduler=asha"], "tpe": ["search=optuna", "scheduler=fifo"]}


def run(name: str, overrides: list[str], workdir: str) -> dict:
    from mlflow import MlflowClient

    from orchestration import plan as planning
    from orchestration import records
    from orchestration.config import compose_config
    from orchestration.stage import run_stage

    cfg = compose_config([*SCHEDULERS[name], *overrides, f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
                          f"ray.storage_path={workdir}/ray_results"], stage="coarse")
    started = time.perf_counter()
    result = run_stage(cfg, progress=False)
    wall = time.perf_counter() - started
    promised, how = planning.trial_epochs(cfg, result.plan.num_trials, result.plan.mode)
    runs = records.load_runs(result.tracking_uri, result.experiment, parent_run_id=result.parent_run_id)
    parent = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.parent_run_id).data.metrics
    return {"name": name, "trials": len(runs), "trial_epochs": int(runs["epochs"].sum()), "promised": promised,
            "how": how, "wall_s": wall, "device_s": parent.get(records.COST_DEVICE_S, float("nan")),
            "best": result.best, "metric": result.metric}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=0, help="trainer.max_epochs (0: the embedded default's)")
    parser.add_argument("--tpe-samples", type=int, default=10)
    parser.add_argument("--sim", action="store_true", help="constant-time stand-in instead of training")
    parser.add_argument("--only", default="fifo,asha,tpe", help="schedulers to run (fifo always runs first)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (key=value)")
    args = parser.parse_args()

    import ray

    overrides = [*args.overrides, f"search.num_samples={args.tpe_samples}"]
    if args.epochs:
        overrides.append(f"trainer.max_epochs={args.epochs}")
    if args.sim:
        overrides.append("trial.runner=orchestration.simulate:constant_step")
    names = ["fifo"] + [n for n in args.only.split(",") if n in SCHEDULERS and n != "fifo"]
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    out = []
    with tempfile.TemporaryDirectory(prefix="schedulers-") as tmp:
        data = f"data.root={tmp}/data/synthetic"
        for name in names:
            out.append(run(name, [*overrides, data], f"{tmp}/{name}"))
            r = out[-1]
            print(f"{name}: {r['trial_epochs']} trial-epochs (promised {r['promised']}), {r['wall_s']:.0f} s",
                  flush=True)
    ray.shutdown()
    fifo = out[0]["best"] or {}
    print(f"\n{'scheduler':<10} {'trials':>6} {'trial-epochs':>12} {'promised':>9} {'wall s':>7} {'device s':>9}  "
          f"finds FIFO's best")
    for r in out:
        best = r["best"] or {}
        same = best.get("params") == fifo.get("params")
        tied = not same and best.get("value") == fifo.get("value")
        verdict = "same" if same else "tied (same value)" if tied else \
            f"no: {best.get('params')} {r['metric']} {best.get('value')} vs {fifo.get('value')}"
        print(f"{r['name']:<10} {r['trials']:>6} {r['trial_epochs']:>12} {r['promised']:>9} {r['wall_s']:>7.0f} "
              f"{r['device_s']:>9.0f}  {verdict}")
    print(f"\nFIFO's best: {fifo.get('params')} ({out[0]['metric']} {fifo.get('value')})")
    for r in out:
        print(f"{r['name']} promise: {r['how']}")


if __name__ == "__main__":
    main()
