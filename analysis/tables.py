"""The papers' tables from a `load_runs` frame, each as Markdown, CSV and LaTeX, with their statistics.

Every builder returns a `Table`: `data` holds the numbers (the CSV; accuracies in percent, means
and sample standard deviations, ddof=1, over the trials averaged), `shown` the same rows as the
strings the Markdown and LaTeX show, `notes` what the reader must know (what was averaged, what
was left out and why, which test was used, where the paper's numbers come from).

The statistics (analysis/stats.py; each method's assumptions are in its docstring there):
  * Tables REPORT the test metrics (`test/top1`, measured once at each trial's end on the official
    test list) and say so; selection and ranking read the validation metrics (`val/top1`). Runs
    from before the test metrics were logged fall back to `val/top1`, and the notes say that too.
  * Every accuracy has its 95% interval: one trial, Wilson's interval from its number of test
    videos (its per-video predictions say how many); several seeds (and splits), mean ± std and
    the percentile-bootstrap interval of the mean.
  * Rows are compared with a reference row (Rev2Net in the ablation and compare tables, the best
    configuration in the top-k tables) by `stats.compare_to_reference`: with per-video predictions,
    McNemar's exact test for single trials and the paired t test over videos (seeds pooled) for
    several seeds; without them, the paired t test over seeds × splits. Holm's correction runs
    over the rows compared; the effect is in accuracy points with its interval. A row whose
    Holm-adjusted p is >= 0.05 (or that cannot be tested) is marked INDISTINGUISHABLE ("≈").

The rules, the same in every table:
  * Only trials whose status is in `statuses` are averaged: `completed` by default, because a
    stopped-early (ASHA) trial's accuracy comes from fewer epochs. Stopped-early, failed and
    running trials, and averaged-status trials without a finite value of the metric ("missing"),
    are counted in the "not averaged" column, never averaged in.
  * "best" (grid tables) ranks like `orchestration.records.best_config`: completed and stopped-early trials
    (a stopped trial's accuracy is a lower bound of what it would have reached).
  * A cell with no trial to average reads "—"; with one trial it has no "± std".
  * The paper's numbers (`paper=True`) are their own columns or rows, labelled "paper", with the
    source in the notes; they come from analysis.paper, never from MLflow.
A builder raises LookupError when `runs` holds nothing it could tabulate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from analysis import paper as published
from analysis import stats
from orchestration.records import (AVERAGED, LABEL, N_SEEDS, PRED, RANKED, RUN_IDS, SEED_PARAM, SEEDS,
                                   SHUFFLE_PROTOCOLS, STATUSES, TEST, VIDEO, WEIGHT_INFO, WEIGHT_SYMBOLS, WEIGHTS,
                                   best_config, dataset_label, rank_trials, variant_of)
from rev2net import registry

WEIGHT_NAMES = {k: f"{w.symbol} ({w.meaning})" for k, w in WEIGHT_INFO.items()}
PROTOCOL_LABELS = {"none": "no shuffle", "long_term": "long-term", "short_term": "short-term", "complete": "complete"}
DATASET_LABELS = {"ucf101": "UCF101", "hmdb51": "HMDB51", "kinetics400": "Kinetics-400", "synthetic": "synthetic",
                  "generic": "generic"}
METRIC_LABELS = {"val/top1": "val top-1", "val/top5": "val top-5", "best_epoch/val/top1": "best-epoch val top-1",
                 "test/top1": "test top-1", "test/top5": "test top-5",
                 "cross/top1": "cross-dataset top-1", "cross/top5": "cross-dataset top-5"}
DASH = "—"
REPORTED = "test/top1"        # what tables report (measured once, at the end, on the official test list)
SELECTED = "val/top1"         # what selection and ranking read (every epoch, on the held-out validation split)
ALPHA = 0.05                  # the family-wise error rate of each table's comparisons (Holm)
SAME = "≈"                    # the mark of a row that cannot be told apart from the reference
SPLIT_PARAM = "data.split"


# --------------------------------------------------------------------------- the table and its formats

@dataclass
class Table:
    """One table: `data` (numbers, the CSV), `shown` (strings, Markdown/LaTeX), `notes`."""

    name: str                  # file stem: <name>.md, <name>.csv, <name>.tex
    title: str
    data: pd.DataFrame
    shown: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict, repr=False)   # the statistics behind it (Evidence)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", markdown(self.shown)]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def _repr_markdown_(self) -> str:   # notebooks render a Table as Markdown
        return self.to_markdown()

    def to_csv(self) -> str:
        return self.data.to_csv(index=False, float_format="%.10g")

    def to_latex(self) -> str:
        return latex(self.shown, caption=self.title, label=f"tab:{self.name}", notes=self.notes)

    def write(self, out: str | Path) -> list[Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for suffix, text in ((".md", self.to_markdown()), (".csv", self.to_csv()), (".tex", self.to_latex())):
            path = out / f"{self.name}{suffix}"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        return paths


_NUMERIC = re.compile(r"^(≈ )?[-+−<]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?( ± [\d.]+)?( \(n=\d+\))?"
                      r"( \[[-−]?[\d.]+, [-−]?[\d.]+\])?$|^—$|^\[[-−]?[\d.]+, [-−]?[\d.]+\]$")


def _right_aligned(column: pd.Series) -> bool:
    cells = [str(v) for v in column if str(v) != ""]
    return bool(cells) and all(_NUMERIC.match(c) for c in cells)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' `to_markdown`, through tabulate): numeric columns right-aligned,
    `|` escaped, columns padded for reading as plain text."""
    cells = df.astype(str).map(lambda v: v.replace("|", "\\|"))
    cells.columns = [str(c).replace("|", "\\|") for c in df.columns]
    align = tuple("right" if _right_aligned(df.iloc[:, i]) else "left" for i in range(df.shape[1]))
    return cells.to_markdown(index=False, colalign=align, disable_numparse=True)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\rightarrow$", "—": "---", "–": "--", "×": r"$\times$", "α": r"$\alpha$",
                  "β": r"$\beta$", "λ": r"$\lambda$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$",
                  "Δ": r"$\Delta$", "−": r"$-$"}


def latex_escape(text: Any) -> str:
    out = []
    for ch in str(text):
        out.append(_LATEX_SPECIAL.get(ch) or _LATEX_SYMBOLS.get(ch) or ch)
    return "".join(out)


def latex(df: pd.DataFrame, *, caption: str, label: str, notes: Sequence[str] = ()) -> str:
    """A booktabs table (pandas' `Styler.to_latex`; needs \\usepackage{booktabs}); notes go below it
    in small type."""
    align = "".join("r" if _right_aligned(df.iloc[:, i]) else "l" for i in range(df.shape[1]))
    styler = df.style.hide(axis="index").format(latex_escape).format_index(latex_escape, axis=1)
    tex = styler.to_latex(column_format=align, position="t", position_float="centering", hrules=True,
                          caption=latex_escape(caption), label=label)
    below = "".join(rf"\par\smallskip{{\footnotesize {latex_escape(note)}}}" + "\n" for note in notes)
    return tex.replace("\\end{table}", below + "\\end{table}")


# --------------------------------------------------------------------------- numbers

def summarize(runs: pd.DataFrame, by: Sequence[str], metric: str, *, statuses: Sequence[str] = AVERAGED,
              scale: float = 100.0, best_statuses: Sequence[str] = RANKED, mode: str = "max") -> pd.DataFrame:
    """Per group of `by`: `n` trials averaged (status in `statuses`, finite `metric`), `mean` and
    `std` (ddof=1; NaN for n < 2) of `metric` x `scale`, `best` over `best_statuses`, the count of
    every status, and `missing` (status in `statuses` but no finite metric)."""
    values = pd.to_numeric(runs[metric], errors="coerce") if metric in runs else pd.Series(np.nan, index=runs.index)
    finite = pd.Series(np.isfinite(values.to_numpy(dtype=float, na_value=np.nan)), index=runs.index)
    frame = runs[list(by)].copy()
    frame["_v"] = values * scale
    frame["_avg"] = runs["status"].isin(list(statuses)) & finite
    frame["_rank"] = runs["status"].isin(list(best_statuses)) & finite
    frame["_missing"] = runs["status"].isin(list(statuses)) & ~finite
    frame["_status"] = runs["status"]
    rows = []
    for keys, g in frame.groupby(list(by), dropna=False, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        averaged = g.loc[g["_avg"], "_v"]
        ranked = g.loc[g["_rank"], "_v"]
        row = dict(zip(by, keys))
        row.update(n=len(averaged), mean=averaged.mean() if len(averaged) else np.nan,
                   std=averaged.std(ddof=1) if len(averaged) > 1 else np.nan,
                   best=(ranked.max() if mode == "max" else ranked.min()) if len(ranked) else np.nan,
                   trials=len(g))
        counts = g["_status"].value_counts()
        row.update({s: int(counts.get(s, 0)) for s in STATUSES})
        row["missing"] = int(g["_missing"].sum())
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "std", "best", "trials", *STATUSES, "missing"])


def pm(mean: float, std: float, n: int, digits: int = 1) -> str:
    """"93.1 ± 0.4" (n >= 2), "93.1" (n = 1), "—" (n = 0)."""
    if not n or not math.isfinite(mean):
        return DASH
    if n >= 2 and math.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else DASH


def not_averaged(row: dict, statuses: Sequence[str] = AVERAGED, metric: str = "") -> str:
    """What a row left out: "1 failed, 2 running", or "" when nothing."""
    names = {"stopped_early": "stopped early"}
    parts = [f"{int(row[s])} {names.get(s, s)}" for s in STATUSES if s not in statuses and row[s]]
    if row["missing"]:
        parts.append(f"{int(row['missing'])} without {metric or 'the metric'}")
    return ", ".join(parts)


def weight_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and math.isfinite(v) else str(v)


def _averaging_note(metric: str, statuses: Sequence[str], unit: str = "trials") -> str:
    which = " and ".join(s.replace("_", " ") for s in statuses)
    return (f"mean ± sample std (ddof=1) over {unit} of the final-epoch {metric} (%), {which} trials only; "
            "stopped-early, failed and running trials are counted under \"not averaged\", never averaged in")


ADAPT_NONE = "none"            # adapt.name of a trial without domain adaptation
ADAPT_SEP = "+"               # a cross-dataset row of a variant trained with adaptation: "<variant>+<adapt.name>"


def adapted_label(row: str) -> str:
    """"rev2net+dann" -> "Rev2Net (full) + DANN"; a plain variant -> its registry label."""
    variant, _, adapt = str(row).partition(ADAPT_SEP)
    return registry.label(variant) + (f" + {adapt.upper()}" if adapt else "")


def _order_variants(variants: Sequence[str]) -> list[str]:
    """Registered variants in the registry's order (each followed by its adapted rows), then any
    others by name."""
    present = set(variants)
    known = []
    for v in registry.VARIANTS:
        known += [v] if v in present else []
        known += sorted(r for r in present if str(r).startswith(v + ADAPT_SEP))
    return known + sorted(present - set(known))


# --------------------------------------------------------------------------- the statistics of a table

def reported_metric(runs: pd.DataFrame, metric: str = REPORTED, fallback: str = SELECTED) -> tuple[str, list[str]]:
    """The metric a table reports: `metric` when some trial has a finite value of it, else `fallback`,
    with a note saying so (runs from before the test metrics were logged)."""
    if metric in runs and _finite_mask(runs[metric]).any():
        return metric, []
    if fallback in runs and _finite_mask(runs[fallback]).any():
        return fallback, [f"no trial logged {metric} (runs from before the test evaluation was logged): "
                          f"{fallback}, the validation metric that selection reads, is shown instead"]
    return metric, []


def _finite_mask(values: pd.Series) -> np.ndarray:
    return np.isfinite(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan))


@dataclass
class Evidence:
    """The statistics of a table's rows: each row's accuracy with its interval, and each row against
    the reference row (see `evidence`)."""

    rows: pd.DataFrame                       # index row: n, mean, std, low, high (%), interval, n_videos
    versus: Optional[pd.DataFrame]           # index row: stats.compare_to_reference's columns (no reference)
    reference: Any
    notes: list[str] = field(default_factory=list)

    def mark(self, row: Any) -> str:
        """"reference", "≈" (cannot be told apart from it), "differs", or "" (no comparison)."""
        if row == self.reference:
            return "reference"
        if self.versus is None or row not in self.versus.index:
            return ""
        return SAME if bool(self.versus.at[row, "indistinguishable"]) else "differs"

    def same(self) -> list[Any]:
        """The rows that cannot be told apart from the reference (in the order compared)."""
        if self.versus is None:
            return []
        return self.versus.index[self.versus["indistinguishable"]].tolist()

    def different(self) -> list[Any]:
        if self.versus is None:
            return []
        return self.versus.index[~self.versus["indistinguishable"]].tolist()


def _seed_split(pool: pd.DataFrame) -> pd.DataFrame:
    seed = pd.to_numeric(pool[SEED_PARAM], errors="coerce") if SEED_PARAM in pool else pd.Series(0, index=pool.index)
    split = pd.to_numeric(pool[SPLIT_PARAM], errors="coerce") if SPLIT_PARAM in pool else pd.Series(1, index=pool.index)
    return pd.DataFrame({"seed": seed.fillna(0).astype(int).to_numpy(), "split": split.fillna(1).astype(int).to_numpy()},
                        index=pool.index)


def evidence(pool: pd.DataFrame, row_of: pd.Series, metric: str, *, reference: Any = None,
             predictions: Optional[pd.DataFrame] = None, alpha: float = ALPHA, n_resamples: int = 10_000) -> Evidence:
    """The statistics of a table whose rows group the trials of `pool` by `row_of` (a Series on
    pool's index: a variant, a configuration's index).

    `pool` holds the trials to average (the caller chose their statuses); those without a finite
    `metric` are left out. Per row: n, mean, std and the percentile-bootstrap 95% interval of the
    mean of `metric` (%) over its trials (`stats.summarize_seeds`); a row of ONE trial gets
    Wilson's interval instead, from its per-video predictions (k correct of n test videos), when
    `predictions` (a `records.load_predictions` frame of the evaluation `metric` comes from) holds
    them. Against `reference` (a value of `row_of`): `stats.compare_to_reference` on per-video
    correctness when every trial of the pool has predictions, else on the per-run accuracies; a
    run is a (trainer.seed, data.split) pair; two trials of a row with the same pair (a stage run
    twice and pooled) count once, the later one.
    """
    ok = _finite_mask(pool[metric]) if metric in pool else np.zeros(len(pool), dtype=bool)
    pool = pool.loc[ok]
    rows = row_of.loc[pool.index]
    values = pd.to_numeric(pool[metric], errors="coerce").astype(float)
    summary = stats.summarize_seeds(pd.DataFrame({"row": rows.to_numpy(), "v": values.to_numpy()}), ["row"], "v",
                                    scale=100.0, n_resamples=n_resamples).set_index("row")
    summary["interval"] = np.where(summary["n"] > 1, "bootstrap", "")
    summary["n_videos"] = np.nan
    notes: list[str] = []
    keys = _seed_split(pool).assign(row=rows.to_numpy(), run_id=pool["run_id"].to_numpy())
    if "start_time" in pool:
        keys["_t"] = pool["start_time"].to_numpy()
        keys = keys.sort_values("_t", kind="mergesort")
    dup = keys.duplicated(["row", "seed", "split"], keep="last")
    if dup.any():
        notes.append(f"{int(dup.sum())} trial(s) repeat a (row, seed, split) of a later one (a stage run twice); "
                     "the comparisons pair the later ones")
        keys = keys[~dup]
    per_video = None
    if predictions is not None and len(pool):
        wanted = set(pool["run_id"])
        preds = predictions[predictions["run_id"].isin(wanted)]
        have = set(preds["run_id"].unique())
        if have >= wanted:
            per_video = preds
        elif have:
            notes.append(f"{len(wanted - have)} of {len(wanted)} trials have no per-video predictions: "
                         "intervals and tests use the per-run accuracies")
    if per_video is not None:
        right = (per_video[PRED].to_numpy() == per_video[LABEL].to_numpy())
        run_codes, run_names = pd.factorize(per_video["run_id"])     # one code per run: cheap at 10⁶ rows
        counts = pd.DataFrame({"sum": np.bincount(run_codes, weights=right, minlength=len(run_names)),
                               "size": np.bincount(run_codes, minlength=len(run_names))},
                              index=pd.Index(run_names.astype(str)))
        run_row = pd.Series(rows.to_numpy(), index=pool["run_id"].to_numpy())
        single = summary.index[summary["n"] == 1]
        if len(single):
            first = pool.assign(_row=rows.to_numpy()).drop_duplicates("_row").set_index("_row")["run_id"]
            ids = first.reindex(single).to_numpy()
            k, n = counts["sum"].reindex(ids).to_numpy(float), counts["size"].reindex(ids).to_numpy(float)
            low, high = stats.wilson_interval(k, n)
            summary.loc[single, "low"], summary.loc[single, "high"] = np.asarray(low) * 100, np.asarray(high) * 100
            summary.loc[single, "interval"] = "Wilson"
            summary.loc[single, "n_videos"] = n
        videos = counts["size"].groupby(run_row.reindex(counts.index).to_numpy()).max()
        summary.loc[summary["n"] > 1, "n_videos"] = videos.reindex(summary.index[summary["n"] > 1]).to_numpy()
    versus = None
    if reference is not None and reference in set(rows):
        if per_video is not None:
            keep = np.isin(run_codes, np.flatnonzero(pd.Index(run_names.astype(str)).isin(keys["run_id"])))
            meta = keys.set_index("run_id").reindex(run_names.astype(str))    # per run code
            codes = run_codes[keep]
            data = pd.DataFrame({"row": meta["row"].to_numpy()[codes], "seed": meta["seed"].to_numpy()[codes],
                                 "split": meta["split"].to_numpy()[codes], VIDEO: per_video[VIDEO].to_numpy()[keep],
                                 "correct": right[keep]})
        else:
            acc = values.groupby(pool["run_id"].to_numpy()).first()
            data = keys[["row", "seed", "split"]].assign(accuracy=acc.reindex(keys["run_id"]).to_numpy())
        try:
            versus = stats.compare_to_reference(data, reference, alpha=alpha).set_index("row")
        except ValueError as e:
            notes.append(f"no paired comparison: {e}")
    return Evidence(summary, versus, reference, notes)


def ci(low: float, high: float, digits: int = 1) -> str:
    """"[48.9, 55.0]", or "—" without an interval."""
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float))) or not (math.isfinite(low)
                                                                                       and math.isfinite(high)):
        return DASH
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def p_text(p: float) -> str:
    if not isinstance(p, (int, float)) or not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def effect_text(versus: Optional[pd.DataFrame], row: Any, digits: int = 1) -> str:
    """"-15.2 [-18.0, -12.4]": the row minus the reference, in points, with its 95% interval."""
    if versus is None or row not in versus.index or not math.isfinite(float(versus.at[row, "effect"])):
        return DASH
    r = versus.loc[row]
    interval = ci(float(r["effect_low"]), float(r["effect_high"]), digits)
    return f"{r['effect']:+.{digits}f}" + (f" {interval}" if interval != DASH else "")


def verdict_text(ev: Evidence, row: Any, reference_label: str) -> str:
    mark = ev.mark(row)
    if mark == "reference":
        return "reference"
    if mark == SAME:
        return f"{SAME} {reference_label}"
    return mark


def _versus_columns(ev: Evidence, row: Any) -> dict[str, Any]:
    """The numbers of one row's comparison, for a table's `data`."""
    if ev.versus is None or row not in ev.versus.index:
        return {"effect_pts": np.nan, "effect_low_pts": np.nan, "effect_high_pts": np.nan, "p_value": np.nan,
                "p_holm": np.nan, "indistinguishable": (row != ev.reference) and ev.versus is not None,
                "test": "reference" if row == ev.reference else ""}
    r = ev.versus.loc[row]
    return {"effect_pts": r["effect"], "effect_low_pts": r["effect_low"], "effect_high_pts": r["effect_high"],
            "p_value": r["p_value"], "p_holm": r["p_holm"], "indistinguishable": bool(r["indistinguishable"]),
            "test": r["test"], "paired_runs": int(r["n_runs"])}


def _test_note(ev: Evidence, reference_label: str, metric: str) -> list[str]:
    if ev.versus is None:
        return ([f"no comparison with {reference_label}: it has no trial with a finite {metric}"]
                if ev.reference is not None else []) + ev.notes
    tests = sorted(set(ev.versus["test"]))
    return [f"vs {reference_label}: the row minus {reference_label} in points of {metric} with its 95% interval; "
            f"p two-sided, Holm-adjusted over the {len(ev.versus)} rows compared; {SAME} = cannot be told apart "
            f"from {reference_label} (Holm p >= {ALPHA:g} or no test possible); test: {'; '.join(tests)}"] + ev.notes


# --------------------------------------------------------------------------- the tables

def ablation_table(runs: pd.DataFrame, *, metric: str = REPORTED, statuses: Sequence[str] = AVERAGED,
                   paper: bool = False, digits: int = 1, predictions: Optional[pd.DataFrame] = None) -> Table:
    """The papers' Table 2 layout: one row per ablation variant (full Rev2Net, without each decoder,
    without DDP, the DDP forms, the decoder architectures, I3D), mean ± std over seeds, its 95%
    interval, and each variant against Rev2Net (`evidence`: Holm over the variants)."""
    return variants_table(runs, stage="ablation", metric=metric, statuses=statuses, paper=paper, digits=digits,
                          predictions=predictions)


def compare_table(runs: pd.DataFrame, *, metric: str = REPORTED, statuses: Sequence[str] = AVERAGED,
                  digits: int = 1, predictions: Optional[pd.DataFrame] = None) -> Table:
    """The compare stage: one row per model (variant), as `ablation_table`, against Rev2Net."""
    return variants_table(runs, stage="compare", metric=metric, statuses=statuses, digits=digits,
                          predictions=predictions)


def variants_table(runs: pd.DataFrame, *, stage: str, metric: str = REPORTED, statuses: Sequence[str] = AVERAGED,
                   paper: bool = False, digits: int = 1, predictions: Optional[pd.DataFrame] = None,
                   reference: str = registry.REV2NET) -> Table:
    """One row per model variant of a `stage` (ablation, compare), per dataset: mean ± std over its
    seeds (and splits) of `metric` (test/top1, or val/top1 for older runs), the 95% interval (the
    bootstrap of the mean; Wilson's for a single trial), the number of seeds, and the row against
    `reference` (Rev2Net): the difference in points with its interval, the Holm-adjusted p, and ≈
    where the two cannot be told apart. `predictions`: `records.load_predictions(..., "test")` of
    these trials, for the per-video tests."""
    part = runs[runs["stage"] == stage] if "stage" in runs else runs.iloc[0:0]
    if part.empty:
        raise LookupError(f"no {stage}-stage trials (run `python orchestration/grid.py --stage {stage}`)")
    metric, notes = reported_metric(part, metric)
    part = part.assign(_variant=variant_of(part), _dataset=part.get("data.name", pd.Series("?", index=part.index)))
    counts = summarize(part, ["_variant", "_dataset"], metric, statuses=statuses)
    datasets = list(dict.fromkeys(part["_dataset"]))
    averaged = part[part["status"].isin(list(statuses))]
    proof = {d: evidence(averaged[averaged["_dataset"] == d], averaged.loc[averaged["_dataset"] == d, "_variant"],
                         metric, reference=reference, predictions=predictions) for d in datasets}
    ref_label = registry.label(reference) if reference in registry.VARIANTS else str(reference)
    data_rows, shown_rows = [], []
    for variant in _order_variants(counts["_variant"].unique()):
        shown = {"variant": registry.label(variant)}
        for d in datasets:
            match = counts[(counts["_variant"] == variant) & (counts["_dataset"] == d)]
            if match.empty:
                continue
            s = match.to_dict("records")[0]
            ev = proof[d]
            row = ev.rows.loc[variant].to_dict() if variant in ev.rows.index else {"low": np.nan, "high": np.nan,
                                                                                   "interval": "", "n_videos": np.nan}
            suffix = f" ({DATASET_LABELS.get(d, d)})" if len(datasets) > 1 else ""
            column = f"{DATASET_LABELS.get(d, d)} {METRIC_LABELS.get(metric, metric)} (%)"
            shown[column] = pm(s["mean"], s["std"], s["n"], digits)
            shown[f"95% CI{suffix}"] = ci(row["low"], row["high"], digits)
            shown[f"seeds{suffix}"] = str(s["n"])
            shown[f"vs {ref_label} (points){suffix}"] = effect_text(ev.versus, variant, digits) \
                if variant != reference else DASH
            p_holm = ev.versus.at[variant, "p_holm"] if ev.versus is not None and variant in ev.versus.index else np.nan
            shown[f"p (Holm){suffix}"] = p_text(p_holm)
            shown[f"verdict{suffix}"] = verdict_text(ev, variant, ref_label)
            shown[f"not averaged{suffix}"] = not_averaged(s, statuses, metric)
            data_rows.append({"variant": variant, "label": shown["variant"], "dataset": d, "metric": metric,
                              "n": s["n"], "mean_pct": s["mean"], "std_pct": s["std"], "ci_low_pct": row["low"],
                              "ci_high_pct": row["high"], "interval": row["interval"], "n_videos": row["n_videos"],
                              **_versus_columns(ev, variant), **{s_: s[s_] for s_ in (*STATUSES, "missing")}})
        if paper and stage == "ablation":
            for key, name in published.ABLATION["columns"].items():
                value = published.ABLATION["rows"].get(variant, {}).get(key)
                shown[f"paper: {name} (%)"] = num(value)
                for r in data_rows:
                    if r["variant"] == variant:
                        r[f"paper_{key}_pct"] = value if value is not None else np.nan
        shown_rows.append(shown)
    notes = [_averaging_note(metric, statuses, "seeds") + "; 95% CI: percentile bootstrap of the mean over seeds "
             "(and splits), Wilson's interval from the test videos for a single trial"] + notes + budget_note(part)
    for d in datasets:
        notes += [(f"{DATASET_LABELS.get(d, d)}: " if len(datasets) > 1 else "") + n
                  for n in _test_note(proof[d], ref_label, metric)]
    if paper and stage == "ablation":
        notes.append(f"paper: {published.ABLATION['source']}; its numbers are the full I3D on UCF101/HMDB51, "
                     f"ours are {', '.join(DATASET_LABELS.get(d, d) for d in datasets)} with this repository's settings")
    title = (f"Ablation: {METRIC_LABELS.get(metric, metric)} per model variant" if stage == "ablation"
             else f"{stage.capitalize()}: {METRIC_LABELS.get(metric, metric)} per model")
    return Table(stage, title, pd.DataFrame(data_rows), pd.DataFrame(shown_rows).fillna(""), notes, evidence=proof)


def budget_note(part: pd.DataFrame) -> list[str]:
    """What each variant trained on: the same epochs (said by nothing: the default), or the same
    wall time (`trainer.max_train_s`), where the epochs differ by variant and are named here."""
    budget = pd.to_numeric(part.get("trainer.max_train_s", pd.Series(dtype=float)), errors="coerce").fillna(0)
    if not (budget > 0).any():
        return []
    cap = pd.to_numeric(part.get("trainer.max_epochs", pd.Series(np.nan, index=part.index)), errors="coerce")
    trained = part.assign(_epochs=pd.to_numeric(part["epochs"], errors="coerce"), _capped=lambda f: f["_epochs"] >= cap)
    spans = [f"{registry.label(v) if v in registry.VARIANTS else v} "
             + (f"{int(e.min())}" if e.min() == e.max() else f"{int(e.min())}-{int(e.max())}")
             + (" (trainer.max_epochs reached before the budget)" if g["_capped"].any() else "")
             for v, g in trained.groupby("_variant") for e in [g["_epochs"]]]
    budgets = ", ".join(f"{b:g} s" for b in sorted(set(budget[budget > 0])))
    return [f"equal wall time: every trial trained whole epochs while the next fit in trainer.max_train_s = {budgets} "
            "of training and validation at its mean epoch time (not counting its final evaluations), each LR "
            "schedule spanning the budget; epochs trained: "
            + "; ".join(spans)
            + (" (trials without the budget too: not on equal terms)" if (budget == 0).any() else "")]


MODALITY_LABELS = {"rgb": "RGB", "flow": "flow", "rgb_flow": "RGB + flow"}   # registry.Variant.modality


def systems_table(runs: pd.DataFrame, *, stage: str = "compare", metric: str = REPORTED,
                  statuses: Sequence[str] = AVERAGED, paper: bool = False, digits: int = 1,
                  predictions: Optional[pd.DataFrame] = None) -> Table:
    """The papers' comparison layout (2020 Table 2, 2018 Table 5): one row per system and dataset,
    one column per input modality (RGB, flow, RGB + flow; `registry.Variant.system` / `.modality`
    say where each variant goes). Each cell: mean ± std over seeds (and splits) of `metric`, its
    95% interval, and ≈ where it cannot be told apart from Rev2Net on the same dataset (the
    same statistics as `variants_table`: Holm over every variant of the stage). With `paper`, the
    papers' rows follow (`analysis.paper.COMPARE`), each with its pretraining and its source;
    variants that are not a system's main row (ablations, DCD's single branches, hidden two-stream
    (a)/(b)) are in the per-variant compare table, not here."""
    part = runs[runs["stage"] == stage] if "stage" in runs else runs.iloc[0:0]
    if part.empty:
        raise LookupError(f"no {stage}-stage trials (run `python orchestration/grid.py --stage {stage}`)")
    metric, notes = reported_metric(part, metric)
    part = part.assign(_variant=variant_of(part), _dataset=part.get("data.name", pd.Series("?", index=part.index)))
    placed = {v: (registry.VARIANTS[v].system, registry.VARIANTS[v].modality)
              for v in part["_variant"].unique() if v in registry.VARIANTS and registry.VARIANTS[v].system}
    if not placed:
        raise LookupError(f"no {stage}-stage trial is a system's main variant (registry.Variant.system)")
    counts = summarize(part, ["_variant", "_dataset"], metric, statuses=statuses)
    averaged = part[part["status"].isin(list(statuses))]
    datasets = list(dict.fromkeys(part["_dataset"]))
    proof = {d: evidence(averaged[averaged["_dataset"] == d], averaged.loc[averaged["_dataset"] == d, "_variant"],
                         metric, reference=registry.REV2NET, predictions=predictions) for d in datasets}
    systems = list(dict.fromkeys(placed[v][0] for v in _order_variants(list(placed))))
    pretrained = part.get("model.pretrained", pd.Series(index=part.index, dtype=object))
    data_rows, shown_rows = [], []
    for d in datasets:
        for system in systems:
            shown = {"system": system, "dataset": DATASET_LABELS.get(d, d)}
            seeds, inits = [], set()
            for modality, heading in MODALITY_LABELS.items():
                variant = next((v for v, (s_, m) in placed.items() if s_ == system and m == modality), None)
                match = counts[(counts["_variant"] == variant) & (counts["_dataset"] == d)]
                if variant is None or match.empty:
                    shown[f"{heading} (%)"] = DASH
                    continue
                s = match.to_dict("records")[0]
                ev = proof[d]
                shown[f"{heading} (%)"] = _cell(ev, variant, pm(s["mean"], s["std"], s["n"], digits), digits)
                seeds.append(str(s["n"]))
                inits |= {str(x) for x in pretrained[(part["_variant"] == variant) & (part["_dataset"] == d)].dropna()}
                interval = ev.rows.loc[variant] if variant in ev.rows.index else None
                data_rows.append({"system": system, "modality": modality, "variant": variant, "dataset": d,
                                  "source": "ours", "metric": metric, "n": s["n"], "mean_pct": s["mean"],
                                  "std_pct": s["std"],
                                  "ci_low_pct": interval["low"] if interval is not None else np.nan,
                                  "ci_high_pct": interval["high"] if interval is not None else np.nan,
                                  **_versus_columns(ev, variant), **{s_: s[s_] for s_ in (*STATUSES, "missing")}})
            if not seeds:
                continue
            shown["pretrained"] = ", ".join(sorted(inits)) or "none"
            shown["seeds"] = "/".join(seeds)
            shown_rows.append(shown)
    ref_label = registry.label(registry.REV2NET)
    notes = [_averaging_note(metric, statuses, "seeds") + "; cells: mean ± std [95% CI: bootstrap of the mean, "
             f"Wilson for one trial]; {SAME}: cannot be told apart from {ref_label} on the same dataset (Holm over "
             "every variant of the stage); seeds per filled cell, left to right"] + notes + budget_note(part)
    for d in datasets:
        notes += [(f"{DATASET_LABELS.get(d, d)}: " if len(datasets) > 1 else "") + n
                  for n in _test_note(proof[d], ref_label, metric)]
    if paper:
        for row in published.COMPARE["rows"]:
            shown = {"system": f"paper: {row['system']}", "dataset": DATASET_LABELS.get(row["dataset"], row["dataset"]),
                     **{f"{h} (%)": num(row.get(m), 2 if row.get(m) and round(row[m], 1) != row[m] else 1)
                        for m, h in MODALITY_LABELS.items()},
                     "pretrained": row["pretrained"], "seeds": ""}
            shown_rows.append(shown)
            for m in MODALITY_LABELS:
                if row.get(m) is not None:
                    data_rows.append({"system": row["system"], "modality": m, "dataset": row["dataset"],
                                      "source": row["source"], "metric": "top1", "mean_pct": row[m],
                                      "pretrained": row["pretrained"]})
        sources = list(dict.fromkeys(f"{r['system']} ({DATASET_LABELS.get(r['dataset'], r['dataset'])}): {r['source']}"
                                     for r in published.COMPARE["rows"]))
        notes.append("paper rows: the full models as published, not this repository's runs; " + "; ".join(sources))
    return Table(f"{stage}_systems", f"{stage.capitalize()}: {METRIC_LABELS.get(metric, metric)} per system and input",
                 pd.DataFrame(data_rows), pd.DataFrame(shown_rows).fillna(""), notes, evidence=proof)


def _cell(ev: Evidence, row: Any, text: str, digits: int) -> str:
    """A table cell with the row's 95% interval and, where it cannot be told apart from the
    reference, the ≈ mark in front: "≈ 52.1 ± 3.0 [48.9, 55.0]"."""
    if text == DASH or row not in ev.rows.index:
        return text
    interval = ci(ev.rows.at[row, "low"], ev.rows.at[row, "high"], digits)
    mark = f"{SAME} " if ev.mark(row) == SAME else ""
    return mark + text + (f" {interval}" if interval != DASH else "")


def shuffle_table(runs: pd.DataFrame, *, statuses: Sequence[str] = AVERAGED, paper: bool = False,
                  digits: int = 1, protocols: Sequence[str] = SHUFFLE_PROTOCOLS,
                  predictions: Optional[dict[str, pd.DataFrame]] = None) -> Table:
    """Table 3 layout (2018 paper): top-1 under no, long-term, short-term and complete frame
    shuffling (8-frame blocks), one row per model variant; the paper's rows below ours. Each cell:
    mean ± std over seeds, its 95% interval, and ≈ where it cannot be told apart from Rev2Net under
    the same protocol (`evidence`, Holm per protocol). `predictions`: evaluation ("shuffle/<p>")
    -> `records.load_predictions` frame, for the per-video tests."""
    present = [p for p in protocols if f"shuffle/{p}/top1" in runs]
    if not present:
        raise LookupError("no trial has shuffle/<protocol>/top1 metrics (the ablation and compare stages log them)")
    has_any = runs[[f"shuffle/{p}/top1" for p in present]].notna().any(axis=1)
    evaluated = runs["stage"].isin(["ablation", "compare"]) if "stage" in runs else False
    pool = runs[has_any | evaluated]   # ablation/compare trials that ended without them are counted, not dropped
    pool = pool.assign(_variant=variant_of(pool))
    per_protocol = {p: summarize(pool, ["_variant"], f"shuffle/{p}/top1", statuses=statuses).set_index("_variant")
                    for p in present}
    averaged = pool[pool["status"].isin(list(statuses))]
    proof = {p: evidence(averaged, averaged["_variant"], f"shuffle/{p}/top1", reference=registry.REV2NET,
                         predictions=(predictions or {}).get(f"shuffle/{p}")) for p in present}
    data_rows, shown_rows = [], []
    for variant in _order_variants(pool["_variant"].unique()):
        first = per_protocol[present[0]].loc[variant].to_dict()
        seeds = int(first["n"])
        shown = {"model": registry.label(variant)}
        row = {"model": variant, "source": "ours", "n": seeds}
        for p in present:
            s = per_protocol[p].loc[variant].to_dict()
            cell = pm(s["mean"], s["std"], s["n"], digits)
            same = s["n"] == seeds or cell == DASH   # a protocol measured on fewer trials says so
            cell = cell if same else f"{cell} (n={int(s['n'])})"
            shown[f"{PROTOCOL_LABELS.get(p, p)} (%)"] = _cell(proof[p], variant, cell, digits)
            ev = proof[p].rows.loc[variant] if variant in proof[p].rows.index else None
            versus = _versus_columns(proof[p], variant)
            row.update({f"{p}_mean_pct": s["mean"], f"{p}_std_pct": s["std"], f"{p}_n": s["n"],
                        f"{p}_ci_low_pct": ev["low"] if ev is not None else np.nan,
                        f"{p}_ci_high_pct": ev["high"] if ev is not None else np.nan,
                        f"{p}_vs_rev2net_pts": versus["effect_pts"], f"{p}_p_holm": versus["p_holm"],
                        f"{p}_indistinguishable": versus["indistinguishable"]})
        shown["seeds"] = str(seeds)
        shown["not averaged"] = not_averaged(first, statuses, f"shuffle/{present[0]}/top1")
        row.update({s_: first[s_] for s_ in STATUSES})
        data_rows.append(row)
        shown_rows.append(shown)
    ref_label = registry.label(registry.REV2NET)
    notes = [_averaging_note("shuffle/<protocol>/top1", statuses, "seeds").replace("final-epoch ", "")
             + "; measured once after the last epoch on the test list, blocks of 8 frames; [95% CI]: percentile "
             f"bootstrap of the mean over seeds (Wilson for one trial); {SAME}: cannot be told apart from {ref_label} "
             "under the same protocol (Holm over the variants, per protocol)"]
    for p in present:
        notes += [f"{PROTOCOL_LABELS.get(p, p)}: {n}" for n in _test_note(proof[p], ref_label, f"shuffle/{p}/top1")[1:]]
    tests = sorted({t for p in present if proof[p].versus is not None for t in proof[p].versus["test"]})
    if tests:
        notes.append(f"tests: {'; '.join(tests)}")
    if paper:
        for name, values in published.SHUFFLE["rows"].items():
            shown = {"model": f"paper: {name}"}
            row = {"model": name, "source": published.SHUFFLE["source"]}
            for p in present:
                shown[f"{PROTOCOL_LABELS.get(p, p)} (%)"] = num(values.get(p), 2 if name.startswith("TSN") else 1)
                row[f"{p}_mean_pct"] = values.get(p) if values.get(p) is not None else np.nan
            shown.update({"seeds": "", "not averaged": ""})
            data_rows.append(row)
            shown_rows.append(shown)
        notes.append(f"paper rows: {published.SHUFFLE['source']}, the full models on UCF101, not this repository's runs")
    return Table("shuffle", "Frame-shuffle robustness: top-1 under each shuffle protocol",
                 pd.DataFrame(data_rows), pd.DataFrame(shown_rows).fillna(""), notes)


def grid_marginals(runs: pd.DataFrame, *, metric: str = "val/top1", mode: str = "max", keys: Sequence[str] = WEIGHTS,
                   statuses: Sequence[str] = AVERAGED, name: str = "grid_marginals", stage: str = "",
                   digits: int = 1) -> Table:
    """Per weight and value: the best and the mean of `metric` over the trials with that value
    (the marginal effect), and how many trials each number rests on."""
    keys = [k for k in keys if k in runs]
    if runs.empty or not keys:
        raise LookupError("no trials with loss-weight params to tabulate")
    data_rows, shown_rows = [], []
    averaged = runs[runs["status"].isin(list(statuses)) & _finite_mask(runs[metric])] if metric in runs else runs.iloc[0:0]
    for k in keys:
        counts = summarize(runs.dropna(subset=[k]), [k], metric, statuses=statuses, mode=mode).sort_values(k)
        interval = stats.summarize_seeds(averaged.dropna(subset=[k]), [k], metric, scale=100.0).set_index(k) \
            if not averaged.empty else pd.DataFrame(columns=["low", "high"])
        for s in counts.to_dict("records"):
            low = interval["low"].get(s[k], np.nan) if len(interval) else np.nan
            high = interval["high"].get(s[k], np.nan) if len(interval) else np.nan
            data_rows.append({"weight": k, "value": s[k], "metric": metric, "trials": s["trials"],
                              "best_pct": s["best"], "n": s["n"], "mean_pct": s["mean"], "std_pct": s["std"],
                              "ci_low_pct": low, "ci_high_pct": high,
                              **{s_: s[s_] for s_ in (*STATUSES, "missing")}})
            shown_rows.append({"weight": WEIGHT_NAMES.get(k, k), "value": weight_value(s[k]),
                               "trials": str(s["trials"]), "best (%)": num(s["best"], digits),
                               "mean ± std (%)": pm(s["mean"], s["std"], s["n"], digits),
                               "95% CI": ci(low, high, digits), "n": str(s["n"]),
                               "not averaged": not_averaged(s, statuses, metric)})
    label = f"{stage} grid" if stage else "grid"
    notes = ["best: the highest value over completed and stopped-early trials (as orchestration.records.best_config ranks them)",
             _averaging_note(metric, statuses) + " (n); 95% CI: percentile bootstrap of that mean over its trials "
             "(how much it depends on which trials, the other weights' settings included, were averaged)",
             "each row pools every trial with that value, whatever the other weights"]
    weights = [k for k in keys if k in averaged]
    if len(averaged) and weights:
        notes.append(stats.design_of(averaged, weights).statement)
    title = f"{label.capitalize()}: marginal effect of each loss weight on {METRIC_LABELS.get(metric, metric)}"
    return Table(name, title, pd.DataFrame(data_rows), pd.DataFrame(shown_rows), notes)


def configurations(runs: pd.DataFrame, *, metric: str = SELECTED, reported: str = REPORTED, mode: str = "max",
                   keys: Sequence[str] = WEIGHTS, statuses: Sequence[str] = RANKED,
                   predictions: Optional[pd.DataFrame] = None) -> tuple[pd.DataFrame, Evidence, str, list[str]]:
    """A grid stage's configurations in `best_config`'s order (`rank_trials` on `metric`: the
    validation metric), and the statistics of `reported` (the test metric) for each of them against
    the best (rank 1; Holm over every other configuration ranked). Returns (ranked, evidence keyed
    by rank, the reported metric, notes). The trials averaged per configuration are its ranked runs
    (`run_ids`: every seed)."""
    keys = [k for k in keys if k in runs]
    ranked, excluded = rank_trials(runs, metric=metric, mode=mode, keys=keys, statuses=statuses)
    if ranked.empty:
        raise LookupError(f"no {', '.join(statuses)} trial has a finite {metric!r}")
    reported, notes = reported_metric(runs, reported, metric)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    member = pd.Series({run: rank for rank, ids in zip(ranked["rank"], ranked[RUN_IDS]) for run in ids}, dtype=int)
    pool = runs[runs["run_id"].isin(member.index)]
    row_of = pd.Series(member.reindex(pool["run_id"]).to_numpy(), index=pool.index)
    proof = evidence(pool, row_of, reported, reference=1, predictions=predictions)
    ranked.attrs["excluded"] = excluded
    return ranked, proof, reported, notes


def top_trials(runs: pd.DataFrame, *, k: int = 10, metric: str = SELECTED, mode: str = "max",
               keys: Sequence[str] = WEIGHTS, statuses: Sequence[str] = RANKED, name: str = "top_trials",
               stage: str = "", paper: bool = False, digits: int = 1, reported: str = REPORTED,
               predictions: Optional[pd.DataFrame] = None) -> Table:
    """The `k` best configurations in `best_config`'s order (rank 1 is `best_config`'s choice),
    ranked by `metric` (val/top1; the mean over seeds where a configuration was re-run), each with
    its `reported` accuracy (test/top1) and 95% interval, and against rank 1: the difference in
    points with its interval, the Holm-adjusted p (over every configuration ranked) and ≈ where
    it cannot be told apart from the best."""
    keys = [key for key in keys if key in runs]
    if runs.empty:
        raise LookupError("no trials to rank")
    ranked, proof, reported, notes_reported = configurations(runs, metric=metric, reported=reported, mode=mode,
                                                             keys=keys, statuses=statuses, predictions=predictions)
    excluded = ranked.attrs["excluded"]
    aggregated = bool(ranked.attrs.get("aggregated"))
    top = ranked.head(k)
    cols = {"best_epoch/val/top1": np.nan, "best_epoch": np.nan}
    top = top.assign(**{c: top[c] if c in top else v for c, v in cols.items()})
    rows = proof.rows.reindex(top["rank"])
    data = pd.DataFrame({"rank": top["rank"].to_numpy(), "run_id": top["run_id"].values,
                         "run_name": top["run_name"].values, **{key: top[key].values for key in keys},
                         f"{metric}_pct": top[metric].astype(float).values * 100,
                         "seeds": [" ".join(str(v) for v in s) for s in top[SEEDS]], "n_seeds": top[N_SEEDS].values,
                         f"{reported}_pct": rows["mean"].to_numpy(), f"{reported}_std_pct": rows["std"].to_numpy(),
                         "ci_low_pct": rows["low"].to_numpy(), "ci_high_pct": rows["high"].to_numpy(),
                         "interval": rows["interval"].to_numpy(), "n_videos": rows["n_videos"].to_numpy(),
                         "best_epoch_val_top1_pct": top["best_epoch/val/top1"].astype(float).values * 100,
                         "best_epoch": top["best_epoch"].values, "epochs": top["epochs"].values,
                         "status": top["status"].values, "run_ids": [" ".join(r) for r in top[RUN_IDS]]})
    versus = pd.DataFrame([_versus_columns(proof, r) for r in data["rank"]])
    data = pd.concat([data, versus], axis=1)
    label = METRIC_LABELS.get(metric, metric) + (" (mean over seeds)" if aggregated else "")
    shown = pd.DataFrame({"rank": data["rank"].astype(str),
                          **{WEIGHT_SYMBOLS.get(key, key): [weight_value(v) for v in data[key]] for key in keys},
                          "seeds": [str(n) for n in data["n_seeds"]],
                          f"{label} (%)": [num(v, digits) for v in data[f"{metric}_pct"]],
                          f"{METRIC_LABELS.get(reported, reported)} (%)": [
                              pm(m, sd, n, digits) for m, sd, n in zip(data[f"{reported}_pct"],
                                                                      data[f"{reported}_std_pct"], data["n_seeds"])],
                          "95% CI": [ci(lo, hi, digits) for lo, hi in zip(data["ci_low_pct"], data["ci_high_pct"])],
                          "vs best (points)": [effect_text(proof.versus, r, digits) if r != 1 else DASH
                                               for r in data["rank"]],
                          "p (Holm)": [p_text(p) for p in data["p_holm"]],
                          "verdict": [verdict_text(proof, r, "best") for r in data["rank"]],
                          "best epoch (%)": [num(v, digits) for v in data["best_epoch_val_top1_pct"]],
                          "at epoch": [str(int(e)) if pd.notna(e) else DASH for e in data["best_epoch"]],
                          "epochs": data["epochs"].astype(str), "status": data["status"].str.replace("_", " "),
                          "run": [r[:8] for r in data["run_id"]]})
    tied = ranked[ranked[metric] == ranked[metric].iloc[0]]    # rank 1 is best_config's choice
    counts = runs["status"].value_counts()
    left_out = [f"{int(counts[s])} {s.replace('_', ' ')}" for s in STATUSES if s not in statuses and counts.get(s, 0)]
    notes = [f"ranked by final-epoch {metric} among {' and '.join(s.replace('_', ' ') for s in statuses)} trials; "
             "equal values are ordered by lower val/loss, then smaller weights (orchestration.records.best_config)",
             f"{len(ranked)} configurations ranked" + (f"; not ranked: {', '.join(left_out)}" if left_out else "")
             + (f"; {len(excluded)} without a finite {metric}" if excluded else "")]
    if aggregated:
        notes.append(f"some configurations were re-run with more seeds (confirmation): each configuration is ranked by "
                     f"the MEAN of {metric} over its seeds, and those with more than one seed rank ahead of those with "
                     "one (a single seed's value carries the optimism it was selected for); seeds = runs averaged")
    notes.append(f"{METRIC_LABELS.get(reported, reported)}: reported, not used for ranking; mean ± std over the "
                 "configuration's seeds; 95% CI: Wilson's interval from the test videos for one seed, the percentile "
                 "bootstrap of the mean for several")
    notes += notes_reported + _test_note(proof, "best", reported)
    if len(tied) > 1:
        notes.append(f"{len(tied)} configurations tie at the top value {tied[metric].iloc[0] * 100:.{digits + 2}f}%; "
                     f"rank 1 ({tied['run_id'].iloc[0][:8]}) wins the tie-break")
    if paper:
        optimum = published.OPTIMUM["weights"]
        match = np.ones(len(ranked), dtype=bool)
        for key in keys:
            match &= np.isclose(ranked[key].astype(float), optimum.get(key, np.nan))
        hits = np.flatnonzero(match)
        found = (f"it ranks {hits[0] + 1} here ({ranked[metric].iloc[hits[0]] * 100:.{digits}f}%)" if len(hits)
                 else "it is not among these trials")
        notes.append(f"paper's optimum ({published.OPTIMUM['source']}): "
                     + ", ".join(f"{WEIGHT_SYMBOLS[key]}={v:g}" for key, v in optimum.items()) + f"; {found}")
    label = f"{stage} stage" if stage else "sweep"
    title = f"Top {len(top)} configurations of the {label} by {METRIC_LABELS.get(metric, metric)}"
    return Table(name, title, data, shown, notes, evidence={"top": proof, "ranked": ranked, "reported": reported})


def _domain(runs: pd.DataFrame, name: str, domain: str) -> list[str]:
    """Each run's dataset by `name`, the generated one with its look (`domain`), as the cross
    stage's directions name them (records.dataset_label): two columns, not one averaged over both."""
    looks = runs[domain] if domain in runs else [None] * len(runs)
    return [dataset_label(n, d) for n, d in zip(runs[name].astype(str), looks)]


def cross_dataset_table(runs: pd.DataFrame, *, metric: str = "cross/top1", statuses: Sequence[str] = AVERAGED,
                        paper: bool = False, digits: int = 1, predictions: Optional[pd.DataFrame] = None) -> Table:
    """Table 5 layout (2020 paper): top-1 on the target dataset (data.eval_name) of models trained
    on the source (data.name), one column per direction, one row per model variant: mean ± std over
    seeds, its 95% interval, ≈ where it cannot be told apart from Rev2Net in the same direction.
    `predictions`: `records.load_predictions(..., "cross")` of these trials."""
    if "data.eval_name" not in runs or runs["data.eval_name"].isna().all():
        raise LookupError("no cross-dataset trials (data.eval_name set) in these runs")
    pool = runs[runs["data.eval_name"].notna()]
    variants = variant_of(pool)
    adapt = pool["adapt.name"].fillna(ADAPT_NONE) if "adapt.name" in pool else pd.Series(ADAPT_NONE, index=pool.index)
    adapted = (adapt != ADAPT_NONE).any()
    rows = variants.where(adapt == ADAPT_NONE, variants + ADAPT_SEP + adapt) if adapted else variants
    pool = pool.assign(_variant=rows.to_numpy(), _direction=list(zip(_domain(pool, "data.name", "data.synthetic.domain"),
                                                                      _domain(pool, "data.eval_name",
                                                                              "data.eval_synthetic.domain"))))
    reference = registry.REV2NET
    if adapted and (rows == registry.REV2NET + ADAPT_SEP + adapt[adapt != ADAPT_NONE].iloc[0]).any():
        reference = registry.REV2NET + ADAPT_SEP + adapt[adapt != ADAPT_NONE].iloc[0]   # like with like: adapted
    counts = summarize(pool, ["_variant", "_direction"], metric, statuses=statuses)
    directions = list(dict.fromkeys(pool["_direction"]))
    averaged = pool[pool["status"].isin(list(statuses))]
    proof = {d: evidence(averaged[averaged["_direction"] == d], averaged.loc[averaged["_direction"] == d, "_variant"],
                         metric, reference=reference, predictions=predictions) for d in directions}
    if paper:
        directions += [d for row in published.CROSS_DATASET["rows"].values() for d in row if d not in directions]
        directions = list(dict.fromkeys(directions))

    def column(d: tuple[str, str]) -> str:
        return f"{DATASET_LABELS.get(d[0], d[0])} → {DATASET_LABELS.get(d[1], d[1])} (%)"

    data_rows, shown_rows = [], []
    for variant in _order_variants(counts["_variant"].unique()):
        shown = {"model": adapted_label(variant)}
        left, seeds = [], []
        for d in directions:
            match = counts[(counts["_variant"] == variant) & (counts["_direction"] == d)]
            if match.empty:
                shown[column(d)] = DASH
                continue
            s = match.to_dict("records")[0]
            ev = proof[d]
            shown[column(d)] = _cell(ev, variant, pm(s["mean"], s["std"], s["n"], digits), digits)
            seeds.append(str(s["n"]))
            interval = ev.rows.loc[variant] if variant in ev.rows.index else None
            data_rows.append({"model": variant, "source": "ours", "train": d[0], "eval": d[1], "metric": metric,
                              "n": s["n"], "mean_pct": s["mean"], "std_pct": s["std"],
                              "ci_low_pct": interval["low"] if interval is not None else np.nan,
                              "ci_high_pct": interval["high"] if interval is not None else np.nan,
                              **_versus_columns(ev, variant), **{s_: s[s_] for s_ in (*STATUSES, "missing")}})
            gone = not_averaged(s, statuses, metric)
            if gone:
                left.append(f"{DATASET_LABELS.get(d[0], d[0])} → {DATASET_LABELS.get(d[1], d[1])}: {gone}")
        shown["seeds"] = "/".join(seeds)
        shown["not averaged"] = "; ".join(left)
        shown_rows.append(shown)
    ref_label = adapted_label(reference)
    notes = [_averaging_note(metric, statuses, "seeds").replace("final-epoch ", "")
             + "; measured once on the target dataset's test list after the last epoch; [95% CI]: percentile "
             f"bootstrap of the mean over seeds (Wilson for one trial); {SAME}: cannot be told apart from {ref_label} "
             "in the same direction (Holm over the models, per direction)"]
    for d in directions:
        if d in proof:
            notes += [f"{column(d)[:-4]}: {n}" for n in _test_note(proof[d], ref_label, metric)]
    if paper:
        for name, values in published.CROSS_DATASET["rows"].items():
            shown = {"model": f"paper: {name}", **{column(d): num(values.get(d)) for d in directions},
                     "seeds": "", "not averaged": ""}
            shown_rows.append(shown)
            for d, v in values.items():
                data_rows.append({"model": name, "source": published.CROSS_DATASET["source"], "train": d[0],
                                  "eval": d[1], "metric": metric, "mean_pct": v})
        notes.append(f"paper rows: {published.CROSS_DATASET['source']}, not this repository's runs")
    return Table("cross_dataset", f"Cross-dataset: {METRIC_LABELS.get(metric, metric)} on the target dataset",
                 pd.DataFrame(data_rows), pd.DataFrame(shown_rows).fillna(""), notes)


def best_table(stages: dict[str, pd.DataFrame], *, metric: str = SELECTED, mode: str = "max",
               keys: Sequence[str] = WEIGHTS, paper: bool = False, digits: int = 1, reported: str = REPORTED,
               predictions: Optional[pd.DataFrame] = None, tops: Optional[dict[str, Table]] = None) -> Table:
    """The best configuration of each stage (`best_config`: the one the next stage starts from),
    with its value (the mean over seeds where it was re-run), its seeds, its reported test accuracy
    with the 95% interval, how many configurations cannot be told apart from it, ties and the trials
    set aside; with `paper`, the paper's reported optimum. `tops`: the stages' `top_trials` tables
    (same metric), whose statistics are reused instead of computed again."""
    data_rows, shown_rows, notes_reported = [], [], []
    for stage, runs in stages.items():
        try:
            best = best_config(runs, metric=metric, mode=mode, keys=[k for k in keys if k in runs])
            top = (tops or {}).get(stage)
            if top is not None and "top" in top.evidence:
                proof, shown_metric = top.evidence["top"], top.evidence["reported"]
                notes_reported = reported_metric(runs, reported, metric)[1]
            else:
                _, proof, shown_metric, notes_reported = configurations(runs, metric=metric, reported=reported,
                                                                        mode=mode, keys=keys, predictions=predictions)
        except LookupError:
            continue
        row = proof.rows.loc[1].to_dict() if 1 in proof.rows.index else {"mean": np.nan, "std": np.nan, "n": 0,
                                                                          "low": np.nan, "high": np.nan}
        same = len(proof.same())
        data_rows.append({"stage": stage, **best.params, "metric": metric, "value_pct": best.value * 100,
                          "seeds": " ".join(str(v) for v in best.seeds), "reported": shown_metric,
                          "reported_pct": row["mean"], "reported_std_pct": row["std"], "ci_low_pct": row["low"],
                          "ci_high_pct": row["high"], "indistinguishable": same,
                          "run_id": best.run_id, "tied_with": " ".join(best.tied_with),
                          "excluded": " ".join(best.excluded)})
        weights = {WEIGHT_SYMBOLS.get(k, k): weight_value(v) for k, v in best.params.items()}
        shown_rows.append({"stage": stage, **weights, f"{METRIC_LABELS.get(metric, metric)} (%)": num(best.value * 100, digits),
                           "seeds": str(len(best.seeds)),
                           f"{METRIC_LABELS.get(shown_metric, shown_metric)} (%)": pm(row["mean"], row["std"],
                                                                                      int(row["n"]), digits),
                           "95% CI": ci(row["low"], row["high"], digits), f"{SAME} best": str(same),
                           "ties": str(len(best.tied_with)), "run": best.run_id[:8]})
    if not data_rows:
        raise LookupError(f"no stage has a trial with a finite {metric!r} to choose")
    notes = ["best_config: completed and stopped-early trials with a finite value, ranked by the mean over seeds where a "
             "configuration was re-run with more seeds (those first); ties go to the lower val/loss, then the smaller "
             "weights; ties = how many other configurations reach exactly the same value",
             f"{SAME} best: configurations that cannot be told apart from the best on the test list (Holm over the "
             "stage's configurations; see the stage's top table)"] + notes_reported
    if paper:
        shown_rows.append({"stage": "paper", **{WEIGHT_SYMBOLS.get(k, k): weight_value(v)
                                                for k, v in published.OPTIMUM["weights"].items() if k in keys},
                           f"{METRIC_LABELS.get(metric, metric)} (%)": DASH, "ties": "", "run": ""})
        data_rows.append({"stage": "paper", **published.OPTIMUM["weights"], "metric": metric})
        notes.append(f"paper: the optimum reported in {published.OPTIMUM['source']} (found on UCF101)")
    return Table("best", f"Best configuration per stage by {METRIC_LABELS.get(metric, metric)}",
                 pd.DataFrame(data_rows), pd.DataFrame(shown_rows).fillna(""), notes)


def _term(term: str) -> str:
    """"loss.alpha × loss.beta" -> "α × β"."""
    return " × ".join(WEIGHT_SYMBOLS.get(part, part) for part in term.split(" × "))


FANOVA_TREES = 64          # the forest of stats.fanova; fewer above FANOVA_LARGE trials (its tree walks are Python)
FANOVA_LARGE = 400


def importance_table(runs: pd.DataFrame, *, stage: str = "", metric: str = SELECTED, keys: Sequence[str] = WEIGHTS,
                     statuses: Sequence[str] = AVERAGED, digits: int = 1, name: str = "") -> Table:
    """Hyperparameter importance of a grid stage: the share of the variance of `metric` (the
    selection metric) due to each weight, each pair of weights and the rest, with what the design
    can estimate. A full factorial grid: `stats.grid_anova` (exact, on the grid means; seeds
    averaged); anything else: `stats.fanova` (Optuna's random-forest fANOVA, pairwise terms from the
    same forest; an axes design gives main effects only)."""
    keys = [k for k in keys if k in runs]
    pool = runs[runs["status"].isin(list(statuses)) & _finite_mask(runs[metric])] if metric in runs else runs.iloc[0:0]
    if not keys or len(pool) < 2:
        raise LookupError(f"fewer than 2 {' and '.join(statuses)} trials with a finite {metric} and weight params")
    design = stats.design_of(pool, keys)
    if design.kind == "point":
        raise LookupError(design.statement)
    if design.kind == "factorial":
        imp = stats.grid_anova(pool, metric, weights=keys)
        method = ("exact functional ANOVA of the grid means (stats.grid_anova; Hutter, Hoos & Leyton-Brown 2014's "
                  "decomposition computed on the grid itself), each point's seeds averaged")
    else:
        trees = FANOVA_TREES if len(pool) <= FANOVA_LARGE else 16
        try:
            imp = stats.fanova(pool, metric, weights=keys, n_trees=trees)
        except RuntimeError as e:   # its check that the refitted forest is Optuna's failed: no numbers to trust
            raise LookupError(f"fANOVA: {str(e).splitlines()[0]}") from e
        method = (f"random-forest fANOVA (stats.fanova: Optuna's FanovaImportanceEvaluator, {trees} trees, the "
                  "pairwise terms from the same forest); ± = spread over the trees")
    data = imp.assign(importance_pct=imp["importance"] * 100, std_pct=imp["std"] * 100, metric=metric,
                      design=design.kind, trials=len(pool))
    data["weights"] = data["weights"].map(lambda w: " ".join(w))
    shown = pd.DataFrame({"term": [_term(t) for t in imp["term"]],
                          "order": ["main" if o == 1 else "pair" if o == 2 else "3+" for o in imp["order"]],
                          "share of variance (%)": [num(v, digits) if not math.isfinite(sd) else
                                                    f"{v:.{digits}f} ± {sd:.{digits}f}"
                                                    if math.isfinite(v) else DASH
                                                    for v, sd in zip(data["importance_pct"], data["std_pct"])]})
    notes = [f"{len(pool)} {' and '.join(statuses)} trials, objective {metric}; method: {method}",
             design.statement]
    if design.kind == "axes":
        notes.append("pairs and higher order: — (not estimable from a one-weight-at-a-time design)")
    label = f"{stage} stage" if stage else "sweep"
    return Table(name or (f"{stage}_importance" if stage else "importance"),
                 f"Hyperparameter importance in the {label}: share of the variance of {METRIC_LABELS.get(metric, metric)}",
                 data, shown, notes, evidence={"design": design})


def family_of(runs: pd.DataFrame) -> pd.Series:
    """Each trial's model family (rev2net.registry): its model.name param, else its variant's family."""
    variants = variant_of(runs) if not runs.empty else pd.Series([], dtype=object)
    by_variant = variants.map(lambda v: registry.VARIANTS[v].family if v in registry.VARIANTS else v)
    if "model.name" in runs:
        return runs["model.name"].where(runs["model.name"].notna(), by_variant).rename("family")
    return by_variant.rename("family")


def cost_table(runs: pd.DataFrame, *, digits: int = 2) -> Table:
    """What the sweep cost: GPU-hours, CPU-hours and clips per stage and, within it, per model
    family (`stats.sweep_cost`; every trial counted whatever its status: a failed or stopped trial
    held its device too)."""
    if runs.empty or not any(c in runs for c in ("cost/device_s",)):
        raise LookupError("no trial logged cost/device_s (trials log it at their end)")
    frame = runs.assign(family=family_of(runs).to_numpy())
    per_stage = stats.sweep_cost(frame, by=["stage"]).assign(family="all")
    per_family = stats.sweep_cost(frame, by=["stage", "family"])
    data = pd.concat([per_stage, per_family], ignore_index=True)
    order = {s: i for i, s in enumerate(("coarse", "fine", "ablation", "compare"))}
    data = data.assign(_o=data["stage"].map(lambda v: order.get(v, 9)), _all=data["family"] != "all") \
        .sort_values(["_o", "stage", "_all"], kind="mergesort").drop(columns=["_o", "_all"]).reset_index(drop=True)
    if not (data["costed"] > 0).any():
        raise LookupError("no trial logged all of cost/device_s, cost/clips, cost/gpu_fraction")
    shown = pd.DataFrame({"stage": data["stage"].astype(str),
                          "family": [registry.family(f).label if f in registry.FAMILIES else str(f) for f in data["family"]],
                          "trials": data["trials"].astype(str), "costed": data["costed"].astype(str),
                          "GPU-hours": [num(v, digits) for v in data["gpu_hours"]],
                          "CPU-hours": [num(v, digits) for v in data["cpu_hours"]],
                          "clips": [f"{int(v):,}" for v in data["clips"]],
                          "clips per device-s": [num(v, 1) for v in data["clips_per_device_s"]]})
    notes = ["GPU-hours: Σ cost/device_s / 3600 over the trials with a GPU, whose device-seconds are the GPU fraction "
             "they held × their wall time (a quarter of a GPU for an hour is 0.25 GPU-hours); CPU-hours: the same "
             "over the trials without a GPU, whose device-seconds are their processes' CPU-seconds",
             "every trial counts, failed and stopped-early ones too; costed < trials: the sums are lower bounds "
             "(trials without the cost metrics)"]
    return Table("cost", "What the sweep cost: GPU-hours per stage and model family", data, shown, notes)


def scheduler_table(fifo: pd.DataFrame, asha: pd.DataFrame, *, stage: str, metric: str = SELECTED,
                    mode: str = "max", keys: Sequence[str] = WEIGHTS, digits: int = 2,
                    predictions: Optional[pd.DataFrame] = None) -> Table:
    """What ASHA saved against FIFO on the same plan of a stage: trial-epochs trained, GPU-hours, and
    whether it kept the same best configuration (and, if not, whether ASHA's choice can be told
    apart from FIFO's best on FIFO's own trials)."""
    keys = [k for k in keys if k in fifo and k in asha]
    rows, data = [], []
    picks = {}
    for name, runs in (("fifo", fifo), ("asha", asha)):
        cost = stats.sweep_cost(runs.assign(stage=stage), by=["stage"]).iloc[0]
        epochs = pd.to_numeric(runs.get("epochs", pd.Series(dtype=float)), errors="coerce").fillna(0).sum()
        try:
            best = best_config(runs, metric=metric, mode=mode, keys=keys)
        except LookupError:
            best = None
        picks[name] = best
        data.append({"scheduler": name, "trials": len(runs), "trial_epochs": int(epochs), "gpu_hours": cost["gpu_hours"],
                     "cpu_hours": cost["cpu_hours"], "costed": int(cost["costed"]),
                     **({k: best.params[k] for k in keys} if best else {}),
                     "best_value_pct": best.value * 100 if best else np.nan})
    same = bool(picks["fifo"] and picks["asha"] and all(
        np.isclose(float(picks["fifo"].params[k]), float(picks["asha"].params[k])) for k in keys))
    verdict = "same configuration" if same else "different configuration"
    if not same and picks["fifo"] and picks["asha"]:
        ranked, proof, _, _ = configurations(fifo, metric=metric, mode=mode, keys=keys, predictions=predictions)
        match = np.ones(len(ranked), dtype=bool)
        for k in keys:
            match &= np.isclose(ranked[k].astype(float), float(picks["asha"].params[k]))
        hits = ranked.loc[match, "rank"].tolist()
        if hits:
            mark = proof.mark(hits[0])
            verdict += (f"; ASHA's choice ranks {hits[0]} among FIFO's trials and "
                        + ("cannot be told apart from FIFO's best" if mark == SAME else
                           "differs from FIFO's best" if mark == "differs" else "was not compared with FIFO's best"))
    for d in data:
        d["best_kept"] = same
    frame = pd.DataFrame(data)
    saved_epochs = 1 - frame.loc[1, "trial_epochs"] / frame.loc[0, "trial_epochs"] if frame.loc[0, "trial_epochs"] else np.nan
    saved_gpu = 1 - frame.loc[1, "gpu_hours"] / frame.loc[0, "gpu_hours"] if frame.loc[0, "gpu_hours"] > 0 else np.nan
    shown = pd.DataFrame({"scheduler": ["FIFO", "ASHA"], "trials": frame["trials"].astype(str),
                          "trial-epochs": frame["trial_epochs"].astype(str),
                          "GPU-hours": [num(v, digits) for v in frame["gpu_hours"]],
                          "CPU-hours": [num(v, digits) for v in frame["cpu_hours"]],
                          "best": [" ".join(f"{WEIGHT_SYMBOLS.get(k, k)}={weight_value(d[k])}" for k in keys)
                                   if k_ok else DASH for d, k_ok in zip(data, [picks["fifo"], picks["asha"]])],
                          f"best {METRIC_LABELS.get(metric, metric)} (%)": [num(v, 1) for v in frame["best_value_pct"]]})
    notes = [f"ASHA saved {num(100 * saved_epochs, 0)}% of the trial-epochs and {num(100 * saved_gpu, 0)}% of the "
             f"GPU-hours; best configuration: {verdict}",
             "trial-epochs: the epochs each trial logged, summed; GPU-hours as in the cost table"]
    return Table(f"{stage}_scheduler", f"{stage.capitalize()} stage: ASHA against FIFO on the same plan", frame, shown,
                 notes, evidence={"same": same, "saved_epochs": saved_epochs, "saved_gpu": saved_gpu,
                                  "verdict": verdict})


def status_table(runs: pd.DataFrame, *, metric: str = "val/top1", digits: int = 1) -> Table:
    """How many trials each stage has in each status, and its best `metric` (ranked as best_config)."""
    if runs.empty:
        raise LookupError("no trials")
    counts = summarize(runs, ["stage"], metric, statuses=RANKED)
    data = counts[["stage", "trials", *STATUSES, "missing", "best"]].rename(columns={"best": "best_pct"})
    order = {s: i for i, s in enumerate(("coarse", "fine", "ablation"))}
    data = data.sort_values("stage", key=lambda s: s.map(lambda v: order.get(v, 9))).reset_index(drop=True)
    shown = pd.DataFrame({"stage": data["stage"].astype(str), "trials": data["trials"].astype(str),
                          **{s.replace("_", " "): data[s].astype(str) for s in STATUSES},
                          f"best {METRIC_LABELS.get(metric, metric)} (%)": [num(v, digits) for v in data["best_pct"]]})
    return Table("status", "Trials per stage and status", data, shown,
                 ["running: still training, or interrupted before its driver marked it (see mlflow_status in runs.csv)"])


def optional(builder, *args: Any, **kwargs: Any) -> tuple[Optional[Table], Optional[str]]:
    """(table, None), or (None, the reason) when `builder` finds nothing to tabulate."""
    try:
        return builder(*args, **kwargs), None
    except LookupError as e:
        return None, str(e).strip("'\"")
