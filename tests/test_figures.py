"""analysis/figures.py: every figure is titled, its axes are labelled with units, 0 sits on an
axis of its own beside the log axis, and what is drawn is what MLflow holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis import figures, tables
from orchestration.records import load_histories, load_runs


@pytest.fixture(scope="module")
def coarse(sweep_store) -> pd.DataFrame:
    return load_runs(sweep_store.tracking_uri, sweep_store.experiment, parent_run_id=sweep_store.parents["coarse"])


@pytest.fixture(scope="module")
def ablation(sweep_store) -> pd.DataFrame:
    return load_runs(sweep_store.tracking_uri, sweep_store.experiment, stage="ablation")


def _readable(fig: Figure, tmp_path, name: str) -> None:
    """Titled, every axis that carries data labelled, and a real PNG."""
    assert fig._suptitle is not None and fig._suptitle.get_text().strip(), "the figure has a title"
    for ax in fig.axes:
        if not (ax.lines or ax.collections or ax.patches or ax.images):
            continue
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel(), "the colour bar says what it shows"
            continue
        shares_y = any(other is not ax and ax in other.get_shared_y_axes().get_siblings(other)
                       and other.get_ylabel() for other in fig.axes)
        assert ax.get_xlabel() or ax.get_xticklabels(), f"{name}: x axis labelled"
        assert ax.get_ylabel() or shares_y, f"{name}: y axis labelled (or shared with a labelled one)"
    path = figures.save(fig, tmp_path / f"{name}.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def _title(fig: Figure) -> str:
    return fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()


def test_marginal_effects_put_zero_apart(coarse, tmp_path):
    fig = figures.marginal_effects(coarse, stage="coarse")
    _readable(fig, tmp_path, "marginals")
    assert "coarse stage" in _title(fig) and "4 failed, 1 running" in _title(fig), "left-out trials are named"
    axes = fig.axes
    assert len(axes) == 8, "a zero axis and a log axis per weight"
    for zero, log in zip(axes[0::2], axes[1::2]):
        assert [t.get_text() for t in zero.get_xticklabels()] == ["0"]
        assert log.get_xscale() == "log" and "log scale" in log.get_xlabel()
        drawn = np.concatenate([c.get_offsets()[:, 0] for c in log.collections])
        assert (drawn > 0).all(), "nothing at 0 on the log axis"
    assert axes[0].get_ylabel() == "val top-1 (%)"
    # the α zero axis shows every ranked trial with α = 0, in percent
    alpha0 = coarse[(coarse["loss.alpha"] == 0) & coarse["status"].isin(["completed", "stopped_early"])]
    points = np.concatenate([c.get_offsets()[:, 1] for c in axes[0].collections[:2]])
    assert sorted(points) == pytest.approx(sorted(alpha0["val/top1"] * 100))


def test_pairwise_heatmap_cells_are_the_best_trials(coarse, tmp_path):
    fig = figures.pairwise_heatmap(coarse, "loss.alpha", "loss.beta", stage="coarse")
    _readable(fig, tmp_path, "heatmap")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "α (high-level DDP)" and ax.get_ylabel() == "β (low-level DDP)"
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "0", "0 is a category of its own"
    image = ax.images[0].get_array()
    ranked = coarse[coarse["status"].isin(["completed", "stopped_early"])]
    xs, ys = sorted(coarse["loss.alpha"].unique()), sorted(coarse["loss.beta"].unique())
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            cell = ranked[(ranked["loss.alpha"] == x) & (ranked["loss.beta"] == y)]["val/top1"]
            if cell.empty:
                assert image.mask[i, j]
            else:
                assert image[i, j] == pytest.approx(cell.max() * 100)
    assert sum(t.get_text() == "no trial" for t in ax.texts) == int(image.mask.sum())
    with pytest.raises(ValueError, match="agg"):
        figures.pairwise_heatmap(coarse, "loss.alpha", "loss.beta", agg="median")


def test_learning_curves_and_loss_terms(coarse, sweep_store, tmp_path):
    top = tables.top_trials(coarse, k=3).data["run_id"].tolist()
    histories = load_histories(sweep_store.tracking_uri, top)
    fig = figures.learning_curves(histories, coarse, run_ids=top, stage="coarse")
    _readable(fig, tmp_path, "curves")
    acc, loss = fig.axes
    assert acc.get_xlabel() == "epoch" and acc.get_ylabel() == "top-1 accuracy (%)"
    first = histories[(histories.run_id == top[0]) & (histories.key == "val/top1")].sort_values("step")
    assert list(acc.lines[0].get_ydata()) == pytest.approx(list(first["value"] * 100))
    assert len(loss.lines) == 3
    row = coarse[coarse["run_id"] == top[0]].iloc[0]
    fig = figures.loss_terms(histories, row)
    _readable(fig, tmp_path, "terms")
    raw, weighted = fig.axes
    assert "unweighted" in raw.get_title() and raw.get_yscale() == "log"
    assert weighted.lines[-1].get_label() == "train/loss (total)"


def test_shuffle_bars_are_the_table(ablation, tmp_path):
    fig = figures.shuffle_bars(ablation, paper=True)
    _readable(fig, tmp_path, "shuffle")
    ours, theirs = fig.axes
    assert ours.get_ylabel() == "top-1 accuracy (%)" and theirs.get_title().startswith("paper: ")
    data = tables.shuffle_table(ablation).data
    heights = [p.get_height() for p in ours.patches]
    expected = [v for p in ("none", "long_term", "short_term", "complete") for v in data[f"{p}_mean_pct"]]
    assert heights == pytest.approx(expected)
    assert all(p.get_hatch() == "//" for p in theirs.patches), "the paper's bars look different"
