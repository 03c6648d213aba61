"""orchestration/records.py against a real sweep store: one row per trial with the logged values, the
histories, and `best_config` (the same one the fine stage used); the record's names and naming."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from orchestration import records as R
from orchestration.fine import log_bracket


@pytest.fixture(scope="module")
def frame(sweep_store) -> pd.DataFrame:
    return R.load_runs(sweep_store.tracking_uri, sweep_store.experiment)


def test_one_row_per_trial(frame, logged_trials, sweep_store):
    logged = {r.info.run_id for r in logged_trials[sweep_store.experiment]}
    assert len(frame) == len(logged) == 21 + 1 + 21 + 20, "coarse + the running one + fine + ablation"
    assert frame["run_id"].is_unique and set(frame["run_id"]) == logged


def test_paging_reads_every_run(sweep_store, frame, monkeypatch):
    monkeypatch.setattr(R, "PAGE_SIZE", 7)
    paged = R.load_runs(sweep_store.tracking_uri, sweep_store.experiment)
    pd.testing.assert_frame_equal(paged, frame)


def test_rows_hold_the_logged_values(frame, logged_trials, sweep_store):
    rows = frame.set_index("run_id")
    for run in logged_trials[sweep_store.experiment]:
        row, tags, params = rows.loc[run.info.run_id], run.data.tags, run.data.params
        assert row["status"] == tags["rev2net.status"]
        assert row["stage"] == tags["rev2net.stage"]
        assert row["parent_run_id"] == tags["mlflow.parentRunId"]
        assert row["epochs"] == int(tags["rev2net.logged_epoch"])
        assert row["mlflow_status"] == run.info.status
        for k in R.WEIGHTS:
            assert row[k] == float(params[k]), f"{k} of {run.info.run_name}"
        assert row["model.flow_decoder"] == (params["model.flow_decoder"] == "True")
        assert row["model.frame_target"] == params["model.frame_target"]
        for key, value in run.data.metrics.items():
            assert row[key] == value, f"final {key} of {run.info.run_name}"
        if run.info.end_time:
            assert row["duration_s"] == pytest.approx((run.info.end_time - run.info.start_time) / 1000)
    assert frame["loss.alpha"].dtype == float and frame["model.frame_decoder"].dtype == bool
    assert frame["trainer.seed"].dtype == np.int64


def test_best_epoch_columns_match_the_histories(frame, sweep_store):
    c = MlflowClient(tracking_uri=sweep_store.tracking_uri)
    for _, row in frame.sample(12, random_state=0).iterrows():
        top1 = {m.step: m.value for m in c.get_metric_history(row["run_id"], "val/top1")}
        top5 = {m.step: m.value for m in c.get_metric_history(row["run_id"], "val/top5")}
        best = max(top1.values())
        epoch = min(s for s, v in top1.items() if v == best)
        assert row["best_epoch"] == epoch and row["best_epoch/val/top1"] == best
        assert (row["best_epoch/val/top5"] == top5[epoch]) if epoch in top5 else math.isnan(row["best_epoch/val/top5"])


def test_histories_bulk_and_per_run_agree(frame, sweep_store):
    ids = frame["run_id"].tolist()[:15]
    bulk = R.load_histories(sweep_store.tracking_uri, ids)
    per_run = R.load_histories(sweep_store.tracking_uri, ids, bulk=False)
    pd.testing.assert_frame_equal(bulk, per_run)
    assert set(bulk.columns) == {"run_id", "key", "step", "value"}
    c = MlflowClient(tracking_uri=sweep_store.tracking_uri)
    expected = sorted((m.step, m.value) for m in c.get_metric_history(ids[0], "val/loss"))
    got = bulk[(bulk.run_id == ids[0]) & (bulk.key == "val/loss")]
    assert list(zip(got["step"], got["value"])) == expected


def test_filters(sweep_store, frame):
    uri, exp = sweep_store.tracking_uri, sweep_store.experiment
    for stage in ("coarse", "fine", "ablation"):
        part = R.load_runs(uri, exp, stage=stage)
        assert set(part["run_id"]) == set(frame.loc[frame.stage == stage, "run_id"])
        by_parent = R.load_runs(uri, exp, parent_run_id=sweep_store.parents[stage])
        assert set(by_parent["run_id"]) == set(part["run_id"])
        assert R.latest_sweep(uri, exp, stage) == sweep_store.parents[stage]
    failed = R.load_runs(uri, exp, status=["failed"], best_epoch=False)
    assert len(failed) == 4 and set(failed["status"]) == {"failed"} and failed["failure_reason"].str.contains("flow").all()


def test_running_and_stopped_early_trials_are_read_as_such(frame, sweep_store):
    running = frame[frame["run_id"] == sweep_store.running_run_id].iloc[0]
    assert running["status"] == "running" and running["mlflow_status"] == "RUNNING"
    assert math.isnan(running["duration_s"]) and running["val/top1"] == 0.99
    early = frame[frame["status"] == "stopped_early"]
    assert len(early) > 0 and (early["epochs"] < 3).all(), "ASHA stopped them before the last epoch"
    counts = R.status_counts(frame)
    assert counts == {s: int((frame["status"] == s).sum()) for s in R.STATUSES}


def test_best_config_matches_a_direct_mlflow_query(sweep_store, logged_trials):
    coarse = [r for r in logged_trials[sweep_store.experiment]
              if r.data.tags["mlflow.parentRunId"] == sweep_store.parents["coarse"]]
    eligible = [r for r in coarse if r.data.tags["rev2net.status"] in ("completed", "stopped_early")]
    top = max(r.data.metrics["val/top1"] for r in eligible)
    winners = [r for r in eligible if r.data.metrics["val/top1"] == top]
    trials = R.load_runs(sweep_store.tracking_uri, sweep_store.experiment, parent_run_id=sweep_store.parents["coarse"])
    best = R.best_config(trials)
    assert best.value == top and best.run_id in {r.info.run_id for r in winners}
    assert best.run_id != sweep_store.running_run_id, "the running trial (0.99) never wins"
    assert len(best.tied_with) == len(winners) - 1
    # the sweep recorded the same best on the coarse parent run (orchestration/stage.py calls best_config)
    parent = MlflowClient(tracking_uri=sweep_store.tracking_uri).get_run(sweep_store.parents["coarse"])
    assert parent.data.tags["best.run_id"] == best.run_id
    assert parent.data.metrics["best/val/top1"] == best.value


def test_the_fine_stage_was_built_from_this_best_config(sweep_store, tmp_path):
    trials = R.load_runs(sweep_store.tracking_uri, sweep_store.experiment, parent_run_id=sweep_store.parents["coarse"])
    best = R.best_config(trials)
    c = MlflowClient(tracking_uri=sweep_store.tracking_uri)
    plan = json.loads(open(c.download_artifacts(sweep_store.parents["fine"], "plan.json", str(tmp_path))).read())
    coarse_values = [0, 0.0001, 0.001, 0.1, 1, 10]
    for key in R.WEIGHTS:
        assert plan["values"][key] == log_bracket(best.params[key], coarse_values, [0, 0.5, 1]), key


def _toy(rows: list[dict]) -> pd.DataFrame:
    base = {"loss.alpha": 0.1, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1, "val/loss": 1.0}
    return pd.DataFrame([{**base, "run_id": f"r{i}", **r} for i, r in enumerate(rows)])


def test_best_config_rules():
    runs = _toy([
        {"status": "failed", "val/top1": 0.99},                     # never chosen
        {"status": "running", "val/top1": 0.98},                    # never chosen
        {"status": "completed", "val/top1": float("nan")},          # excluded, listed
        {"status": "completed", "val/top1": 0.8, "val/loss": 0.5, "loss.alpha": 1.0},
        {"status": "stopped_early", "val/top1": 0.8, "val/loss": 0.5, "loss.alpha": 0.001},   # tie: smaller α wins
        {"status": "completed", "val/top1": 0.8, "val/loss": 0.7, "loss.alpha": 0.0},         # tie: larger val/loss
        {"status": "completed", "val/top1": 0.5},
    ])
    best = R.best_config(runs)
    assert best.run_id == "r4" and best.value == 0.8 and best.params["loss.alpha"] == 0.001
    assert sorted(best.tied_with) == ["r3", "r5"] and best.excluded == ["r2"]
    for seed in range(5):   # never depends on the order MLflow returns runs in
        shuffled = runs.sample(frac=1, random_state=seed)
        assert R.best_config(shuffled).run_id == "r4"
    assert R.best_config(runs, statuses=("completed",)).run_id == "r3"
    assert R.best_config(runs, mode="min").run_id == "r6"
    with pytest.raises(LookupError, match="finite"):
        R.best_config(runs[runs.status.isin(["failed", "running"])])
    with pytest.raises(LookupError, match="no trials"):
        R.best_config(runs.iloc[0:0])
    with pytest.raises(LookupError, match="metric"):
        R.best_config(runs, metric="val/top5")


def test_best_epoch_metrics_ties_and_gaps():
    h = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 2, "key": ["val/top1", "val/top1", "val/top1", "val/top5",
                                                               "val/top1", "val/top1"],
                      "step": [1, 2, 3, 2, 1, 2], "value": [0.5, 0.7, 0.7, 0.9, float("nan"), 0.4]})
    out = R.best_epoch_metrics(h)
    assert out.loc["a", "best_epoch"] == 2 and out.loc["a", "best_epoch/val/top5"] == 0.9, "earliest of equal bests"
    assert out.loc["b", "best_epoch"] == 2 and math.isnan(out.loc["b", "best_epoch/val/top5"])


def test_variant_of_names_every_switch_combination():
    paper = {"loss.alpha": 0.01, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1}
    zero = dict.fromkeys(paper, 0.0)
    both = {"model.flow_decoder": True, "model.frame_decoder": True, "model.frame_target": "reversed",
            "model.decoder_arch": "paper"}
    runs = pd.DataFrame([
        {**both, **paper},
        {**both, "model.flow_decoder": False, "model.frame_decoder": False, **zero},
        {**both, "model.frame_decoder": False, **paper, "loss.lambda_im": 0.0, "loss.alpha": 0.0, "loss.beta": 0.0},
        {**both, "model.flow_decoder": False, **paper, "loss.lambda_flow": 0.0, "loss.alpha": 0.0, "loss.beta": 0.0},
        {**both, **paper, "loss.alpha": 0.0},
        {**both, **paper, "loss.alpha": 0.0, "loss.beta": 0.0},
        {**both, **paper, "model.decoder_arch": "deep"},
        {**both, **paper, "model.frame_target": "forward"},
        {**both, **paper, "variant": "custom"},
    ])
    assert R.variant_of(runs).tolist() == ["rev2net", "i3d", "no_frame_decoder", "no_flow_decoder", "ddp_low_only",
                                           "no_ddp", "decoder_deep", "forward_frames", "custom"]


def test_ablation_variants_are_logged_as_the_params_say(frame):
    ablation = frame[frame.stage == "ablation"]
    assert (R.variant_of(ablation.drop(columns="variant")) == ablation["variant"]).all(), \
        "each ablation variant's switches derive back to its name"


def test_a_missing_store_is_an_error_not_a_new_file(tmp_path):
    path = tmp_path / "nowhere.db"
    with pytest.raises(LookupError, match="no MLflow store"):
        R.load_runs(f"sqlite:///{path}", "rev2net-synthetic")
    assert not path.exists()


def test_a_missing_experiment_names_the_ones_there(sweep_store):
    with pytest.raises(LookupError, match="rev2net-synthetic"):
        R.load_runs(sweep_store.tracking_uri, "rev2net-ucf101")


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert R.resolve_tracking_uri("http://host:5000") == "http://host:5000"
    assert R.resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert R.resolve_tracking_uri("sqlite:///m.db") == f"sqlite:///{R.REPO / 'm.db'}"
    (tmp_path / "m.db").touch()
    assert R.resolve_tracking_uri("sqlite:///m.db") == f"sqlite:///{tmp_path / 'm.db'}"


# --------------------------------------------------------------------------- seeds, predictions, cost (a constructed store)

def test_confirmation_reruns_aggregate_in_best_config(planted_store):
    c = MlflowClient(tracking_uri=planted_store.tracking_uri)
    runs = R.load_runs(planted_store.tracking_uri, planted_store.experiment, parent_run_id=planted_store.parents["coarse"])
    best = R.best_config(runs)
    mean_c = np.mean([c.get_run(planted_store.runs[("coarse", "C", s)]).data.metrics["val/top1"] for s in range(3)])
    assert best.params == planted_store.configs["C"] and best.value == pytest.approx(mean_c)
    assert best.aggregated and best.seeds == [0, 1, 2]
    assert set(best.run_ids) == {planted_store.runs[("coarse", "C", s)] for s in range(3)}
    assert best.std == pytest.approx(np.std([c.get_run(r).data.metrics["val/top1"] for r in best.run_ids], ddof=1))
    done = runs[runs["status"] == R.COMPLETED]
    single = done[done["val/top1"] == done["val/top1"].max()]          # A's first seed has the best single value
    assert single["run_id"].item() == planted_store.runs[("coarse", "A", 0)] != best.run_id
    ranked, _ = R.rank_trials(runs)
    assert list(ranked[R.N_SEEDS]) == [3, 3, 1, 1, 1, 1], "configurations, the confirmed ones first"
    assert planted_store.failed_run not in set(ranked["run_id"]) and planted_store.running_run not in set(ranked["run_id"])
    first_seeds = runs[runs["trainer.seed"] == 0]                      # without the re-runs: one row per trial, as before
    plain, _ = R.rank_trials(first_seeds)
    assert (plain[R.N_SEEDS] == 1).all() and plain["run_id"].iloc[0] == planted_store.runs[("coarse", "A", 0)]
    assert R.best_config(first_seeds).params == planted_store.configs["A"]


def test_load_predictions_equals_the_artifacts(planted_store, tmp_path, monkeypatch):
    runs = R.load_runs(planted_store.tracking_uri, planted_store.experiment)
    ids = runs["run_id"].tolist()
    frame = R.load_predictions(planted_store.tracking_uri, ids, R.TEST)
    assert list(frame.columns) == ["run_id", *(col.name for col in R.PREDICTION_COLUMNS)]
    assert set(frame.attrs["missing"]) == set(ids) - set(planted_store.correct), "runs without the file are listed"
    c = MlflowClient(tracking_uri=planted_store.tracking_uri)
    for run_id in list(planted_store.correct)[:4]:
        own = pd.read_parquet(c.download_artifacts(run_id, R.predictions_path(R.TEST), str(tmp_path / run_id)))
        mine = frame[frame["run_id"] == run_id].drop(columns="run_id").reset_index(drop=True)
        assert mine["video_id"].tolist() == own["video_id"].tolist() and (mine["pred"] == own["pred"]).all()
        assert ((mine["pred"] == mine["label"]).to_numpy() == planted_store.correct[run_id]).all()
    few = R.load_predictions(planted_store.tracking_uri, ids, R.TEST, columns=["video_id", "pred", "label"])
    assert list(few.columns) == ["run_id", "video_id", "label", "pred"] and len(few) == len(frame)
    monkeypatch.setattr(R, "_local_artifact_dir", lambda uri: None)      # as for a tracking server: download
    remote = R.load_predictions(planted_store.tracking_uri, ids[:6], R.TEST, columns=["video_id", "pred", "label"])
    local = few[few["run_id"].isin(ids[:6])].reset_index(drop=True)
    pd.testing.assert_frame_equal(remote.astype({"run_id": str}), local.astype({"run_id": str}))
    with pytest.raises(ValueError, match="not one of"):
        R.load_predictions(planted_store.tracking_uri, ids, "val")


def test_cost_totals_on_the_parent_equal_the_trials_sums(planted_store):
    from orchestration import tracking

    c = MlflowClient(tracking_uri=planted_store.tracking_uri)
    parent = planted_store.parents["ablation"]
    runs = R.load_runs(planted_store.tracking_uri, planted_store.experiment, parent_run_id=parent)
    tracking.log_cost_totals(c, parent, runs)
    held = c.get_run(parent).data.metrics
    trials = [r for r in R.child_runs(c, c.get_run(parent).info.experiment_id, parent)]
    device = [r.data.metrics[R.COST_DEVICE_S] for r in trials]
    gpu = [r.data.metrics[R.COST_DEVICE_S] for r in trials if r.data.metrics[R.COST_GPU_FRACTION] > 0]
    assert held[R.COST_DEVICE_S] == pytest.approx(sum(device))
    assert held[R.COST_CLIPS] == pytest.approx(sum(r.data.metrics[R.COST_CLIPS] for r in trials))
    assert held[R.COST_GPU_HOURS] == pytest.approx(sum(gpu) / 3600)
    assert held[R.COST_CPU_HOURS] == pytest.approx((sum(device) - sum(gpu)) / 3600)
    assert held[R.COST_TRIALS] == held[R.COST_COSTED] == len(trials) == 12


def test_trial_cost_definition():
    gpu = R.trial_cost(wall_s=3600, gpu_fraction=0.25, cpu_s=9000, clips=10)
    cpu = R.trial_cost(wall_s=3600, gpu_fraction=0.0, cpu_s=9000, clips=10)
    assert gpu[R.COST_DEVICE_S] == 900 and cpu[R.COST_DEVICE_S] == 9000 and cpu[R.COST_GPU_FRACTION] == 0
    with pytest.raises(ValueError):
        R.trial_cost(wall_s=-1, gpu_fraction=1, cpu_s=0, clips=0)


def test_run_names_of_variants_carry_the_trial_seed_not_the_dataset_seed():
    """A cross-dataset point also holds the generated dataset's own `data.synthetic.seed`: the name says the trial's."""
    point = {R.VARIANT_PARAM: "rev2net", R.DIRECTION_PARAM: "a → b", "data.synthetic.seed": 0,
             "adapt.name": "dann", R.SEED_PARAM: 1}
    assert R.run_name(point) == "rev2net a → b dann seed=1"
    assert R.run_name({R.VARIANT_PARAM: "no_ddp", R.SEED_PARAM: 2}) == "no_ddp seed=2"
