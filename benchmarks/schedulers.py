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

The factorial plan (1296 trials), on a learning-curve model of real trials:

    .venv/bin/python benchmarks/schedulers.py --factorial --curves sqlite:///PATH/mlflow.db
        [--epoch-s 0.01] [--points 1296] [--fifo] [--save-curves PATH] [--chance P] [extra overrides...]

`--curves` is a store holding a real coarse stage (its newest, experiment `--experiment`) or a model
already fitted (a .json, e.g. benchmarks/data/coarse_curves.json). orchestration/curves.py fits
each factorial point's curve from it (main effects of the four weights on the final value, the
trials' shared shape, their noise; an axes store cannot say anything about interactions), and the
plan (search.mode=factorial, `--points N`: a sub-grid of k values per weight, k^4 <= N) runs under
ASHA through `run_stage` on a local Ray (every trial is orchestration.simulate:curve_step sleeping
`--epoch-s` per epoch and logging its modelled val/top1; the simulated multi-node cluster of
benchmarks/cluster_scale.py needs PostgreSQL and one raylet per node, too heavy beside 2 cores).
It prints ASHA's measured trial-epochs against the FIFO grid's (trials x E: every trial trains E
epochs, by construction) and the 1/5 target, and whether ASHA's best is FIFO's winner or within its
interval. FIFO's winner is not run but computed: the curve model's values depend only on (point,
seed, epoch), so the grid's final values are the model's values at epoch E for every point, ranked
by records.best_config as a FIFO stage's would be. Its interval: the points whose simulated final
value is within 1.96·√2·σ_E of the winner's (σ_E: the model's noise at the last epoch; two single-seed values
closer than that cannot be told apart at 95%). `--fifo` runs FIFO through run_stage as well (as a
check of that computation; 1296 x E trial-epochs take long on 2 cores).
"""

from __future__ import annotations

import argparse
import math
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
            "best": result.best, "metric": result.metric,
            "reached": runs["epochs"].value_counts().sort_index().to_dict(),
            "grace": int(cfg.scheduler.grace_period) if name == "asha" else None,
            "eta": int(cfg.scheduler.reduction_factor) if name == "asha" else None}


TINY_DATA = ["data.synthetic.classes=3", "data.synthetic.videos_per_class=3", "data.synthetic.val_videos_per_class=1",
             "data.synthetic.test_videos_per_class=1", "data.synthetic.frames=12", "data.synthetic.size=64"]


def curve_model(source: str, experiment: str, chance: float | None):
    """The curve model: loaded from a .json, or fitted from the newest coarse stage of a store."""
    from orchestration import curves
    from orchestration.config import compose_config

    if source.endswith(".json"):
        return curves.load(source)
    if chance is None:
        classes = compose_config([], stage="coarse").data.synthetic.classes
        chance = 1.0 / classes
        print(f"chance level 1/{classes} (the embedded default's classes; --chance for a store of another data set)")
    return curves.fit_store(source, experiment, chance=chance)


def sub_grid(points: int, workdir: Path) -> tuple[str | None, int]:
    """search_spaces/ with the coarse values thinned to k per weight, k^4 <= points (None: all 6^4)."""
    import shutil

    import yaml

    from orchestration.spaces import SPACES_DIR

    space = yaml.safe_load((SPACES_DIR / "coarse.yaml").read_text())
    full = math.prod(len(v) for v in space["values"].values())
    if points >= full:
        return None, full
    k = max(1, int(math.floor(points ** 0.25 + 1e-9)))
    spaces = workdir / "spaces"
    shutil.copytree(SPACES_DIR, spaces)
    for key, values in space["values"].items():
        keep = sorted({round(i * (len(values) - 1) / max(1, k - 1)) for i in range(k)})
        space["values"][key] = [values[i] for i in keep]
    (spaces / "coarse.yaml").write_text(yaml.safe_dump(space))
    return str(spaces), k ** len(space["values"])


def factorial(args: argparse.Namespace) -> None:
    """The factorial plan under ASHA (and with --fifo, FIFO) on the curve model; see the docstring."""
    import ray

    from orchestration import curves, records
    from orchestration.config import compose_config

    model = curve_model(args.curves, args.experiment, args.chance)
    if args.save_curves:
        import subprocess

        head = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        model.source["fitted_with"] = f"benchmarks/schedulers.py --factorial --curves {args.curves} at commit {head}"
        model.save(args.save_curves)
        print(f"curve model written to {args.save_curves}")
    workdir = Path(tempfile.mkdtemp(prefix="schedulers-factorial-"))
    model_path = model.save(workdir / "curves.json")
    spaces, n_points = sub_grid(args.points, workdir)
    print(f"curve model from {model.source.get('tracking_uri', args.curves)} ({model.source.get('mode')} stage "
          f"{model.source.get('parent_run_id')}, commit {str(model.source.get('git_commit'))[:10]}): "
          f"{model.source.get('completed')} completed trials x {model.epochs} epochs; shape "
          f"{', '.join(f'{x:.2f}' for x in model.shape)}; noise sd by epoch "
          f"{', '.join(f'{model.sd(e):.4f}' for e in range(1, model.epochs + 1))}; values in steps of "
          f"1/{model.resolution or 'inf'}")
    common = [*args.overrides, "search.mode=factorial", "trial.runner=orchestration.simulate:curve_step",
              f"+trial.runner_args.curves={model_path}", f"+trial.runner_args.epoch_s={args.epoch_s}",
              f"trainer.max_epochs={model.epochs}", f"data.root={workdir}/data/synthetic", *TINY_DATA,
              *([f"search.spaces_dir={spaces}"] if spaces else [])]
    ray.init(address="local", num_cpus=args.cpus or os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        out = [run("asha", common, str(workdir / "asha"))]
        if args.fifo:
            out.append(run("fifo", common, str(workdir / "fifo")))
    finally:
        ray.shutdown()
    cfg = compose_config(common, stage="coarse")
    seed = int(cfg.trainer.seed)
    from orchestration import plan as planning

    points = planning.prepare(cfg)[1].points
    grid = model.grid(points, seed=seed)
    winner = records.best_config(grid, metric=model.metric, keys=model.keys)
    half = 1.96 * math.sqrt(2.0) * model.sd(model.epochs)
    band = winner.value - half
    within = grid[grid[model.metric] >= band]
    grid["rank"] = grid[model.metric].rank(ascending=False, method="min")
    grid["modelled_rank"] = grid["modelled"].rank(ascending=False, method="min")
    fifo_epochs = len(points) * model.epochs

    def locate(params: dict) -> dict:
        row = grid
        for k in model.keys:
            row = row[[math.isclose(v, params[k], rel_tol=1e-9, abs_tol=1e-12) for v in row[k]]]
        return row.iloc[0].to_dict()

    print(f"\nfactorial plan: {len(points)} points{' (sub-grid of the 1296)' if spaces else ''} x {model.epochs} epochs; "
          f"trial.runner=curve_step, epoch_s={args.epoch_s:g}, Ray logical CPUs {args.cpus or os.cpu_count()} "
          f"on {os.cpu_count()} cores")
    print(f"FIFO grid (computed from the model, not run): {fifo_epochs} trial-epochs; winner "
          f"{records.run_name(winner.params)} val/top1 {winner.value:.4f} (modelled {locate(winner.params)['modelled']:.4f}); "
          f"{len(within)} point(s) within 1.96·√2·σ = {half:.4f} of it")
    for r in out:
        best = r["best"] or {}
        params = best.get("params") or {}
        row = locate(params) if params else {}
        ratio = r["trial_epochs"] / fifo_epochs
        same = bool(params) and all(math.isclose(params[k], winner.params[k], rel_tol=1e-9) for k in model.keys)
        verdict = "the FIFO winner" if same else (
            f"within the winner's interval (grid rank {int(row['rank'])}, modelled rank {int(row['modelled_rank'])})"
            if row and row[model.metric] >= band else
            f"NOT within the winner's interval (grid rank {int(row['rank'])} of {len(points)})" if row else "no best")
        floor = (f"; grace_period={r['grace']}, reduction_factor={r['eta']}: every trial trains {r['grace']} "
                 f"epoch(s), ASHA's floor is {r['grace'] / model.epochs:.3f}") if r["grace"] else ""
        print(f"{r['name']}: trials by last epoch {', '.join(f'{n} at {e}' for e, n in r['reached'].items())}{floor}")
        print(f"{r['name']}: {r['trials']} trials, {r['trial_epochs']} trial-epochs measured (dry-run promise "
              f"{r['promised']}) = {ratio:.3f} of the grid's {fifo_epochs} ({'meets' if ratio <= 0.2 else 'misses'} the "
              f"1/5 target); wall {r['wall_s']:.0f} s; best {records.run_name(params) if params else '-'} "
              f"val/top1 {best.get('value', float('nan')):.4f}: {verdict}")
    print(f"\ntop 5 of the grid under the model: " + "; ".join(
        f"{records.run_name({k: row[k] for k in model.keys})} {row[model.metric]:.4f}"
        for row in grid.sort_values(model.metric, ascending=False).head(5).to_dict("records")))
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=0, help="trainer.max_epochs (0: the embedded default's)")
    parser.add_argument("--tpe-samples", type=int, default=10)
    parser.add_argument("--sim", action="store_true", help="constant-time stand-in instead of training")
    parser.add_argument("--only", default="fifo,asha,tpe", help="schedulers to run (fifo always runs first)")
    parser.add_argument("--factorial", action="store_true", help="the 1296-point factorial plan on a curve model")
    parser.add_argument("--curves", default="", help="--factorial: sqlite:///.../mlflow.db of a real coarse stage, "
                        "or a curve model .json")
    parser.add_argument("--experiment", default="rev2net-synthetic", help="--factorial: the store's experiment")
    parser.add_argument("--chance", type=float, default=None, help="--factorial: chance level (default 1/classes "
                        "of the embedded default)")
    parser.add_argument("--epoch-s", type=float, default=0.0, help="--factorial: seconds each simulated epoch sleeps")
    parser.add_argument("--points", type=int, default=1296, help="--factorial: a sub-grid of at most this many points")
    parser.add_argument("--fifo", action="store_true", help="--factorial: run FIFO through run_stage too")
    parser.add_argument("--cpus", type=int, default=0, help="--factorial: Ray's logical CPUs (0: this machine's cores)")
    parser.add_argument("--save-curves", default="", help="--factorial: write the fitted curve model to this .json")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (key=value)")
    args = parser.parse_args()
    if args.factorial:
        if not args.curves:
            parser.error("--factorial needs --curves sqlite:///PATH/mlflow.db (a real coarse stage) or a model .json")
        factorial(args)
        return

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
