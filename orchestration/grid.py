"""Run one stage of the Rev2Net sweep.

    python orchestration/grid.py --stage coarse|fine|ablation|compare|cross [--then STAGES] [--dry-run [--json]]
                                 [--resume | --fresh] [overrides]

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
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's files
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from orchestration.errors import ConfigError  # noqa: E402
from orchestration.spaces import STAGES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestration/grid.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, help=" | ".join(STAGES))
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
            from orchestration.console import format_plan, plan_json
            from orchestration.plan import prepare
            cfg, plan = prepare(cfg)
            print(plan_json(cfg, plan) if args.json else format_plan(cfg, plan))
            return 0
        from orchestration.console import format_summary
        from orchestration.stage import run_stage
        result = run_stage(cfg, fresh=args.fresh, require_resume=args.resume)
        print(format_summary(result, args.overrides))
        if cfg.mlflow.log_report:
            log_report(result)
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _pipeline(stages: list[str], args: argparse.Namespace) -> int:
    from orchestration.console import format_summary
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
            from orchestration.config import compose_config
            if step.result.parent_run_id and compose_config(stage_overrides(args.overrides, step.stage),
                                                            stage=step.stage).mlflow.log_report:
                log_report(step.result)
            if step.outcome == "unfinished":
                print(f"{step.stage} stage unfinished: run the same command again to continue it", flush=True)

    run_pipeline(stages, args.overrides, fresh=args.fresh, require_resume=args.resume, report=report)
    return 0


def log_report(result, timeout_s: float = 900.0) -> bool:
    """The stage's report (`python -m analysis.report --log-to-parent`: its verdict, tables and
    figures) into its parent run's artifacts, in a subprocess: orchestration never imports
    analysis. A report that fails is a warning, never a failed stage. Returns whether it was logged."""
    with tempfile.TemporaryDirectory(prefix="rev2net-report-") as out:
        command = [sys.executable, "-m", "analysis.report", "--tracking-uri", result.tracking_uri, "--experiment",
                   result.experiment, "--out", out, "--log-to-parent", result.parent_run_id, "--quiet"]
        try:
            proc = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                                  timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"warning: the {result.stage} stage's report was not logged to MLflow: {e}", file=sys.stderr)
            return False
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"warning: the {result.stage} stage's report was not logged to MLflow ({last}); run "
              f"{' '.join(command[:3])} ... by hand", file=sys.stderr)
        return False
    print(f"report: MLflow parent run {result.parent_run_id}, artifacts report/report.md", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
