"""orchestration/tracking.py against a real MLflow SQLite store: child runs are found again, epochs
are written exactly once, and an unreachable store never costs a training its metrics."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from orchestration import records, tracking
from orchestration.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp_id = tracking.experiment_id(c, "test-exp", str(tmp_path / "artifacts"))
    parent, resumed = tracking.start_parent(c, exp_id, sweep_id="coarse-axes-x", stage="coarse", mode="axes",
                                            run_name="coarse", params={"stage": "coarse"}, tags={})
    assert not resumed
    return uri, c, exp_id, parent


def _open(c, exp_id, parent, key="k1", run_id=None):
    return tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id="coarse-axes-x", key=key,
                                  run_name="α=0.1", params={"loss.alpha": 0.1}, tags={"ray.trial_id": "t1"},
                                  run_id=run_id)


def _history(n):
    return [{"val/top1": 0.1 * e, "train/loss": 1.0 / e} for e in range(1, n + 1)]


def test_parent_run_is_found_again_by_sweep_id(store):
    uri, c, exp_id, parent = store
    again, resumed = tracking.start_parent(c, exp_id, sweep_id="coarse-axes-x", stage="coarse", mode="axes",
                                           run_name="coarse", params={"stage": "coarse"}, tags={})
    assert resumed and again == parent
    other, resumed = tracking.start_parent(c, exp_id, sweep_id="coarse-axes-y", stage="coarse", mode="axes",
                                           run_name="coarse", params={}, tags={})
    assert not resumed and other != parent


def test_child_run_is_nested_and_continued_not_duplicated(store):
    uri, c, exp_id, parent = store
    run = _open(c, exp_id, parent)
    assert run.sync(_history(2))
    # the trial restarts without a checkpoint (e.g. its driver died before saving state): same run
    again = _open(c, exp_id, parent)
    assert again.run_id == run.run_id and again.logged_epoch == 2
    # it re-runs epochs 1-2 (identical values) and goes on to 4: only 3 and 4 are written
    assert again.sync(_history(4))
    hist = c.get_metric_history(run.run_id, "val/top1")
    assert [m.step for m in hist] == [1, 2, 3, 4], "each epoch exactly once, in order"
    stored = c.get_run(run.run_id)
    assert stored.data.tags[records.PARENT] == parent
    assert stored.data.tags[records.TAG_LOGGED_EPOCH] == "4"
    assert stored.data.params["loss.alpha"] == "0.1"
    children = list(records.child_runs(c, exp_id, parent))
    assert [r.info.run_id for r in children] == [run.run_id], "one child run per trial"
    # a different trial key is a different run
    assert _open(c, exp_id, parent, key="k2").run_id != run.run_id


def test_epochs_whose_tag_was_lost_are_not_written_again(store):
    """MLflow's SQL store commits a log_batch's metrics, then its tags, in two transactions: a worker
    killed between them leaves epoch 1 in the run with logged_epoch still 0. The next attempt
    (restored from epoch 1's checkpoint, or from scratch) must not write epoch 1 a second time."""
    uri, c, exp_id, parent = store
    run = _open(c, exp_id, parent)
    run.sync(_history(1)[:0], final=True)  # the params, as the first epoch's batch would carry them
    now = int(time.time() * 1000)
    c.log_batch(run.run_id, metrics=[Metric(k, v, now, 1) for k, v in _history(1)[0].items()])  # no tag
    assert c.get_run(run.run_id).data.tags[records.TAG_LOGGED_EPOCH] == "0"

    again = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id="coarse-axes-x", key="k1",
                                   run_name="α=0.1", params={"loss.alpha": 0.1}, tags={}, epoch_key="val/top1")
    assert again.run_id == run.run_id and again.logged_epoch == 1
    assert again.sync(_history(3))
    assert [m.step for m in c.get_metric_history(run.run_id, "train/loss")] == [1, 2, 3]
    assert c.get_run(run.run_id).data.tags[records.TAG_LOGGED_EPOCH] == "3"


def test_batches_hold_whole_epochs_with_the_epoch_key_last(store, monkeypatch):
    uri, c, exp_id, parent = store
    run = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id="coarse-axes-x", key="wide",
                                 run_name="wide", params={}, tags={}, epoch_key="m0")
    batches = []
    real = run.client.log_batch
    monkeypatch.setattr(run.client, "log_batch", lambda run_id, **kw: (batches.append(kw), real(run_id, **kw))[1])
    wide = [{f"m{i}": float(e * i) for i in range(400)} for e in range(1, 4)]  # 400 each: 2 epochs per batch
    wide.append({f"m{i}": float(i) for i in range(1000)})                      # wider than one batch
    assert run.sync(wide)
    steps = [sorted({m.step for m in b["metrics"]}) for b in batches]
    assert steps == [[1, 2], [3], [4], [4]], "whole epochs per batch; only an epoch wider than one is split"
    assert all(b["tags"] == [] for b in batches[:-1]) and batches[-1]["tags"][0].value == "4"
    assert "m0" not in {m.key for m in batches[2]["metrics"]}, "a split epoch's key goes in its last part"
    assert len(c.get_metric_history(run.run_id, "m7")) == 4


def test_run_id_from_checkpoint_wins(store):
    uri, c, exp_id, parent = store
    run = _open(c, exp_id, parent)
    run.sync(_history(1))
    assert _open(c, exp_id, parent, key="other-key", run_id=run.run_id).run_id == run.run_id


def test_sync_is_idempotent_and_batches_large_histories(store):
    uri, c, exp_id, parent = store
    run = _open(c, exp_id, parent)
    wide = [{f"m{i}": float(e * i) for i in range(300)} for e in range(1, 5)]  # 1200 metrics > one batch
    assert run.sync(wide) and run.sync(wide)
    assert len(c.get_metric_history(run.run_id, "m7")) == 4
    assert c.get_run(run.run_id).data.tags[records.TAG_LOGGED_EPOCH] == "4"


def test_finish_sets_status_and_reason(store):
    uri, c, exp_id, parent = store
    run = _open(c, exp_id, parent)
    tracking.finish(c, run.run_id, status="failed", reason="loss term 'flow' diverged (nan) at epoch 2")
    r = c.get_run(run.run_id)
    assert r.info.status == "FAILED"
    assert r.data.tags[records.TAG_STATUS] == "failed"
    assert "flow" in r.data.tags[records.TAG_FAILURE]
    # a resumed trial reopens its run: running again
    _open(c, exp_id, parent)
    r = c.get_run(run.run_id)
    assert r.info.status == "RUNNING" and r.data.tags[records.TAG_STATUS] == "running"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_uri_fails_fast():
    started = time.monotonic()
    with pytest.raises(ConfigError, match="unreachable"):
        tracking.check_reachable(f"http://127.0.0.1:{_free_port()}", timeout_s=2)
    assert time.monotonic() - started < 10


def test_unusable_sqlite_path_fails(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot be used"):
        tracking.check_reachable(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")


def test_sync_keeps_epochs_pending_while_the_store_is_away(store, monkeypatch):
    uri, c, exp_id, parent = store
    run = _open(c, exp_id, parent)
    real = run.client.log_batch

    def down(*a, **k):
        raise OSError("connection refused")

    monkeypatch.setattr(run.client, "log_batch", down)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    assert not run.sync(_history(2)), "an unreachable store must not raise into the training loop"
    assert run.logged_epoch == 0
    monkeypatch.setattr(run.client, "log_batch", real)
    assert run.sync(_history(3)), "once back, everything pending is sent"
    assert [m.step for m in c.get_metric_history(run.run_id, "val/top1")] == [1, 2, 3]


def test_a_send_whose_answer_was_lost_is_not_logged_twice(store, monkeypatch):
    """The server stored the batch but the answer never came (killed mid-response): the resend is
    the same batch, timestamps included, so the store keeps one point per step."""
    uri, c, exp_id, parent = store
    run = _open(c, exp_id, parent)
    real = run.client.log_batch
    lost = {"left": 3}  # every attempt of sync's own retry, then the next sync goes through

    def stored_but_unanswered(*a, **k):
        real(*a, **k)
        if lost["left"]:
            lost["left"] -= 1
            raise OSError("connection reset by peer")

    monkeypatch.setattr(run.client, "log_batch", stored_but_unanswered)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    assert not run.sync(_history(1))
    monkeypatch.setattr(tracking.time, "time", lambda: 4_000_000_000.0)  # the resend happens later
    assert run.sync(_history(2))
    for key in ("val/top1", "train/loss"):
        assert [m.step for m in c.get_metric_history(run.run_id, key)] == [1, 2], key


def test_experiments_are_tagged_as_model_training_new_and_existing(store, tmp_path):
    uri, c, exp_id, _ = store
    assert c.get_experiment(exp_id).tags[records.TAG_EXPERIMENT_KIND] == records.EXPERIMENT_KIND == \
        "custom_model_development", "a new experiment"
    old = c.create_experiment("made-before", tags={records.TAG_EXPERIMENT_KIND: "genai_development"})
    bare = c.create_experiment("made-bare")
    for name, made in (("made-before", old), ("made-bare", bare)):
        assert tracking.experiment_id(c, name) == made
        assert c.get_experiment(made).tags[records.TAG_EXPERIMENT_KIND] == records.EXPERIMENT_KIND, name


def test_system_metrics_are_logged_while_the_runner_runs(store, monkeypatch):
    uri, c, exp_id, parent = store
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    run = _open(c, exp_id, parent)
    with tracking.system_metrics(uri, run.run_id, enabled=True, interval_s=0.2):
        time.sleep(1.0)
    logged = c.get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in logged and "system/system_memory_usage_megabytes" in logged
    other = _open(c, exp_id, parent, key="k2")
    with tracking.system_metrics(uri, other.run_id, enabled=False):
        time.sleep(0.3)
    assert not [k for k in c.get_run(other.run_id).data.metrics if k.startswith("system/")]


def test_params_ride_on_the_first_epoch_or_on_flush(store, monkeypatch):
    uri, c, exp_id, parent = store
    calls = []
    for name in ("log_batch", "create_run", "log_param", "search_runs"):
        original = getattr(c, name)
        monkeypatch.setattr(c, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    run = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id="coarse-axes-x", key="new",
                                 run_name="α=0.1", params={"loss.alpha": 0.1}, tags={}, search=False)
    assert run.sync([]) and not c.get_run(run.run_id).data.params, "nothing to send before the first epoch"
    assert run.sync(_history(1)) and c.get_run(run.run_id).data.params == {"loss.alpha": "0.1"}
    assert calls == ["create_run", "log_batch"], "one run creation, one log_batch per epoch, no search"
    # a trial that ends before its first epoch (diverged at once) still leaves its params
    early = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id="coarse-axes-x", key="early",
                                   run_name="α=10", params={"loss.alpha": 10}, tags={}, search=False)
    early.flush([], timeout_s=5)
    assert c.get_run(early.run_id).data.params == {"loss.alpha": "10"}
    # continued by a retry that has no checkpoint: found by key, its params not sent again
    again = _open(c, exp_id, parent, key="early")
    assert again.run_id == early.run_id and not again.pending_params


def test_a_sqlite_store_runs_on_the_write_ahead_log(tmp_path):
    import sqlite3

    path = tmp_path / "new" / "mlflow.db"
    tracking.open_store(f"sqlite:///{path}")
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal", "kept in the file for every process"
    c = tracking.open_store(f"sqlite:///{path}")  # opening it again changes nothing
    assert c.search_experiments(max_results=1)


def test_a_deleted_store_s_log_never_reaches_the_new_one(tmp_path):
    """A killed sweep leaves mlflow.db-wal beside mlflow.db; a user who deletes mlflow.db to start
    over gets an empty store, not the old one's last transactions replayed into it."""
    import shutil
    import sqlite3

    path = tmp_path / "mlflow.db"
    c = tracking.open_store(f"sqlite:///{path}")
    tracking.experiment_id(c, "old-sweep")
    held = sqlite3.connect(path)  # a process that never closed: its writes stay in the log
    held.execute("PRAGMA wal_autocheckpoint=0")
    held.execute("UPDATE experiments SET name = 'changed in the log' WHERE name = 'old-sweep'")
    held.commit()
    shutil.copy(f"{path}-wal", tmp_path / "left.wal")
    held.close()
    path.unlink()
    shutil.copy(tmp_path / "left.wal", f"{path}-wal")

    # a new process, as the user's next sweep is (this one's MLflow keeps the deleted file open)
    names = subprocess.run([sys.executable, "-c", (
        "import sys; from orchestration import tracking; c = tracking.open_store(sys.argv[1]); "
        "tracking.experiment_id(c, 'new-sweep'); print(sorted(e.name for e in c.search_experiments()))"),
        f"sqlite:///{path}"], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip().splitlines()[-1]
    assert names == "['Default', 'new-sweep']", names
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


FOREIGN_CREATOR = ("import sys, time; from mlflow import MlflowClient; time.sleep(float(sys.argv[2])); "
                   "MlflowClient(tracking_uri=sys.argv[1]).search_experiments(); print('created')")


@pytest.mark.parametrize("offset_s", [0.0, 0.3])
def test_a_store_created_by_a_process_outside_the_sweep_at_the_same_time(tmp_path, offset_s):
    """An `mlflow ui` or a notebook opening a new store takes no lock: while it migrates the file,
    the sweep neither starts a second migration of it (which breaks both) nor removes its journal.
    The sweep opens the store just after the other process has created the file (offset 0: its
    first instant) or while its migration runs."""
    import sqlite3

    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    other = subprocess.Popen([sys.executable, "-c", FOREIGN_CREATOR, uri, "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(offset_s)
    c = tracking.open_store(uri)
    tracking.experiment_id(c, "sweep")
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0 and "created" in out, err[-2000:]
    assert sorted(e.name for e in c.search_experiments()) == ["Default", "sweep"]
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [p.name for p in tmp_path.iterdir() if "creating" in p.name] == []


def test_a_new_store_is_put_in_place_whole(tmp_path):
    """The sweep migrates a new store aside and links it in: the file at the path is complete from
    the first instant another process can open it, and nothing is left beside it."""
    path = tmp_path / "sub" / "mlflow.db"
    c = tracking.open_store(f"sqlite:///{path}")
    assert [e.name for e in c.search_experiments()] == ["Default"]
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("mlflow.db")) == []
    assert tracking._schema_revision(path) is not None
