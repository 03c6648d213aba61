"""Writing the MLflow record (its names and layout: orchestration/records.py): one experiment per
sweep, a parent run per stage invocation, a nested child run per trial.

Exactly once, by construction rather than by luck:
  * a child run is found again by its trial key (a hash of the sweep and the trial's point), so a
    retried, restored or re-launched trial continues its own run instead of opening a second one;
  * epoch metrics are written by *reconciliation*: the trial's checkpoint holds its whole metric
    history, the run holds a tag with the last epoch it received (written in the same atomic
    `log_batch` as the metrics), and `ChildRun.sync(history)` sends exactly the epochs after that
    tag. A trial that re-runs an epoch after a crash therefore never writes a step twice, and one
    whose tracking server was away for a while sends what it missed on its next sync, with the
    timestamps of its first try, so a batch that had reached the store before the answer was lost
    is an exact duplicate, which MLflow's SQL store drops;
  * run status is set by the driver (`StatusCallback`), which sees how every trial ended.

Everything goes through `MlflowClient` (no fluent `mlflow.start_run` global state, which would leak
between trials when Ray reuses a worker).

A tracking server that goes away for a while stops nothing: every process of a sweep fails fast on
HTTP (`HTTP_ENV`) and retries at this level instead, trials keep training with their epochs
pending (`ChildRun.sync`), a trial that starts meanwhile waits for the server (`ChildRun.open`),
and the driver keeps run statuses it could not set for later (callbacks.StatusCallback).

Credentials come from the environment only (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN): they
reach the trials through Ray's runtime environment (`worker_env_vars`), never through the config,
whose logged copy is scrubbed of their values anyway (`redact`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import re
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import filelock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from tenacity import (RetryError, Retrying, retry_if_exception, retry_if_result, stop_after_attempt, stop_after_delay,
                      wait_exponential)

from orchestration.errors import ConfigError, SweepBusy
from orchestration.records import (EXPERIMENT_KIND, FAILED, PARENT, ROLE_STAGE, ROLE_TRIAL, RUNNING, TAG_DRIVER,
                                   TAG_EXPERIMENT_KIND, TAG_FAILURE, TAG_HEARTBEAT, TAG_LOGGED_EPOCH, TAG_MODE, TAG_ROLE,
                                   TAG_STAGE, TAG_STATUS, TAG_SWEEP, TAG_TRIAL_KEY, cost_totals, search_all,
                                   sqlite_path)

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_S = 60.0                     # how often a driver says it is alive
HEARTBEAT_STALE_S = 300.0              # a heartbeat older than this: the driver is gone

# HTTP behaviour of every process of a sweep: fail fast and retry at this level (`sync` at the next
# epoch, `retry` with a deadline), instead of MLflow's default of 7 retries with exponential backoff
# (minutes of a blocked training loop, or of a blocked Tune event loop in the driver).
# Also: no "🏃 View run ... at: http://..." line on stdout per terminated run (one per trial).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}

# Read from the environment by MlflowClient; passed on to the trials when set, never logged.
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                  "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH")
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN")


# Answers that a retry cannot change (anything else, e.g. an unreachable server, is retried).
PERMANENT_ERRORS = {"RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE", "BAD_REQUEST",
                    "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"}


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


@contextlib.contextmanager
def http_policy() -> Iterator[None]:
    """`HTTP_ENV` for this process while the block runs, except where the user set a value."""
    added = {k: v for k, v in HTTP_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def worker_env_vars() -> dict[str, str]:
    """The MLflow credentials and TLS settings set in this process's environment, for the trials'
    runtime environment (workers on other nodes do not inherit the driver's environment)."""
    return {k: os.environ[k] for k in CREDENTIAL_ENV if os.environ.get(k)}


def redact(text: str) -> str:
    """`text` with the value of every secret in the environment replaced by ***."""
    for k in SECRET_ENV:
        value = os.environ.get(k)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def transient(error: BaseException) -> bool:
    """A failure a retry can change: anything MLflow or the network raises, except a definite answer
    (PERMANENT_ERRORS: a run that does not exist is not a server that is down)."""
    return isinstance(error, (MlflowException, OSError)) and getattr(error, "error_code", None) not in PERMANENT_ERRORS


def retry(fn: Callable[[], T], *, attempts: int = 5, delay_s: float = 0.2, what: str = "MLflow call",
          timeout_s: float = 0.0) -> T:
    """Call `fn`, retrying transient failures (SQLite 'database is locked', HTTP hiccups, a server
    restarting) with exponential backoff up to 10 s: `attempts` times, or, with `timeout_s` > 0,
    for as long as that."""
    def note(state) -> None:
        error = state.outcome.exception()
        log.debug("%s failed (%s), retry %d", what, str(error).splitlines()[0] if str(error) else error,
                  state.attempt_number)

    return Retrying(stop=stop_after_delay(timeout_s) if timeout_s > 0 else stop_after_attempt(attempts),
                    wait=wait_exponential(multiplier=delay_s, max=10.0), retry=retry_if_exception(transient),
                    before_sleep=note, reraise=True)(fn)


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail before the first trial when the tracking store cannot be reached."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        request = urllib.request.Request(url)
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user and password:
            import base64
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise ConfigError(f"MLflow tracking server {tracking_uri} refused the credentials (HTTP {e.code}); "
                                  "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from e
            # /health may be absent behind some proxies; any HTTP answer means the server is up.
        except (urllib.error.URLError, OSError) as e:
            raise ConfigError(f"MLflow tracking URI {tracking_uri} is unreachable ({getattr(e, 'reason', e)}); "
                              "start the server or set mlflow.tracking_uri") from e
    path = sqlite_path(tracking_uri)
    if path is not None and not path.exists():  # created later by open_store, once nothing can refuse the start
        folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"MLflow tracking URI {tracking_uri} cannot be used: {folder} is not a writable "
                              "folder; fix mlflow.tracking_uri")
        return
    try:
        with _creating(tracking_uri):  # a SQLite file may be new and still being created by another process
            client(tracking_uri).search_experiments(max_results=1)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        if getattr(e, "error_code", None) in ("UNAUTHENTICATED", "PERMISSION_DENIED") or \
                re.search(r"error code (401|403)\b", str(e)):
            who = os.environ.get("MLFLOW_TRACKING_USERNAME")
            raise ConfigError(f"MLflow tracking server {tracking_uri} refused "
                              + (f"user {who!r}" if who else "a request without credentials")
                              + ": set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                              "(a user with EDIT permission on the experiment)") from e
        raise ConfigError(f"MLflow tracking URI {tracking_uri} cannot be used: {str(e).splitlines()[0]}; "
                          "fix mlflow.tracking_uri") from e


@contextlib.contextmanager
def _creating(tracking_uri: str, timeout_s: float = 300.0) -> Iterator[None]:
    """For a SQLite store: hold its file lock (`<db>.lock`) while the block runs. MLflow creates a
    database by migrating it, and two processes migrating the same new file at once fail ("Online
    migration expected to match one row"); every first access of a run_stage goes through this."""
    path = sqlite_path(tracking_uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with filelock.FileLock(f"{path}.lock", timeout=timeout_s):
            yield
    except filelock.Timeout as e:
        raise ConfigError(f"the MLflow store {path} stayed locked by another process for {timeout_s:.0f} s "
                          f"(while creating it: {path}.lock); try again, or delete the lock file if no other "
                          "process of this sweep runs") from e


def open_store(tracking_uri: str, settle_s: float = 120.0) -> MlflowClient:
    """A client of the store; a new SQLite store is created here, under its file lock (`_creating`),
    and runs on SQLite's write-ahead log (`_write_ahead_log`). Processes outside the sweep take no
    lock (an `mlflow ui`, a notebook's `MlflowClient`), and two migrations of one file break each
    other ("table ... already exists"): a new file is therefore migrated aside and put in place
    whole (`_create_sqlite_store`), and a file another process is migrating is left to it until it
    is done (`_await_migration`)."""
    try:
        with _creating(tracking_uri):  # MlflowClient opens (and creates) the store as it is made
            path = sqlite_path(tracking_uri)
            if path is not None and not path.exists():
                _create_sqlite_store(path)
            if path is not None:
                _await_migration(path, settle_s)
            c = client(tracking_uri)
            c.search_experiments(max_results=1)
            if path is not None:
                _write_ahead_log(path)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        raise ConfigError(f"the MLflow store {tracking_uri} could not be created or opened: "
                          f"{str(e).splitlines()[0]}; fix mlflow.tracking_uri") from e
    return c


def _create_sqlite_store(path: Path) -> None:
    """A new SQLite store at `path`, migrated under a temporary name beside it and hard-linked into
    place only if `path` is still free, so no other process ever opens it half-migrated; one that
    created `path` meanwhile keeps it (and `_await_migration` waits for it). The log files of a
    deleted store at `path` are removed just before the link, while `path` is still free (they would
    be replayed into the new store; earlier, they could be a new foreign store's live journal).
    Where the filesystem has no hard links, the store is migrated in place, as MLflow does."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    aside = path.with_name(f".{path.name}.creating-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.remove(aside)
    try:
        store = SqlAlchemyStore(f"sqlite:///{aside}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)  # MLflow's default root
        store.engine.dispose()  # migrated and closed
        if path.exists():
            return  # created meanwhile by a process outside the sweep, whose log files these are
        for orphan in (f"{path}-wal", f"{path}-shm", f"{path}-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(orphan)
        os.link(aside, path)
    except FileExistsError:
        pass  # created meanwhile by a process outside the sweep
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        log.warning("no hard links in %s (%s): the MLflow store is migrated in place", path.parent, e)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(aside)


def _await_migration(path: os.PathLike, settle_s: float, still_s: float = 5.0) -> None:
    """Wait while the SQLite store's schema revision moves towards MLflow's head: another process is
    migrating (creating) it, and opening it now would start a second migration that breaks both
    ("table ... already exists", "Online migration expected to match one row"). A revision at head,
    or one that has not moved for `still_s` (nobody is migrating it: an older MLflow's store, which
    MLflow then names), ends the wait."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    deadline = time.monotonic() + settle_s
    seen, since = object(), time.monotonic()
    while time.monotonic() < deadline:
        revision = _schema_revision(path)
        if revision == head:
            return
        if revision != seen:
            seen, since = revision, time.monotonic()
        elif time.monotonic() - since > still_s:
            return
        time.sleep(0.1)


def _schema_revision(path: os.PathLike) -> str | None:
    """The store's alembic revision, None before its first migration has written one."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _write_ahead_log(path: os.PathLike) -> None:
    """Put a SQLite store on SQLite's write-ahead log (WAL; a property of the file, kept for every
    later connection). MLflow leaves SQLite in its default rollback-journal mode, where a reader
    blocks the one writer: the trial workers and the driver's callbacks then queue for the file.
    Under WAL readers never block, and each trial's store calls cost about a third less with three
    processes writing at once (`benchmarks/sweep_overhead.py`, README "Orchestration overhead").
    WAL needs every process on the file's host, which a SQLite store's sweep is. A filesystem that
    cannot hold the log (some network mounts) keeps the default mode, with a warning. The log lives
    beside the file (`<db>-wal`, `<db>-shm`) and outlives a killed process; `open_store` removes
    those of a deleted database before it creates a new one there."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.Error as e:
        mode = str(e)
    if str(mode).lower() != "wal":
        log.warning("MLflow store %s stays in SQLite's %s journal mode (write-ahead log refused)", path, mode)


def experiment_id(c: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created if needed; new and existing experiments are tagged as model
    training (`TAG_EXPERIMENT_KIND`), so MLflow's UI opens them on the runs table, not the GenAI
    traces overview."""
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=artifact_location,
                                       tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except MlflowException:  # created concurrently by another driver
            exp = c.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow experiment {name!r} is deleted; restore it or set mlflow.experiment")
    if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
        retry(lambda: c.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND),
              what="experiment tag")
    return exp.experiment_id


def find_runs(c: MlflowClient, exp_id: str, tags: dict[str, str], timeout_s: float = 0.0) -> list:
    """The runs (up to 10, oldest first) that carry every tag of `tags`."""
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return retry(lambda: list(c.search_runs([exp_id], filter_string=flt, max_results=10, order_by=["start_time ASC"])),
                 what="search_runs", timeout_s=timeout_s)


def driver_tags() -> dict[str, str]:
    """This process as a stage's driver, alive now."""
    return {TAG_DRIVER: f"{socket.gethostname()}:{os.getpid()}", TAG_HEARTBEAT: str(int(time.time()))}


def driver_alive(driver: str, beat: float, stale_s: float = HEARTBEAT_STALE_S) -> bool:
    """Whether the driver `host:pid` whose latest heartbeat was at unix time `beat` is alive: the
    heartbeat is younger than `stale_s` and, on this machine, the process still exists."""
    if time.time() - beat > stale_s:
        return False
    host, _, pid = driver.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, someone else's
            pass
    return True


def busy(stage: str, sweep_id: str, driver: str) -> SweepBusy:
    """The refusal of a second driver: one line naming the one that runs the stage."""
    return SweepBusy(f"the {stage} stage (sweep {sweep_id}) is being run by {driver}; nothing to do until it "
                     f"ends, or until its heartbeat is {HEARTBEAT_STALE_S:.0f} s old if it died")


def live_driver(run, stale_s: float = HEARTBEAT_STALE_S) -> str | None:
    """Who else drives this stage's parent run right now, if anyone: the run is RUNNING with a fresh
    heartbeat from another process (on this machine: one that is still alive)."""
    driver, beat = run.data.tags.get(TAG_DRIVER), run.data.tags.get(TAG_HEARTBEAT)
    if run.info.status != "RUNNING" or not driver or not beat:
        return None
    if driver == f"{socket.gethostname()}:{os.getpid()}" or not driver_alive(driver, float(beat), stale_s):
        return None
    return f"{driver} (heartbeat {max(0, int(time.time() - float(beat)))} s ago)"


def start_parent(c: MlflowClient, exp_id: str, *, sweep_id: str, stage: str, mode: str, run_name: str,
                 params: dict[str, Any], tags: dict[str, str]) -> tuple[str, bool]:
    """The stage's parent run: found again by sweep id when the stage is resumed. Returns (run id, resumed).
    Raises SweepBusy while another live driver runs the stage (e.g. the previous scheduled run)."""
    found = find_runs(c, exp_id, {TAG_ROLE: ROLE_STAGE, TAG_SWEEP: sweep_id})
    if found:
        run_id = found[0].info.run_id
        other = live_driver(found[0])
        if other:
            raise busy(stage, sweep_id, other)
        c.update_run(run_id, status="RUNNING")
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in driver_tags().items()])
        return run_id, True
    run = c.create_run(exp_id, run_name=run_name, tags={TAG_ROLE: ROLE_STAGE, TAG_SWEEP: sweep_id, TAG_STAGE: stage,
                                                        TAG_MODE: mode, **driver_tags(), **tags})
    c.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items()])
    return run.info.run_id, False


def sweep_children(c: MlflowClient, exp_id: str, sweep_id: str) -> dict[str, str]:
    """Trial key -> run id of every child run of the sweep that exists now (paged search)."""
    runs = search_all(c, [exp_id], f"tags.`{TAG_SWEEP}` = '{sweep_id}' and tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'")
    out: dict[str, str] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):   # the oldest wins, as in find_runs
        if TAG_TRIAL_KEY in r.data.tags:
            out[r.data.tags[TAG_TRIAL_KEY]] = r.info.run_id
    return out


def trial_key(sweep_id: str, point_key: str) -> str:
    return hashlib.sha1(f"{sweep_id}|{point_key}".encode()).hexdigest()[:20]


def _param(value: Any) -> str:
    return str(value)[:6000]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


BATCH_METRICS = 900  # metrics per log_batch (MLflow's SQL store takes at most 1000)


@dataclass
class ChildRun:
    """A trial's MLflow run, and what it has received so far.

    Store calls per trial: one `create_run` (tags and name), then one `log_batch` per epoch; the
    params ride on the first of them (`pending_params`), or on `flush` when the trial ends before
    its first epoch.

    `epoch_key` names a metric that every epoch of the history carries. MLflow's SQL store commits
    a `log_batch`'s metrics and its tags in separate transactions, so a process killed between the
    two leaves epochs in the run beyond its `logged_epoch` tag; a continued run counts the last step
    of `epoch_key` as held too, and `sync` never splits an epoch across batches unless it is wider
    than one (its `epoch_key` then goes in the last part)."""

    client: MlflowClient
    run_id: str
    logged_epoch: int = 0
    # Each pending epoch's metric timestamp, fixed at its first send: a resend after a failure whose
    # request did reach the store (the response was lost) is then an exact duplicate, which
    # MLflow's SQL store drops, instead of a second point at the same step.
    stamps: dict[int, int] = field(default_factory=dict)
    pending_params: dict[str, Any] = field(default_factory=dict)   # not in the run yet
    epoch_key: str | None = None

    @classmethod
    def open(cls, c: MlflowClient, *, experiment_id: str, parent_id: str, sweep_id: str, key: str, run_name: str,
             params: dict[str, Any], tags: dict[str, str], run_id: str | None = None, search: bool = True,
             wait_s: float = 0.0, epoch_key: str | None = None) -> "ChildRun":
        """Find the trial's run (by `run_id`, e.g. from its checkpoint, else, with `search`, by trial
        key) or create it; with `wait_s`, wait that long for a tracking server that does not answer
        (restarting). `search=False` is the caller's word that no run of this trial key exists
        unless `run_id` names it (trainable.known_run: the search grows with the sweep's runs)."""
        run = None
        if run_id:
            try:
                run = retry(lambda: c.get_run(run_id), what="get_run", timeout_s=wait_s)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                run = None
        if run is None and (search or run_id):
            found = find_runs(c, experiment_id, {TAG_TRIAL_KEY: key}, timeout_s=wait_s)
            run = found[0] if found else None
        if run is None:
            run = retry(lambda: c.create_run(experiment_id, run_name=run_name, tags={
                PARENT: parent_id, TAG_ROLE: ROLE_TRIAL, TAG_SWEEP: sweep_id, TAG_TRIAL_KEY: key,
                TAG_STATUS: RUNNING, TAG_LOGGED_EPOCH: "0", **tags}), what="create_run", timeout_s=wait_s)
            return cls(c, run.info.run_id, 0, pending_params=dict(params), epoch_key=epoch_key)
        # A continued run: mark it running again with the current attempt's tags.
        retry(lambda: c.log_batch(run.info.run_id, tags=[RunTag(TAG_STATUS, RUNNING)] +
                                  [RunTag(k, str(v)) for k, v in tags.items()]), what="retag", timeout_s=wait_s)
        if run.info.status != "RUNNING":
            retry(lambda: c.update_run(run.info.run_id, status="RUNNING"), what="update_run", timeout_s=wait_s)
        logged = int(run.data.tags.get(TAG_LOGGED_EPOCH, "0") or 0)
        if epoch_key:  # epochs whose metrics landed without the tag (a process killed inside log_batch)
            held = retry(lambda: c.get_metric_history(run.info.run_id, epoch_key), what="get_metric_history",
                         timeout_s=wait_s)
            logged = max([logged, *(m.step for m in held)])
        return cls(c, run.info.run_id, logged, pending_params={} if run.data.params else dict(params),
                   epoch_key=epoch_key)

    def sync(self, history: list[dict[str, float]], *, raise_errors: bool = False, final: bool = False) -> bool:
        """Send the epochs of `history` (epoch e = history[e-1]) that the run does not hold yet,
        in one `log_batch` with the new `logged_epoch` tag and the params not sent yet (with
        `final`, those alone too). Returns False (and keeps them pending) when the store is
        unreachable, unless `raise_errors`."""
        if len(history) <= self.logged_epoch and not (final and self.pending_params):
            return True
        now = int(time.time() * 1000)
        # MLflow's SQL store accepts at most 1000 metrics per log_batch: whole epochs per batch, the
        # tag with the last one, the params with the first
        chunks: list[list[Metric]] = [[]]
        for epoch in range(self.logged_epoch + 1, len(history) + 1):
            stamp = self.stamps.setdefault(epoch, now)
            metrics = [Metric(k, float(v), stamp, epoch) for k, v in
                       sorted(history[epoch - 1].items(), key=lambda kv: kv[0] == self.epoch_key) if _finite(v)]
            if chunks[-1] and len(chunks[-1]) + len(metrics) > BATCH_METRICS:
                chunks.append([])
            while len(metrics) > BATCH_METRICS:  # one epoch wider than a batch: epoch_key in its last part
                chunks[-1].extend(metrics[:BATCH_METRICS])
                chunks.append([])
                metrics = metrics[BATCH_METRICS:]
            chunks[-1].extend(metrics)
        new_epoch = max(len(history), self.logged_epoch)
        params = [Param(k, _param(v)) for k, v in self.pending_params.items()]
        try:
            for i, chunk in enumerate(chunks):
                tags = [RunTag(TAG_LOGGED_EPOCH, str(new_epoch))] if i == len(chunks) - 1 else []
                first = params if i == 0 else []
                retry(lambda: self.client.log_batch(self.run_id, metrics=chunk, params=first, tags=tags,
                                                    synchronous=True), attempts=3, what="log_batch")
        except (MlflowException, OSError) as e:
            if raise_errors:
                raise
            log.warning("MLflow unreachable, %d epoch(s) of run %s stay pending: %s",
                        new_epoch - self.logged_epoch, self.run_id, str(e).splitlines()[0])
            return False
        self.logged_epoch = new_epoch
        self.pending_params = {}
        self.stamps = {e: t for e, t in self.stamps.items() if e > new_epoch}
        return True

    def flush(self, history: list[dict[str, float]], *, timeout_s: float) -> None:
        """Keep trying to send what is pending (backoff 1 s doubling up to 30 s) until `timeout_s`
        has passed, then raise the store's error."""
        attempts = Retrying(stop=stop_after_delay(timeout_s), wait=wait_exponential(multiplier=1.0, max=30.0),
                            retry=retry_if_result(lambda sent: not sent))
        try:
            attempts(self.sync, history, final=True)
        except RetryError:
            self.sync(history, raise_errors=True, final=True)


def finish(c: MlflowClient, run_id: str, *, status: str, reason: str | None = None, attempts: int = 5) -> None:
    """Terminal state of a child run: status one of records.STATUSES (not RUNNING)."""
    tags = [RunTag(TAG_STATUS, status)]
    if reason:
        tags.append(RunTag(TAG_FAILURE, reason[:4000]))
    retry(lambda: c.log_batch(run_id, tags=tags), what="status tags", attempts=attempts)
    retry(lambda: c.set_terminated(run_id, "FAILED" if status == FAILED else "FINISHED"), what="set_terminated",
          attempts=attempts)


def log_metrics(c: MlflowClient, run_id: str, metrics: dict[str, float], *, step: int, timeout_s: float) -> None:
    """Metrics outside the epoch history (a diverged trial's cost through the epoch that failed),
    in one `log_batch`, retried for up to `timeout_s`."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
    retry(lambda: c.log_batch(run_id, metrics=batch), what="log_batch", timeout_s=timeout_s)


def log_cost_totals(c: MlflowClient, parent_id: str, runs: Any) -> dict[str, float]:
    """Write a stage's cost onto its parent run: `records.cost_totals(runs)` (runs: the stage's
    trials as `records.load_runs(..., parent_run_id=parent_id)` reads them, every status) as the
    parent's metrics records.COST_TOTALS, one `log_batch` (a later call overwrites them: step 0).
    Returns the totals written."""
    totals = cost_totals(runs)
    now = int(time.time() * 1000)
    retry(lambda: c.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in totals.items()]),
          what="cost totals")
    return totals


@contextlib.contextmanager
def system_metrics(tracking_uri: str, run_id: str, *, enabled: bool, interval_s: float = 10.0) -> Iterator[None]:
    """MLflow's system metrics for a trial while the block runs: CPU and memory, disk, network and,
    where NVIDIA's management library is importable (the `nvidia-ml-py` package), GPU utilisation
    and memory, every `interval_s` seconds as `system/...` metrics of the run (the UI's "System
    metrics" tab). A retried trial continues the run's steps. Uses MLflow's own
    `SystemMetricsMonitor` on this run id (no fluent active run); a monitor that cannot start is a
    warning, never a failed trial. `enabled=False`: nothing."""
    monitor = None
    if enabled:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True,
                                           tracking_uri=tracking_uri)
            monitor.start()
        except Exception as e:  # noqa: BLE001 - optional instrumentation (psutil missing, store away)
            log.warning("no system metrics for run %s: %s", run_id, str(e).splitlines()[0] if str(e) else e)
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()
