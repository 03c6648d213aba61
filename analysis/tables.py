"""The papers' tables from a `load_runs` frame, each as Markdown, CSV and LaTeX.

Every builder returns a `Table`: `data` holds the numbers (the CSV; accuracies in percent, means
and sample standard deviations, ddof=1, over the trials averaged), `shown` the same rows as the
strings the Markdown and LaTeX show, `notes` what the reader must know (what was averaged, what
was left out and why, where the paper's numbers come from).

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
from orchestration.records import (AVERAGED, RANKED, SHUFFLE_PROTOCOLS, STATUSES, WEIGHT_INFO, WEIGHT_SYMBOLS, WEIGHTS,
                                   best_config, rank_trials, variant_of)
from rev2net import registry

WEIGHT_NAMES = {k: f"{w.symbol} ({w.meaning})" for k, w in WEIGHT_INFO.items()}
PROTOCOL_LABELS = {"none": "no shuffle", "long_term": "long-term", "short_term": "short-term", "complete": "complete"}
DATASET_LABELS = {"ucf101": "UCF101", "hmdb51": "HMDB51", "kinetics400": "Kinetics-400", "synthetic": "synthetic",
                  "generic": "generic"}
METRIC_LABELS = {"val/top1": "val top-1", "val/top5": "val top-5", "best_epoch/val/top1": "best-epoch val top-1",
                 "cross/top1": "cross-dataset top-1", "cross/top5": "cross-dataset top-5"}
DASH = "—"


# --------------------------------------------------------------------------- the table and its formats

@dataclass
class Table:
    """One table: `data` (numbers, the CSV), `shown` (strings, Markdown/LaTeX), `notes`."""

    name: str                  # file stem: <name>.md, <name>.csv, <name>.tex
    title: str
    data: pd.DataFrame
    shown: pd.DataFrame
    notes: list[str] = field(default_factory=list)

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


_NUMERIC = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?( ± [\d.]+)?( \(n=\d+\))?$|^—$")


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
                  "β": r"$\beta$", "λ": r"$\lambda$", "≥": r"$\geq$", "≤": r"$\leq$"}


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


def _order_variants(variants: Sequence[str]) -> list[str]:
    """Registered variants in the registry's order, then any others by name."""
    known = [v for v in registry.VARIANTS if v in set(variants)]
    return known + sorted(set(variants) - set(registry.VARIANTS))


# --------------------------------------------------------------------------- the tables

def ablation_table(runs: pd.DataFrame, *, metric: str = "val/top1", statuses: Sequence[str] = AVERAGED,
                   paper: bool = False, digits: int = 1) -> Table:
    """The papers' Table 2 layout: one row per ablation variant (full Rev2Net, without each decoder,
    without DDP, the DDP forms, the decoder architectures, I3D), mean ± std over seeds, seeds."""
    abl = runs[runs["stage"] == "ablation"] if "stage" in runs else runs.iloc[0:0]
    if abl.empty:
        raise LookupError("no ablation-stage trials (run `python orchestration/grid.py --stage ablation`)")
    abl = abl.assign(_variant=variant_of(abl), _dataset=abl.get("data.name", pd.Series("?", index=abl.index)))
    stats = summarize(abl, ["_variant", "_dataset"], metric, statuses=statuses)
    datasets = list(dict.fromkeys(abl["_dataset"]))
    data_rows, shown_rows = [], []
    for variant in _order_variants(stats["_variant"].unique()):
        shown = {"variant": registry.label(variant)}
        for d in datasets:
            match = stats[(stats["_variant"] == variant) & (stats["_dataset"] == d)]
            if match.empty:
                continue
            s = match.to_dict("records")[0]
            suffix = f" ({DATASET_LABELS.get(d, d)})" if len(datasets) > 1 else ""
            column = f"{DATASET_LABELS.get(d, d)} {METRIC_LABELS.get(metric, metric)} (%)"
            shown[column] = pm(s["mean"], s["std"], s["n"], digits)
            shown[f"seeds{suffix}"] = str(s["n"])
            shown[f"not averaged{suffix}"] = not_averaged(s, statuses, metric)
            data_rows.append({"variant": variant, "label": shown["variant"], "dataset": d, "metric": metric,
                              "n": s["n"], "mean_pct": s["mean"], "std_pct": s["std"],
                              **{s_: s[s_] for s_ in (*STATUSES, "missing")}})
        if paper:
            for key, name in published.ABLATION["columns"].items():
                value = published.ABLATION["rows"].get(variant, {}).get(key)
                shown[f"paper: {name} (%)"] = num(value)
                for r in data_rows:
                    if r["variant"] == variant:
                        r[f"paper_{key}_pct"] = value if value is not None else np.nan
        shown_rows.append(shown)
    notes = [_averaging_note(metric, statuses, "seeds")]
    if paper:
        notes.append(f"paper: {published.ABLATION['source']}; its numbers are the full I3D on UCF101/HMDB51, "
                     f"ours are {', '.join(DATASET_LABELS.get(d, d) for d in datasets)} with this repository's settings")
    return Table("ablation", f"Ablation: {METRIC_LABELS.get(metric, metric)} per model variant",
                 pd.DataFrame(data_rows), pd.DataFrame(shown_rows).fillna(""), notes)


def shuffle_table(runs: pd.DataFrame, *, statuses: Sequence[str] = AVERAGED, paper: bool = False,
                  digits: int = 1, protocols: Sequence[str] = SHUFFLE_PROTOCOLS) -> Table:
    """Table 3 layout (2018 paper): top-1 under no, long-term, short-term and complete frame
    shuffling (8-frame blocks), one row per model variant; the paper's rows below ours."""
    present = [p for p in protocols if f"shuffle/{p}/top1" in runs]
    if not present:
        raise LookupError("no trial has shuffle/<protocol>/top1 metrics (the ablation stage logs them)")
    has_any = runs[[f"shuffle/{p}/top1" for p in present]].notna().any(axis=1)
    ablation = runs["stage"] == "ablation" if "stage" in runs else False
    pool = runs[has_any | ablation]   # ablation trials that ended without them are counted, not dropped
    pool = pool.assign(_variant=variant_of(pool))
    per_protocol = {p: summarize(pool, ["_variant"], f"shuffle/{p}/top1", statuses=statuses).set_index("_variant")
                    for p in present}
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
            shown[f"{PROTOCOL_LABELS.get(p, p)} (%)"] = cell if same else f"{cell} (n={int(s['n'])})"
            row.update({f"{p}_mean_pct": s["mean"], f"{p}_std_pct": s["std"], f"{p}_n": s["n"]})
        shown["seeds"] = str(seeds)
        shown["not averaged"] = not_averaged(first, statuses, f"shuffle/{present[0]}/top1")
        row.update({s_: first[s_] for s_ in STATUSES})
        data_rows.append(row)
        shown_rows.append(shown)
    notes = [_averaging_note("shuffle/<protocol>/top1", statuses, "seeds").replace("final-epoch ", "")
             + "; measured once after the last epoch, blocks of 8 frames"]
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
    for k in keys:
        stats = summarize(runs.dropna(subset=[k]), [k], metric, statuses=statuses, mode=mode).sort_values(k)
        for s in stats.to_dict("records"):
            data_rows.append({"weight": k, "value": s[k], "metric": metric, "trials": s["trials"],
                              "best_pct": s["best"], "n": s["n"], "mean_pct": s["mean"], "std_pct": s["std"],
                              **{s_: s[s_] for s_ in (*STATUSES, "missing")}})
            shown_rows.append({"weight": WEIGHT_NAMES.get(k, k), "value": weight_value(s[k]),
                               "trials": str(s["trials"]), "best (%)": num(s["best"], digits),
                               "mean ± std (%)": pm(s["mean"], s["std"], s["n"], digits), "n": str(s["n"]),
                               "not averaged": not_averaged(s, statuses, metric)})
    label = f"{stage} grid" if stage else "grid"
    notes = ["best: the highest value over completed and stopped-early trials (as orchestration.records.best_config ranks them)",
             _averaging_note(metric, statuses) + " (n)",
             "each row pools every trial with that value, whatever the other weights"]
    title = f"{label.capitalize()}: marginal effect of each loss weight on {METRIC_LABELS.get(metric, metric)}"
    return Table(name, title, pd.DataFrame(data_rows), pd.DataFrame(shown_rows), notes)


def top_trials(runs: pd.DataFrame, *, k: int = 10, metric: str = "val/top1", mode: str = "max",
               keys: Sequence[str] = WEIGHTS, statuses: Sequence[str] = RANKED, name: str = "top_trials",
               stage: str = "", paper: bool = False, digits: int = 1) -> Table:
    """The `k` best trials in `best_config`'s order (rank 1 is `best_config`'s choice)."""
    keys = [key for key in keys if key in runs]
    if runs.empty:
        raise LookupError("no trials to rank")
    ranked, excluded = rank_trials(runs, metric=metric, mode=mode, keys=keys, statuses=statuses)
    if ranked.empty:
        raise LookupError(f"no {', '.join(statuses)} trial has a finite {metric!r}")
    top = ranked.head(k)
    cols = {"best_epoch/val/top1": np.nan, "best_epoch": np.nan}
    top = top.assign(**{c: top[c] if c in top else v for c, v in cols.items()})
    data = pd.DataFrame({"rank": range(1, len(top) + 1), "run_id": top["run_id"].values,
                         "run_name": top["run_name"].values, **{key: top[key].values for key in keys},
                         f"{metric}_pct": top[metric].astype(float).values * 100,
                         "best_epoch_val_top1_pct": top["best_epoch/val/top1"].astype(float).values * 100,
                         "best_epoch": top["best_epoch"].values, "epochs": top["epochs"].values,
                         "status": top["status"].values})
    shown = pd.DataFrame({"rank": data["rank"].astype(str),
                          **{WEIGHT_SYMBOLS.get(key, key): [weight_value(v) for v in data[key]] for key in keys},
                          f"{METRIC_LABELS.get(metric, metric)} (%)": [num(v, digits) for v in data[f"{metric}_pct"]],
                          "best epoch (%)": [num(v, digits) for v in data["best_epoch_val_top1_pct"]],
                          "at epoch": [str(int(e)) if pd.notna(e) else DASH for e in data["best_epoch"]],
                          "epochs": data["epochs"].astype(str), "status": data["status"].str.replace("_", " "),
                          "run": [r[:8] for r in data["run_id"]]})
    tied = ranked[ranked[metric] == ranked[metric].iloc[0]]    # rank 1 is best_config's choice
    counts = runs["status"].value_counts()
    left_out = [f"{int(counts[s])} {s.replace('_', ' ')}" for s in STATUSES if s not in statuses and counts.get(s, 0)]
    notes = [f"ranked by final-epoch {metric} among {' and '.join(s.replace('_', ' ') for s in statuses)} trials; "
             "equal values are ordered by lower val/loss, then smaller weights (orchestration.records.best_config)",
             f"{len(ranked)} trials ranked" + (f"; not ranked: {', '.join(left_out)}" if left_out else "")
             + (f"; {len(excluded)} without a finite {metric}" if excluded else "")]
    if len(tied) > 1:
        notes.append(f"{len(tied)} trials tie at the top value {tied[metric].iloc[0] * 100:.{digits + 2}f}%; "
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
    title = f"Top {len(top)} trials of the {label} by {METRIC_LABELS.get(metric, metric)}"
    return Table(name, title, data, shown, notes)


def cross_dataset_table(runs: pd.DataFrame, *, metric: str = "cross/top1", statuses: Sequence[str] = AVERAGED,
                        paper: bool = False, digits: int = 1) -> Table:
    """Table 5 layout (2020 paper): top-1 on the target dataset (data.eval_name) of models trained
    on the source (data.name), one column per direction, one row per model variant."""
    if "data.eval_name" not in runs or runs["data.eval_name"].isna().all():
        raise LookupError("no cross-dataset trials (data.eval_name set) in these runs")
    pool = runs[runs["data.eval_name"].notna()]
    pool = pool.assign(_variant=variant_of(pool),
                       _direction=list(zip(pool["data.name"], pool["data.eval_name"])))
    stats = summarize(pool, ["_variant", "_direction"], metric, statuses=statuses)
    directions = list(dict.fromkeys(pool["_direction"]))
    if paper:
        directions += [d for row in published.CROSS_DATASET["rows"].values() for d in row if d not in directions]
        directions = list(dict.fromkeys(directions))

    def column(d: tuple[str, str]) -> str:
        return f"{DATASET_LABELS.get(d[0], d[0])} → {DATASET_LABELS.get(d[1], d[1])} (%)"

    data_rows, shown_rows = [], []
    for variant in _order_variants(stats["_variant"].unique()):
        shown = {"model": registry.label(variant)}
        left, seeds = [], []
        for d in directions:
            match = stats[(stats["_variant"] == variant) & (stats["_direction"] == d)]
            if match.empty:
                shown[column(d)] = DASH
                continue
            s = match.to_dict("records")[0]
            shown[column(d)] = pm(s["mean"], s["std"], s["n"], digits)
            seeds.append(str(s["n"]))
            data_rows.append({"model": variant, "source": "ours", "train": d[0], "eval": d[1], "metric": metric,
                              "n": s["n"], "mean_pct": s["mean"], "std_pct": s["std"],
                              **{s_: s[s_] for s_ in (*STATUSES, "missing")}})
            gone = not_averaged(s, statuses, metric)
            if gone:
                left.append(f"{DATASET_LABELS.get(d[0], d[0])} → {DATASET_LABELS.get(d[1], d[1])}: {gone}")
        shown["seeds"] = "/".join(seeds)
        shown["not averaged"] = "; ".join(left)
        shown_rows.append(shown)
    notes = [_averaging_note(metric, statuses, "seeds").replace("final-epoch ", "")
             + "; measured once on the target dataset's test list after the last epoch"]
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


def best_table(stages: dict[str, pd.DataFrame], *, metric: str = "val/top1", mode: str = "max",
               keys: Sequence[str] = WEIGHTS, paper: bool = False, digits: int = 1) -> Table:
    """The best configuration of each stage (`best_config`: the one the next stage starts from),
    with its value, ties and the trials set aside; with `paper`, the paper's reported optimum."""
    data_rows, shown_rows = [], []
    for stage, runs in stages.items():
        try:
            best = best_config(runs, metric=metric, mode=mode, keys=[k for k in keys if k in runs])
        except LookupError:
            continue
        data_rows.append({"stage": stage, **best.params, "metric": metric, "value_pct": best.value * 100,
                          "run_id": best.run_id, "tied_with": " ".join(best.tied_with),
                          "excluded": " ".join(best.excluded)})
        weights = {WEIGHT_SYMBOLS.get(k, k): weight_value(v) for k, v in best.params.items()}
        shown_rows.append({"stage": stage, **weights, f"{METRIC_LABELS.get(metric, metric)} (%)": num(best.value * 100, digits),
                           "ties": str(len(best.tied_with)), "run": best.run_id[:8]})
    if not data_rows:
        raise LookupError(f"no stage has a trial with a finite {metric!r} to choose")
    notes = ["best_config: completed and stopped-early trials with a finite value; ties go to the lower val/loss, "
             "then the smaller weights; ties = how many other trials reach exactly the same value"]
    if paper:
        shown_rows.append({"stage": "paper", **{WEIGHT_SYMBOLS.get(k, k): weight_value(v)
                                                for k, v in published.OPTIMUM["weights"].items() if k in keys},
                           f"{METRIC_LABELS.get(metric, metric)} (%)": DASH, "ties": "", "run": ""})
        data_rows.append({"stage": "paper", **published.OPTIMUM["weights"], "metric": metric})
        notes.append(f"paper: the optimum reported in {published.OPTIMUM['source']} (found on UCF101)")
    return Table("best", f"Best configuration per stage by {METRIC_LABELS.get(metric, metric)}",
                 pd.DataFrame(data_rows), pd.DataFrame(shown_rows).fillna(""), notes)


def status_table(runs: pd.DataFrame, *, metric: str = "val/top1", digits: int = 1) -> Table:
    """How many trials each stage has in each status, and its best `metric` (ranked as best_config)."""
    if runs.empty:
        raise LookupError("no trials")
    stats = summarize(runs, ["stage"], metric, statuses=RANKED)
    data = stats[["stage", "trials", *STATUSES, "missing", "best"]].rename(columns={"best": "best_pct"})
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
