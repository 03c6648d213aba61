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

Statuses (the status tag): `completed` (trained to trainer.max_epochs, or until its wall-time budget
trainer.max_train_s was spent: its `epochs` say how many), `stopped_early` (stopped by
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
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rev2net import registry

if TYPE_CHECKING:  # mlflow is imported where a store is opened: the dry run of a first stage never needs it
    from mlflow import MlflowClient

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
TAG_DRIVER_SINCE = "rev2net.driver_since"  # unix time that driver claimed the sweep (claim experiments)
CLAIM_EXPERIMENT_PREFIX = "rev2net.claim:"  # experiments that claim a sweep for one driver (orchestration/claim.py)
TAG_STORAGE = "rev2net.storage"        # where the stage's Tune state lives (parent runs)
TAG_BROKEN_VIDEOS = "rev2net.broken_videos"  # broken videos left out of every trial (parent runs; absent: none)
BROKEN_VIDEOS_ARTIFACT = "broken_videos.json"  # their paths and problems (parent runs; orchestration.plan.BrokenVideos)
TAG_RAY_TRIAL = "ray.trial_id"
TAG_NODE = "ray.node_ip"               # the node the trial's latest attempt ran on
BEST_PREFIX = "best."                  # parent runs: best.<weight key>, best.run_id
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # experiments: what MLflow's UI opens them on
EXPERIMENT_KIND = "custom_model_development"   # model training: the runs table (not GenAI traces)

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

FLOAT_PARAMS = WEIGHTS + ("model.width", "trainer.lr", "trainer.max_train_s")
INT_PARAMS = ("data.split", "data.frames", "data.frame_stride", "data.crop_size", "trainer.seed",
              "trainer.max_epochs", "data.batch_size")
BOOL_PARAMS = ("model.flow_decoder", "model.frame_decoder")
REPO = Path(__file__).resolve().parent.parent
PAGE_SIZE = 5000   # runs per search_runs page: SQLite answers 1296 runs in one page (servers allow 50000)
_RUN_COLUMNS = ["run_id", "run_name", "parent_run_id", "stage", "status", "failure_reason", "mlflow_status",
                "ray_trial_id", "epochs", "start_time", "end_time", "duration_s", "artifact_uri"]


def dataset_label(name: str, domain: Any = None) -> str:
    """A dataset as the cross-dataset directions name it: the generated one with its look
    (`synthetic (default)`, `synthetic (shifted)`: two datasets of one name), others by name."""
    return f"{name} ({domain})" if name == "synthetic" and isinstance(domain, str) and domain else str(name)


def run_name(point: dict[str, Any]) -> str:
    """A trial's run name, readable in the MLflow UI: `α=0.01 β=0.1 λf=0.1 λi=0.1`, `no_ddp seed=1`."""
    if VARIANT_PARAM in point:
        seed = point.get(SEED_PARAM)  # not any `.seed` key: a generated dataset's own seed is a point key too
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
    from mlflow import MlflowClient

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
        "start_time": info.start_time, "end_time": info.end_time, "artifact_uri": info.artifact_uri,
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
    start_time, end_time, duration_s (NaN while running), artifact_uri (the run's artifact root:
    `load_predictions` reads from it); every param, typed (the four weights
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


# What `rank_trials` adds to each row (one row per configuration):
N_SEEDS = "n_seeds"      # ranked runs of the configuration (its seeds: confirmation re-runs add to them)
SEEDS = "seeds"          # their trainer.seed values, ascending (a tuple; None where not logged)
RUN_IDS = "run_ids"      # their run ids, in the order of SEEDS
METRIC_STD = "std"       # sample std (ddof=1) of the metric over them; NaN for one run
SEED_PARAM = "trainer.seed"


def config_columns(runs: pd.DataFrame, keys: Sequence[str] = WEIGHTS) -> list[str]:
    """The columns that name a configuration: `keys`, and the variant where trials log one. Runs that
    agree on them are the same configuration (confirmation re-runs differ only in trainer.seed)."""
    cols = list(keys)
    if VARIANT_PARAM in runs and VARIANT_PARAM not in cols and runs[VARIANT_PARAM].notna().any():
        cols.insert(0, VARIANT_PARAM)
    return cols


def rank_trials(runs: pd.DataFrame, *, metric: str = "val/top1", mode: str = "max", keys: Sequence[str] = WEIGHTS,
                statuses: Sequence[str] = RANKED) -> tuple[pd.DataFrame, list[str]]:
    """The configurations of `runs`, best first, and the run ids set aside for having no finite value.

    Only trials whose status is in `statuses` and that have a finite `metric` count. A configuration
    is a distinct combination of `config_columns` (the weights; the variant where logged).
      * Every configuration has one run (a plain sweep): one row per trial, ordered by `metric`.
      * Some configuration has more than one (a stage's confirmation re-runs, several seeds): one row
        per configuration, whose `metric` (and val/loss, for ties) is the MEAN over its runs; the
        configurations with more than one run (the confirmed ones) rank ahead of those with one.
        Why: the re-run configurations were chosen for their first seed's high value, which overstates
        them (the winner's curse); their mean over fresh seeds is the honest estimate, and a
        configuration that was never re-run still carries that optimism, so it must not overtake them.
    Ties: the lower `val/loss`, then the smaller `keys` (lexicographically: the less regularised
    model), then the run id, so the order never depends on the order MLflow returns runs in.
    Each row is the configuration's best run (its other columns, `run_id` included, are that run's:
    the run whose checkpoint represents it), with `n_seeds`, `seeds`, `run_ids` and `std` added
    (n_seeds = 1, std NaN for a single run).
    """
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
    pool[metric] = pool[metric].astype(float)
    pool["_val_loss"] = pool["val/loss"].astype(float).fillna(math.inf) if "val/loss" in pool else 0.0
    ascending = mode == "min"
    # each configuration's runs, best first (the first is its representative)
    pool = pool.sort_values([metric, "_val_loss", "run_id"], ascending=[ascending, True, True], kind="mergesort")
    columns = config_columns(pool, keys) if not pool.empty else list(keys)
    group = pool.groupby(columns, sort=False, dropna=False) if columns else None
    if group is None:
        pool["_config"] = np.arange(len(pool))
    else:
        pool["_config"] = group.ngroup().to_numpy()
    sizes = pool.groupby("_config")["run_id"].transform("size")
    seed = pool[SEED_PARAM] if SEED_PARAM in pool else pd.Series(None, index=pool.index, dtype=object)
    pool["_seed"] = seed
    by_seed = pool.sort_values(["_config", "_seed", "run_id"], kind="mergesort", na_position="last")
    by_seed["_seed"] = [None if pd.isna(v) else int(v) for v in by_seed["_seed"]]
    grouped = by_seed.groupby("_config", sort=False)
    info = grouped.agg(**{"_mean": (metric, "mean"), METRIC_STD: (metric, "std"), "_mean_loss": ("_val_loss", "mean")})
    members = {code: idx for code, idx in grouped.indices.items()}      # positions in by_seed, in seed order
    seeds, ids = by_seed["_seed"].to_numpy(dtype=object), by_seed["run_id"].to_numpy(dtype=object)
    info[SEEDS] = [tuple(seeds[members[c]]) for c in info.index]
    info[RUN_IDS] = [tuple(ids[members[c]]) for c in info.index]
    first = pool.drop_duplicates("_config").set_index("_config")
    ranked = first.join(info)
    ranked[N_SEEDS] = ranked[RUN_IDS].map(len)
    aggregated = bool((sizes > 1).any())
    if aggregated:
        ranked[metric] = ranked["_mean"]
        ranked["_val_loss"] = ranked["_mean_loss"]
        ranked["_tier"] = np.where(ranked[N_SEEDS] > 1, 0, 1)
    else:
        ranked["_tier"] = 0
    ranked = ranked.sort_values(["_tier", metric, "_val_loss", *keys, "run_id"],
                                ascending=[True, ascending, True, *([True] * len(keys)), True], kind="mergesort")
    ranked = ranked.drop(columns=["_val_loss", "_seed", "_mean", "_mean_loss", "_tier"]).reset_index(drop=True)
    ranked.attrs["aggregated"] = aggregated
    return ranked, excluded


@dataclass
class Best:
    """The best configuration by a metric, and what was set aside to find it."""

    params: dict[str, Any]           # the configuration's values of `keys`
    value: float                     # its metric value: the mean over its runs when runs were aggregated
    run_id: str                      # its best run (the one run when there is one)
    metric: str
    tied_with: list[str] = field(default_factory=list)   # other configurations' run ids with exactly the same value
    excluded: list[str] = field(default_factory=list)    # run ids without a finite value of the metric
    seeds: list[Optional[int]] = field(default_factory=list)   # the seeds averaged (trainer.seed), ascending
    run_ids: list[str] = field(default_factory=list)     # their runs, in the order of `seeds`
    std: float = math.nan                                # sample std over them (NaN for one run)
    aggregated: bool = False                             # ranked by the mean over seeds (see rank_trials)


def best_config(runs: pd.DataFrame, *, metric: str = "val/top1", mode: str = "max",
                keys: Sequence[str] = WEIGHTS, statuses: Sequence[str] = RANKED) -> Best:
    """The best configuration of `runs` (a `load_runs` frame): the first of `rank_trials`.

    Explicit rules: only trials whose status is in `statuses` count (failed and still-running
    trials never do; stopped-early ones do by default, as ASHA's partial results); a trial
    without a finite value of `metric` is excluded and listed; when some configuration has more
    than one run (confirmation re-runs: the same weights, other seeds), configurations are ranked
    by the mean over their runs, the re-run ones first (see `rank_trials`); among equal values,
    the lower `val/loss` wins, then the smaller weights (lexicographically in `keys`: the less
    regularised model), then the smaller run id, so the result never depends on the order MLflow
    returns runs in. The other configurations with the same value are listed in `tied_with`.
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
    tied = ranked[(ranked[metric] == best_value) & ((ranked[N_SEEDS] > 1) == (winner[N_SEEDS] > 1))] \
        if ranked.attrs.get("aggregated") else ranked[ranked[metric] == best_value]
    return Best(params={k: winner[k] for k in keys}, value=float(best_value), run_id=winner["run_id"], metric=metric,
                tied_with=tied["run_id"].iloc[1:].tolist(), excluded=excluded, seeds=list(winner[SEEDS]),
                run_ids=list(winner[RUN_IDS]), std=float(winner[METRIC_STD]),
                aggregated=bool(ranked.attrs.get("aggregated")))


def child_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> Iterable:
    """Every child run of a parent run."""
    return search_all(client, [experiment_id], f"tags.`{PARENT}` = '{parent_id}'", page_size=1000)


# --------------------------------------------------------------------------- per-video predictions

@dataclass(frozen=True)
class PredictionColumn:
    """One column of the per-video predictions artifact."""

    name: str
    type: pa.DataType
    meaning: str


# One row per test video, one file per evaluation of a trial. The columns, in this order, no others:
PREDICTION_COLUMNS = (
    PredictionColumn("video_id", pa.string(),
                     "the video's id in its dataset (its path relative to the dataset root, as the split "
                     "lists name it); unique within a file, the key two trials' predictions are paired on"),
    PredictionColumn("label", pa.int64(), "the true class index (>= 0)"),
    PredictionColumn("pred", pa.int64(), "the predicted class (the top-1 of the evaluated clips' scores); = top5[0]"),
    PredictionColumn("top5", pa.list_(pa.int64()),
                     "the five highest-scoring classes, best first, distinct (min(5, classes) of them: "
                     "the same length in every row)"),
    PredictionColumn("label_score", pa.float64(),
                     "the model's probability of the true label (softmax of the evaluated score), in [0, 1]"),
)
PREDICTIONS_SCHEMA = pa.schema([pa.field(c.name, c.type, nullable=False) for c in PREDICTION_COLUMNS])
VIDEO, LABEL, PRED, TOP5, LABEL_SCORE = (c.name for c in PREDICTION_COLUMNS)
# The evaluations a trial writes predictions for, named like the prefix of their metrics
# (test/top1, shuffle/<protocol>/top1, cross/top1): the plain evaluation on the official test
# list, each frame-shuffle protocol (on the same list), and the cross-dataset evaluation.
TEST, CROSS = "test", "cross"
EVALUATIONS = (TEST, *(f"shuffle/{p}" for p in SHUFFLE_PROTOCOLS), CROSS)
PREDICTIONS_DIR = "predictions"


def predictions_path(evaluation: str) -> str:
    """The artifact path (relative to a trial's artifact root) of one evaluation's predictions:
    "test" -> "predictions/test.parquet", "shuffle/long_term" -> "predictions/shuffle/long_term.parquet",
    "cross" -> "predictions/cross.parquet". Raises ValueError for an evaluation not in EVALUATIONS."""
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation {evaluation!r} is not one of {', '.join(EVALUATIONS)}")
    return f"{PREDICTIONS_DIR}/{evaluation}.parquet"


def _validated(table: pa.Table, where: str, columns: Sequence[str] = tuple(c.name for c in PREDICTION_COLUMNS)
               ) -> pa.Table:
    """`table` cast to PREDICTIONS_SCHEMA (its `columns` only), or ValueError naming the column, the
    problem and `where`. With every column, a table must hold exactly them; with fewer (a reader
    that asked for some), the others are not checked."""
    every = [c.name for c in PREDICTION_COLUMNS]
    names = [n for n in every if n in columns]
    missing = [n for n in names if n not in table.column_names]
    unknown = [n for n in table.column_names if n not in every] if len(names) == len(every) else []
    if missing or unknown:
        raise ValueError(f"{where}: predictions need exactly the columns {', '.join(every)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    table = table.select(names)
    for column in (c for c in PREDICTION_COLUMNS if c.name in names):
        nulls = table.column(column.name).null_count
        if nulls:
            raise ValueError(f"{where}: column {column.name!r} has {nulls} missing value(s)")
        try:
            table = table.set_column(names.index(column.name), pa.field(column.name, column.type, nullable=False),
                                     table.column(column.name).cast(column.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
            raise ValueError(f"{where}: column {column.name!r} of type {table.column(column.name).type} cannot "
                             f"be read as {column.type} ({column.meaning}): {err}") from None
    n = table.num_rows
    if VIDEO in names and pc.count_distinct(table.column(VIDEO)).as_py() != n:
        raise ValueError(f"{where}: {n - pc.count_distinct(table.column(VIDEO)).as_py()} duplicated video_id(s); "
                         "one row per test video")
    for name in (LABEL, PRED):
        if name in names and n and pc.min(table.column(name)).as_py() < 0:
            raise ValueError(f"{where}: class indices must be >= 0 ({name} min {pc.min(table.column(name)).as_py()})")
    if TOP5 in names:
        top5 = table.column(TOP5).combine_chunks()
        lengths = pc.list_value_length(top5).to_numpy(zero_copy_only=False)
        if n and (lengths.min() != lengths.max() or not 1 <= lengths[0] <= 5):
            raise ValueError(f"{where}: every row's top5 must list the same number (1 to 5) of classes; "
                             f"lengths {lengths.min()} to {lengths.max()}")
        if n:
            classes = top5.flatten().to_numpy().reshape(n, int(lengths[0]))
            if classes.min() < 0:
                raise ValueError(f"{where}: top5 holds a negative class index")
            if PRED in names:
                bad = int((classes[:, 0] != table.column(PRED).to_numpy()).sum())
                if bad:
                    raise ValueError(f"{where}: in {bad} row(s) pred is not top5[0] (top5 lists classes best first)")
            ordered = np.sort(classes, axis=1)
            repeats = int((ordered[:, 1:] == ordered[:, :-1]).any(axis=1).sum())
            if repeats:
                raise ValueError(f"{where}: {repeats} row(s) list a class twice in top5")
    if LABEL_SCORE in names:
        score = table.column(LABEL_SCORE).to_numpy()
        out_of_range = int((~np.isfinite(score) | (score < 0) | (score > 1)).sum())
        if out_of_range:
            raise ValueError(f"{where}: {out_of_range} label_score value(s) outside [0, 1] (a probability)")
    return table


def write_predictions(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate `df` against PREDICTION_COLUMNS and write it as Parquet (pyarrow) to `path`,
    creating its folder. Raises ValueError naming the column and the problem: a missing or unknown
    column, a missing value, a type that does not convert, a duplicated video_id, pred != top5[0],
    top5 rows of different lengths or with a repeated class, a label_score outside [0, 1].
    Returns the path written. The trainable writes `<tmp>/predictions_path(evaluation)` and logs
    the folder as the run's artifacts, so the file lands at `predictions_path(evaluation)`."""
    path = Path(path)
    names = [c.name for c in PREDICTION_COLUMNS]
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"predictions for {path}: not convertible to Arrow ({err}); "
                         f"columns: {', '.join(names)}") from None
    table = _validated(table, f"predictions for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(None), path)
    return path


def read_predictions(path: str | Path, columns: Sequence[str] = tuple(c.name for c in PREDICTION_COLUMNS)
                     ) -> pd.DataFrame:
    """One evaluation's predictions, validated like `write_predictions`: the `columns` of
    PREDICTION_COLUMNS (all by default) in order, one row per test video, `top5` as a column of
    integer arrays."""
    return _read_table(path, columns).to_pandas()


def _read_table(path: str | Path, columns: Sequence[str]) -> pa.Table:
    unknown = [c for c in columns if c not in PREDICTIONS_SCHEMA.names]
    if unknown:
        raise ValueError(f"no prediction column {', '.join(map(repr, unknown))}; "
                         f"columns: {', '.join(PREDICTIONS_SCHEMA.names)}")
    full = len(set(columns)) == len(PREDICTIONS_SCHEMA.names)
    table = pq.read_table(path, columns=None if full else list(columns))
    return _validated(table, f"predictions file {path}", columns)


def _local_artifact_dir(artifact_uri: Optional[str]) -> Optional[Path]:
    """The folder of a run's artifacts when they are on this machine's filesystem, else None."""
    if not artifact_uri:
        return None
    if artifact_uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(artifact_uri).path))
    if "://" in artifact_uri or (":" in artifact_uri.split("/")[0] and not Path(artifact_uri).is_absolute()):
        return None   # s3://, gs://, mlflow-artifacts:/, dbfs:/ ...
    return Path(artifact_uri)


def artifact_uris(tracking_uri: str, run_ids: Sequence[str]) -> dict[str, str]:
    """Each run's artifact root URI: one query per 900 runs on SQL stores (the `runs` table holds it),
    one `get_run` per run otherwise (8 in parallel)."""
    run_ids = list(dict.fromkeys(run_ids))
    store = _bulk_store(tracking_uri)
    out: dict[str, str] = {}
    if store is not None:
        from mlflow.store.tracking.dbmodels.models import SqlRun

        with store.ManagedSessionMaker() as session:
            for start in range(0, len(run_ids), 900):
                chunk = run_ids[start:start + 900]
                rows = session.query(SqlRun.run_uuid, SqlRun.artifact_uri).filter(SqlRun.run_uuid.in_(chunk)).all()
                out.update({r: uri for r, uri in rows})
    else:
        client = client_for(tracking_uri)
        with ThreadPoolExecutor(max_workers=8) as pool:
            for run_id, info in zip(run_ids, pool.map(lambda r: client.get_run(r).info, run_ids)):
                out[run_id] = info.artifact_uri
    missing = [r for r in run_ids if r not in out]
    if missing:
        raise LookupError(f"{len(missing)} run(s) not in the store at {tracking_uri}, e.g. {missing[0]}")
    return out


def load_predictions(tracking_uri: str, run_ids: Sequence[str], evaluation: str = TEST, *,
                     columns: Sequence[str] = tuple(c.name for c in PREDICTION_COLUMNS),
                     artifact_uri: Optional[dict[str, str]] = None, threads: int = 4) -> pd.DataFrame:
    """The per-video predictions of `evaluation` for `run_ids`, as one frame: `run_id` and the
    `columns` of PREDICTION_COLUMNS (all by default; ask for fewer to read faster), run after run in
    the order given, each file validated like `read_predictions`.

    Runs whose artifact root is on this machine's filesystem (a SQLite store's `mlartifacts/`, a
    shared folder) are read in place, `threads` files at a time (pyarrow releases the GIL while
    it decodes); the others (a tracking server's proxied artifacts, an object store) are downloaded
    through `MlflowClient.download_artifacts`, 8 at a time, into a temporary folder first.
    `artifact_uri` (run id -> artifact root) skips looking the roots up (`artifact_uris`).
    A run without that evaluation's file (it failed, or ran before predictions were logged) is left
    out; the frame's `attrs["missing"]` lists those run ids. `run_id` is categorical (one code per
    run, cheap at a million rows).
    """
    import tempfile

    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation {evaluation!r} is not one of {', '.join(EVALUATIONS)}")
    columns = [c.name for c in PREDICTION_COLUMNS if c.name in columns]
    run_ids = list(dict.fromkeys(run_ids))
    client_for(tracking_uri)   # a missing store is an error, not a new empty one
    uris = dict(artifact_uri) if artifact_uri is not None else artifact_uris(tracking_uri, run_ids)
    relative = predictions_path(evaluation)
    local = {r: _local_artifact_dir(uris.get(r)) for r in run_ids}
    remote = [r for r in run_ids if local[r] is None]
    tables: dict[str, pa.Table] = {}

    def read(pair: tuple[str, Path]) -> tuple[str, Optional[pa.Table]]:
        run_id, path = pair     # read only: the files are checked together below (one pass, not one per file)
        try:
            return run_id, pq.read_table(path, columns=columns)
        except FileNotFoundError:
            return run_id, None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for run_id, table in pool.map(read, [(r, local[r] / relative) for r in run_ids if local[r] is not None]):
            if table is not None:
                tables[run_id] = table
    if remote:
        client = client_for(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="rev2net-predictions-") as tmp:
            def fetch(run_id: str) -> tuple[str, Optional[Path]]:
                try:
                    return run_id, Path(client.download_artifacts(run_id, relative, str(Path(tmp) / run_id)))
                except (OSError, Exception) as err:   # noqa: BLE001 - a missing artifact raises store-specific types
                    if "RESOURCE_DOES_NOT_EXIST" in str(err) or isinstance(err, FileNotFoundError) \
                            or "not found" in str(err).lower() or "No such file" in str(err):
                        return run_id, None
                    raise

            with ThreadPoolExecutor(max_workers=8) as pool:
                fetched = [(r, p) for r, p in pool.map(fetch, remote) if p is not None]
            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                for run_id, table in pool.map(read, fetched):
                    if table is not None:
                        tables[run_id] = table
    present = [r for r in run_ids if r in tables]
    missing = [r for r in run_ids if r not in tables]
    if present:
        counts = np.array([tables[r].num_rows for r in present])
        run_codes = np.repeat(np.arange(len(present), dtype=np.int32), counts)
        try:
            body = pa.concat_tables([tables[r] for r in present], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):   # a file of another type: find which, one by one
            for r in present:
                _validated(tables[r], f"predictions of run {r} ({evaluation})", columns)
            raise
        where = f"predictions {relative} of {len(present)} runs"
        checked = _validated(body, where, [c for c in columns if c != VIDEO])   # casts and value checks, at once
        parts = {name: checked.column(name) for name in checked.column_names}
        if VIDEO in columns:
            if VIDEO not in body.column_names:
                raise ValueError(f"{where}: no column {VIDEO!r}")
            video = body.column(VIDEO).cast(pa.string())
            if video.null_count:
                raise ValueError(f"{where}: column {VIDEO!r} has {video.null_count} missing value(s)")
            video_codes = pc.dictionary_encode(video).combine_chunks().indices.to_numpy().astype(np.int64)
            span = int(video_codes.max()) + 1 if len(video_codes) else 1
            pairs = np.sort(run_codes.astype(np.int64) * span + video_codes)
            repeated = np.flatnonzero(pairs[1:] == pairs[:-1])
            if len(repeated):
                raise ValueError(f"{where}: {len(repeated)} duplicated video_id(s), e.g. in run "
                                 f"{present[int(pairs[repeated[0]] // span)]}; one row per test video")
            parts[VIDEO] = video
        body = pa.table({c: parts[c] for c in columns})
        run_col = pa.DictionaryArray.from_arrays(pa.array(run_codes), pa.array(present, pa.string()))
        frame = body.add_column(0, "run_id", run_col).to_pandas()
    else:
        frame = pd.DataFrame({"run_id": pd.Categorical([]), **{c: pd.Series(dtype=object) for c in columns}})
    frame.attrs["missing"] = missing
    return frame


# --------------------------------------------------------------------------- cost

# The metrics a trial logs once, at its end (`trial_cost` computes them), so a sweep's cost can be
# read back from MLflow; the parent run of a stage holds their totals (`cost_totals`).
COST_DEVICE_S = "cost/device_s"          # device-seconds the trial used: with a GPU (gpu_fraction > 0) its
                                         # GPU-seconds, gpu_fraction × the wall-clock seconds it held its
                                         # resources; without one its CPU-seconds, the user + system CPU time
                                         # of its processes (loader workers included). Training and every
                                         # evaluation, every attempt (retries) of the trial included.
COST_CLIPS = "cost/clips"                # clips the trial processed (training and evaluation)
COST_GPU_FRACTION = "cost/gpu_fraction"  # GPUs the trial held: 0.25 when four trials share one GPU, 1,
                                         # 2 for a two-GPU data-parallel trial, 0 on CPU (trial.gpus)
COST_METRICS = (COST_DEVICE_S, COST_CLIPS, COST_GPU_FRACTION)
# The parent run's totals over its trials (every status: a failed trial held its device too):
COST_GPU_HOURS = "cost/gpu_hours"        # Σ cost/device_s / 3600 over the trials with a GPU
COST_CPU_HOURS = "cost/cpu_hours"        # Σ cost/device_s / 3600 over the trials without one
COST_TRIALS = "cost/trials"              # trials counted
COST_COSTED = "cost/costed"              # of which logged all of COST_METRICS (the sums count only these)
COST_TOTALS = (COST_DEVICE_S, COST_CLIPS, COST_GPU_HOURS, COST_CPU_HOURS, COST_TRIALS, COST_COSTED)


def trial_cost(*, wall_s: float, gpu_fraction: float, cpu_s: float, clips: float) -> dict[str, float]:
    """A trial's COST_METRICS from what the trainable measures: `wall_s` (wall-clock seconds the trial
    held its resources, summed over its attempts), `gpu_fraction` (trial.gpus as resolved; 0 on CPU),
    `cpu_s` (user + system CPU seconds of its processes, summed over attempts), `clips` processed."""
    if gpu_fraction < 0 or wall_s < 0 or cpu_s < 0 or clips < 0:
        raise ValueError(f"trial_cost needs non-negative values (wall_s={wall_s}, gpu_fraction={gpu_fraction}, "
                         f"cpu_s={cpu_s}, clips={clips})")
    device_s = gpu_fraction * wall_s if gpu_fraction > 0 else cpu_s
    return {COST_DEVICE_S: float(device_s), COST_CLIPS: float(clips), COST_GPU_FRACTION: float(gpu_fraction)}


def cost_totals(runs: pd.DataFrame) -> dict[str, float]:
    """The parent run's COST_TOTALS over `runs` (a `load_runs` frame of its trials, every status):
    sums over the trials that logged all of COST_METRICS, and how many did."""
    def column(name: str) -> np.ndarray:
        if name not in runs:
            return np.full(len(runs), np.nan)
        return pd.to_numeric(runs[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)

    device_s, clips, fraction = column(COST_DEVICE_S), column(COST_CLIPS), column(COST_GPU_FRACTION)
    costed = np.isfinite(device_s) & np.isfinite(clips) & np.isfinite(fraction)
    gpu = costed & (fraction > 0)
    return {COST_DEVICE_S: float(device_s[costed].sum()), COST_CLIPS: float(clips[costed].sum()),
            COST_GPU_HOURS: float(device_s[gpu].sum() / 3600.0),
            COST_CPU_HOURS: float(device_s[costed & ~gpu].sum() / 3600.0),
            COST_TRIALS: float(len(runs)), COST_COSTED: float(costed.sum())}
