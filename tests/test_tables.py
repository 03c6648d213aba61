"""analysis/tables.py: every table's rows and numbers equal what MLflow holds (means and sample
standard deviations recomputed here from MlflowClient's runs), failed and running trials are
counted and never averaged, and the Markdown, CSV and LaTeX forms carry the same table."""

from __future__ import annotations

import io
import statistics
from collections import defaultdict

import pandas as pd
import pytest
import yaml

from analysis import paper, tables
from orchestration.records import REPO, STATUSES, WEIGHTS, best_config, load_runs
from rev2net.registry import VARIANTS


@pytest.fixture(scope="module")
def frame(sweep_store) -> pd.DataFrame:
    return load_runs(sweep_store.tracking_uri, sweep_store.experiment)


@pytest.fixture(scope="module")
def cross_frame(sweep_store) -> pd.DataFrame:
    return load_runs(sweep_store.tracking_uri, sweep_store.cross_experiment)


def _stats(values: list[float]) -> tuple[int, float, float]:
    """n, mean and sample std in percent, or NaN where undefined."""
    pct = [100 * v for v in values]
    return (len(pct), statistics.fmean(pct) if pct else float("nan"),
            statistics.stdev(pct) if len(pct) > 1 else float("nan"))


def _close(a: float, b: float) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-9)


def _groups(runs, key) -> dict:
    out = defaultdict(list)
    for r in runs:
        out[key(r)].append(r)
    return out


def _status(r) -> str:
    return r.data.tags["rev2net.status"]


def test_ablation_table_equals_mlflow(frame, logged_trials, sweep_store):
    table = tables.ablation_table(frame, paper=True)
    ablation = [r for r in logged_trials[sweep_store.experiment] if r.data.tags["rev2net.stage"] == "ablation"]
    by_variant = _groups(ablation, lambda r: r.data.params["variant"])
    space = yaml.safe_load((REPO / "search_spaces" / "ablation.yaml").read_text())
    assert table.data["variant"].tolist() == [v for v in VARIANTS if v in space["variants"]], "Table 2's row order"
    for row in table.data.to_dict("records"):
        trials = by_variant[row["variant"]]
        n, mean, std = _stats([r.data.metrics["val/top1"] for r in trials if _status(r) == "completed"])
        assert (row["n"], row["dataset"]) == (n, "synthetic") and n == 2, row["variant"]
        assert _close(row["mean_pct"], mean) and _close(row["std_pct"], std), row["variant"]
        for s in STATUSES:
            assert row[s] == sum(_status(r) == s for r in trials)
        expected = paper.ABLATION["rows"].get(row["variant"], {})
        assert _close(row["paper_ucf101_pct"], expected.get("ucf101", float("nan")))
    shown = table.shown
    assert "paper: UCF101 (%)" in shown and "paper: HMDB51 (%)" in shown, "the paper's numbers are labelled"
    full = shown.iloc[0]
    assert full["variant"] == "Rev2Net (full)" and full["paper: UCF101 (%)"] == "94.6"
    first = table.data.iloc[0]
    assert full["synthetic val top-1 (%)"] == f"{first['mean_pct']:.1f} ± {first['std_pct']:.1f}"


def test_shuffle_table_equals_mlflow(frame, logged_trials, sweep_store):
    table = tables.shuffle_table(frame, paper=True)
    ablation = [r for r in logged_trials[sweep_store.experiment] if r.data.tags["rev2net.stage"] == "ablation"]
    by_variant = _groups(ablation, lambda r: r.data.params["variant"])
    ours = table.data[table.data["source"] == "ours"]
    assert len(ours) == len(by_variant)
    for row in ours.to_dict("records"):
        for p in ("none", "long_term", "short_term", "complete"):
            n, mean, std = _stats([r.data.metrics[f"shuffle/{p}/top1"] for r in by_variant[row["model"]]
                                   if _status(r) == "completed"])
            assert row[f"{p}_n"] == n and _close(row[f"{p}_mean_pct"], mean) and _close(row[f"{p}_std_pct"], std)
    theirs = table.data[table.data["source"] != "ours"]
    assert set(theirs["model"]) == set(paper.SHUFFLE["rows"]) and (theirs["source"] == paper.SHUFFLE["source"]).all()
    assert table.shown["model"].str.startswith("paper: ").sum() == len(paper.SHUFFLE["rows"])
    assert list(table.shown.columns[1:5]) == ["no shuffle (%)", "long-term (%)", "short-term (%)", "complete (%)"]


def test_grid_marginals_equal_mlflow_and_leave_failed_and_running_out(sweep_store, logged_trials):
    coarse_runs = [r for r in logged_trials[sweep_store.experiment]
                   if r.data.tags["mlflow.parentRunId"] == sweep_store.parents["coarse"]]
    trials = load_runs(sweep_store.tracking_uri, sweep_store.experiment, parent_run_id=sweep_store.parents["coarse"])
    table = tables.grid_marginals(trials, stage="coarse")
    assert len(table.data) == 4 * 6, "six grid values per weight (the running trial sits on the grid: all 1)"
    for row in table.data.to_dict("records"):
        group = [r for r in coarse_runs if float(r.data.params[row["weight"]]) == row["value"]]
        assert row["trials"] == len(group) > 0
        n, mean, std = _stats([r.data.metrics["val/top1"] for r in group if _status(r) == "completed"])
        ranked = [r.data.metrics["val/top1"] * 100 for r in group if _status(r) in ("completed", "stopped_early")]
        assert row["n"] == n and _close(row["mean_pct"], mean) and _close(row["std_pct"], std), row
        assert _close(row["best_pct"], max(ranked) if ranked else float("nan")), row
        for s in STATUSES:
            assert row[s] == sum(_status(r) == s for r in group)
    # the running trial (val/top1 0.99, every weight 1) is counted in the α=1 row but in no number there
    alpha1 = table.data[(table.data.weight == "loss.alpha") & (table.data.value == 1.0)].iloc[0]
    assert alpha1["running"] == 1 and alpha1["best_pct"] < 99 and not (alpha1["mean_pct"] >= 99)
    shown = table.shown.iloc[table.data.index[(table.data.weight == "loss.alpha") & (table.data.value == 1.0)][0]]
    assert "1 running" in shown["not averaged"]
    # failed trials (a weight of 10 diverged) are counted, never averaged
    tens = table.data[table.data.value == 10.0]
    assert (tens["failed"] == 1).all() and "1 failed" in table.shown.loc[tens.index[0], "not averaged"]
    # a value whose trials were all stopped early has a best but no mean
    early_only = table.data[(table.data.n == 0) & (table.data.stopped_early > 0)]
    assert len(early_only) > 0, "ASHA stopped every trial of some value"
    assert (table.shown.loc[early_only.index, "mean ± std (%)"] == "—").all()
    assert early_only["best_pct"].notna().all()


def test_top_trials_follow_best_config(sweep_store):
    trials = load_runs(sweep_store.tracking_uri, sweep_store.experiment, parent_run_id=sweep_store.parents["coarse"])
    table = tables.top_trials(trials, k=5, stage="coarse", paper=True)
    best = best_config(trials)
    assert len(table.data) == 5 and table.data.iloc[0]["run_id"] == best.run_id
    values = table.data["val/top1_pct"].tolist()
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(best.value * 100)
    assert set(table.data["status"]) <= {"completed", "stopped_early"}
    assert sweep_store.running_run_id not in set(table.data["run_id"])
    assert any("not ranked: 4 failed, 1 running" in n for n in table.notes)
    assert any(n.startswith("paper's optimum") and "α=0.01" in n for n in table.notes)


def test_best_table(sweep_store, frame):
    stages = {s: frame[frame.stage == s] for s in ("coarse", "fine")}
    table = tables.best_table(stages, paper=True)
    for row in table.data.to_dict("records")[:2]:
        best = best_config(stages[row["stage"]])
        assert row["run_id"] == best.run_id and row["value_pct"] == pytest.approx(best.value * 100)
        assert all(row[k] == best.params[k] for k in WEIGHTS)
    assert table.shown.iloc[-1]["stage"] == "paper" and table.shown.iloc[-1]["α"] == "0.01"


def test_cross_dataset_table_equals_mlflow(cross_frame, logged_trials, sweep_store):
    table = tables.cross_dataset_table(cross_frame, paper=True)
    runs = logged_trials[sweep_store.cross_experiment]
    by_variant = _groups(runs, lambda r: r.data.params["variant"])
    ours = table.data[table.data["source"] == "ours"]
    assert ours["model"].tolist() == ["rev2net", "i3d"]
    for row in ours.to_dict("records"):
        assert (row["train"], row["eval"]) == ("hmdb51", "ucf101")
        group = by_variant[row["model"]]
        n, mean, std = _stats([r.data.metrics["cross/top1"] for r in group
                               if _status(r) == "completed" and "cross/top1" in r.data.metrics])
        assert row["n"] == n == 2 and _close(row["mean_pct"], mean) and _close(row["std_pct"], std)
    rev2net = ours.iloc[0]
    assert rev2net["failed"] == 1 and rev2net["missing"] == 1, "the failed and the unevaluated trial are counted"
    assert "1 failed, 1 without cross/top1" in table.shown.iloc[0]["not averaged"]
    assert "HMDB51 → UCF101 (%)" in table.shown and "UCF101 → HMDB51 (%)" in table.shown
    paper_rows = table.shown[table.shown["model"].str.startswith("paper: ")]
    assert paper_rows.set_index("model").loc["paper: Rev2Net (RGB)", "HMDB51 → UCF101 (%)"] == "63.1"


def test_tables_without_their_runs_say_why(frame, cross_frame):
    with pytest.raises(LookupError, match="cross-dataset"):
        tables.cross_dataset_table(frame)
    with pytest.raises(LookupError, match="ablation"):
        tables.ablation_table(frame[frame.stage == "coarse"])
    with pytest.raises(LookupError, match="shuffle"):
        tables.shuffle_table(cross_frame)
    table, reason = tables.optional(tables.cross_dataset_table, frame)
    assert table is None and "data.eval_name" in reason


def test_status_table(frame):
    table = tables.status_table(frame)
    for row in table.data.to_dict("records"):
        part = frame[frame.stage == row["stage"]]
        assert row["trials"] == len(part) and all(row[s] == (part.status == s).sum() for s in STATUSES)
    assert table.data["stage"].tolist() == ["coarse", "fine", "ablation"]


def test_formats_carry_the_same_table(frame, tmp_path):
    table = tables.ablation_table(frame, paper=True)
    md = table.to_markdown().splitlines()
    header = next(i for i, line in enumerate(md) if line.startswith("| variant"))
    assert md[0] == f"**{table.title}**" and set(md[header + 1]) <= set("|-: ")
    assert len([line for line in md if line.startswith("|")]) == len(table.shown) + 2
    back = pd.read_csv(io.StringIO(table.to_csv()))
    pd.testing.assert_frame_equal(back[["n", "mean_pct", "std_pct"]], table.data[["n", "mean_pct", "std_pct"]],
                                  check_dtype=False, rtol=1e-9)
    tex = table.to_latex()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "$\\pm$" in tex and "(\\%)" in tex
    assert tex.count("\\\\") == len(table.shown) + 1
    paths = table.write(tmp_path)
    assert [p.name for p in paths] == ["ablation.md", "ablation.csv", "ablation.tex"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_markdown_formatter():
    df = pd.DataFrame({"name": ["a|b", "c"], "value": ["1.5 ± 0.2", "—"], "note": ["x", ""]})
    text = tables.markdown(df).splitlines()
    assert text[0].startswith("| name ") and "a\\|b" in text[2]
    assert text[1].split("|")[2].endswith(":"), "numeric columns are right-aligned"
    assert not text[1].split("|")[1].endswith(":")
    assert tables.pm(93.14, 0.44, 3) == "93.1 ± 0.4" and tables.pm(93.14, float("nan"), 1) == "93.1"
    assert tables.pm(float("nan"), float("nan"), 0) == "—"
    assert tables.latex_escape("λ_flow 50% α→β") == "$\\lambda$\\_flow 50\\% $\\alpha$$\\rightarrow$$\\beta$"
