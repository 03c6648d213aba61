"""Every table and figure for what an MLflow experiment holds, without Jupyter, and the verdict in words.

    python -m analysis.report --tracking-uri sqlite:///mlflow.db --experiment rev2net-synthetic --out reports
    python -m analysis.report ... --log-to-parent <parent run id>     (after a stage: into its parent run)

For each stage the experiment has (coarse, fine, ablation, compare) it takes the newest invocation
(its parent run; `--all-sweeps` pools every invocation of the stage; `--log-to-parent` takes that
parent's trials) and writes into --out:
  report.md                                the verdict first (the best configuration, those that cannot be
                                           told apart from it, the components that make a difference),
                                           then every table and figure on one page
  status.{md,csv,tex}                      trials per stage and status
  best.{md,csv,tex}                        the best configuration of each grid stage (orchestration.records.best_config)
  <stage>_marginals, <stage>_top, <stage>_importance .{md,csv,tex}     coarse and fine grids
  ablation, shuffle, compare, compare_systems .{md,csv,tex}          ablation (Table 2, 3 layouts), compare stage
                                           (per variant; per system x RGB/flow/RGB + flow, Table 2/5 layout)
  cross_dataset.{md,csv,tex}               when trials with data.eval_name exist (Table 5 layout)
  cost.{md,csv,tex}, <stage>_scheduler.{md,csv,tex}    GPU-hours per stage and family; ASHA against FIFO
  <stage>_marginals.png, <stage>_alpha_beta.png, <stage>_flow_im.png, <stage>_curves.png, <stage>_top.png,
  <stage>_importance.png, <stage>_loss_terms.png, ablation.png, compare.png, shuffle.png      figures
  runs.csv                                 every trial read, one row each (orchestration.records.load_runs)
and prints the tables to the terminal. A table with nothing to show is skipped, with the reason.
The statistics and what each assumes: analysis/tables.py and analysis/stats.py.
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
from orchestration.records import (CROSS, TEST, WEIGHT_SYMBOLS, WEIGHTS, client_for, load_histories, load_predictions,
                                   load_runs, rank_trials, stage_runs)
from rev2net import registry

STAGES = ("coarse", "fine", "ablation", "compare", "cross")
PREDICTION_COLUMNS = ("video_id", "label", "pred")   # what the paired tests read
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
    verdict: list[str] = field(default_factory=list)                      # the answer in words (report.md's top)


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


def _params(row: dict, keys: Sequence[str]) -> str:
    return " ".join(f"{WEIGHT_SYMBOLS.get(k, k)}={tables.weight_value(row[k])}" for k in keys if k in row)


def _grid_verdict(stage: str, table: tables.Table, limit: int = 6) -> list[str]:
    """The best configuration of a grid stage and those that cannot be told apart from it, in words."""
    proof, ranked, reported = table.evidence["top"], table.evidence["ranked"], table.evidence["reported"]
    keys = [k for k in WEIGHTS if k in ranked]
    best = ranked.iloc[0]
    row = proof.rows.loc[1] if 1 in proof.rows.index else None
    seeds = int(best["n_seeds"])
    value = (f"{tables.METRIC_LABELS.get(reported, reported)} {tables.pm(row['mean'], row['std'], int(row['n']))}% "
             f"{tables.ci(row['low'], row['high'])}" if row is not None and row["n"] else "no test accuracy logged")
    lines = [f"**{stage.capitalize()} stage** ({len(ranked)} configurations ranked by val top-1"
             + (", the mean over seeds for those re-run" if ranked.attrs.get("aggregated") else "")
             + f"): the best is **{_params(best, keys)}** — {value}, {seeds} seed{'s' * (seeds > 1)}."]
    if proof.versus is None:
        lines.append("  No configuration could be compared with it on the test list.")
        return lines
    same, differ = proof.same(), proof.different()
    names = [_params(ranked.iloc[r - 1], keys) for r in same[:limit]]
    more = f", and {len(same) - limit} more" if len(same) > limit else ""
    lines.append(f"  Statistically indistinguishable from it (Holm p ≥ {tables.ALPHA:g}, paired on the same test "
                 f"videos): {len(same)} of the {len(same) + len(differ)} others"
                 + (f": {'; '.join(names)}{more}." if same else ".")
                 + (" Read the ranking among these as noise." if same else ""))
    return lines


def _variants_verdict(stage: str, table: tables.Table, label=registry.label) -> list[str]:
    """Which variants (components) differ from Rev2Net at this budget, in words."""
    lines = []
    for dataset, proof in table.evidence.items():
        if proof.versus is None:
            continue
        where = f" on {tables.DATASET_LABELS.get(dataset, dataset)}" if len(table.evidence) > 1 and dataset else ""
        ref = label(proof.reference)

        def effect(v: str) -> str:
            r = proof.versus.loc[v]
            return f"{label(v)} {r['effect']:+.1f} points {tables.ci(r['effect_low'], r['effect_high'])} " \
                   f"(p {tables.p_text(r['p_holm'])})"

        differ, same = proof.different(), proof.same()
        what = "components that make a significant difference" if stage == "ablation" else "models that differ"
        lines.append(f"**{stage[0].upper() + stage[1:]}**{where} (against {ref}, Holm over {len(proof.versus)} rows): "
                     + (f"{what} at this budget: " + "; ".join(effect(v) for v in differ) + "." if differ
                        else f"no {what.split(' that')[0]} differs significantly from {ref} at this budget.")
                     + (f" Not distinguishable from {ref}: " + ", ".join(
                         f"{label(v)} ({proof.versus.at[v, 'effect']:+.1f})" for v in same) + "." if same else ""))
    return lines


def _predictions(tracking_uri: str, runs: pd.DataFrame, run_ids: Sequence[str],
                 evaluation: str) -> Optional[pd.DataFrame]:
    """The `evaluation` predictions of `run_ids` (the columns the paired tests read), or None."""
    if not len(run_ids):
        return None
    roots = runs.set_index("run_id")["artifact_uri"].to_dict() if "artifact_uri" in runs else None
    frame = load_predictions(tracking_uri, list(run_ids), evaluation, columns=PREDICTION_COLUMNS,
                             artifact_uri=roots if roots and all(r in roots for r in run_ids) else None)
    return frame if len(frame) else None


def scheduler_pairs(tracking_uri: str, parents: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(stage, FIFO parent run id, ASHA parent run id): the newest finished invocations of the same
    plan (the same stage, mode, algorithm, number of trials, dataset and epochs) under each scheduler."""
    if parents.empty:
        return []
    client = client_for(tracking_uri)
    same = ("stage", "mode", "algorithm", "trials", "data.name", "trainer.max_epochs", "search.metric")
    found: dict[tuple, dict[str, str]] = {}
    for _, parent in parents[parents["status"] == "FINISHED"].iterrows():   # newest first
        params = client.get_run(parent["run_id"]).data.params
        scheduler = params.get("scheduler")
        if scheduler not in ("fifo", "asha"):
            continue
        found.setdefault(tuple(params.get(k) for k in same), {}).setdefault(scheduler, parent["run_id"])
    return [(key[0], pair["fifo"], pair["asha"]) for key, pair in found.items() if len(pair) == 2]


def build(tracking_uri: str, experiment: str, *, stages: Sequence[str] = STAGES, all_sweeps: bool = False,
          metric: str = "val/top1", top: int = 10, paper: bool = True, run_id: Optional[str] = None,
          parent_run_id: Optional[str] = None) -> Report:
    """Read the experiment once and build every table and figure it supports, and the verdict.
    `parent_run_id`: only that stage invocation's trials (what `--log-to-parent` reports)."""
    everything = load_runs(tracking_uri, experiment)
    parents = stage_runs(client_for(tracking_uri), experiment)
    if parent_run_id is not None:
        runs = everything[everything["parent_run_id"] == parent_run_id].reset_index(drop=True) \
            if not everything.empty else everything
        chosen = parents[parents["run_id"] == parent_run_id]
        sources = [f"{chosen['stage'].iloc[0] if len(chosen) else '?'}: parent run {parent_run_id}, {len(runs)} trials"]
    else:
        runs, sources = select_sweeps(everything, parents, stages=stages, all_sweeps=all_sweeps)
    report = Report(experiment, tracking_uri, runs, sources=sources)
    if runs.empty:
        report.skipped.append(f"experiment {experiment!r} has no trials yet")
        return report
    predictions = _predictions(tracking_uri, runs, runs["run_id"].tolist(), TEST)
    if predictions is None:
        report.skipped.append("per-video predictions: none logged (older runs): intervals and tests use the "
                              "per-run accuracies, single trials have no interval")

    def add(builder, *args, **kwargs) -> Optional[tables.Table]:
        table, reason = tables.optional(builder, *args, **kwargs)
        if table is not None:
            report.tables.append(table)
        else:
            report.skipped.append(f"{kwargs.get('name', builder.__name__.removesuffix('_table'))}: {reason}")
        return table

    add(tables.status_table, runs, metric=metric)
    grid_stages = [s for s in ("coarse", "fine") if s in stages and (runs["stage"] == s).any()]
    wanted: dict[str, list[str]] = {}
    tops: dict[str, tables.Table] = {}
    for stage in grid_stages:
        trials = runs[runs["stage"] == stage]
        add(tables.grid_marginals, trials, metric=metric, name=f"{stage}_marginals", stage=stage)
        found = add(tables.top_trials, trials, k=top, metric=metric, name=f"{stage}_top", stage=stage, paper=paper,
                    predictions=predictions)
        if found is not None:
            tops[stage] = found
        imp = add(tables.importance_table, trials, stage=stage, metric=metric, name=f"{stage}_importance")
        if imp is not None:
            report.figures[f"{stage}_importance"] = (f"{stage} stage: hyperparameter importance",
                                                     figures.importance(imp, stage=stage))
        try:
            ranked = found.evidence["ranked"] if found is not None else \
                rank_trials(trials, metric=metric, keys=[w for w in WEIGHTS if w in trials])[0]
            wanted[stage] = ranked["run_id"].head(5).tolist()
        except LookupError as e:
            report.skipped.append(f"{stage} learning curves: {e}")
    if grid_stages:
        add(tables.best_table, {s: runs[runs["stage"] == s] for s in grid_stages}, metric=metric, paper=paper,
            predictions=predictions, tops=tops)
    variant_tables = {}
    if "ablation" in stages and (runs["stage"] == "ablation").any():
        variant_tables["ablation"] = add(tables.ablation_table, runs, paper=paper, predictions=predictions)
    if "compare" in stages and (runs["stage"] == "compare").any():
        variant_tables["compare"] = add(tables.compare_table, runs, predictions=predictions)
        add(tables.systems_table, runs, paper=paper, predictions=predictions)
    shuffle_stages = [s for s in ("ablation", "compare") if s in stages and (runs["stage"] == s).any()]
    if shuffle_stages:   # every family of the ablation and compare stages, under the four protocols (Table 3)
        shuffle_ids = runs.loc[runs["stage"].isin(shuffle_stages), "run_id"].tolist()
        shuffled = {f"shuffle/{p}": _predictions(tracking_uri, runs, shuffle_ids, f"shuffle/{p}")
                    for p in tables.SHUFFLE_PROTOCOLS if f"shuffle/{p}/top1" in runs}
        add(tables.shuffle_table, runs[runs["stage"].isin(shuffle_stages)], paper=paper,
            predictions={k: v for k, v in shuffled.items() if v is not None})
    cross_ids = runs.loc[runs["data.eval_name"].notna(), "run_id"].tolist() if "data.eval_name" in runs else []
    cross = add(tables.cross_dataset_table, runs, paper=paper, predictions=_predictions(tracking_uri, runs, cross_ids, CROSS))

    add(tables.cost_table, runs)
    for stage, fifo, asha in scheduler_pairs(tracking_uri, parents):
        if stage in stages and not everything.empty:
            add(tables.scheduler_table, everything[everything["parent_run_id"] == fifo],
                everything[everything["parent_run_id"] == asha], stage=stage, metric=metric)

    # The verdict, in words: what the tables' statistics say.
    for stage in grid_stages:
        if stage in tops:
            report.verdict += _grid_verdict(stage, tops[stage])
    for stage, table in variant_tables.items():
        if table is not None:
            report.verdict += _variants_verdict(stage, table)
    if cross is not None:
        for (source, target), proof in cross.evidence.items():
            name = f"cross-dataset {tables.DATASET_LABELS.get(source, source)} → {tables.DATASET_LABELS.get(target, target)}"
            report.verdict += _variants_verdict(name, tables.Table("cross", "", cross.data, cross.shown,
                                                                   evidence={"": proof}), label=tables.adapted_label)
    cost = next((t for t in report.tables if t.name == "cost"), None)
    if cost is not None:
        total = cost.data[cost.data["family"] == "all"]
        report.verdict.append("**Cost**: " + ", ".join(f"{r.stage} {r.gpu_hours:.2f} GPU-h + {r.cpu_hours:.2f} CPU-h"
                                                      for r in total.itertuples()) + " (the cost table has the families).")
    for t in report.tables:
        if t.name.endswith("_scheduler"):
            report.verdict.append(f"**{t.title}**: {t.notes[0]}.")

    # Figures: the histories of the few runs they draw, read in one call.
    focus = run_id or next((ids[0] for ids in reversed(list(wanted.values())) if ids), None)
    history_ids = sorted({i for ids in wanted.values() for i in ids} | ({focus} if focus else set()))
    histories = load_histories(tracking_uri, history_ids) if history_ids else None
    for stage in grid_stages:
        trials = runs[runs["stage"] == stage]
        report.figures[f"{stage}_marginals"] = (f"{stage} stage: marginal effect of each weight",
                                                figures.marginal_effects(trials, metric=metric, stage=stage))
        if stage in tops:
            report.figures[f"{stage}_top"] = (f"{stage} stage: the top configurations against the best",
                                              figures.comparison(tops[stage], stage=stage))
        for name, (x, y) in HEATMAPS.items():
            if x in trials and y in trials:
                caption = f"{stage} stage: {tables.WEIGHT_SYMBOLS[x]} × {tables.WEIGHT_SYMBOLS[y]}"
                report.figures[f"{stage}_{name}"] = (caption, figures.pairwise_heatmap(trials, x, y, metric=metric,
                                                                                       stage=stage))
        if wanted.get(stage):
            report.figures[f"{stage}_curves"] = (f"{stage} stage: learning curves of the top trials",
                                                 figures.learning_curves(histories, trials, run_ids=wanted[stage],
                                                                         metric=metric, stage=stage))
    for stage, table in variant_tables.items():
        if table is not None:
            report.figures[stage] = (f"{stage}: each model against Rev2Net", figures.comparison(table, stage=stage))
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
    page = [f"# Sweep report: {report.experiment}", ""]
    if report.verdict:
        page += ["## Verdict", ""] + [line if line.startswith("  ") else f"- {line}" for line in report.verdict] + [""]
        page += ["Selection and ranking read val/top1 (a held-out validation split); accuracies reported with "
                 "intervals are test/top1 (the official test list), measured once per trial. Intervals are 95%; "
                 "comparisons are paired and Holm-corrected (see each table's notes).", ""]
    page += [f"MLflow: `{report.tracking_uri}`, experiment `{report.experiment}`; {len(report.runs)} trials (runs.csv).",
             ""]
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


REPORT_ARTIFACTS = "report"   # where a stage's parent run holds its report


def log_to_parent(tracking_uri: str, parent_run_id: str, out: str | Path) -> None:
    """Log the report folder `out` (report.md first: the UI previews Markdown and PNG artifacts)
    into the parent run's artifacts under REPORT_ARTIFACTS/, so the MLflow UI alone answers "what
    did this stage find"."""
    client_for(tracking_uri).log_artifacts(parent_run_id, str(out), REPORT_ARTIFACTS)


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
    parser.add_argument("--log-to-parent", metavar="RUN_ID",
                        help="report that stage invocation's trials and log the report into its parent run's "
                             "artifacts (report/), as a stage does when it ends")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        report = build(args.tracking_uri, args.experiment, stages=args.stage or STAGES, all_sweeps=args.all_sweeps,
                       metric=args.metric, top=args.top, paper=args.paper, run_id=args.run_id,
                       parent_run_id=args.log_to_parent)
    except LookupError as e:
        print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 2
    paths = write(report, args.out)
    if args.log_to_parent:
        log_to_parent(args.tracking_uri, args.log_to_parent, args.out)
        print(f"logged {len(paths)} files into parent run {args.log_to_parent} (artifacts: {REPORT_ARTIFACTS}/)")
    if not args.quiet:
        for line in report.verdict:
            print(line)
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
