"""The statistics a sweep's verdict rests on: intervals, paired comparisons, importances, cost.

Following the rliable library (Agarwal et al., NeurIPS 2021, "Deep RL at the edge of the statistical
precipice"): report intervals, not single numbers; aggregate over seeds before ranking; say when two
results cannot be told apart. Plain functions on numpy, pandas and scipy (Optuna for the random-forest
fANOVA); nothing here reads MLflow.

    intervals      wilson_interval (one accuracy: k correct of n videos), seed_summary and
                   summarize_seeds (mean, sample std and a bootstrap interval over seeds and splits)
    predictions    the per-video artifact each evaluation of a trial logs (PREDICTIONS_SCHEMA,
                   predictions_path, write_predictions, read_predictions), correct, top5_correct
    comparisons    mcnemar_exact (two single trials on the same videos), paired_seed_test (per-seed
                   accuracies), holm (Holm-Bonferroni), compare_to_reference (a whole table at once)
    importance     design_of (what a grid can tell: Design.statement), marginals (mean objective per
                   weight value), grid_anova (exact functional ANOVA of a full factorial grid),
                   fanova (Optuna's random-forest fANOVA, with the pairwise terms added)
    cost           sweep_cost (device-seconds, GPU-hours and clips per stage or family), gpu_hours

Accuracies go in as fractions in [0, 1]; functions that print into tables take `scale` (100: percent,
so that an effect reads in accuracy points). Randomness (bootstrap) is seeded: the same call gives the
same interval.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import stats as sps

from analysis.runs import SHUFFLE_PROTOCOLS, WEIGHTS

ArrayLike = Union[float, int, np.ndarray, pd.Series, Sequence[float]]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} is not in (0, 1); e.g. 0.95 for a 95% interval")
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


def _quantiles(confidence: float) -> tuple[float, float]:
    _z(confidence)   # validates
    return (1.0 - confidence) / 2.0, 1.0 - (1.0 - confidence) / 2.0


# --------------------------------------------------------------------------- intervals

def wilson_interval(k: ArrayLike, n: ArrayLike, *, confidence: float = 0.95) -> tuple[Any, Any]:
    """The Wilson score interval of a proportion k/n (an accuracy: k correct of n test videos).

    Method: Wilson (1927, "Probable inference, the law of succession, and statistical inference"),
    the interval recommended by Brown, Cai & DasGupta (2001, "Interval estimation for a binomial
    proportion") and Newcombe (1998, method 3), without continuity correction; the same numbers as
    statsmodels' `proportion_confint(k, n, method="wilson")`:

        centre = (k + z²/2) / (n + z²),   half-width = z / (n + z²) · sqrt(k (n − k) / n + z²/4)

    with z the standard normal quantile of 1 − (1 − confidence)/2. Unlike the Wald interval it
    stays inside [0, 1] and keeps its coverage near 0% and 100% accuracy.
    Assumes the n videos are independent draws from the test distribution with a common chance
    of being classified correctly (the model fixed): it is the test-set sampling error of ONE
    trial, not the seed-to-seed spread (use `summarize_seeds` for that).

    `k` and `n` broadcast (numbers or arrays); returns (low, high) as floats for scalar input,
    arrays otherwise; NaN where n = 0. Raises ValueError when k < 0, n < 0 or k > n.
    """
    z = _z(confidence)
    k_arr, n_arr = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    if np.any(k_arr < 0) or np.any(n_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError("wilson_interval needs 0 <= k <= n (k correct of n videos)")
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (k_arr + z * z / 2.0) / (n_arr + z * z)
        half = z / (n_arr + z * z) * np.sqrt(k_arr * (n_arr - k_arr) / n_arr + z * z / 4.0)
        low = np.where(n_arr > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        high = np.where(n_arr > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def _bootstrap_mean_interval(values: np.ndarray, *, confidence: float, n_resamples: int,
                             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean of each row of `values` (G groups × n values).

    The resamples are drawn once per group size n from a generator seeded by (seed, n) and shared by
    the groups of that size (as multinomial counts, so the means are one matrix product); a group's
    interval therefore depends only on its values, `seed` and `n_resamples`, not on the other groups.
    """
    groups, n = values.shape
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r} must be >= 1 (e.g. 10000)")
    lo_q, hi_q = _quantiles(confidence)
    rng = np.random.default_rng([seed, n])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)   # (B, n)
    low, high = np.empty(groups), np.empty(groups)
    chunk = max(1, 2_000_000 // n_resamples)      # bounds the (chunk, B) matrix of resampled means
    for start in range(0, groups, chunk):
        means = values[start:start + chunk] @ counts.T / n                                  # (chunk, B)
        low[start:start + chunk], high[start:start + chunk] = np.quantile(means, [lo_q, hi_q], axis=1)
    return low, high


@dataclass(frozen=True)
class SeedSummary:
    """Mean over seeds (and splits), with its spread and interval; see `seed_summary`."""

    n: int          # finite values averaged
    mean: float     # NaN for n = 0
    std: float      # sample standard deviation (ddof=1); NaN for n < 2
    low: float      # percentile-bootstrap interval of the mean; NaN for n < 2
    high: float


def seed_summary(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> SeedSummary:
    """Mean, sample std (ddof=1) and a percentile-bootstrap interval of the mean of `values` (one
    number per seed, or per seed × split). Non-finite values are dropped and not counted.

    Method: the percentile bootstrap (Efron & Tibshirani 1993, "An Introduction to the Bootstrap",
    Ch. 13): resample the n values with replacement `n_resamples` times, take the mean of each
    resample, report the (1 − confidence)/2 and 1 − (1 − confidence)/2 quantiles; as rliable does
    for its aggregate scores (Agarwal et al. 2021, Sec. 4). Seeded by `seed`: the same values give
    the same interval.
    Assumptions, honestly: the seeds are independent draws of the training randomness. With few
    seeds the percentile bootstrap is too narrow (with n values there are only C(2n−1, n) distinct
    resamples, 10 for n = 3, and the interval never reaches past the smallest and largest value),
    so at n = 3 read it as "the spread of what was seen", not as a 95% guarantee; always print n
    beside it. n = 1 gives the value with no std and no interval; n = 0 gives NaN throughout.
    """
    arr = np.asarray(values, dtype=float).ravel()
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return SeedSummary(0, math.nan, math.nan, math.nan, math.nan)
    if n == 1:
        return SeedSummary(1, float(arr[0]), math.nan, math.nan, math.nan)
    low, high = _bootstrap_mean_interval(arr[None, :], confidence=confidence, n_resamples=n_resamples, seed=seed)
    return SeedSummary(n, float(arr.mean()), float(arr.std(ddof=1)), float(low[0]), float(high[0]))


def summarize_seeds(frame: pd.DataFrame, by: Sequence[str], value: str, *, confidence: float = 0.95,
                    n_resamples: int = 10_000, seed: int = 0, scale: float = 1.0) -> pd.DataFrame:
    """`seed_summary` for every group of `by` at once (vectorised: one matrix product per group size).

    Returns one row per group (in order of first appearance, NaN keys kept), with the columns
    `*by, n, mean, std, low, high`: n finite values of `value`, their mean and sample std (ddof=1),
    and the percentile-bootstrap interval of the mean, all multiplied by `scale` (100: percent).
    Each group's numbers equal `seed_summary` of its values (same `seed` and `n_resamples`); n = 1
    has no std and no interval, a group without a finite value has n = 0 and NaN elsewhere.
    See `seed_summary` for the method and its assumptions.
    """
    by = list(by)
    missing = [c for c in [*by, value] if c not in frame]
    if missing:
        raise KeyError(f"summarize_seeds: no column {', '.join(map(repr, missing))} "
                       f"(columns: {', '.join(map(str, frame.columns))})")
    grouped = frame.groupby(by, sort=False, dropna=False)
    codes = grouped.ngroup().to_numpy()
    keys = frame[by].iloc[np.unique(codes, return_index=True)[1]].reset_index(drop=True)
    y = pd.to_numeric(frame[value], errors="coerce").to_numpy(dtype=float) * scale
    ok = np.isfinite(y)
    codes, y = codes[ok], y[ok]
    order = np.argsort(codes, kind="stable")
    codes, y = codes[order], y[order]
    groups = len(keys)
    n = np.bincount(codes, minlength=groups)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    mean = np.full(groups, np.nan)
    std = np.full(groups, np.nan)
    low = np.full(groups, np.nan)
    high = np.full(groups, np.nan)
    sums = np.bincount(codes, weights=y, minlength=groups)
    mean[n > 0] = sums[n > 0] / n[n > 0]
    for size in np.unique(n[n > 1]):
        members = np.flatnonzero(n == size)
        block = y[starts[members][:, None] + np.arange(size)]                  # (groups of this size, size)
        std[members] = block.std(axis=1, ddof=1)
        low[members], high[members] = _bootstrap_mean_interval(block, confidence=confidence,
                                                               n_resamples=n_resamples, seed=seed)
    out = keys.copy()
    out["n"] = n
    out["mean"], out["std"], out["low"], out["high"] = mean, std, low, high
    return out


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
# (val/top1, shuffle/<protocol>/top1, cross/top1): the plain evaluation on the test split, each
# frame-shuffle protocol, and the cross-dataset evaluation.
EVALUATIONS = ("val", *(f"shuffle/{p}" for p in SHUFFLE_PROTOCOLS), "cross")


def predictions_path(evaluation: str) -> str:
    """The artifact path (relative to a trial's artifact root) of one evaluation's predictions:
    "val" -> "predictions/val.parquet", "shuffle/long_term" -> "predictions/shuffle/long_term.parquet",
    "cross" -> "predictions/cross.parquet". Raises ValueError for an evaluation not in EVALUATIONS."""
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation {evaluation!r} is not one of {', '.join(EVALUATIONS)}")
    return f"predictions/{evaluation}.parquet"


def _validated(table: pa.Table, where: str) -> pa.Table:
    """`table` cast to PREDICTIONS_SCHEMA, or ValueError naming the column, the problem and `where`."""
    names = [c.name for c in PREDICTION_COLUMNS]
    missing = [n for n in names if n not in table.column_names]
    unknown = [n for n in table.column_names if n not in names]
    if missing or unknown:
        raise ValueError(f"{where}: predictions need exactly the columns {', '.join(names)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    table = table.select(names)
    for column in PREDICTION_COLUMNS:
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
    if pc.count_distinct(table.column(VIDEO)).as_py() != n:
        raise ValueError(f"{where}: {n - pc.count_distinct(table.column(VIDEO)).as_py()} duplicated video_id(s); "
                         "one row per test video")
    label = table.column(LABEL).to_numpy()
    pred = table.column(PRED).to_numpy()
    if n and (label.min() < 0 or pred.min() < 0):
        raise ValueError(f"{where}: class indices must be >= 0 (label min {label.min()}, pred min {pred.min()})")
    top5 = table.column(TOP5).combine_chunks()
    lengths = pc.list_value_length(top5).to_numpy(zero_copy_only=False)
    if n and (lengths.min() != lengths.max() or not 1 <= lengths[0] <= 5):
        raise ValueError(f"{where}: every row's top5 must list the same number (1 to 5) of classes; "
                         f"lengths {lengths.min()} to {lengths.max()}")
    if n:
        classes = top5.flatten().to_numpy().reshape(n, int(lengths[0]))
        if classes.min() < 0:
            raise ValueError(f"{where}: top5 holds a negative class index")
        bad = int((classes[:, 0] != pred).sum())
        if bad:
            raise ValueError(f"{where}: in {bad} row(s) pred is not top5[0] (top5 lists classes best first)")
        ordered = np.sort(classes, axis=1)
        repeats = int((ordered[:, 1:] == ordered[:, :-1]).any(axis=1).sum())
        if repeats:
            raise ValueError(f"{where}: {repeats} row(s) list a class twice in top5")
    score = table.column(LABEL_SCORE).to_numpy()
    out_of_range = int((~np.isfinite(score) | (score < 0) | (score > 1)).sum())
    if out_of_range:
        raise ValueError(f"{where}: {out_of_range} label_score value(s) outside [0, 1] (a probability)")
    return table


def write_predictions(df: pd.DataFrame, path: Union[str, Path]) -> Path:
    """Validate `df` against PREDICTION_COLUMNS and write it as Parquet (pyarrow) to `path`,
    creating its folder. Raises ValueError naming the column and the problem: a missing or unknown
    column, a missing value, a type that does not convert, a duplicated video_id, pred != top5[0],
    top5 rows of different lengths or with a repeated class, a label_score outside [0, 1].
    Returns the path written."""
    path = Path(path)
    names = [c.name for c in PREDICTION_COLUMNS]
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"predictions for {path}: not convertible to Arrow ({err}); columns: {', '.join(names)}") from None
    table = _validated(table, f"predictions for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(None), path)
    return path


def read_predictions(path: Union[str, Path]) -> pd.DataFrame:
    """One evaluation's predictions, validated like `write_predictions`: the columns of
    PREDICTION_COLUMNS in order, one row per test video, `top5` as a column of integer arrays."""
    table = _validated(pq.read_table(path), f"predictions file {path}")
    return table.to_pandas()


def correct(df: pd.DataFrame) -> pd.Series:
    """Per video: top-1 correct (pred == label). A boolean Series with `df`'s own index (so it can be
    assigned as a column); key it by video with `.set_axis(df["video_id"])` when pairing trials."""
    return pd.Series(df[PRED].to_numpy() == df[LABEL].to_numpy(), index=df.index, name="correct")


def top5_correct(df: pd.DataFrame) -> pd.Series:
    """Per video: the label is among `top5`. A boolean Series with `df`'s own index."""
    if len(df) == 0:
        return pd.Series(np.zeros(0, dtype=bool), index=df.index, name="top5_correct")
    classes = np.stack(df[TOP5].to_numpy())                                    # (videos, k)
    hit = (classes == df[LABEL].to_numpy()[:, None]).any(axis=1)
    return pd.Series(hit, index=df.index, name="top5_correct")
