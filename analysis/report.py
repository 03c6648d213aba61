"""Every table and figure for what an MLflow experiment holds, without Jupyter.

    python -m analysis.report --tracking-uri sqlite:///mlflow.db --experiment rev2net-synthetic --out reports

For each stage the experiment has (coarse, fine, ablation) it takes the newest invocation (its
parent run; `--all-sweeps` pools every invocation of the stage) and writes into --out:
  status.{md,csv,tex}                      trials per stage and status
  best.{md,csv,tex}                        the best configuration of each grid stage (orchestration.records.best_config)
  <stage>_marginals.{md,csv,tex}, <stage>_top.{md,csv,tex}    coarse and fine grids
  ablation.{md,csv,tex}, shuffle.{md,csv,tex}                 ablation stage (Table 2, Table 3 layouts)
  cross_dataset.{md,csv,tex}               when trials with data.eval_name exist (Table 5 layout)
  <stage>_marginals.png, <stage>_alpha_beta.png, <stage>_flow_im.png, <stage>_curves.png,
  <stage>_loss_terms.png, shuffle.png      figures
  runs.csv                                 every trial read, one row each (orchestration.records.load_runs)
  report.md                                all of the above on one page
and prints the tables to the terminal. A table with nothing to show is skipped, with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
from matplotlib.figure import Figure

from analysis import figures, tables
from orchestration.records import WEIGHTS, client_for, load_histories, load_runs, rank_trials, stage_runs

STAGES = ("coarse", "fine", "ablation")
HEATMAPS = {"alpha_beta": ("loss.alpha", "loss.beta"), "flow_im": ("loss.lambda_flow", "loss.lambda_im")}


@dataclass
class Report:
    """What `build` found: tables and figures by name, what was skipped and why, and the trials read."""

    experiment: str
    tracking_uri: str
    runs: pd.DataFrame
    tables: list[tables.Table] = field(default_factory=list)
    figures: dict[str, tuple[str, Figure]] = field(default_factory=dict)   # name -> (caption, figure)
    sources: list[str] = field(default_factory=list)                      # which sweep each stage came from
    skipped: list[str] = field(default_factory=list)


def select_sweeps(runs: pd.DataFrame, parents: pd.DataFrame, *, stages: Sequence[str] = STAGES,
                  all_sweeps: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Per stage in `stages`, the trials of its newest invocation (or all of them), and a line
    saying which; trials of no known stage are kept as they are."""
    keep, sources = [], []
    for stage in (s for s in STAGES if s in stages):
        trials = runs[runs["stage"] == stage] if not runs.empty else runs
        if trials.empty:
            continue
        stage_parents = parents[parents["stage"] == stage]
        if all_sweeps or stage_parents.empty:
            keep.append(trials)
            sources.append(f"{stage}: all {len(trials)} trials of {max(1, len(stage_parents))} invocation(s)")
            continue
        newest = stage_parents.iloc[0]
        chosen = trials[trials["parent_run_id"] == newest["run_id"]]
        keep.append(chosen)
        others = len(stage_parents) - 1
        sources.append(f"{stage}: {newest['run_name']} (parent run {newest['run_id']}, {newest['status']}), "
                       f"{len(chosen)} trials" + (f"; {others} older invocation(s) left out (--all-sweeps pools them)"
                                                   if others else ""))
    other = runs[~runs["stage"].isin(STAGES)] if not runs.empty else runs
    if not other.empty:
        keep.append(other)
    return (pd.concat(keep, ignore_index=True) if keep else runs), sources


def build(tracking_uri: str, experiment: str, *, stages: Sequence[str] = STAGES, all_sweeps: bool = False,
          metric: str = "val/top1", top: int = 10, paper: bool = True, run_id: Optional[str] = None) -> Report:
    """Read the experiment once and build every table and figure it supports."""
    everything = load_runs(tracking_uri, experiment)
    parents = stage_runs(client_for(tracking_uri), experiment)
    runs, sources = select_sweeps(everything, parents, stages=stages, all_sweeps=all_sweeps)
    report = Report(experiment, tracking_uri, runs, sources=sources)
    if runs.empty:
        report.skipped.append(f"experiment {experiment!r} has no trials yet")
        return report

    def add(builder, *args, **kwargs) -> None:
        table, reason = tables.optional(builder, *args, **kwargs)
        if table is not None:
            report.tables.append(table)
        else:
            report.skipped.append(f"{kwargs.get('name', builder.__name__.removesuffix('_table'))}: {reason}")

    add(tables.status_table, runs, metric=metric)
    grid_stages = [s for s in ("coarse", "fine") if s in stages and (runs["stage"] == s).any()]
    wanted: dict[str, list[str]] = {}
    for stage in grid_stages:
        trials = runs[runs["stage"] == stage]
        add(tables.grid_marginals, trials, metric=metric, name=f"{stage}_marginals", stage=stage)
        add(tables.top_trials, trials, k=top, metric=metric, name=f"{stage}_top", stage=stage, paper=paper)
        try:
            ranked, _ = rank_trials(trials, metric=metric, keys=[w for w in WEIGHTS if w in trials])
            wanted[stage] = ranked["run_id"].head(5).tolist()
        except LookupError as e:
            report.skipped.append(f"{stage} learning curves: {e}")
    if grid_stages:
        add(tables.best_table, {s: runs[runs["stage"] == s] for s in grid_stages}, metric=metric, paper=paper)
    if "ablation" in stages and (runs["stage"] == "ablation").any():
        add(tables.ablation_table, runs, metric=metric, paper=paper)
        add(tables.shuffle_table, runs, paper=paper)
    add(tables.cross_dataset_table, runs, paper=paper)

    # Figures: the histories of the few runs they draw, read in one call.
    focus = run_id or next((ids[0] for ids in reversed(list(wanted.values())) if ids), None)
    history_ids = sorted({i for ids in wanted.values() for i in ids} | ({focus} if focus else set()))
    histories = load_histories(tracking_uri, history_ids) if history_ids else None
    for stage in grid_stages:
        trials = runs[runs["stage"] == stage]
        report.figures[f"{stage}_marginals"] = (f"{stage} stage: marginal effect of each weight",
                                                figures.marginal_effects(trials, metric=metric, stage=stage))
        for name, (x, y) in HEATMAPS.items():
            if x in trials and y in trials:
                caption = f"{stage} stage: {tables.WEIGHT_SYMBOLS[x]} × {tables.WEIGHT_SYMBOLS[y]}"
                report.figures[f"{stage}_{name}"] = (caption, figures.pairwise_heatmap(trials, x, y, metric=metric,
                                                                                       stage=stage))
        if wanted.get(stage):
            report.figures[f"{stage}_curves"] = (f"{stage} stage: learning curves of the top trials",
                                                 figures.learning_curves(histories, trials, run_ids=wanted[stage],
                                                                         metric=metric, stage=stage))
    if focus is not None:
        chosen = everything[everything["run_id"] == focus]
        if chosen.empty:
            report.skipped.append(f"loss terms: run {focus} is not a trial of {experiment!r}")
        else:
            row = chosen.iloc[0]
            report.figures[f"{row['stage']}_loss_terms"] = (f"loss terms of {row['run_name']}",
                                                             figures.loss_terms(histories, row))
    if any(t.name == "shuffle" for t in report.tables):
        report.figures["shuffle"] = ("frame-shuffle robustness", figures.shuffle_bars(runs, paper=paper))
    return report


def write(report: Report, out: str | Path) -> list[Path]:
    """Every table (.md, .csv, .tex), every figure (.png), runs.csv and report.md into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    runs_csv = out / "runs.csv"
    report.runs.to_csv(runs_csv, index=False)
    paths.append(runs_csv)
    for table in report.tables:
        paths.extend(table.write(out))
    for name, (_, fig) in report.figures.items():
        paths.append(figures.save(fig, out / f"{name}.png"))
    page = [f"# Sweep report: {report.experiment}", "", f"MLflow: `{report.tracking_uri}`, experiment "
            f"`{report.experiment}`; {len(report.runs)} trials (runs.csv).", ""]
    page += [f"- {s}" for s in report.sources] + [""]
    for table in report.tables:
        page += [table.to_markdown(), ""]
    for name, (caption, _) in report.figures.items():
        page += [f"![{caption}]({name}.png)", ""]
    if report.skipped:
        page += ["Skipped:", ""] + [f"- {s}" for s in report.skipped] + [""]
    md = out / "report.md"
    md.write_text("\n".join(page), encoding="utf-8")
    paths.append(md)
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                        help="the sweep's MLflow store (default: sqlite:///mlflow.db, the sweep's default)")
    parser.add_argument("--experiment", required=True, help="MLflow experiment, e.g. rev2net-synthetic")
    parser.add_argument("--out", default="reports", help="folder for the tables and figures (default: reports)")
    parser.add_argument("--stage", action="append", choices=STAGES, help="only these stages (repeatable; default: all)")
    parser.add_argument("--all-sweeps", action="store_true", help="pool every invocation of a stage, not only the newest")
    parser.add_argument("--metric", default="val/top1", help="what the grid tables rank and average (default: val/top1)")
    parser.add_argument("--top", type=int, default=10, help="rows of the top-trials tables (default: 10)")
    parser.add_argument("--run", dest="run_id", help="the run whose loss terms to plot (default: the best trial)")
    parser.add_argument("--paper", action=argparse.BooleanOptionalAction, default=True,
                        help="show the papers' published numbers beside ours, labelled (default: on)")
    parser.add_argument("--quiet", action="store_true", help="do not print the tables")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        report = build(args.tracking_uri, args.experiment, stages=args.stage or STAGES, all_sweeps=args.all_sweeps,
                       metric=args.metric, top=args.top, paper=args.paper, run_id=args.run_id)
    except LookupError as e:
        print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 2
    paths = write(report, args.out)
    if not args.quiet:
        for line in report.sources:
            print(line)
        for table in report.tables:
            print()
            print(table.to_markdown())
    for reason in report.skipped:
        print(f"skipped: {reason}")
    print(f"wrote {len(paths)} files to {args.out} ({len(report.tables)} tables, {len(report.figures)} figures) "
          f"in {time.perf_counter() - started:.1f} s; open {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
