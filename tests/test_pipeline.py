"""orchestration/pipeline.py: stages in a row, idempotent for schedules. Run again, the same
command skips finished stages, resumes an unfinished one, and leaves a stage alone while another
live driver runs it; overrides can target one stage."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import RunTag

from orchestration import records, tracking
from orchestration.grid import main
from orchestration.pipeline import run_pipeline, stage_overrides
from sweep_helpers import SIM, child_runs, parent_runs, small_spaces, tiny_overrides

pytestmark = pytest.mark.slow


def test_stage_prefixed_overrides_apply_to_their_stage_only():
    shared = ["data=ucf101", "trial.gpus=1", "cluster=gpu", "coarse:trial.gpus=0.25", "coarse:cluster=gpu_shared",
              "fine:+trial.runner_args.epoch_s=1", "mlflow.tracking_uri=http://h:5000"]
    assert stage_overrides(shared, "coarse") == ["data=ucf101", "mlflow.tracking_uri=http://h:5000",
                                                 "trial.gpus=0.25", "cluster=gpu_shared"]
    assert stage_overrides(shared, "fine") == ["data=ucf101", "trial.gpus=1", "cluster=gpu",
                                               "mlflow.tracking_uri=http://h:5000", "+trial.runner_args.epoch_s=1"]
    assert stage_overrides(shared, "ablation") == ["data=ucf101", "trial.gpus=1", "cluster=gpu",
                                                   "mlflow.tracking_uri=http://h:5000"]


def test_a_scheduled_pipeline_continues_then_does_nothing_and_never_drives_a_busy_stage(local_ray, tmp_path,
                                                                                        synthetic_root, capsys):
    overrides = tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}", SIM,
                               "fine:trainer.max_epochs=1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    first = run_pipeline(["coarse", "fine"], overrides, progress=False)
    assert [(s.stage, s.outcome) for s in first] == [("coarse", "finished"), ("fine", "finished")]
    fine_runs = child_runs(uri, parent=first[1].parent_run_id)
    assert fine_runs and all(r.data.params["trainer.max_epochs"] == "1" for r in fine_runs), "fine:… reached fine"
    assert all(r.data.params["trainer.max_epochs"] == "2" for r in child_runs(uri, parent=first[0].parent_run_id))

    # the same command again (the next scheduled run): everything finished, nothing runs or is logged
    assert main(["--stage", "coarse", "--then", "fine", *overrides]) == 0
    out = capsys.readouterr().out
    assert "coarse stage already finished" in out and "fine stage already finished" in out
    assert len(parent_runs(uri)) == 2 and len(child_runs(uri)) == len(child_runs(uri, parent=first[0].parent_run_id)) \
        + len(fine_runs)

    # the fine stage interrupted and its driver alive on another machine: the scheduled run leaves it alone
    c = MlflowClient(tracking_uri=uri)
    fine_parent = first[1].parent_run_id
    c.update_run(fine_parent, status="RUNNING")
    c.log_batch(fine_parent, tags=[RunTag(records.TAG_DRIVER, "elsewhere:4242"),
                                   RunTag(records.TAG_HEARTBEAT, str(int(time.time())))])
    busy = run_pipeline(["coarse", "fine", "ablation"], overrides, progress=False)
    assert [(s.stage, s.outcome) for s in busy] == [("coarse", "skipped"), ("fine", "busy")], "ablation waits"

    # ... until its heartbeat is stale (that driver died): then the next run resumes it and goes on
    c.set_tag(fine_parent, records.TAG_HEARTBEAT, str(int(time.time() - 2 * tracking.HEARTBEAT_STALE_S)))
    resumed = run_pipeline(["coarse", "fine", "ablation"],
                           overrides + ["ablation:search.seeds=1", "ablation:search.variants=[rev2net,i3d]"],
                           progress=False)
    assert [(s.stage, s.outcome) for s in resumed] == [("coarse", "skipped"), ("fine", "finished"),
                                                       ("ablation", "finished")]
    assert resumed[1].parent_run_id == fine_parent and resumed[1].result.resumed
    assert len(child_runs(uri, parent=fine_parent)) == len(fine_runs), "nothing of the fine stage ran twice"
    assert MlflowClient(tracking_uri=uri).get_run(fine_parent).info.status == "FINISHED"
