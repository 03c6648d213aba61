"""orchestration/stage.py on a real Ray runtime and a real MLflow store: every trial exactly once,
continuous histories through crashes and restarts, failures named, and the three stages end to end
with real Rev2Net training on the generated dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestration import records
from orchestration.config import compose_config
from orchestration.stage import run_stage
from sweep_helpers import SIM, child_runs, parent_runs, small_spaces, steps, tiny_overrides

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _stage(tmp_path, synthetic_root, stage, *extra):
    cfg = compose_config(tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}",
                                        *extra), stage=stage)
    return run_stage(cfg, progress=False)


def test_a_sweep_leaves_one_child_run_per_trial_with_full_histories(ray_session, tmp_path, synthetic_root):
    result = _stage(tmp_path, synthetic_root, "coarse", SIM, "trainer.max_epochs=3")
    uri = result.tracking_uri
    runs = child_runs(uri, parent=result.parent_run_id)
    assert result.plan.num_trials == 5 and len(runs) == 5, "one child run per trial"
    points = sorted(tuple(float(r.data.params[k]) for k in ("loss.alpha", "loss.beta", "loss.lambda_flow",
                                                            "loss.lambda_im")) for r in runs)
    assert points == sorted({(0.1, 0.1, 0.1, 0.1), (0.001, 0.1, 0.1, 0.1), (0.1, 0.001, 0.1, 0.1),
                             (0.1, 0.1, 0.001, 0.1), (0.1, 0.1, 0.1, 0.001)})
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags[records.TAG_STATUS] == "completed"
        assert r.data.tags[records.PARENT] == result.parent_run_id
        assert r.data.params["data.name"] == "synthetic" and r.data.params["trainer.seed"] == "0"
        assert r.data.tags["ray.trial_id"]
        for key in ("val/top1", "train/loss", "lr", "epoch_time_s"):
            assert steps(uri, r.info.run_id, key) == [1, 2, 3], f"{key} of {r.info.run_name}"
        assert r.info.run_name.startswith("α=")
    parent = MlflowClient(tracking_uri=uri).get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == "5"
    # the best is the simulated optimum's nearest point, read back through analysis.best_config
    assert result.best["params"]["loss.alpha"] == 0.001

    # the same command again: the stage is complete, nothing reruns, nothing is logged twice
    again = _stage(tmp_path, synthetic_root, "coarse", SIM, "trainer.max_epochs=3")
    assert again.resumed and again.parent_run_id == result.parent_run_id
    assert len(child_runs(uri)) == 5 and len(parent_runs(uri)) == 1
    assert all(steps(uri, r.info.run_id) == [1, 2, 3] for r in child_runs(uri))


def test_a_new_store_starts_the_sweep_over_instead_of_waiting_for_runs_it_lacks(ray_session, tmp_path, synthetic_root):
    first = _stage(tmp_path, synthetic_root, "coarse", SIM)
    (tmp_path / "mlflow.db").unlink()   # start over with a new store; the Tune state stays
    overrides = tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}", SIM,
                               "ray.num_cpus=2")
    again = subprocess.run([sys.executable, str(REPO / "orchestration" / "grid.py"), "--stage", "coarse", *overrides],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)   # a new command: a new process
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    said = [line for line in again.stderr.splitlines() if "does not hold" in line]
    assert len(said) == 1 and f"starting it over as {first.sweep_id}-r2" in said[0], again.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/./mlflow.db"  # the new file: this process's MLflow keeps the deleted one open
    parents = parent_runs(uri)
    assert len(parents) == 1 and parents[0].data.tags[records.TAG_SWEEP] == f"{first.sweep_id}-r2"
    assert parents[0].info.status == "FINISHED"
    runs = child_runs(uri)
    assert len(runs) == 5, "one child run per trial"
    for r in runs:
        assert r.data.tags[records.TAG_STATUS] == "completed"
        assert steps(uri, r.info.run_id) == [1, 2]


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(ray_session, tmp_path, synthetic_root):
    # trials with a weight above 0.05 diverge at epoch 2 (as large weights do in real training)
    result = _stage(tmp_path, synthetic_root, "coarse", SIM, "trainer.max_epochs=3", "search.mode=factorial",
                    "+trial.runner_args.nan_at_epoch=2", "+trial.runner_args.diverge_above=0.05")
    runs = child_runs(result.tracking_uri, parent=result.parent_run_id)
    assert len(runs) == 16
    failed = [r for r in runs if r.data.tags[records.TAG_STATUS] == "failed"]
    completed = [r for r in runs if r.data.tags[records.TAG_STATUS] == "completed"]
    assert len(completed) == 1 and len(failed) == 15, "only the all-0.001 point stays below the threshold"
    for r in failed:
        assert r.info.status == "FAILED"
        assert "loss term 'flow' diverged" in r.data.tags[records.TAG_FAILURE]
        assert steps(result.tracking_uri, r.info.run_id) == [1], "the epoch before divergence is kept"
    assert steps(result.tracking_uri, completed[0].info.run_id) == [1, 2, 3]


def _pid_files(folder: Path) -> dict[str, int]:
    out = {}
    for p in folder.glob("*.pid"):
        try:
            out[p.name] = int(p.read_text())
        except ValueError:  # being written
            pass
    return out


def test_a_trial_killed_mid_training_resumes_from_its_checkpoint(ray_session, tmp_path, synthetic_root):
    pid_dir = tmp_path / "pids"
    killed: list[int] = []
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def kill_first_trial_after_an_epoch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            time.sleep(0.2)
            pids = _pid_files(pid_dir)
            if not pids:
                continue
            try:
                runs = child_runs(uri)
            except Exception:  # noqa: BLE001 - the store may not exist yet
                continue
            if any(int(r.data.tags.get(records.TAG_LOGGED_EPOCH, 0)) >= 2 for r in runs):
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    killer = threading.Thread(target=kill_first_trial_after_an_epoch, daemon=True)
    killer.start()
    result = _stage(tmp_path, synthetic_root, "coarse", SIM, "trainer.max_epochs=4", "search.max_concurrent=1",
                    "+trial.runner_args.epoch_s=0.7", f"+trial.runner_args.pid_dir={pid_dir}",
                    "trial.max_failures=2")
    killer.join(timeout=5)
    assert killed, "a trial worker was killed mid-training"
    runs = child_runs(result.tracking_uri, parent=result.parent_run_id)
    assert len(runs) == 5, "the retried trial continued its own run: no second run"
    for r in runs:
        assert r.data.tags[records.TAG_STATUS] == "completed"
        assert steps(result.tracking_uri, r.info.run_id) == [1, 2, 3, 4], f"continuous history of {r.info.run_name}"


def test_the_driver_killed_mid_sweep_continues_when_run_again(tmp_path, synthetic_root):
    overrides = tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}", SIM,
                               "trainer.max_epochs=3", "search.max_concurrent=1", "+trial.runner_args.epoch_s=0.5",
                               "ray.num_cpus=2")
    cmd = [sys.executable, str(REPO / "orchestration" / "grid.py"), "--stage", "coarse", *overrides]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            runs = child_runs(uri)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        done = [r for r in runs if r.data.tags.get(records.TAG_STATUS) == "completed"]
        if len(done) >= 2 and len(runs) >= 3:
            break
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started die at once
    first.wait(timeout=30)
    printed = first.stdout.read()[-6000:]
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("rev2net-synthetic"), printed
    before = {r.info.run_id: r for r in child_runs(uri)}
    assert 2 <= len(before) < 5, f"killed mid-sweep\n{printed}"

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "coarse stage resumed and finished" in second.stdout
    after = child_runs(uri)
    assert len(after) == 5 and len(parent_runs(uri)) == 1, "nothing duplicated"
    assert set(before) <= {r.info.run_id for r in after}, "the runs started before the kill were continued"
    for r in after:
        assert r.data.tags[records.TAG_STATUS] == "completed"
        assert steps(uri, r.info.run_id) == [1, 2, 3], f"continuous history of {r.info.run_name}"


def test_three_stages_end_to_end_with_real_training(ray_session, tmp_path, synthetic_root):
    coarse = _stage(tmp_path, synthetic_root, "coarse", "trainer.max_epochs=1")
    runs = child_runs(coarse.tracking_uri, parent=coarse.parent_run_id)
    assert len(runs) == 5 and all(r.data.tags[records.TAG_STATUS] == "completed" for r in runs)
    assert all("train/flow" in r.data.metrics and "val/top1" in r.data.metrics for r in runs)

    fine = _stage(tmp_path, synthetic_root, "fine", "trainer.max_epochs=1")
    assert any("fine grid from coarse sweep" in n for n in fine.plan.notes)
    best = coarse.best["params"]
    for key, values in fine.plan.values.items():
        assert best[key] in values, "the coarse best is always part of the fine grid"
    assert len(child_runs(fine.tracking_uri, parent=fine.parent_run_id)) == fine.plan.num_trials

    ablation = _stage(tmp_path, synthetic_root, "ablation", "trainer.max_epochs=1", "search.seeds=1",
                      "search.variants=[rev2net,no_ddp,i3d]")
    assert "weights from fine sweep" in ablation.plan.notes[0]
    runs = {r.data.params["variant"]: r for r in child_runs(ablation.tracking_uri, parent=ablation.parent_run_id)}
    assert set(runs) == {"rev2net", "no_ddp", "i3d"}
    for variant, r in runs.items():
        assert r.data.tags[records.TAG_STATUS] == "completed", r.data.tags.get(records.TAG_FAILURE)
        for protocol in ("none", "long_term", "short_term", "complete"):
            assert f"shuffle/{protocol}/top1" in r.data.metrics, f"{variant} lacks the {protocol} shuffle accuracy"
    assert "train/flow" not in runs["i3d"].data.metrics and runs["i3d"].data.params["model.flow_decoder"] == "False"


def test_compare_and_cross_stages_end_to_end_with_real_training(ray_session, tmp_path, synthetic_copy):
    """Every compared family is a real training from its registry entry, one child run per trial;
    the cross stage runs both directions with and without DANN, each trial scoring the target.
    On a copy of the dataset: the flow streams extract flow for its evaluation videos, and the
    cross stage generates the shifted look beside it."""
    compare = _stage(tmp_path, synthetic_copy, "compare", "trainer.max_epochs=1", "search.seeds=1",
                     "search.variants=[rev2net,two_stream_i3d,tsn_flow,dcd]", "search.splits=[1,2]")
    runs = child_runs(compare.tracking_uri, parent=compare.parent_run_id)
    assert sorted((r.data.params["variant"], r.data.params["data.split"]) for r in runs) == sorted(
        (v, s) for v in ("rev2net", "two_stream_i3d", "tsn_flow", "dcd") for s in ("1", "2")), "variants x splits"
    for r in runs:
        assert r.data.tags[records.TAG_STATUS] == "completed", r.data.tags.get(records.TAG_FAILURE)
        assert {"val/top1", "test/top1", "shuffle/complete/top1"} <= set(r.data.metrics), r.info.run_name
    assert {r.data.params["variant"]: r.data.params["model.name"] for r in runs}["tsn_flow"] == "tsn"

    cross = _stage(tmp_path, synthetic_copy, "cross", "trainer.max_epochs=1", "search.seeds=1")
    runs = child_runs(cross.tracking_uri, parent=cross.parent_run_id)
    cells = sorted((r.data.params["variant"], r.data.params["direction"], r.data.params["adapt.name"]) for r in runs)
    directions = ("synthetic (default) → synthetic (shifted)", "synthetic (shifted) → synthetic (default)")
    assert cells == sorted((v, d, a) for v in ("rev2net", "i3d") for d in directions for a in ("none", "dann"))
    for r in runs:
        assert r.data.tags[records.TAG_STATUS] == "completed", r.data.tags.get(records.TAG_FAILURE)
        assert {"cross/top1", "val/top1", "test/top1"} <= set(r.data.metrics), r.info.run_name
        assert ("train/domain" in r.data.metrics) == (r.data.params["adapt.name"] == "dann"), r.info.run_name
    assert os.path.isfile(os.path.join(synthetic_copy + "-shifted", "synthetic.json")), "the target, made on first use"
    # Table 5 from MLflow: one column per direction (the two looks of the generated set are two
    # datasets, not one averaged over both directions), each cell one trial
    from analysis import tables

    table = tables.cross_dataset_table(records.load_runs(cross.tracking_uri, cross.experiment,
                                                         parent_run_id=cross.parent_run_id))
    columns = [f"{a} → {b} (%)" for a, b in (d.split(" → ") for d in directions)]
    assert set(columns) <= set(table.shown.columns), list(table.shown.columns)
    assert set(table.data["train"]) == {"synthetic (default)", "synthetic (shifted)"}
    assert len(table.data) == 8 and (table.data["n"] == 1).all(), "4 rows x 2 directions, one trial each"


def test_confirmation_reruns_leave_one_run_per_configuration_and_seed(ray_session, tmp_path, synthetic_root):
    result = _stage(tmp_path, synthetic_root, "coarse", SIM, "search.confirm_top_k=2", "search.confirm_seeds=2")
    runs = child_runs(result.tracking_uri, parent=result.parent_run_id)
    assert len(runs) == 5 + 2 * 2, "the plan's trials, then the best 2 again with 2 more seeds, under one parent"
    keys = ("loss.alpha", "loss.beta", "loss.lambda_flow", "loss.lambda_im", "trainer.seed")
    cells = [tuple(r.data.params[k] for k in keys) for r in runs]
    assert len(set(cells)) == len(cells), "one child run per (configuration, seed)"
    confirmed = {c[:4] for c in cells if c[4] != "0"}
    assert len(confirmed) == 2 and all(sum(c[:4] == conf for c in cells) == 3 for conf in confirmed)
    again = _stage(tmp_path, synthetic_root, "coarse", SIM, "search.confirm_top_k=2", "search.confirm_seeds=2")
    assert again.parent_run_id == result.parent_run_id
    assert len(child_runs(result.tracking_uri, parent=result.parent_run_id)) == 9, "run again: nothing twice"
