"""orchestration/callbacks.py against a real MLflow SQLite store: each ended trial's status reaches
its run from a writer thread (Tune's event loop never waits on MLflow), a store that is away costs
only retries, and a restored callback marks the trials a killed driver left unmarked."""

from __future__ import annotations

import io
import os
import pickle
import threading
from dataclasses import dataclass, field

import pytest
from mlflow import MlflowClient

from orchestration import records, tracking
from orchestration.callbacks import (HeartbeatCallback, ProgressCallback, PruneGoneCheckpoints, StatusCallback,
                                     terminal_status)
from orchestration.spaces import point_key
from orchestration.trainable import FINAL

SWEEP = "coarse-axes-x"


@dataclass
class FakeTrial:
    """What the callback reads of a Tune trial."""

    trial_id: str
    config: dict
    last_result: dict = field(default_factory=dict)
    status: str = "RUNNING"
    error: str | None = None

    def get_error(self):
        return self.error


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp_id = tracking.experiment_id(c, "test-exp", str(tmp_path / "artifacts"))
    parent, _ = tracking.start_parent(c, exp_id, sweep_id=SWEEP, stage="coarse", mode="axes", run_name="coarse",
                                      params={}, tags={})
    return uri, c, exp_id, parent


def _trials(c, exp_id, parent, n: int, max_epochs: int = 2) -> list[FakeTrial]:
    """n trials with their child runs, each having reported its last epoch."""
    trials = []
    for i in range(n):
        point = {"loss.alpha": float(i)}
        run = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id=SWEEP,
                                     key=tracking.trial_key(SWEEP, point_key(point)), run_name=f"α={i}",
                                     params={"loss.alpha": i}, tags={})
        trials.append(FakeTrial(f"t{i}", {"point": point}, {"epoch": max_epochs, "mlflow_run_id": run.run_id}))
    return trials


def _status(c, trial: FakeTrial) -> tuple[str | None, str]:
    run = c.get_run(trial.last_result["mlflow_run_id"])
    return run.data.tags.get(records.TAG_STATUS), run.info.status


def test_terminal_status_names_how_a_trial_ended():
    assert terminal_status({"epoch": 3}, 3) == ("completed", None)
    assert terminal_status({"epoch": 1}, 3) == ("stopped_early", "stopped by the scheduler after epoch 1")
    assert terminal_status({"epoch": 1, FINAL: 1.0}, 3) == ("completed", None), "its wall-time budget spent"
    assert terminal_status({"epoch": 1, FINAL: 0.0}, 3)[0] == "stopped_early"
    assert terminal_status({"epoch": 2, "diverged": 1.0, "failure_reason": "loss term 'flow' is nan"}, 3) == \
        ("failed", "loss term 'flow' is nan")
    assert terminal_status({"epoch": 3}, 3, error="RayActorError: node died") == ("failed", "RayActorError: node died")


def test_statuses_are_written_off_the_event_loop(store, monkeypatch):
    uri, c, exp_id, parent = store
    trials = _trials(c, exp_id, parent, 3)
    release = threading.Event()
    finish = tracking.finish

    def slow_finish(*args, **kwargs):
        release.wait(timeout=60)  # the tracking server is slow: the writer thread waits here
        finish(*args, **kwargs)

    monkeypatch.setattr(tracking, "finish", slow_finish)
    cb = StatusCallback(uri, exp_id, SWEEP, max_epochs=2)
    trials[1].last_result["epoch"] = 1
    cb.on_trial_complete(0, trials, trials[0])
    cb.on_trial_complete(0, trials, trials[1])
    trials[2].error = "Traceback ...\nRuntimeError: CUDA out of memory"
    cb.on_trial_error(0, trials, trials[2])
    # the event loop got every call back while the writer is still blocked in the first write
    assert [p["trial"] for p in cb.get_state()["pending"]] == ["t0", "t1", "t2"]
    assert _status(c, trials[0]) == ("running", "RUNNING")
    release.set()
    cb.on_experiment_end(trials)
    assert [_status(c, t) for t in trials] == [("completed", "FINISHED"), ("stopped_early", "FINISHED"),
                                               ("failed", "FAILED")]
    assert c.get_run(trials[2].last_result["mlflow_run_id"]).data.tags[records.TAG_FAILURE] == \
        "RuntimeError: CUDA out of memory"
    assert cb.get_state() == {"pending": [], "marked": ["t0", "t1", "t2"]}


def test_a_store_that_is_away_costs_retries_not_statuses(store, monkeypatch):
    uri, c, exp_id, parent = store
    trials = _trials(c, exp_id, parent, 2)
    failures = {"left": 3}
    finish = tracking.finish

    def flaky_finish(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("tracking server unreachable")
        finish(*args, **kwargs)

    monkeypatch.setattr(tracking, "finish", flaky_finish)
    cb = StatusCallback(uri, exp_id, SWEEP, max_epochs=2, flush_timeout_s=60, retry_every_s=0.05)
    for t in trials:
        cb.on_trial_complete(0, trials, t)
    cb.on_experiment_end(trials)
    assert failures["left"] == 0
    assert [_status(c, t)[0] for t in trials] == ["completed", "completed"]


def test_a_restored_callback_marks_what_the_killed_driver_left_unmarked(store):
    uri, c, exp_id, parent = store
    trials = _trials(c, exp_id, parent, 4)
    first = StatusCallback(uri, exp_id, SWEEP, max_epochs=2)
    first.on_trial_complete(0, trials, trials[0])
    first._idle.wait(timeout=30)
    state = first.get_state()  # Tune's last experiment checkpoint before the driver was killed
    assert state["marked"] == ["t0"]
    # the driver is killed; meanwhile t1 had ended (never marked), t2 had failed, t3 will be rerun
    trials[0].status = trials[1].status = "TERMINATED"
    trials[2].status, trials[2].error = "ERROR", "RayTaskError: worker died"
    trials[3].status = "PENDING"

    restored = pickle.loads(pickle.dumps(first))  # the callbacks come back from Tune's tuner.pkl
    restored.set_state(state)
    restored.on_step_end(0, trials)
    restored.on_experiment_end(trials)
    assert [_status(c, t)[0] for t in trials] == ["completed", "completed", "failed", "running"]
    assert restored.get_state()["marked"] == ["t0", "t1", "t2"]


def test_the_heartbeat_is_written_off_the_event_loop(store, monkeypatch):
    uri, c, exp_id, parent = store
    release, sent = threading.Event(), []
    log_batch = MlflowClient.log_batch

    def slow_log_batch(self, *args, **kwargs):
        release.wait(timeout=60)  # a tracking server restarting: the heartbeat thread waits here
        sent.append(log_batch(self, *args, **kwargs))

    monkeypatch.setattr(MlflowClient, "log_batch", slow_log_batch)
    cb = HeartbeatCallback(uri, parent, every_s=0.0)
    cb.on_step_end(0, [])   # returns while the write is blocked (else this test would wait forever)
    cb.on_step_end(1, [])   # one write at a time: no second thread while the first waits
    assert not sent and cb._thread.is_alive()
    release.set()
    cb._thread.join(timeout=60)
    assert len(sent) == 1
    assert c.get_run(parent).data.tags[records.TAG_DRIVER].endswith(f":{os.getpid()}")


def test_a_status_for_a_run_the_store_does_not_hold_is_dropped_not_retried(store):
    uri, c, exp_id, parent = store
    trials = _trials(c, exp_id, parent, 2)
    trials[0].last_result["mlflow_run_id"] = "0" * 32   # e.g. the store was replaced under a restored sweep
    cb = StatusCallback(uri, exp_id, SWEEP, max_epochs=2, flush_timeout_s=600)
    cb.on_trial_complete(0, trials, trials[0])
    cb.on_trial_complete(0, trials, trials[1])
    cb.on_experiment_end(trials)   # returns at once: nothing is left to retry
    assert cb.get_state() == {"pending": [], "marked": ["t1"]}
    assert _status(c, trials[1]) == ("completed", "FINISHED")


@dataclass
class RetriedTrial(FakeTrial):
    num_failures: int = 0
    max_failures: int = 2


def test_progress_shows_a_trial_waiting_for_its_retry_as_retrying():
    out = io.StringIO()
    cb = ProgressCallback(title="coarse · axes", total_trials=2, max_epochs=4, metric="val/top1", interval_s=0,
                          stream=out)
    trials = [RetriedTrial(f"t{i}", {"point": {"loss.alpha": float(i)}}) for i in range(2)]
    for t in trials:
        cb.on_trial_start(0, trials, t)
        cb.on_trial_result(0, trials, t, {"epoch": 2, "val/top1": 0.5})
    trials[0].num_failures = 1
    cb.on_trial_recover(0, trials, trials[0])
    cb.print(force=True)
    text = out.getvalue().splitlines()
    assert "· 1 running · 1 retrying ·" in text[-3], text[-3]
    assert text[-1].rstrip().endswith(" retrying (attempt 2 of 3) from epoch 2/4"), text[-1]
    cb.on_trial_result(0, trials, trials[0], {"epoch": 3, "val/top1": 0.6})
    cb.print(force=True)
    assert "· 2 running ·" in out.getvalue().splitlines()[-3] and "retrying" not in out.getvalue().splitlines()[-1]


def test_checkpoints_a_previous_driver_deleted_are_forgotten_on_restore(tmp_path):
    """Tune's snapshot of a killed driver lists a checkpoint that driver deleted after the snapshot:
    Tune's own checkpoint manager would fail deleting it again at the trial's next checkpoint."""
    import shutil
    from types import SimpleNamespace

    from ray import tune
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    def checkpoint(i: int) -> _TrainingResult:
        folder = tmp_path / f"checkpoint_{i:06d}"
        folder.mkdir()
        return _TrainingResult(tune.Checkpoint.from_directory(str(folder)), {"epoch": i})

    manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=2))
    for i in range(2):
        manager.register_checkpoint(checkpoint(i))
    shutil.rmtree(tmp_path / "checkpoint_000000")   # deleted by the previous driver after its last snapshot
    trial = SimpleNamespace(trial_id="t0", run_metadata=SimpleNamespace(checkpoint_manager=manager))
    PruneGoneCheckpoints().on_trial_start(0, [trial], trial)
    manager.register_checkpoint(checkpoint(2))      # would raise FileNotFoundError without the callback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000001", "checkpoint_000002"]


def test_progress_eta_counts_the_planned_epochs_and_trials_asha_stopped():
    """The ETA's remaining work is the plan's trial-epochs (ASHA's estimate), less what trained, and
    a trial that ended early (stopped at a rung) adds nothing more."""
    cb = ProgressCallback(title="coarse · axes", total_trials=4, max_epochs=7, metric="val/top1", interval_s=0,
                          stream=io.StringIO(), planned_epochs=16)
    assert cb.remaining_epochs() == 16
    trials = [FakeTrial(f"t{i}", {"point": {"loss.alpha": float(i)}}) for i in range(4)]
    for t in trials[:2]:
        cb.on_trial_start(0, trials, t)
        cb.on_trial_result(0, trials, t, {"epoch": 3, "val/top1": 0.5})
    assert cb.remaining_epochs() == 16 - 6
    cb.on_trial_complete(0, trials, trials[0])   # stopped by ASHA at epoch 3
    assert cb.remaining_epochs() == 10           # still the plan's count: the others may go on
    cb.on_trial_result(0, trials, trials[1], {"epoch": 7, "val/top1": 0.6})
    cb.on_trial_complete(0, trials, trials[1])
    assert cb.remaining_epochs() == 6            # 16 - 10 trained, within [2, 14] for the two unstarted
    fifo = ProgressCallback(title="x", total_trials=2, max_epochs=7, metric="val/top1", interval_s=0,
                            stream=io.StringIO())
    assert fifo.remaining_epochs() == 14
    fifo.on_trial_start(0, trials, trials[0])
    fifo.on_trial_result(0, trials, trials[0], {"epoch": 2})
    fifo.on_trial_complete(0, trials, trials[0])  # ended early (diverged): its unrun epochs leave the total
    assert fifo.remaining_epochs() == 7


def test_progress_eta_under_a_wall_time_budget_counts_trials(monkeypatch):
    """trainer.max_train_s: every trial takes about the budget, whatever its epochs; after one of
    four trials ended in 100 s, three remain: 300 s."""
    import orchestration.callbacks as callbacks

    now = [1000.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    cb = ProgressCallback(title="compare · variants", total_trials=4, max_epochs=100, metric="val/top1", interval_s=0,
                          stream=io.StringIO(), by_trials=True)
    trials = [FakeTrial(f"t{i}", {"point": {"variant": f"v{i}"}}) for i in range(4)]
    cb.on_trial_start(0, trials, trials[0])
    now[0] += 100.0
    cb.on_trial_result(0, trials, trials[0], {"epoch": 30, "val/top1": 0.5})
    cb.on_trial_complete(0, trials, trials[0])
    assert cb.eta() == callbacks._duration(300.0)
