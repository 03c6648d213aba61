"""Reading a sweep back from MLflow: one row per trial, the per-epoch histories, and the best configuration.

`best_config` is the one definition of "best" in the project: the fine stage derives its grid
from it and the analysis tables report it, so the two can never disagree.

Statuses (the `rev2net.status` tag the sweep writes): `completed` (trained to trainer.max_epochs),
`stopped_early` (stopped by ASHA: its metrics come from fewer epochs), `failed` (diverged or
crashed; `failure_reason` says why) and `running` (still training, or interrupted: its driver died
before marking it; `mlflow_status` then says FINISHED/KILLED/FAILED rather than RUNNING). A run
without the tag is `running`.

Speed (1296 trials in well under 5 s from SQLite): one `search_runs` page of up to 5000 runs, the
best-epoch histories of every run in one query per metric on SQL stores, and Python's cyclic
garbage collector paused while MLflow builds its tens of thousands of small ORM objects (without
the pause, collection passes over them triple the time of `search_runs`).
"""

from __future__ import annotations

import contextlib
import gc
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
from mlflow import MlflowClient

WEIGHTS = ("loss.alpha", "loss.beta", "loss.lambda_flow", "loss.lambda_im")
PARENT = "mlflow.parentRunId"
STATUSES = ("completed", "stopped_early", "failed", "running")
RANKED = ("completed", "stopped_early")       # the trials `best_config` chooses among by default
AVERAGED = ("completed",)                     # the trials the tables average by default
SHUFFLE_PROTOCOLS = ("none", "long_term", "short_term", "complete")
# The ablation variants of search_spaces/ablation.yaml, in the order the tables list them.
VARIANTS = ("rev2net", "no_frame_decoder", "no_flow_decoder", "no_ddp", "ddp_low_only", "ddp_high_only",
            "decoder_plain", "decoder_deep", "i3d")
# Every per-epoch metric rev2net.train logs (the loss terms only when their weight is > 0).
EPOCH_METRICS = ("train/loss", "train/ce", "train/ddp_high", "train/ddp_low", "train/flow", "train/im",
                 "train/top1", "train/top5", "val/loss", "val/top1", "val/top5", "lr", "clips_per_s",
                 "epoch_time_s", "skipped_videos")
BEST_EPOCH_KEYS = ("val/top1", "val/top5")    # read at each trial's best epoch: `best_epoch/<key>`

FLOAT_PARAMS = WEIGHTS + ("model.width", "trainer.lr")
INT_PARAMS = ("data.split", "data.frames", "data.frame_stride", "data.crop_size", "trainer.seed",
              "trainer.max_epochs", "data.batch_size")
BOOL_PARAMS = ("model.flow_decoder", "model.frame_decoder")
REPO = Path(__file__).resolve().parent.parent
PAGE_SIZE = 5000   # runs per search_runs page: SQLite answers 1296 runs in one page (servers allow 50000)
_RUN_COLUMNS = ["run_id", "run_name", "parent_run_id", "stage", "status", "failure_reason", "mlflow_status",
                "ray_trial_id", "epochs", "start_time", "end_time", "duration_s"]


def _typed(key: str, value: Optional[str]) -> Any:
    if value is None or value == "None":
        return None
    if key in FLOAT_PARAMS:
        return float(value)
    if key in INT_PARAMS:
        return int(float(value))
    if key in BOOL_PARAMS:
        return value == "True"
    return value


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while MLflow materialises many small objects (see above).
    The switch is process-wide; the previous state is restored on exit, whatever happens."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> Iterable:
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=PAGE_SIZE,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def resolve_tracking_uri(uri: str, base: str | Path = REPO) -> str:
    """`uri` with a relative SQLite path made absolute: relative to the working directory when the
    file is there, else to `base` (the repository root, where the sweep's default sqlite:///mlflow.db
    lives; notebooks run in analysis/)."""
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
        return uri
    path = Path(uri[len("sqlite:///"):])
    resolved = path.resolve() if path.exists() else (Path(base) / path).resolve()
    return f"sqlite:///{resolved}"


def client_for(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for reading; a SQLite file that does not exist is an error here (MLflow would
    silently create an empty store, and the reader would then report a missing experiment)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise LookupError(f"no MLflow store at {tracking_uri} ({path.resolve()} does not exist); "
                              "pass the sweep's mlflow.tracking_uri")
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_ids(client: MlflowClient, experiment: str) -> list[str]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise LookupError(f"MLflow experiment {experiment!r} does not exist at {client.tracking_uri}"
                          + (f"; experiments there: {', '.join(names)}" if names else "; the store has none"))
    return [exp.experiment_id]


def stage_runs(client: MlflowClient, experiment: str, *, stage: Optional[str] = None,
               finished_only: bool = False) -> pd.DataFrame:
    """The parent run of every stage invocation, newest first."""
    flt = "tags.`rev2net.role` = 'stage'"
    if stage:
        flt += f" and tags.`rev2net.stage` = '{stage}'"
    if finished_only:
        flt += " and attributes.status = 'FINISHED'"
    rows = [{"run_id": r.info.run_id, "run_name": r.info.run_name, "stage": r.data.tags.get("rev2net.stage"),
             "mode": r.data.tags.get("rev2net.mode"), "sweep_id": r.data.tags.get("rev2net.sweep_id"),
             "status": r.info.status, "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
             "end_time": pd.to_datetime(r.info.end_time, unit="ms") if r.info.end_time else pd.NaT}
            for r in _search(client, experiment_ids(client, experiment), flt)]
    df = pd.DataFrame(rows, columns=["run_id", "run_name", "stage", "mode", "sweep_id", "status", "start_time",
                                     "end_time"])
    return df.sort_values("start_time", ascending=False, ignore_index=True)


def latest_sweep(tracking_uri: str, experiment: str, stage: str) -> Optional[str]:
    """The parent run id of the newest invocation of `stage` in `experiment` (finished or not), or None."""
    parents = stage_runs(client_for(tracking_uri), experiment, stage=stage)
    return None if parents.empty else str(parents.iloc[0]["run_id"])


def load_runs(tracking_uri: str, experiment: str, *, stage: Optional[str] = None, parent_run_id: Optional[str] = None,
              status: Optional[Sequence[str]] = None, best_epoch: bool = True, best_by: str = "val/top1",
              best_mode: str = "max") -> pd.DataFrame:
    """Every trial (child run) of an experiment as one row, ordered by start time.

    Columns: run_id, run_name, parent_run_id, stage, status (see the module docstring),
    failure_reason, mlflow_status, ray_trial_id, epochs (the last epoch the run holds),
    start_time, end_time, duration_s (NaN while running); every param, typed (the four weights
    and model.width/trainer.lr float, the decoder switches bool, "None" -> None); every metric's
    final value (its last epoch; the shuffle and cross-dataset accuracies logged with it); and,
    with `best_epoch`, `best_epoch` (the epoch with the best `best_by`, the earliest among equal
    values) and `best_epoch/val/top1`, `best_epoch/val/top5` (their values at that epoch).
    Filter by stage, by parent (one stage invocation), by `rev2net.status`.
    """
    client = client_for(tracking_uri)
    flt = "tags.`rev2net.role` = 'trial'"
    if stage:
        flt += f" and tags.`rev2net.stage` = '{stage}'"
    if parent_run_id:
        flt += f" and tags.`{PARENT}` = '{parent_run_id}'"
    rows = []
    with _gc_paused():
        for r in _search(client, experiment_ids(client, experiment), flt):
            info, tags = r.info, r.data.tags
            row: dict[str, Any] = {
                "run_id": info.run_id, "run_name": info.run_name, "parent_run_id": tags.get(PARENT),
                "stage": tags.get("rev2net.stage"), "status": tags.get("rev2net.status", "running"),
                "failure_reason": tags.get("rev2net.failure_reason"), "mlflow_status": info.status,
                "ray_trial_id": tags.get("ray.trial_id"), "epochs": int(tags.get("rev2net.logged_epoch", "0") or 0),
                "start_time": info.start_time, "end_time": info.end_time,
            }
            row.update({k: _typed(k, v) for k, v in r.data.params.items()})
            row.update(r.data.metrics)
            rows.append(row)
        if not rows:
            return pd.DataFrame(columns=_RUN_COLUMNS)
        df = pd.DataFrame(rows)
        df["duration_s"] = (df["end_time"] - df["start_time"]) / 1000.0   # NaN while running (no end time)
        df["start_time"] = pd.to_datetime(df["start_time"], unit="ms")
        df["end_time"] = pd.to_datetime(df["end_time"], unit="ms")
        df = df.sort_values(["start_time", "run_id"], ignore_index=True)
        if status is not None:
            df = df[df["status"].isin(list(status))].reset_index(drop=True)
        if best_epoch and not df.empty:
            best = best_epoch_metrics(_histories(client, df["run_id"].tolist(), sorted({best_by, *BEST_EPOCH_KEYS})),
                                      by=best_by, mode=best_mode)
            df = df.join(best, on="run_id")
    return df


def _sql_store(client: MlflowClient) -> Any:
    """MLflow's SQL store behind `client`, when it is one, else None. MlflowClient has no public
    bulk history call; the SQL store's `get_metric_history_bulk` (the one the MLflow server's
    get-history-bulk endpoint uses) reads a metric of many runs in one query."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if callable(getattr(store, "get_metric_history_bulk", None)) else None


def _histories(client: MlflowClient, run_ids: Sequence[str], keys: Sequence[str], *,
               bulk: Optional[bool] = None) -> pd.DataFrame:
    store = _sql_store(client) if bulk is not False else None
    records: list[tuple[str, str, int, float, int]] = []
    if store is not None:
        for key in keys:
            for start in range(0, len(run_ids), 900):   # SQLite's bound-variable limit, with margin
                chunk = list(run_ids[start:start + 900])
                for m in store.get_metric_history_bulk(chunk, key, max_results=10 ** 9):
                    records.append((m.run_id, key, m.step, m.value, m.timestamp))
    else:  # a tracking server (or any other store): one call per run and key, in parallel
        def one(pair: tuple[str, str]) -> list[tuple[str, str, int, float, int]]:
            run_id, key = pair
            return [(run_id, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]

        with ThreadPoolExecutor(max_workers=8) as pool:
            for part in pool.map(one, [(r, k) for r in run_ids for k in keys]):
                records.extend(part)
    df = pd.DataFrame.from_records(records, columns=["run_id", "key", "step", "value", "timestamp"])
    # A step written twice (never by the sweep, which reconciles epochs) counts once: its latest value.
    df = df.sort_values(["run_id", "key", "step", "timestamp"], kind="mergesort")
    df = df.drop_duplicates(["run_id", "key", "step"], keep="last")
    return df.drop(columns="timestamp").reset_index(drop=True)


def load_histories(tracking_uri: str, run_ids: Sequence[str], keys: Sequence[str] = EPOCH_METRICS, *,
                   bulk: Optional[bool] = None) -> pd.DataFrame:
    """The per-epoch values of `keys` for `run_ids`, long format: run_id, key, step (= epoch), value.

    Metrics a run never logged (e.g. loss terms whose weight is 0) are simply absent. `bulk=None`
    reads SQL stores in one query per key and anything else with one `get_metric_history` call per
    run and key (8 in parallel); `bulk=False` forces the per-run path.
    """
    client = client_for(tracking_uri)
    with _gc_paused():
        return _histories(client, list(run_ids), list(keys), bulk=bulk)


def best_epoch_metrics(histories: pd.DataFrame, *, by: str = "val/top1", mode: str = "max",
                       keys: Sequence[str] = BEST_EPOCH_KEYS) -> pd.DataFrame:
    """Per run (index run_id): `best_epoch`, the epoch with the best finite `by` (the earliest among
    equal values), and `best_epoch/<key>` for `keys` at that epoch (NaN where not logged then).
    Runs without a finite `by` are absent."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode={mode!r} is not one of max, min")
    columns = ["best_epoch", *(f"best_epoch/{k}" for k in keys)]
    h = histories[(histories["key"] == by) & np.isfinite(histories["value"])]
    if h.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="run_id"))
    order = [True, mode == "min", True]          # per run: best value first, then the earliest epoch
    h = h.sort_values(["run_id", "value", "step"], ascending=order, kind="mergesort")
    best = h.drop_duplicates("run_id")[["run_id", "step"]].rename(columns={"step": "best_epoch"})
    wide = histories[histories["key"].isin(list(keys))].pivot_table(index=["run_id", "step"], columns="key",
                                                                     values="value", aggfunc="last")
    out = best.set_index("run_id")
    at = wide.reindex(pd.MultiIndex.from_arrays([best["run_id"], best["best_epoch"]]))
    for k in keys:
        out[f"best_epoch/{k}"] = at[k].to_numpy() if k in at else np.nan
    out["best_epoch"] = out["best_epoch"].astype(int)
    return out[columns]


def status_counts(runs: pd.DataFrame) -> dict[str, int]:
    """How many trials have each status (every status listed, zeros included)."""
    counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
    return {s: int(counts.get(s, 0)) for s in (*STATUSES, *sorted(set(counts) - set(STATUSES)))}


def variant_of(runs: pd.DataFrame) -> pd.Series:
    """Each trial's model variant: the ablation's `variant` param where logged, otherwise derived
    from the switches (decoders, DDP form, decoder architecture) with the ablation's names."""
    def derive(row: pd.Series) -> str:
        flow, frame = row.get("model.flow_decoder"), row.get("model.frame_decoder")
        ddp, arch = row.get("model.ddp"), row.get("model.decoder_arch")
        if flow is False and frame is False:
            return "i3d"
        if frame is False:
            return "no_frame_decoder"
        if flow is False:
            return "no_flow_decoder"
        if ddp in ("none", "low", "high"):
            return {"none": "no_ddp", "low": "ddp_low_only", "high": "ddp_high_only"}[ddp]
        if arch in ("plain", "deep"):
            return f"decoder_{arch}"
        return "rev2net"

    if runs.empty:
        return pd.Series([], dtype=object, name="variant")
    derived = runs.apply(derive, axis=1)
    if "variant" in runs:
        derived = runs["variant"].where(runs["variant"].notna(), derived)
    return derived.rename("variant")


def _finite(values: pd.Series) -> pd.Series:
    """A boolean mask: the values that are finite numbers (None, NaN, inf and text are not)."""
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return pd.Series(np.isfinite(numeric), index=values.index, dtype=bool)


def rank_trials(runs: pd.DataFrame, *, metric: str = "val/top1", mode: str = "max", keys: Sequence[str] = WEIGHTS,
                statuses: Sequence[str] = RANKED) -> tuple[pd.DataFrame, list[str]]:
    """The trials of `runs` whose status is in `statuses` and that have a finite `metric`, best
    first, and the run ids of those set aside for having no finite value. Order: `metric`, then
    the lower `val/loss`, then the smaller `keys` (lexicographically: the less regularised model),
    then the run id, so it never depends on the order MLflow returns runs in."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode={mode!r} is not one of max, min")
    pool = runs[runs["status"].isin(list(statuses))] if "status" in runs else runs
    if metric not in pool:
        raise LookupError(f"no trial has the metric {metric!r}; metrics present: "
                          f"{', '.join(c for c in runs.columns if '/' in c) or 'none'}")
    finite = _finite(pool[metric])
    excluded = pool.loc[~finite, "run_id"].tolist()
    pool = pool.loc[finite].copy()
    missing = [k for k in keys if k not in pool]
    if missing and not pool.empty:
        raise LookupError(f"the trials have no param {', '.join(missing)}")
    pool["_val_loss"] = pool["val/loss"].astype(float).fillna(math.inf) if "val/loss" in pool else 0.0
    ranked = pool.sort_values([metric, "_val_loss", *keys, "run_id"],
                              ascending=[mode == "min", True, *([True] * len(keys)), True], kind="mergesort")
    return ranked.drop(columns="_val_loss").reset_index(drop=True), excluded


@dataclass
class Best:
    """The best trial by a metric, and what was set aside to find it."""

    params: dict[str, Any]           # the trial's values of `keys`
    value: float                     # its metric value
    run_id: str
    metric: str
    tied_with: list[str] = field(default_factory=list)   # other run ids with exactly the same value
    excluded: list[str] = field(default_factory=list)    # run ids without a finite value of the metric


def best_config(runs: pd.DataFrame, *, metric: str = "val/top1", mode: str = "max",
                keys: Sequence[str] = WEIGHTS, statuses: Sequence[str] = RANKED) -> Best:
    """The best trial of `runs` (a `load_runs` frame): the first of `rank_trials`.

    Explicit rules: only trials whose status is in `statuses` count (failed and still-running
    trials never do; stopped-early ones do by default, as ASHA's partial results); a trial
    without a finite value of `metric` is excluded and listed; among trials with exactly the best
    value, the one with the lower `val/loss` wins, then the one with the smaller weights
    (lexicographically in `keys`: the less regularised model), then the smaller run id, so the
    result never depends on the order MLflow returns runs in. The others are listed in `tied_with`.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode={mode!r} is not one of max, min")
    if runs.empty:
        raise LookupError("no trials to choose from")
    ranked, excluded = rank_trials(runs, metric=metric, mode=mode, keys=keys, statuses=statuses)
    if ranked.empty:
        raise LookupError(f"no {', '.join(statuses)} trial has a finite {metric!r}")
    winner = ranked.iloc[0]
    best_value = winner[metric]
    tied = ranked[ranked[metric] == best_value]
    return Best(params={k: winner[k] for k in keys}, value=float(best_value), run_id=winner["run_id"], metric=metric,
                tied_with=tied["run_id"].iloc[1:].tolist(), excluded=excluded)
