"""The sweep's figures, each a matplotlib `Figure` readable without the code: a title that says
what and which stage, labelled axes with units, a legend, and what was left out.

Built on `matplotlib.figure.Figure` (no pyplot state, the Agg canvas when saved), so they work the
same in a script, the report and a notebook (which displays a returned Figure). Accuracies are
plotted in percent. Only completed and stopped-early trials are drawn as points (as `best_config`
ranks them); means are over completed trials (as the tables average them); failed and running
trials are counted in the figure's footnote, never drawn.

Weights span 0 and 1e-4..10: their axes are logarithmic, with 0 on a narrow axis of its own to
the left (a broken axis), since log(0) does not exist.

Statistics are drawn as the tables compute them (analysis/tables.py): 95% intervals as error bars
(the bootstrap of a mean over trials or seeds, Wilson's for a single trial), and, in the comparison
figures, rows that cannot be told apart from the reference drawn hollow and grey, labelled ≈.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import stats
from analysis.tables import (METRIC_LABELS, PROTOCOL_LABELS, SAME, WEIGHT_NAMES, WEIGHT_SYMBOLS, Table,
                             shuffle_table, weight_value)
from orchestration.records import AVERAGED, RANKED, SHUFFLE_PROTOCOLS, STATUSES, WEIGHTS, rank_trials
from rev2net import registry

TERMS = ("ce", "ddp_high", "ddp_low", "flow", "im")
TERM_WEIGHTS = {"ce": None, "ddp_high": "loss.alpha", "ddp_low": "loss.beta", "flow": "loss.lambda_flow",
                "im": "loss.lambda_im"}
TERM_LABELS = {"ce": "cross-entropy", "ddp_high": "DDP high-level (KL)", "ddp_low": "DDP low-level (Frobenius)",
               "flow": "flow prediction ‖O−Ô‖", "im": "frame reconstruction ‖I−Î‖"}


def save(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Write `fig` as a PNG (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _values(runs: pd.DataFrame, metric: str) -> pd.Series:
    return pd.to_numeric(runs[metric], errors="coerce") if metric in runs else pd.Series(np.nan, index=runs.index)


def _left_out(runs: pd.DataFrame, shown: Sequence[str] = RANKED) -> str:
    counts = runs["status"].value_counts() if not runs.empty else pd.Series(dtype=int)
    parts = [f"{int(counts[s])} {s.replace('_', ' ')}" for s in STATUSES if s not in shown and counts.get(s, 0)]
    return f"not shown: {', '.join(parts)} trial(s)" if parts else ""


def _stage(stage: str) -> str:
    return f"{stage} stage" if stage else "sweep"


def marginal_effects(runs: pd.DataFrame, *, metric: str = "val/top1", keys: Sequence[str] = WEIGHTS,
                     stage: str = "") -> Figure:
    """Per weight: every trial's `metric` against the weight's value, the mean of the completed
    trials per value (line) and the best per value (triangle); 0 on its own axis left of the log axis."""
    keys = [k for k in keys if k in runs]
    values = _values(runs, metric) * 100
    shown = runs["status"].isin(RANKED) & np.isfinite(values)
    fig = Figure(figsize=(3.4 * max(1, len(keys)), 4.0), layout="constrained")
    outer = fig.add_gridspec(1, max(1, len(keys)))
    label = METRIC_LABELS.get(metric, metric)
    zero_axes = []
    for i, k in enumerate(keys):
        inner = outer[0, i].subgridspec(1, 2, width_ratios=[1, 4], wspace=0.06)
        ax0 = fig.add_subplot(inner[0, 0], sharey=zero_axes[0] if zero_axes else None)
        ax = fig.add_subplot(inner[0, 1], sharey=ax0)
        if zero_axes:   # one accuracy scale for every weight, labelled once
            ax0.tick_params(axis="y", labelleft=False)
        zero_axes.append(ax0)
        w = pd.to_numeric(runs[k], errors="coerce")
        for axis, part in ((ax0, w == 0), (ax, w > 0)):
            sel = part & shown
            done = sel & (runs["status"] == "completed")
            early = sel & (runs["status"] == "stopped_early")
            axis.scatter(w[done].where(w[done] > 0, 0), values[done], s=14, color="tab:blue", alpha=0.45, zorder=2)
            axis.scatter(w[early].where(w[early] > 0, 0), values[early], s=14, facecolors="none",
                         edgecolors="tab:gray", alpha=0.7, zorder=2)
            grid = sorted(w[part].dropna().unique())
            means = [values[part & (w == v) & runs["status"].isin(AVERAGED) & np.isfinite(values)].mean() for v in grid]
            bests = [values[part & (w == v) & shown].max() for v in grid]
            avg = part & runs["status"].isin(AVERAGED) & np.isfinite(values)
            if avg.any():
                band = stats.summarize_seeds(pd.DataFrame({"v": w[avg].to_numpy(), "y": values[avg].to_numpy()}),
                                             ["v"], "y").set_index("v").reindex(grid)
                for v, low, high in zip(grid, band["low"], band["high"]):   # the 95% interval of the mean
                    if np.isfinite(low):
                        axis.plot([v, v], [low, high], color="black", lw=1, zorder=3)
            axis.plot(grid, means, color="black", marker="_", markersize=12, lw=1.2, zorder=3)
            axis.scatter(grid, bests, marker="^", color="tab:red", s=30, zorder=4)
        if (w > 0).any():   # a weight searched at 0 only has nothing to put on a log axis
            ax.set_xscale("log")
        ax0.set_xlim(-1, 1)
        ax0.set_xticks([0], ["0"])
        ax0.spines["right"].set_visible(False)
        ax.spines["left"].set_visible(False)
        ax.tick_params(axis="y", left=False, labelleft=False)
        for axis, x in ((ax0, 1), (ax, 0)):   # the break marks between the two axes
            axis.plot([x, x], [0, 0], transform=axis.transAxes, marker=[(-1, -1.5), (1, 1.5)], markersize=8,
                      linestyle="none", color="k", mec="k", mew=1, clip_on=False)
        ax.set_title(WEIGHT_NAMES.get(k, k), fontsize=10)
        ax.set_xlabel(f"{WEIGHT_SYMBOLS.get(k, k)} (log scale; 0 at left)")
        ax.grid(True, which="major", alpha=0.3)
        ax0.grid(True, axis="y", alpha=0.3)
    if zero_axes:
        zero_axes[0].set_ylabel(f"{label} (%)")
    handles = [Line2D([], [], marker="o", ls="none", color="tab:blue", alpha=0.6, label="trial (completed)"),
               Line2D([], [], marker="o", ls="none", mfc="none", color="tab:gray", label="trial (stopped early)"),
               Line2D([], [], marker="_", color="black", markersize=12, label="mean of completed trials (95% CI)"),
               Line2D([], [], marker="^", ls="none", color="tab:red", label="best trial")]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    note = _left_out(runs)
    fig.suptitle(f"Marginal effect of each loss weight on {label} — {_stage(stage)}, {int(shown.sum())} trials"
                 + (f"\n({note})" if note else ""), fontsize=11)
    return fig


def pairwise_heatmap(runs: pd.DataFrame, x: str, y: str, *, metric: str = "val/top1", agg: str = "max",
                     stage: str = "") -> Figure:
    """`metric` per (x value, y value) cell: the best (agg="max", over completed and stopped-early
    trials) or the mean (agg="mean", completed trials) over the other weights. The axes are the grid's
    values as categories, 0 included; a cell without a trial reads "no trial"."""
    if agg not in ("max", "mean"):
        raise ValueError(f"agg={agg!r} is not one of max, mean")
    values = _values(runs, metric) * 100
    pool = runs.assign(_v=values)
    pool = pool[pool["status"].isin(RANKED if agg == "max" else AVERAGED) & np.isfinite(values)]
    xs = sorted(pd.to_numeric(runs[x], errors="coerce").dropna().unique())
    ys = sorted(pd.to_numeric(runs[y], errors="coerce").dropna().unique())
    grid = pool.pivot_table(index=y, columns=x, values="_v", aggfunc=agg).reindex(index=ys, columns=xs)
    counts = pool.pivot_table(index=y, columns=x, values="_v", aggfunc="count").reindex(index=ys, columns=xs)
    fig = Figure(figsize=(1.0 * len(xs) + 3.2, 0.7 * len(ys) + 2.2), layout="constrained")
    ax = fig.add_subplot()
    data = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    cmap = mpl.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(data, origin="lower", cmap=cmap, aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            v = grid.iat[i, j]
            text = f"{v:.1f}" if math.isfinite(v) else "no trial"
            color = "black" if not math.isfinite(v) or v > np.nanmean(data.filled(np.nan)) else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(xs)), [weight_value(v) for v in xs])
    ax.set_yticks(range(len(ys)), [weight_value(v) for v in ys])
    ax.set_xlabel(WEIGHT_NAMES.get(x, x))
    ax.set_ylabel(WEIGHT_NAMES.get(y, y))
    label = METRIC_LABELS.get(metric, metric)
    fig.colorbar(image, ax=ax, label=f"{label} (%)")
    how = "best over the other weights" if agg == "max" else "mean of completed trials over the other weights"
    per_cell = int(np.nanmax(counts.to_numpy(dtype=float))) if counts.notna().any().any() else 0
    note = _left_out(runs, RANKED if agg == "max" else AVERAGED)
    fig.suptitle(f"{label} (%) per ({WEIGHT_SYMBOLS.get(x, x)}, {WEIGHT_SYMBOLS.get(y, y)}) — {_stage(stage)}\n"
                 f"{how}; up to {per_cell} trial(s) per cell" + (f"; {note}" if note else ""), fontsize=10)
    return fig


def _history(histories: pd.DataFrame, run_id: str, key: str) -> pd.Series:
    h = histories[(histories["run_id"] == run_id) & (histories["key"] == key)]
    return h.set_index("step")["value"].sort_index()


def learning_curves(histories: pd.DataFrame, runs: pd.DataFrame, *, run_ids: Optional[Sequence[str]] = None,
                    k: int = 5, metric: str = "val/top1", stage: str = "") -> Figure:
    """Per-epoch accuracy (validation solid, training dashed) and validation loss of `run_ids`
    (default: the `k` best trials in best_config's order); `histories` from `load_histories`."""
    if run_ids is None:
        ranked, _ = rank_trials(runs, metric=metric, keys=[w for w in WEIGHTS if w in runs])
        run_ids = ranked["run_id"].head(k).tolist()
    names = runs.set_index("run_id")["run_name"].to_dict()
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    acc, loss = fig.subplots(1, 2)
    colors = [f"C{i}" for i in range(10)]
    for i, run_id in enumerate(run_ids):
        color = colors[i % 10]
        label = f"{i + 1}. {names.get(run_id, run_id[:8])}"
        val = _history(histories, run_id, "val/top1") * 100
        train = _history(histories, run_id, "train/top1") * 100
        acc.plot(val.index, val.values, color=color, marker="o", markersize=3, label=label)
        if not train.empty:
            acc.plot(train.index, train.values, color=color, ls="--", alpha=0.6)
        vloss = _history(histories, run_id, "val/loss")
        loss.plot(vloss.index, vloss.values, color=color, marker="o", markersize=3, label=label)
    acc.set_xlabel("epoch")
    acc.set_ylabel("top-1 accuracy (%)")
    acc.set_title("accuracy: validation (solid), training (dashed)", fontsize=10)
    loss.set_xlabel("epoch")
    loss.set_ylabel("validation loss (cross-entropy, per video)")
    loss.set_title("validation loss", fontsize=10)
    for ax in (acc, loss):
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss.legend(fontsize=7, loc="best")
    fig.suptitle(f"Learning curves of the top {len(run_ids)} trials by {METRIC_LABELS.get(metric, metric)} — "
                 f"{_stage(stage)}", fontsize=11)
    return fig


def loss_terms(histories: pd.DataFrame, run: pd.Series) -> Figure:
    """The loss terms of one run over epochs: each term as logged (unweighted, log scale), and each
    term times its weight from the run's params, which sum to train/loss (eq. 3)."""
    run_id = run["run_id"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    raw, weighted = fig.subplots(1, 2)
    plotted = []
    for term in TERMS:
        h = _history(histories, run_id, f"train/{term}")
        if h.empty:
            continue
        plotted.append(term)
        raw.plot(h.index, h.values, marker="o", markersize=3, label=TERM_LABELS[term])
        key = TERM_WEIGHTS[term]
        weight = 1.0 if key is None else float(run.get(key, np.nan))
        if math.isfinite(weight):
            weighted.plot(h.index, h.values * weight, marker="o", markersize=3,
                          label=f"{TERM_LABELS[term]} × {weight_value(weight)}" if key else TERM_LABELS[term])
    total = _history(histories, run_id, "train/loss")
    if not total.empty:
        weighted.plot(total.index, total.values, color="black", lw=2, label="train/loss (total)")
    if plotted and (_history(histories, run_id, f"train/{plotted[0]}") > 0).all():
        raw.set_yscale("log")
    raw.set_title("terms as logged (unweighted)" if plotted else "no loss terms logged", fontsize=10)
    raw.set_ylabel("term value (per clip, log scale)" if raw.get_yscale() == "log" else "term value (per clip)")
    weighted.set_title("weighted terms: their sum is train/loss", fontsize=10)
    weighted.set_ylabel("contribution to train/loss (per clip)")
    for ax in (raw, weighted):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize=7)
    weights = ", ".join(f"{WEIGHT_SYMBOLS[k]}={weight_value(run[k])}" for k in WEIGHTS if k in run)
    fig.suptitle(f"Training loss terms of {run.get('run_name', run_id)} (run {run_id[:8]}, {run.get('status', '?')})"
                 + (f"\n{weights}" if weights else ""), fontsize=11)
    return fig


def shuffle_bars(runs: pd.DataFrame, *, statuses: Sequence[str] = AVERAGED, paper: bool = False) -> Figure:
    """Top-1 under each frame-shuffle protocol per model variant (mean ± std over seeds, the
    numbers of `tables.shuffle_table`); with `paper`, the paper's models in a panel of their own."""
    data = shuffle_table(runs, statuses=statuses, paper=paper).data
    protocols = [p for p in SHUFFLE_PROTOCOLS if f"{p}_mean_pct" in data]
    ours = data[data["source"] == "ours"]
    theirs = data[data["source"] != "ours"]
    panels = [("this repository's runs (mean ± std over seeds)", ours)]
    if paper and not theirs.empty:
        panels.append((f"paper: {theirs['source'].iloc[0]}", theirs))
    fig = Figure(figsize=(1.2 * len(ours) + (4.5 if len(panels) > 1 else 0) + 2.5, 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False,
                        width_ratios=[max(len(p[1]), 1) for p in panels])[0]
    width = 0.8 / max(1, len(protocols))
    for ax, (title, rows) in zip(axes, panels):
        xs = np.arange(len(rows))
        for j, p in enumerate(protocols):
            means = rows[f"{p}_mean_pct"].astype(float).to_numpy()
            stds = rows[f"{p}_std_pct"].astype(float).to_numpy() if rows is ours else None   # the paper has none
            ax.bar(xs + (j - (len(protocols) - 1) / 2) * width, np.nan_to_num(means), width,
                   yerr=None if stds is None else np.nan_to_num(stds), capsize=2, color=f"C{j}",
                   label=PROTOCOL_LABELS.get(p, p), hatch="//" if rows is theirs else None,
                   edgecolor="white" if rows is theirs else None)
        labels = [registry.label(m) for m in rows["model"]]
        ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="frame shuffle", fontsize=8, title_fontsize=8, loc="outside right upper")
    counts = ours[[s for s in STATUSES if s in ours]].sum()
    left = [f"{int(counts[s])} {s.replace('_', ' ')}" for s in STATUSES
            if s in counts and s not in statuses and counts[s]]
    fig.suptitle("Frame-shuffle robustness: top-1 when the evaluation clip's frames are shuffled\n"
                 "(long-term: 8-frame blocks reordered; short-term: frames within each block; complete: all frames)"
                 + (f"\nnot averaged: {', '.join(left)} trial(s)" if left else ""), fontsize=10)
    return fig


def _rows_of(table: Table) -> pd.DataFrame:
    """label, mean, low, high, mark (reference | ≈ | differs | "") of a comparison table's rows."""
    d = table.data
    if "rank" in d:            # a top-k table: configurations against the best
        reported = f"{table.evidence['reported']}_pct"
        labels = [f"{r}. {n}" + (f" ({k} seeds)" if k > 1 else "") for r, n, k in zip(d["rank"], d["run_name"], d["n_seeds"])]
        mark = [table.evidence["top"].mark(r) for r in d["rank"]]
        mean = d[reported]
    else:                      # a variants table: models against Rev2Net
        labels = [f"{lab}" + (f" · {ds}" if d["dataset"].nunique() > 1 else "") for lab, ds in zip(d["label"], d["dataset"])]
        mark = ["reference" if t == "reference" else (SAME if same else "differs") if t else ""
                for t, same in zip(d["test"], d["indistinguishable"])]
        mean = d["mean_pct"]
    return pd.DataFrame({"label": labels, "mean": mean.astype(float).to_numpy(),
                         "low": d["ci_low_pct"].astype(float).to_numpy(), "high": d["ci_high_pct"].astype(float).to_numpy(),
                         "mark": mark})


def comparison(table: Table, *, stage: str = "") -> Figure:
    """A comparison table as a figure: each row's accuracy with its 95% interval, the reference's
    interval as a band; rows that cannot be told apart from the reference hollow and grey (≈), rows
    that differ filled. Works on `tables.top_trials` (against the best configuration) and on
    `tables.variants_table` (ablation, compare: against Rev2Net)."""
    rows = _rows_of(table)
    fig = Figure(figsize=(8.5, 0.42 * len(rows) + 2.0), layout="constrained")
    ax = fig.add_subplot()
    ys = np.arange(len(rows))[::-1]
    ref = rows[rows["mark"] == "reference"]
    if not ref.empty and np.isfinite(ref["low"].iloc[0]):
        ax.axvspan(ref["low"].iloc[0], ref["high"].iloc[0], color="tab:blue", alpha=0.12, lw=0)
    if not ref.empty:
        ax.axvline(ref["mean"].iloc[0], color="tab:blue", lw=1, ls="--")
    styles = {"reference": dict(color="tab:blue", mfc="tab:blue"), "differs": dict(color="tab:red", mfc="tab:red"),
              SAME: dict(color="tab:gray", mfc="white"), "": dict(color="black", mfc="black")}
    for y, r in zip(ys, rows.itertuples()):
        err = [[max(0.0, r.mean - r.low)], [max(0.0, r.high - r.mean)]] if np.isfinite(r.low) else None
        ax.errorbar([r.mean], [y], xerr=err, fmt="o", capsize=3, markersize=6, **styles[r.mark])
        if r.mark == SAME:
            ax.annotate(SAME, (r.high if np.isfinite(r.high) else r.mean, y), xytext=(6, -3),
                        textcoords="offset points", color="tab:gray", fontsize=10)
    ax.set_yticks(ys, rows["label"], fontsize=8)
    metric = table.evidence["reported"] if "rank" in table.data else table.data["metric"].iloc[0]
    ax.set_xlabel(f"{METRIC_LABELS.get(metric, metric)} (%), with 95% interval")
    ax.grid(True, axis="x", alpha=0.3)
    reference = "the best configuration" if "rank" in table.data else "Rev2Net"
    handles = [Line2D([], [], marker="o", ls="none", color="tab:blue", label=f"reference: {reference}"),
               Line2D([], [], marker="o", ls="none", color="tab:red", label="differs (Holm p < 0.05)"),
               Line2D([], [], marker="o", ls="none", color="tab:gray", mfc="white",
                      label=f"{SAME} cannot be told apart from the reference")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(f"{table.title} — {_stage(stage)}\nagainst {reference}: paired tests on the same test videos "
                 "(or seeds × splits), Holm-corrected", fontsize=10)
    return fig


def importance(table: Table, *, stage: str = "") -> Figure:
    """`tables.importance_table` as bars: each term's share of the variance (± its spread over the
    forest's trees for fANOVA); terms the design cannot estimate are listed as such."""
    d = table.data
    fig = Figure(figsize=(7.5, 0.35 * len(d) + 2.0), layout="constrained")
    ax = fig.add_subplot()
    ys = np.arange(len(d))[::-1]
    values = d["importance_pct"].astype(float).to_numpy()
    std = d["std_pct"].astype(float).to_numpy()
    colors = ["tab:blue" if o == 1 else "tab:orange" if o == 2 else "tab:gray" for o in d["order"]]
    ax.barh(ys, np.nan_to_num(values), xerr=np.where(np.isfinite(std), std, 0), color=colors, capsize=2)
    for y, v in zip(ys, values):
        if not np.isfinite(v):
            ax.text(0.5, y, "not estimable from this design", va="center", fontsize=7, color="tab:gray")
    ax.set_yticks(ys, [" × ".join(WEIGHT_SYMBOLS.get(p, p) for p in t.split(" × ")) for t in d["term"]], fontsize=8)
    ax.set_xlabel("share of the variance of the objective (%)")
    ax.set_xlim(0, max(100.0, float(np.nanmax(np.r_[values + np.nan_to_num(std), 0]))))
    ax.grid(True, axis="x", alpha=0.3)
    handles = [Line2D([], [], color=c, lw=6, label=l) for c, l in
               (("tab:blue", "one weight"), ("tab:orange", "a pair"), ("tab:gray", "three or more"))]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(f"{table.title} — {_stage(stage)}\n({d['design'].iloc[0]} design, {int(d['trials'].iloc[0])} trials)",
                 fontsize=10)
    return fig
