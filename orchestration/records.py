"""The MLflow record of a sweep, in one place: the names it uses and how it is read back.

Layout (written by orchestration/tracking.py, read here and by analysis/):

    experiment  rev2net-<data.name> (or mlflow.experiment)
      parent run, one per stage invocation   tags: role=stage, sweep id, stage, mode, driver, heartbeat,
                                                   storage, git commit, best.*; params: the plan's summary;
                                                   artifacts config.yaml, plan.json
        child run, one per trial             tags: role=trial, parent, sweep id, stage, trial key, status,
                                                   failure reason, logged epoch, Ray trial id and node;
                                             params: the trial's config (`trial_params`); metrics: every
                                             epoch's (rev2net.train) at step = epoch, the final evaluations

Statuses (the status tag): `completed` (trained to trainer.max_epochs), `stopped_early` (stopped by
ASHA: its metrics come from fewer epochs), `failed` (diverged or crashed; the failure reason says
why) and `running` (still training, or interrupted: its driver died before marking it;
`mlflow_status` then says FINISHED/KILLED/FAILED rather than RUNNING). A run without the tag is
`running`.

`best_config` is the one definition of "best" in the project: the fine and ablation stages take
their weights from it and the analysis tables report it, so the two can never disagree.

Speed (1296 trials in well under 5 s from SQLite): one `search_runs` page of up to 5000 runs, the
best-epoch histories of every run in one query per metric on SQL stores (through MLflow's
`SqlAlchemyStore.get_metric_history_bulk`, the call its server's get-history-bulk endpoint makes),
and Python's cyclic garbage collector paused while MLflow builds its tens of thousands of small ORM
objects (without the pause, collection passes over them triple the time of `search_runs`).

Imports mlflow and pandas, nothing of Ray or torch.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from rev2net import registry

# --------------------------------------------------------------------------- names

PARENT = "mlflow.parentRunId"
TAG_GIT = "mlflow.source.git.commit"
TAG_ROLE = "rev2net.role"              # ROLE_STAGE (parent) | ROLE_TRIAL (child)
TAG_SWEEP = "rev2net.sweep_id"         # the sweep (stage + config hash) a run belongs to
TAG_STAGE = "rev2net.stage"            # coarse | fine | ablation
TAG_MODE = "rev2net.mode"              # factorial | axes | variants
TAG_TRIAL_KEY = "rev2net.trial_key"    # hash of sweep id + trial point: finds a child run again
TAG_LOGGED_EPOCH = "rev2net.logged_epoch"  # last epoch whose metrics this run holds
TAG_STATUS = "rev2net.status"          # one of STATUSES
TAG_FAILURE = "rev2net.failure_reason"
TAG_DRIVER = "rev2net.driver"          # host:pid of the process that drives the stage (parent runs)
TAG_HEARTBEAT = "rev2net.heartbeat"    # unix time of that driver's latest sign of life
TAG_STORAGE = "rev2net.storage"        # where the stage's Tune state lives (parent runs)
TAG_RAY_TRIAL = "ray.trial_id"
TAG_NODE = "ray.node_ip"               # the node the trial's latest attempt ran on
BEST_PREFIX = "best."                  # parent runs: best.<weight key>, best.run_id

ROLE_STAGE, ROLE_TRIAL = "stage", "trial"

RUNNING, COMPLETED, STOPPED_EARLY, FAILED = "running", "completed", "stopped_early", "failed"
STATUSES = (COMPLETED, STOPPED_EARLY, FAILED, RUNNING)
RANKED = (COMPLETED, STOPPED_EARLY)           # the trials `best_config` chooses among by default
AVERAGED = (COMPLETED,)                       # the trials the tables average by default


class Weight(NamedTuple):
    """How one weight of eq. (3) is written: its config key, symbol, short form in run names, meaning."""

    key: str
    symbol: str
    short: str
    meaning: str


WEIGHT_INFO = {w.key: w for w in (
    Weight("loss.alpha", "α", "α", "high-level DDP"),
    Weight("loss.beta", "β", "β", "low-level DDP"),
    Weight("loss.lambda_flow", "λ_flow", "λf", "flow prediction"),
    Weight("loss.lambda_im", "λ_im", "λi", "frame reconstruction"),
)}
WEIGHTS = tuple(WEIGHT_INFO)                  # the params of the four weights, in eq. (3)'s order
WEIGHT_SYMBOLS = {k: w.symbol for k, w in WEIGHT_INFO.items()}
VARIANT_PARAM = "variant"                     # a point's key that names a registered variant (not a config key)
DIRECTION_PARAM = "direction"                 # a cross-dataset point's key: "<source> → <target>" (not a config key)
META_PARAMS = (VARIANT_PARAM, DIRECTION_PARAM)  # point keys that name a trial (logged as params) but set no config
SHUFFLE_PROTOCOLS = ("none", "long_term", "short_term", "complete")   # rev2net.data.shuffle.PROTOCOLS
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


def run_name(point: dict[str, Any]) -> str:
    """A trial's run name, readable in the MLflow UI: `α=0.01 β=0.1 λf=0.1 λi=0.1`, `no_ddp seed=1`."""
    if VARIANT_PARAM in point:
        seed = next((v for k, v in point.items() if k.endswith(".seed")), None)
        where = [f"{point[DIRECTION_PARAM]}"] if DIRECTION_PARAM in point else []
        where += [f"{point['adapt.name']}"] if "adapt.name" in point else []
        where += [f"split {point['data.split']}"] if "data.split" in point else []
        return " ".join([str(point[VARIANT_PARAM]), *where, f"seed={seed}"])
    order = list(WEIGHT_INFO)
    keys = sorted(point, key=lambda k: order.index(k) if k in WEIGHT_INFO else len(order))
    return " ".join(f"{WEIGHT_INFO[k].short if k in WEIGHT_INFO else k}="
                    + (f"{point[k]:g}" if isinstance(point[k], float) else f"{point[k]}") for k in keys)


def trial_filter(*, stage: Optional[str] = None, parent_run_id: Optional[str] = None,
                 role: str = ROLE_TRIAL) -> str:
    """The `search_runs` filter for a sweep's runs of `role`, of a stage and/or a parent run."""
    flt = f"tags.`{TAG_ROLE}` = '{role}'"
    if stage:
        flt += f" and tags.`{TAG_STAGE}` = '{stage}'"
    if parent_run_id:
        flt += f" and tags.`{PARENT}` = '{parent_run_id}'"
    return flt


# --------------------------------------------------------------------------- stores

def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def store_missing(uri: str) -> bool:
    """A SQLite store whose file does not exist (MLflow would create it just by being asked)."""
    path = sqlite_path(uri)
    return path is not None and not path.is_file()


def resolve_tracking_uri(uri: str, base: str | Path = REPO) -> str:
    """`uri` with a relative SQLite path made absolute: relative to the working directory when the
    file is there, else to `base` (the repository root, where the sweep's default sqlite:///mlflow.db
    lives; notebooks run in analysis/)."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    resolved = path.resolve() if path.exists() else (Path(base) / path).resolve()
    return f"sqlite:///{resolved}"


def client_for(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for reading; a SQLite file that does not exist is an error here (MLflow would
    silently create an empty store, and the reader would then report a missing experiment)."""
    if store_missing(tracking_uri):
        raise LookupError(f"no MLflow store at {tracking_uri} ({sqlite_path(tracking_uri).resolve()} does not "
                          "exist); pass the sweep's mlflow.tracking_uri")
    return MlflowClient(tracking_uri=tracking_uri)


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str, *,
               page_size: Optional[int] = None, order_by: Optional[list[str]] = None) -> Iterator:
    """Every run matching `filter_string`, page after page (`PAGE_SIZE` runs each by default)."""
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=page_size or PAGE_SIZE,
                                  page_token=token, order_by=order_by)
        yield from page
        token = page.token
        if not token:
            return


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


@functools.lru_cache(maxsize=8)
def _bulk_store(tracking_uri: str) -> Any:
    """MLflow's SQL store for a database URI, else None. MlflowClient has no bulk history call;
    `SqlAlchemyStore.get_metric_history_bulk` reads one metric of many runs in one query (engines
    are shared with the client's store: MLflow caches them per URI)."""
    if not tracking_uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        return None
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = sqlite_path(tracking_uri)
    return SqlAlchemyStore(tracking_uri, str(path.parent / "mlartifacts") if path else "./mlartifacts")


# --------------------------------------------------------------------------- reading

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
    flt = trial_filter(stage=stage, role=ROLE_STAGE)
    if finished_only:
        flt += " and attributes.status = 'FINISHED'"
    rows = [{"run_id": r.info.run_id, "run_name": r.info.run_name, "stage": r.data.tags.get(TAG_STAGE),
             "mode": r.data.tags.get(TAG_MODE), "sweep_id": r.data.tags.get(TAG_SWEEP),
             "status": r.info.status, "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
             "end_time": pd.to_datetime(r.info.end_time, unit="ms") if r.info.end_time else pd.NaT}
            for r in search_all(client, experiment_ids(client, experiment), flt)]
    df = pd.DataFrame(rows, columns=["run_id", "run_name", "stage", "mode", "sweep_id", "status", "start_time",
                                     "end_time"])
    return df.sort_values("start_time", ascending=False, ignore_index=True)


def latest_sweep(tracking_uri: str, experiment: str, stage: str) -> Optional[str]:
    """The parent run id of the newest invocation of `stage` in `experiment` (finished or not), or None."""
    parents = stage_runs(client_for(tracking_uri), experiment, stage=stage)
    return None if parents.empty else str(parents.iloc[0]["run_id"])


def _trial_row(r: Any) -> dict[str, Any]:
    info, tags = r.info, r.data.tags
    row: dict[str, Any] = {
        "run_id": info.run_id, "run_name": info.run_name, "parent_run_id": tags.get(PARENT),
        "stage": tags.get(TAG_STAGE), "status": tags.get(TAG_STATUS, RUNNING),
        "failure_reason": tags.get(TAG_FAILURE), "mlflow_status": info.status,
        "ray_trial_id": tags.get(TAG_RAY_TRIAL), "epochs": int(tags.get(TAG_LOGGED_EPOCH, "0") or 0),
        "start_time": info.start_time, "end_time": info.end_time,
    }
    row.update({k: _typed(k, v) for k, v in r.data.params.items()})
    row.update(r.data.metrics)
    return row


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
    Filter by stage, by parent (one stage invocation), by status.
    """
    client = client_for(tracking_uri)
    with _gc_paused():
        rows = [_trial_row(r) for r in search_all(client, experiment_ids(client, experiment),
                                                  trial_filter(stage=stage, parent_run_id=parent_run_id))]
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
            histories = _histories(tracking_uri, df["run_id"].tolist(), sorted({best_by, *BEST_EPOCH_KEYS}))
            df = df.join(best_epoch_metrics(histories, by=best_by, mode=best_mode), on="run_id")
    return df


def _histories(tracking_uri: str, run_ids: Sequence[str], keys: Sequence[str], *,
               bulk: Optional[bool] = None) -> pd.DataFrame:
    store = _bulk_store(tracking_uri) if bulk is not False else None
    records: list[tuple[str, str, int, float, int]] = []
    if store is not None:
        for key in keys:
            for start in range(0, len(run_ids), 900):   # SQLite's bound-variable limit, with margin
                chunk = list(run_ids[start:start + 900])
                for m in store.get_metric_history_bulk(chunk, key, max_results=10 ** 9):
                    records.append((m.run_id, key, m.step, m.value, m.timestamp))
    else:  # a tracking server (or any other store): one call per run and key, in parallel
        client = client_for(tracking_uri)

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
    client_for(tracking_uri)  # a missing store is an error, not a new empty one
    with _gc_paused():
        return _histories(tracking_uri, list(run_ids), list(keys), bulk=bulk)


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
    """Each trial's model variant (a name of rev2net.registry): its `variant` param where logged,
    otherwise the registered variant its logged settings match (`registry.identify`)."""
    if runs.empty:
        return pd.Series([], dtype=object, name=VARIANT_PARAM)
    return runs.apply(lambda row: registry.identify(row.dropna().to_dict()), axis=1).rename(VARIANT_PARAM)


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


def child_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> Iterable:
    """Every child run of a parent run."""
    return search_all(client, [experiment_id], f"tags.`{PARENT}` = '{parent_id}'", page_size=1000)
