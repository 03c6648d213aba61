"""orchestration/trainable.py: what a trial leaves in its MLflow run besides its epochs: the final
evaluations' per-video predictions (readable by records.load_predictions) and its cost (per trial,
and the stage's totals on the parent run), from a real Rev2Net training on Ray Tune."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mlflow import MlflowClient

from orchestration import records
from orchestration.config import compose_config
from orchestration.stage import run_stage
from orchestration.trainable import CostMeter
from sweep_helpers import child_runs, small_spaces, tiny_overrides

pytestmark = pytest.mark.slow


def test_a_trial_leaves_its_predictions_and_its_cost(local_ray, tmp_path, synthetic_root):
    """Under a wall-time budget (trainer.max_train_s) that its first epoch spends: the trial ends
    there, completed, and runs its final evaluations, though max_epochs is 3."""
    cfg = compose_config(tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}",
                                        "trainer.max_epochs=3", "trainer.max_train_s=0.001", "search.seeds=1",
                                        "search.variants=[rev2net]"),
                         stage="ablation")
    result = run_stage(cfg, progress=False)
    uri = result.tracking_uri
    (run,) = child_runs(uri, parent=result.parent_run_id)
    assert run.data.tags[records.TAG_STATUS] == records.COMPLETED, run.data.tags.get(records.TAG_FAILURE)
    assert run.data.tags[records.TAG_LOGGED_EPOCH] == "1" and run.data.params["trainer.max_train_s"] == "0.001"

    for evaluation in ("test", "shuffle/none", "shuffle/long_term", "shuffle/short_term", "shuffle/complete"):
        frame = records.load_predictions(uri, [run.info.run_id], evaluation)
        assert not frame.attrs["missing"], f"no {evaluation} predictions"
        accuracy = float((frame[records.PRED] == frame[records.LABEL]).mean())
        name = "test/top1" if evaluation == "test" else f"{evaluation}/top1"
        assert accuracy == pytest.approx(run.data.metrics[name]), f"{evaluation}: the file is what was scored"
        assert frame[records.VIDEO].is_unique and len(frame) == 6, "one row per test video (3 classes x 2)"
    test = records.load_predictions(uri, [run.info.run_id])
    assert set(test[records.LABEL]) == {0, 1, 2}
    assert np.all((test[records.LABEL_SCORE] >= 0) & (test[records.LABEL_SCORE] <= 1))

    cost = {k: run.data.metrics[k] for k in records.COST_METRICS}
    assert cost[records.COST_DEVICE_S] > 0 and cost[records.COST_GPU_FRACTION] == 0, cost
    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "clips")
    evaluated = 6 * 4   # the test list, then three shuffled copies of it ("none" is the test itself)
    assert cost[records.COST_CLIPS] == sum(m.value for m in history) + evaluated, "training, validation, testing"

    parent = MlflowClient(tracking_uri=uri).get_run(result.parent_run_id).data.metrics
    assert parent[records.COST_DEVICE_S] == pytest.approx(cost[records.COST_DEVICE_S])
    assert parent[records.COST_CPU_HOURS] == pytest.approx(cost[records.COST_DEVICE_S] / 3600)
    assert (parent[records.COST_TRIALS], parent[records.COST_COSTED], parent[records.COST_GPU_HOURS]) == (1, 1, 0)


def test_the_cost_adds_up_over_attempts():
    first = CostMeter(None, gpu_fraction=0.5)
    deadline = time.monotonic() + 10
    while first.state()["cpu_s"] == 0 and time.monotonic() < deadline:  # the kernel counts CPU time in ticks
        sum(i * i for i in range(200_000))
    saved = first.state()
    assert saved["wall_s"] > 0 and saved["cpu_s"] > 0
    second = CostMeter(saved, gpu_fraction=0.5)
    again = second.state()
    assert again["wall_s"] >= saved["wall_s"] and again["cpu_s"] >= saved["cpu_s"]
    metrics = second.metrics(clips=10)
    assert metrics[records.COST_DEVICE_S] == pytest.approx(0.5 * second.state()["wall_s"], rel=0.5)
    assert metrics[records.COST_CLIPS] == 10 and metrics[records.COST_GPU_FRACTION] == 0.5


def _checkpoints(tmp_path, n):
    from ray import tune

    out = []
    for i in range(n):
        folder = tmp_path / f"checkpoint_{i:06d}"
        folder.mkdir()
        (folder / "trial_state.pt").write_text(str(i))
        out.append(tune.Checkpoint(str(folder)))
    return out


def test_old_checkpoints_go_once_tunes_state_has_moved_past_them(tmp_path):
    from orchestration.trainable import CheckpointPruner

    first, *rest = _checkpoints(tmp_path, 5)
    pruner = CheckpointPruner(keep=2, settle_s=0.0, restored=first)   # every checkpoint settled at once
    for checkpoint in rest:
        pruner.persisted(checkpoint)
        pruner.persisted(checkpoint)   # the same one again: nothing changes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000003", "checkpoint_000004"]

    young = tmp_path / "young"
    young.mkdir()
    first, *rest = _checkpoints(young, 5)
    pruner = CheckpointPruner(keep=2, settle_s=3600.0, restored=first)  # Tune's state may still name any of them
    for checkpoint in rest:
        pruner.persisted(checkpoint)
    assert len(list(young.iterdir())) == 5, "nothing goes before a newer checkpoint has settled"
