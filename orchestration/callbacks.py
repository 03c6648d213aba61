"""Driver-side Tune callbacks: each trial's MLflow status, and the progress display."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

from mlflow.entities import RunTag
from ray import tune
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

from orchestration import records, tracking
from orchestration.spaces import point_key
from orchestration.trainable import FINAL, trial_point

log = logging.getLogger(__name__)


def _error_reason(trial: Any) -> str:
    """The last line of the trial's error (Ray writes the traceback to the trial folder)."""
    try:
        err = trial.get_error()
    except Exception:  # noqa: BLE001 - a missing or unreadable error file must not break the sweep
        err = None
    text = str(err) if err else "the trial's worker failed"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


def terminal_status(result: dict[str, Any], max_epochs: int, error: str | None = None) -> tuple[str, str | None]:
    """How a trial ended, from its last result: (completed | stopped_early | failed, reason)."""
    if error is not None:
        return records.FAILED, error
    if result.get("diverged"):
        return records.FAILED, str(result.get("failure_reason"))
    if int(result.get("epoch", 0)) < max_epochs and not result.get(FINAL):  # FINAL: a wall-time budget spent
        return records.STOPPED_EARLY, f"stopped by the scheduler after epoch {result.get('epoch', 0)}"
    return records.COMPLETED, None


class StatusCallback(tune.Callback):
    """Marks each child run completed / stopped_early / failed (with the reason) when its trial ends.

    The MLflow writes happen on a thread of their own, never in Tune's event loop: the loop starts
    the next trial at once, whatever the tracking server's latency, and a server that is away costs
    nothing but a retry. A status that cannot be set is kept and tried again every `retry_every_s`;
    at the end of the experiment the callback waits up to `flush_timeout_s` for the last ones.

    Its state (statuses queued, trials marked) is part of Tune's experiment checkpoint. A driver
    killed before it marked every ended trial is made good when the same command runs again: the
    restored callback queues every trial that Tune holds as ended and that it has not marked (a
    status set twice is the same status)."""

    _RUNTIME = ("_client", "_lock", "_wake", "_idle", "_thread", "_closing", "_restored")

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str, max_epochs: int,
                 flush_timeout_s: float = 600.0, retry_every_s: float = 15.0):
        self.tracking_uri, self.experiment_id, self.sweep_id, self.max_epochs = \
            tracking_uri, experiment_id, sweep_id, max_epochs
        self.flush_timeout_s, self.retry_every_s = flush_timeout_s, retry_every_s
        self._pending: list[dict[str, Any]] = []  # statuses not set yet: trial, run_id or trial key, status, reason
        self._marked: set[str] = set()            # trial ids whose status MLflow holds
        self._start_runtime()

    def _start_runtime(self) -> None:
        self._client = None
        self._lock = threading.Lock()
        self._wake = threading.Event()      # a new status, or the end of the experiment
        self._idle = threading.Event()      # nothing pending
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._restored = False
        if self._pending:
            self._idle.clear()

    def __getstate__(self):  # Tune pickles callbacks with its state; thread and client are rebuilt
        with self._lock:
            pending = [dict(p) for p in self._pending]
        return {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME} | {"_pending": pending}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_runtime()

    def get_state(self) -> dict[str, Any]:
        with self._lock:
            return {"pending": [dict(p) for p in self._pending], "marked": sorted(self._marked)}

    def set_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._pending = [dict(p) for p in state.get("pending", [])]
            self._marked = set(state.get("marked", []))
            if self._pending:
                self._idle.clear()
        self._restored = True

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.client(self.tracking_uri)
        return self._client

    def _set(self, status: dict[str, Any]) -> None:
        run_id = status["run_id"]
        if run_id is None:
            found = tracking.find_runs(self.client, self.experiment_id, {records.TAG_TRIAL_KEY: status["key"]})
            if not found:
                return  # the trial ended before its run was created: nothing to mark
            run_id = found[0].info.run_id
        tracking.finish(self.client, run_id, status=status["status"], reason=status["reason"], attempts=2)

    def _drain(self) -> int:
        """Set the pending statuses in order until one fails; returns how many are left."""
        while True:
            with self._lock:
                if not self._pending:
                    self._idle.set()
                    return 0
                status = self._pending[0]
            try:
                self._set(status)
            except Exception as e:  # noqa: BLE001 - whatever the store says, the sweep goes on
                if not tracking.transient(e):  # e.g. the run does not exist: no retry changes that answer
                    log.warning("trial status %s not set in MLflow, and not retried: %s", status["status"],
                                str(e).splitlines()[0] if str(e) else type(e).__name__)
                    with self._lock:
                        self._pending.pop(0)
                    continue
                log.warning("MLflow unreachable; %d trial status(es) kept for later: %s", len(self._pending),
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                return len(self._pending)
            with self._lock:
                self._marked.add(self._pending.pop(0)["trial"])

    def _write(self) -> None:
        """The writer thread: sets pending statuses whenever woken (a new status), retrying what
        failed every `retry_every_s`; at the end of the experiment, with backoff (1 s doubling up
        to 30 s) for up to `flush_timeout_s`."""
        while not self._closing:
            self._drain()
            self._wake.wait(timeout=self.retry_every_s)
            self._wake.clear()
        try:
            Retrying(stop=stop_after_delay(self.flush_timeout_s), wait=wait_exponential(multiplier=1.0, max=30.0),
                     retry=retry_if_result(bool))(self._drain)
        except RetryError:
            pass  # on_experiment_end says what is left

    def _end(self, trial: Any, status: str, reason: str | None = None) -> None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        key = tracking.trial_key(self.sweep_id, point_key(trial_point(trial.config)))
        with self._lock:
            self._pending.append({"trial": trial.trial_id, "run_id": run_id, "key": key, "status": status,
                                  "reason": reason})
            self._idle.clear()
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        """Called from Tune's event loop only (one thread): start the writer if it is not running."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._write, name="rev2net-mlflow-status", daemon=True)
            self._thread.start()
        self._wake.set()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, *terminal_status(trial.last_result or {}, self.max_epochs))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, *terminal_status(trial.last_result or {}, self.max_epochs, error=_error_reason(trial)))

    def _queue_unmarked(self, trials: list) -> None:
        """After a restore: the trials that ended under a previous driver and were never marked."""
        self._restored = False
        with self._lock:
            known = self._marked | {p["trial"] for p in self._pending}
        for trial in trials:
            if trial.trial_id in known:
                continue
            if trial.status == "TERMINATED":
                self.on_trial_complete(0, trials, trial)
            elif trial.status == "ERROR":
                self.on_trial_error(0, trials, trial)
        if self._pending:
            self._ensure_writer()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._restored:
            self._queue_unmarked(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._restored:  # every trial had ended: Tune ran no step
            self._queue_unmarked(trials)
        self._closing = True
        if self._pending:
            self._ensure_writer()
        if not self._idle.wait(timeout=self.flush_timeout_s):
            log.error("%d trial status(es) could not be set in MLflow at %s; run the same command again to set them",
                      len(self._pending), self.tracking_uri)


class HeartbeatCallback(tune.Callback):
    """Tells the stage's parent run, every `every_s`, that its driver is alive: a scheduled run of the
    same sweep that starts meanwhile leaves it alone (tracking.live_driver). The write runs on a
    thread of its own, never in Tune's event loop (a restarting server costs the loop nothing); one
    write at a time, a missed one is harmless."""

    def __init__(self, tracking_uri: str, parent_run_id: str, every_s: float = tracking.HEARTBEAT_S):
        self.tracking_uri, self.parent_run_id, self.every_s = tracking_uri, parent_run_id, every_s
        self._client = None
        self._last = 0.0
        self._thread: threading.Thread | None = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_last": 0.0, "_thread": None}

    def _send(self) -> None:
        try:
            if self._client is None:
                self._client = tracking.client(self.tracking_uri)
            self._client.log_batch(self.parent_run_id,
                                   tags=[RunTag(k, v) for k, v in tracking.driver_tags().items()])
        except Exception as e:  # noqa: BLE001 - a missed heartbeat is harmless; the next one follows
            log.debug("heartbeat not sent: %s", e)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last < self.every_s or (self._thread is not None and self._thread.is_alive()):
            return
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._send, name="rev2net-mlflow-heartbeat", daemon=True)
        self._thread.start()


class PruneGoneCheckpoints(tune.Callback):
    """After a driver restore, forgets the checkpoints that Tune's snapshot still lists but that are
    gone (deleted by the previous driver after its last snapshot, `trial.keep_checkpoints`); else
    Tune's checkpoint manager fails to delete them again at the trial's next checkpoint and logs an
    ERROR traceback. Checked once per trial start, before the trial's next checkpoint."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
        results = getattr(manager, "_checkpoint_results", None)  # Tune's own list (Ray 2.x): no public API
        if not results:
            return
        import pyarrow.fs

        def gone(result: Any) -> bool:
            checkpoint = result.checkpoint
            try:
                return checkpoint.filesystem.get_file_info(checkpoint.path).type == pyarrow.fs.FileType.NotFound
            except Exception:  # noqa: BLE001 - unsure: keep it (Tune's own deletion decides)
                return False

        kept = [r for r in results if not gone(r)]
        if len(kept) < len(results):
            log.debug("trial %s: %d checkpoint(s) already deleted by a previous driver", trial.trial_id,
                      len(results) - len(kept))
            manager._checkpoint_results = kept


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressCallback(tune.Callback):
    """A compact, log-friendly progress display: trials done/total, the running trials' weights,
    epoch and val accuracy, the best so far, and an ETA from the trial-epochs completed so far.

    The ETA's total is `planned_epochs`, the trial-epochs the stage is expected to train
    (orchestration.plan.trial_epochs: under ASHA its successive-halving estimate; default every
    trial to `max_epochs`), and never less than what the trials still running or waiting can train:
    a trial that ended before `max_epochs` (stopped by ASHA) adds no more. Under a wall-time budget
    (`by_trials`: trainer.max_train_s) every trial takes about the same time whatever its epochs,
    and the ETA counts trials ended instead."""

    def __init__(self, *, title: str, total_trials: int, max_epochs: int, metric: str, interval_s: float = 15.0,
                 stream: TextIO | None = None, planned_epochs: int | None = None, by_trials: bool = False):
        self.title, self.total, self.max_epochs, self.metric = title, total_trials, max_epochs, metric
        self.by_trials = by_trials
        self.planned_epochs = planned_epochs if planned_epochs is not None else total_trials * max_epochs
        self.interval_s = interval_s
        self.stream = stream
        self._reset()

    def _reset(self) -> None:
        self.started = time.monotonic()
        self.last_print = 0.0
        self.epochs: dict[str, int] = {}          # trial id -> epochs reported
        self.scores: dict[str, float] = {}        # trial id -> last metric value
        self.names: dict[str, str] = {}
        self.running: set[str] = set()
        self.retrying: dict[str, str] = {}        # trial id -> "attempt k of n" while it waits for its retry
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.epochs_at_start = 0
        self.done_at_start = 0

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "stream"} | {"stream": None}

    def setup(self, **info: Any) -> None:
        self._reset()

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stdout

    def _name(self, trial: Any) -> str:
        if trial.trial_id not in self.names:
            self.names[trial.trial_id] = records.run_name(trial_point(trial.config))
        return self.names[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._name(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The trial failed and Tune will retry it from its last checkpoint: waiting, not running."""
        self.running.discard(trial.trial_id)
        attempts = trial.max_failures + 1 if trial.max_failures >= 0 else None
        self.retrying[trial.trial_id] = f"attempt {trial.num_failures + 1}" + (f" of {attempts}" if attempts else "")
        self._name(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self.retrying.pop(trial.trial_id, None)
        if "epoch" in result:
            self.epochs[trial.trial_id] = int(result["epoch"])
        if self.metric in result:
            self.scores[trial.trial_id] = float(result[self.metric])

    def _end(self, trial: Any, failed: bool) -> None:
        self.running.discard(trial.trial_id)
        self.retrying.pop(trial.trial_id, None)
        self.done.add(trial.trial_id)
        if failed or (trial.last_result or {}).get("diverged"):
            self.failed.add(trial.trial_id)
        self.print(force=True, ended=trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.epochs and trials:  # a restored sweep: count what finished before
            for t in trials:
                if t.status in ("TERMINATED", "ERROR"):
                    self.done.add(t.trial_id)
                    self.epochs[t.trial_id] = int((t.last_result or {}).get("epoch", self.max_epochs))
            self.epochs_at_start = sum(self.epochs.values())
            self.done_at_start = len(self.done)
        self.print()

    def remaining_epochs(self) -> int:
        """Trial-epochs still to train: the plan's count less those trained, at least one more
        epoch for each trial not yet ended and at most every such trial to `max_epochs`."""
        done = sum(self.epochs.values())
        open_trials = [t for t in self.epochs if t not in self.done]
        unstarted = max(0, self.total - len(self.done) - len(open_trials))
        least = len(open_trials) + unstarted
        most = sum(max(0, self.max_epochs - self.epochs[t]) for t in open_trials) + unstarted * self.max_epochs
        return min(max(self.planned_epochs - done, least), most)

    def eta(self) -> str:
        new = sum(self.epochs.values()) - self.epochs_at_start
        if new <= 0 or len(self.done) == self.done_at_start:  # start-up would dominate the estimate
            return "?"
        if self.by_trials:
            new, remaining = len(self.done) - self.done_at_start, self.total - len(self.done)
        else:
            remaining = self.remaining_epochs()
        rate = new / (time.monotonic() - self.started)
        return _duration(remaining / rate) if remaining > 0 else "0s"

    def print(self, force: bool = False, ended: Any = None) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < self.interval_s:
            return
        self.last_print = now
        lines = []
        if ended is not None:
            score = self.scores.get(ended.trial_id)
            how = "failed" if ended.trial_id in self.failed else "done"
            lines.append(f"  {how}: {self._name(ended)}" + (f"  {self.metric} {score:.3f}" if score is not None else ""))
        lines.append(f"[{self.title}] {len(self.done)}/{self.total} trials done"
                     + (f" ({len(self.failed)} failed)" if self.failed else "")
                     + f" · {len(self.running)} running"
                     + (f" · {len(self.retrying)} retrying" if self.retrying else "")
                     + f" · elapsed {_duration(now - self.started)} · ETA {self.eta()}")
        if ended is None:
            for tid in sorted(self.running, key=lambda t: self.names.get(t, t)):
                score = self.scores.get(tid)
                lines.append(f"    {self.names.get(tid, tid):<40} epoch {self.epochs.get(tid, 0)}/{self.max_epochs}"
                             + (f"  {self.metric} {score:.3f}" if score is not None else ""))
            for tid in sorted(self.retrying, key=lambda t: self.names.get(t, t)):
                lines.append(f"    {self.names.get(tid, tid):<40} retrying ({self.retrying[tid]}) from epoch "
                             f"{self.epochs.get(tid, 0)}/{self.max_epochs}")
        print("\n".join(lines), file=self.out, flush=True)
