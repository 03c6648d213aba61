"""Run one stage of the Rev2Net sweep.

    python orchestration/grid.py --stage coarse|fine|ablation [--then STAGES] [--dry-run [--json]] [--resume | --fresh] [overrides]

Overrides are Hydra's: `key=value` or `group=option`, e.g.
    data=ucf101 data.root=/data/UCF101 search.mode=factorial scheduler=asha trial.gpus=0.5 ray.address=auto

Running the same command again continues an interrupted stage (automatically; --resume insists
on it, --fresh starts it over). Every mistake found before the first trial is one line on stderr
and exit status 2.

`--then fine,ablation` runs those stages after this one, each skipped if it has finished already,
so the same command on a schedule always continues the pipeline (orchestration/pipeline.py).
Overrides written `<stage>:key=value` apply to that stage only, e.g. `coarse:trial.gpus=0.25`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's files
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from orchestration.errors import ConfigError  # noqa: E402
from orchestration.spaces import STAGES  # noqa: E402


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_plan(cfg, plan) -> str:
    """The dry run: trials, the exact values, resources, concurrency and trial-epochs."""
    from orchestration.config import experiment_name, to_objects
    from orchestration.stage import (experiment_dir, local_resources, max_concurrency, sweep_id, trial_epochs,
                                     trial_resources)

    local = cfg.ray.address is None
    cluster = local_resources(cfg) if local else None
    resources = trial_resources(cfg, cluster[1] if cluster else 1.0 if cfg.trial.gpus is None else cfg.trial.gpus)
    lines = [f"stage {cfg.stage} · mode {plan.mode} · {plan.algorithm} search · {plan.num_trials} trials"]
    width = max(len(k) for k in plan.values)
    for key, values in plan.values.items():
        lines.append(f"  {key:<{width}}  {', '.join(_fmt(v) for v in values)}")
    if plan.mode == "axes":
        lines.append("  base point: " + ", ".join(f"{k}={_fmt(v)}" for k, v in plan.base.items()))
    for note in plan.notes:
        lines.append(f"  {note}")
    if plan.shuffle_protocols:
        lines.append(f"  evaluated at the end under frame shuffles: {', '.join(plan.shuffle_protocols)}")
    res = f"{_fmt(resources['cpu'])} CPU, {_fmt(resources['gpu'])} GPU per trial"
    if cfg.trial.processes or (resources["gpu"] >= 2):
        res += f" (data-parallel on {to_objects(cfg).trial.world_size()} processes)"
    if cluster:
        conc = max_concurrency(cfg, resources, cluster)
        lines.append(f"resources: {res} · up to {conc} trials at once on this machine "
                     f"({_fmt(cluster[0])} CPUs, {_fmt(cluster[1])} GPUs)")
    else:
        limit = f"at most {cfg.search.max_concurrent}" if cfg.search.max_concurrent else "as many as the cluster fits"
        lines.append(f"resources: {res} · {limit} at once on the cluster at {cfg.ray.address}")
    total, how = trial_epochs(cfg, plan.num_trials)
    lines.append(f"trial-epochs: {total} ({how})")
    lines.append(f"sweep id {sweep_id(cfg, plan)} · Tune state under {experiment_dir(cfg)} · "
                 f"MLflow {cfg.mlflow.tracking_uri}, experiment {experiment_name(cfg)}")
    return "\n".join(lines)


def plan_json(cfg, plan) -> str:
    """`--dry-run --json`: every trial's configuration, as a JSON list."""
    from omegaconf import OmegaConf

    from orchestration.trainable import META_KEYS, run_name

    points = plan.points
    if plan.algorithm == "optuna":
        points = []
    out = []
    for i, point in enumerate(points):
        trial_cfg = cfg.copy()
        for key, value in point.items():
            if key not in META_KEYS:
                OmegaConf.update(trial_cfg, key, value, merge=False)
        out.append({"trial": i, "name": run_name(point), "params": point,
                    "config": OmegaConf.to_container(trial_cfg, resolve=True)})
    if plan.algorithm == "optuna":
        out = [{"trial": None, "name": "optuna", "values": plan.values, "num_samples": plan.num_samples,
                "config": OmegaConf.to_container(cfg, resolve=True)}]
    return json.dumps(out, indent=1, default=str)


def _short(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _tool(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return _short(candidate) if candidate.exists() else name


def format_summary(result, overrides: list[str], top: int = 5) -> str:
    from analysis.runs import WEIGHTS, load_runs

    runs = load_runs(result.tracking_uri, result.experiment, parent_run_id=result.parent_run_id)
    counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
    lines = [f"{result.stage} stage {'resumed and ' if result.resumed else ''}finished in {result.wall_s / 60:.1f} min: "
             f"{len(runs)} trials (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"]
    metric = result.metric
    if not runs.empty and metric in runs:
        keys = [k for k in ("variant", *WEIGHTS) if k in runs]
        shown = runs[runs["status"].isin(["completed", "stopped_early"])].sort_values(metric, ascending=False).head(top)
        header = ["rank", *[{"loss.alpha": "α", "loss.beta": "β", "loss.lambda_flow": "λ_flow",
                             "loss.lambda_im": "λ_im"}.get(k, k) for k in keys], metric, "epochs", "status"]
        rows = [[str(i + 1), *[_fmt(r[k]) for k in keys], f"{r[metric]:.4f}", str(r["epochs"]), r["status"]]
                for i, (_, r) in enumerate(shown.iterrows())]
        widths = [max(len(x) for x in col) for col in zip(header, *rows)]
        lines.append(f"top {len(rows)} trials by {metric}:")
        for row in [header, *rows]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
        failed = runs[runs["status"] == "failed"]
        for _, r in failed.head(5).iterrows():
            lines.append(f"  failed: {r['run_name']}: {r['failure_reason']}")
    unlogged = [t for t in result.trials if t["error"] and not t["mlflow_run_id"]]
    if unlogged:
        lines.append(f"{len(unlogged)} trial(s) failed before their first epoch, e.g.:")
        lines.extend(f"  {t['name']}: {t['error']}" for t in unlogged[:3])
    if result.best:
        lines.append("best: " + " ".join(f"{k}={_fmt(v)}" for k, v in result.best["params"].items())
                     + f"  ({metric} {result.best['value']:.4f}, MLflow run {result.best['run_id']})")
    uri = result.tracking_uri
    lines.append(f"MLflow UI:  {_tool('mlflow')} ui --backend-store-uri {shlex.quote(uri)}   (then open http://127.0.0.1:5000)"
                 if not uri.startswith("http") else f"MLflow UI:  {uri}")
    nxt = {"coarse": "fine", "fine": "ablation"}.get(result.stage)
    if nxt:
        lines.append(f"next stage: {_tool('python')} {_short(Path(__file__).resolve())} --stage {nxt} "
                     + " ".join(shlex.quote(o) for o in overrides))
    else:
        lines.append(f"tables:     {_tool('python')} -m analysis.report --tracking-uri {shlex.quote(uri)} "
                     f"--experiment {shlex.quote(result.experiment)} --out reports")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestration/grid.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, help="coarse | fine | ablation")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the trial configurations as a JSON list")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted stage; fail if there is none")
    again.add_argument("--fresh", action="store_true", help="start the stage over, even if it could be continued")
    parser.add_argument("--then", default="", metavar="STAGES",
                        help="comma-separated stages to run after this one (each skipped if finished), e.g. fine,ablation")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: key=value or group=option "
                                                     "(<stage>:key=value for one stage only)")
    args = parser.parse_args(argv)
    try:
        if args.stage not in STAGES:
            raise ConfigError(f"stage {args.stage!r} is not one of {', '.join(STAGES)} (see search_spaces/)")
        if args.json and not args.dry_run:
            raise ConfigError("--json goes with --dry-run")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its INFO lines would bury ours
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        from orchestration.config import compose_config
        from orchestration.pipeline import stage_overrides
        then = [s for s in args.then.split(",") if s]
        if then and not args.dry_run:
            return _pipeline([args.stage, *then], args)
        cfg = compose_config(stage_overrides(args.overrides, args.stage), stage=args.stage)
        if args.dry_run:
            from orchestration.stage import prepare
            cfg, plan = prepare(cfg)
            print(plan_json(cfg, plan) if args.json else format_plan(cfg, plan))
            return 0
        from orchestration.stage import run_stage
        result = run_stage(cfg, fresh=args.fresh, require_resume=args.resume)
        print(format_summary(result, args.overrides))
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _pipeline(stages: list[str], args: argparse.Namespace) -> int:
    from orchestration.pipeline import run_pipeline, stage_overrides

    def report(step) -> None:
        if step.outcome == "busy":
            print(f"{step.stage} stage is being run by another driver (sweep {step.sweep_id}, MLflow parent run "
                  f"{step.parent_run_id}): nothing to do now", flush=True)
        elif step.result is None:
            print(f"{step.stage} stage already finished (sweep {step.sweep_id}, MLflow parent run "
                  f"{step.parent_run_id}): nothing to do", flush=True)
        else:
            print(format_summary(step.result, stage_overrides(args.overrides, step.stage)), flush=True)
            if step.outcome == "unfinished":
                print(f"{step.stage} stage unfinished: run the same command again to continue it", flush=True)

    run_pipeline(stages, args.overrides, fresh=args.fresh, require_resume=args.resume, report=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
