"""analysis/tables.py: every table's rows and numbers equal what MLflow holds (means and sample
standard deviations recomputed here from MlflowClient's runs), failed and running trials are
counted and never averaged, and the Markdown, CSV and LaTeX forms carry the same table."""

from __future__ import annotations

import io
import statistics
from collections import defaultdict

import numpy as np
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


# --------------------------------------------------------------------------- statistics on a store with a known answer

def _downloaded(planted, run_id: str, tmp_path) -> pd.DataFrame:
    """A trial's test predictions as MlflowClient hands them out (not through records)."""
    from mlflow import MlflowClient

    path = MlflowClient(tracking_uri=planted.tracking_uri).download_artifacts(
        run_id, "predictions/test.parquet", str(tmp_path / run_id))
    return pd.read_parquet(path)


def _holm(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        out[i] = min(1.0, running)
    return out


@pytest.fixture(scope="module")
def planted_frame(planted_store):
    from orchestration.records import load_predictions

    runs = load_runs(planted_store.tracking_uri, planted_store.experiment)
    return runs, load_predictions(planted_store.tracking_uri, runs["run_id"].tolist())


def test_top_table_marks_exactly_the_planted_configuration(planted_store, planted_frame, tmp_path):
    from scipy import stats as sps

    runs, predictions = planted_frame
    coarse = runs[runs["stage"] == "coarse"]
    table = tables.top_trials(coarse, k=10, stage="coarse", predictions=predictions)
    data = table.data.set_index("rank")
    names = {tuple(float(w[k]) for k in WEIGHTS): name for name, w in planted_store.configs.items()}
    order = [names[tuple(float(r[k]) for k in WEIGHTS)] for _, r in data.iterrows()]
    assert order[:2] == ["C", "A"], "the confirmed configurations first, by their mean val/top1 over seeds"
    correct = {rid: (lambda d: (d["pred"] == d["label"]).to_numpy())(_downloaded(planted_store, rid, tmp_path))
               for rid in planted_store.correct}
    best = [correct[planted_store.runs[("coarse", "C", s)]] for s in range(3)]
    raw = {}
    for rank, name in enumerate(order[1:], start=2):
        seeds = [s for s in range(3) if ("coarse", name, s) in planted_store.runs]
        mine = [correct[planted_store.runs[("coarse", name, s)]] for s in seeds]
        if len(seeds) == 1:      # one trial each: McNemar's exact test on the discordant videos
            a_only = int((mine[0] & ~best[0]).sum())
            b_only = int((~mine[0] & best[0]).sum())
            raw[rank] = sps.binomtest(a_only, a_only + b_only, 0.5).pvalue
            k, n = int(mine[0].sum()), len(mine[0])
            wilson = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
            assert data.loc[rank, "interval"] == "Wilson" and data.loc[rank, "n_videos"] == n
            assert data.loc[rank, "ci_low_pct"] == pytest.approx(100 * wilson.low)
            assert data.loc[rank, "ci_high_pct"] == pytest.approx(100 * wilson.high)
        else:                    # several seeds: paired t over videos, the seeds' differences averaged per video
            d = np.mean([m.astype(float) - b.astype(float) for m, b in zip(mine, best)], axis=0)
            raw[rank] = sps.ttest_1samp(d, 0.0).pvalue
            assert data.loc[rank, "effect_pts"] == pytest.approx(100 * d.mean())
            values = [100 * m.mean() for m in mine]
            boot = sps.bootstrap((np.array(values),), np.mean, method="percentile", n_resamples=20000, random_state=0)
            assert data.loc[rank, "ci_low_pct"] == pytest.approx(boot.confidence_interval.low, abs=0.35)
            assert data.loc[rank, "ci_high_pct"] == pytest.approx(boot.confidence_interval.high, abs=0.35)
            assert data.loc[rank, "test/top1_pct"] == pytest.approx(np.mean(values))
        assert data.loc[rank, "p_value"] == pytest.approx(raw[rank], rel=1e-6, abs=1e-12), name
    adjusted = dict(zip(raw, _holm(list(raw.values()))))
    for rank, p in adjusted.items():
        assert data.loc[rank, "p_holm"] == pytest.approx(p, rel=1e-6, abs=1e-12)
        assert data.loc[rank, "indistinguishable"] == (p >= 0.05)
    differ = [order[r - 1] for r in data.index if r > 1 and not data.loc[r, "indistinguishable"]]
    assert differ == ["B"], "exactly the planted configuration differs from the best"
    md, tex = table.to_markdown(), table.to_latex()
    assert md.count("≈ best") == 4 and md.count("differs") == 1 and "$\\approx$ best" in tex
    assert any("MEAN of val/top1 over its seeds" in n for n in table.notes)
    assert any(n.startswith("vs best") and "Holm" in n for n in table.notes)


def test_ablation_and_compare_mark_exactly_the_planted_variants(planted_store, planted_frame, tmp_path):
    from scipy import stats as sps

    from rev2net import registry

    runs, predictions = planted_frame
    ablation = tables.ablation_table(runs, predictions=predictions)
    assert "test top-1" in ablation.title and ablation.data["metric"].eq("test/top1").all()
    data = ablation.data.set_index("variant")
    assert [v for v in data.index if not data.loc[v, "indistinguishable"] and v != registry.REV2NET] == [registry.NO_DDP]
    ref = [(_downloaded(planted_store, planted_store.runs[("ablation", registry.REV2NET, s)], tmp_path)) for s in range(3)]
    raw = {}
    for variant in (registry.NO_FLOW_DECODER, registry.NO_DDP, registry.I3D):
        mine = [_downloaded(planted_store, planted_store.runs[("ablation", variant, s)], tmp_path) for s in range(3)]
        d = np.mean([(m["pred"] == m["label"]).to_numpy(float) - (r["pred"] == r["label"]).to_numpy(float)
                     for m, r in zip(mine, ref)], axis=0)
        raw[variant] = sps.ttest_1samp(d, 0.0).pvalue
        assert data.loc[variant, "effect_pts"] == pytest.approx(100 * d.mean())
        assert data.loc[variant, "p_value"] == pytest.approx(raw[variant], rel=1e-6, abs=1e-300)
    for variant, p in zip(raw, _holm(list(raw.values()))):
        assert data.loc[variant, "p_holm"] == pytest.approx(p, rel=1e-6, abs=1e-300)
    assert "≈ Rev2Net (full)" in ablation.to_markdown() and "differs" in ablation.to_markdown()

    compare = tables.compare_table(runs, predictions=predictions).data.set_index("variant")
    part = runs[runs["stage"] == "compare"]
    acc = part.pivot_table(index=["trainer.seed", "data.split"], columns="variant", values="test/top1")
    raw = {v: sps.ttest_rel(acc[v], acc[registry.REV2NET]).pvalue for v in (registry.NO_DDP, registry.I3D)}
    for v, p in zip(raw, _holm(list(raw.values()))):
        assert compare.loc[v, "p_value"] == pytest.approx(raw[v]) and compare.loc[v, "p_holm"] == pytest.approx(p)
        assert compare.loc[v, "test"] == "paired t over seeds × splits" and compare.loc[v, "paired_runs"] == 4
    assert compare.loc[registry.I3D, "effect_pts"] == pytest.approx(100 * (acc[registry.I3D] - acc[registry.REV2NET]).mean())
    assert not compare.loc[registry.I3D, "indistinguishable"] and compare.loc[registry.NO_DDP, "indistinguishable"]
    boot = sps.bootstrap((100 * acc[registry.REV2NET].to_numpy(),), np.mean, method="percentile", n_resamples=20000,
                         random_state=0)
    assert compare.loc[registry.REV2NET, "ci_low_pct"] == pytest.approx(boot.confidence_interval.low, abs=0.3)
    assert compare.loc[registry.REV2NET, "mean_pct"] == pytest.approx(100 * acc[registry.REV2NET].mean())


def test_importance_and_cost_tables(planted_store, planted_frame):
    from orchestration import records

    runs, _ = planted_frame
    coarse = runs[runs["stage"] == "coarse"]
    imp = tables.importance_table(coarse, stage="coarse")
    assert imp.data["design"].iloc[0] == "axes" and imp.data.loc[imp.data["order"] == 2, "importance"].isna().all()
    assert any("no interaction between weights can be estimated" in n for n in imp.notes)
    cost = tables.cost_table(runs).data
    total = cost[cost["family"] == "all"].set_index("stage")
    for stage in ("coarse", "ablation", "compare"):
        part = runs[runs["stage"] == stage]
        gpu = part[records.COST_GPU_FRACTION] > 0
        assert total.loc[stage, "gpu_hours"] == pytest.approx(part.loc[gpu, records.COST_DEVICE_S].sum() / 3600)
        assert total.loc[stage, "cpu_hours"] == pytest.approx(part.loc[~gpu & part[records.COST_DEVICE_S].notna(),
                                                                       records.COST_DEVICE_S].sum() / 3600)
    families = cost[(cost["stage"] == "ablation") & (cost["family"] != "all")]
    assert families["gpu_hours"].sum() == pytest.approx(total.loc["ablation", "gpu_hours"])


def test_systems_table_places_each_system_by_what_it_reads(planted_frame):
    """The comparison layout (Table 2/5): rows are systems, columns RGB / flow / RGB + flow; each
    cell is the same statistic as the per-variant table; the papers' rows follow, labelled."""
    from analysis import paper
    from rev2net import registry

    runs, predictions = planted_frame
    table = tables.systems_table(runs, paper=True, predictions=predictions)
    ours = table.data[table.data["source"] == "ours"].set_index("variant")
    detail = tables.compare_table(runs, predictions=predictions).data.set_index("variant")
    # w/o DDP is an ablation, not a system: it is only in the per-variant table
    assert set(ours.index) == {registry.REV2NET, registry.I3D} and registry.NO_DDP in detail.index
    assert ours.loc[registry.I3D, ["system", "modality"]].tolist() == ["I3D", "rgb"]
    for v in ours.index:
        assert ours.loc[v, "mean_pct"] == pytest.approx(detail.loc[v, "mean_pct"])
        assert ours.loc[v, "indistinguishable"] == detail.loc[v, "indistinguishable"] or v == registry.REV2NET
    shown = table.shown.set_index("system")
    assert list(table.shown.columns[2:5]) == ["RGB (%)", "flow (%)", "RGB + flow (%)"]
    assert shown.loc["I3D", "flow (%)"] == "—" and shown.loc["I3D", "RGB (%)"].count("[") == 1
    published = table.data[table.data["source"] != "ours"]
    assert len(published) == sum(1 for r in paper.COMPARE["rows"] for m in ("rgb", "flow", "rgb_flow") if r.get(m))
    dcd = shown.loc["paper: DCD"]
    assert (dcd["dataset"] == "UCF101").any() and "91.8" in dcd["RGB (%)"].tolist()
    assert "86.85" in shown.loc["paper: TSN", "flow (%)"].tolist()
    assert any("Zhao et al. 2018, Table 8 (top-5: 89.9)" in n for n in table.notes)
    assert not any("equal wall time" in n for n in table.notes), "epochs are the default budget: nothing to say"


def test_a_wall_time_budget_is_named_with_the_epochs_each_system_trained(planted_frame):
    from rev2net import registry

    runs, predictions = planted_frame
    part = runs[runs["stage"] == "compare"].copy()
    part["trainer.max_train_s"] = 600.0
    part["epochs"] = np.where(tables.variant_of(part) == registry.I3D, 9, 4)
    (note,) = [n for n in tables.systems_table(part).notes if "equal wall time" in n]
    assert "trainer.max_train_s = 600 s" in note, note
    assert f"{registry.label(registry.I3D)} 9;" in note and f"{registry.label(registry.REV2NET)} 4" in note, note
    assert "not on equal terms" not in note and "max_epochs reached" not in note
    part["trainer.max_epochs"] = 9
    (capped,) = [n for n in tables.systems_table(part).notes if "equal wall time" in n]
    assert f"{registry.label(registry.I3D)} 9 (trainer.max_epochs reached before the budget);" in capped, capped
    part.loc[part.index[0], "trainer.max_train_s"] = 0.0
    (mixed,) = [n for n in tables.compare_table(part).notes if "equal wall time" in n]
    assert "not on equal terms" in mixed
