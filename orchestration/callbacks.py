"""Driver-side Tune callbacks: each trial's MLflow status, and the progress display."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from mlflow.entities import RunTag
from ray import tune

from orchestration import tracking
from orchestration.spaces import point_key
from orchestration.trainable import run_name, trial_point

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


class StatusCallback(tune.Callback):
    """Marks each child run completed / stopped_early / failed (with the reason) when its trial ends.

    Runs in Tune's event loop, so it never blocks on, nor dies of, a tracking server that is away:
    a status it cannot set is kept and tried again every `retry_every_s` and, at the end of the
    experiment, for up to `flush_timeout_s`."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str, max_epochs: int,
                 flush_timeout_s: float = 600.0, retry_every_s: float = 15.0):
        self.tracking_uri, self.experiment_id, self.sweep_id, self.max_epochs = \
            tracking_uri, experiment_id, sweep_id, max_epochs
        self.flush_timeout_s, self.retry_every_s = flush_timeout_s, retry_every_s
        self._client = None
        self._pending: list[dict[str, Any]] = []  # statuses not set yet: run_id or trial key, status, reason
        self._last_try = 0.0

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.client(self.tracking_uri)
        return self._client

    def __getstate__(self):  # Tune pickles callbacks with its state; clients are rebuilt on restore
        return {**self.__dict__, "_client": None}

    def _set(self, status: dict[str, Any]) -> None:
        run_id = status["run_id"]
        if run_id is None:
            found = tracking._find(self.client, self.experiment_id, {tracking.TAG_TRIAL_KEY: status["key"]})
            if not found:
                return  # the trial ended before its run was created: nothing to mark
            run_id = found[0].info.run_id
        tracking.finish(self.client, run_id, status=status["status"], reason=status["reason"], attempts=2)

    def _flush(self, timeout_s: float = 0.0) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 1.0
        while self._pending:
            self._last_try = time.monotonic()
            try:
                self._set(self._pending[0])
                self._pending.pop(0)
                continue
            except Exception as e:  # noqa: BLE001 - whatever the store says, the sweep goes on
                log.warning("MLflow unreachable; %d trial status(es) kept for later: %s", len(self._pending),
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
            if time.monotonic() + delay > deadline:
                return
            time.sleep(delay)
            delay = min(2 * delay, 30.0)

    def _end(self, trial: Any, status: str, reason: str | None = None) -> None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        key = tracking.trial_key(self.sweep_id, point_key(trial_point(trial.config)))
        self._pending.append({"run_id": run_id, "key": key, "status": status, "reason": reason})
        self._flush()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if result.get("diverged"):
            self._end(trial, "failed", str(result.get("failure_reason")))
        elif int(result.get("epoch", 0)) < self.max_epochs:
            self._end(trial, "stopped_early", f"stopped by the scheduler after epoch {result.get('epoch', 0)}")
        else:
            self._end(trial, "completed")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "failed", _error_reason(trial))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._pending and time.monotonic() - self._last_try > self.retry_every_s:
            self._flush()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._flush(timeout_s=self.flush_timeout_s)
        if self._pending:
            log.error("%d trial status(es) could not be set in MLflow at %s; run the same command again to set them",
                      len(self._pending), self.tracking_uri)


class HeartbeatCallback(tune.Callback):
    """Tells the stage's parent run, every `every_s`, that its driver is alive: a scheduled run of the
    same sweep that starts meanwhile leaves it alone (tracking.live_driver). Never blocks or fails."""

    def __init__(self, tracking_uri: str, parent_run_id: str, every_s: float = tracking.HEARTBEAT_S):
        self.tracking_uri, self.parent_run_id, self.every_s = tracking_uri, parent_run_id, every_s
        self._client = None
        self._last = 0.0

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_last": 0.0}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        try:
            if self._client is None:
                self._client = tracking.client(self.tracking_uri)
            self._client.log_batch(self.parent_run_id,
                                   tags=[RunTag(k, v) for k, v in tracking.driver_tags().items()])
        except Exception as e:  # noqa: BLE001 - a missed heartbeat is harmless; the next one follows
            log.debug("heartbeat not sent: %s", e)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressCallback(tune.Callback):
    """A compact, log-friendly progress display: trials done/total, the running trials' weights,
    epoch and val accuracy, the best so far, and an ETA from the trial-epochs completed so far."""

    def __init__(self, *, title: str, total_trials: int, max_epochs: int, metric: str, interval_s: float = 15.0,
                 stream: TextIO | None = None):
        self.title, self.total, self.max_epochs, self.metric = title, total_trials, max_epochs, metric
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
            self.names[trial.trial_id] = run_name(trial_point(trial.config))
        return self.names[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._name(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.running.add(trial.trial_id)
        if "epoch" in result:
            self.epochs[trial.trial_id] = int(result["epoch"])
        if self.metric in result:
            self.scores[trial.trial_id] = float(result[self.metric])

    def _end(self, trial: Any, failed: bool) -> None:
        self.running.discard(trial.trial_id)
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

    def eta(self) -> str:
        total = self.total * self.max_epochs
        done = sum(self.epochs.values())
        new = done - self.epochs_at_start
        if new <= 0 or len(self.done) == self.done_at_start:  # start-up would dominate the estimate
            return "?"
        rate = new / (time.monotonic() - self.started)
        return _duration((total - done) / rate) if total > done else "0s"

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
                     + f" · {len(self.running)} running · elapsed {_duration(now - self.started)} · ETA {self.eta()}")
        if ended is None:
            for tid in sorted(self.running, key=lambda t: self.names.get(t, t)):
                score = self.scores.get(tid)
                lines.append(f"    {self.names.get(tid, tid):<40} epoch {self.epochs.get(tid, 0)}/{self.max_epochs}"
                             + (f"  {self.metric} {score:.3f}" if score is not None else ""))
        print("\n".join(lines), file=self.out, flush=True)
