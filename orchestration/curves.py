"""A learning-curve model of the coarse stage, fitted from real trials: what each point of a plan
would log epoch by epoch, so that schedulers can be compared on the 1296-trial factorial plan
without training it (benchmarks/schedulers.py --factorial; the runner is
orchestration.simulate:curve_step).

Fitted (`fit`) from one stage's child runs: their params and per-epoch `val/top1`, read through
`records.load_runs` / `records.load_histories` (`fit_store`). Three parts:

  final value   final = chance + (1 − chance)·sigmoid(intercept + Σ_w effect_w[value of w]): additive
                main effects of the four weights on the logit of the share of the way from chance to
                1 (so no combination falls below chance, where real trials stay when they learn
                nothing), by least squares over the completed trials' levels (a trial's level:
                chance + its gain, the least-squares scale of the shared shape that best fits its
                whole curve, i.e. its final value with the noise of the last epoch averaged down by
                the earlier ones; a level at or below chance is clipped to a gain share of EPS), each
                weight's most frequent value the reference (effect 0). From an axes design (one weight
                moved at a time around a base point: 21 trials for 6 values × 4 weights) the 21
                parameters are exactly identified and no residual is left; what an axes design cannot
                estimate at all are the interactions: every axes trial holds three weights at the
                base, so an α × β effect (two large weights failing together, say) never shows, and
                the model's factorial points are the additive extrapolation of the axes. From a
                factorial store the fit is over-determined and averages the interactions into the
                main effects (`final_residual_sd` says how much they were).
  shape         S(e), e = 1..E: the median over the trials that learned (gain above chance by more
                than `margin`) of (value_e − chance) / gain, scaled so S(E) = 1; shape and gains are
                refined alternately (three rounds, starting from gain = final − chance).
  noise         σ_e: the root-mean-square deviation of the completed trials' curves from their own
                modelled curves, chance + gain·S(e), at each epoch e (one degree of freedom per trial
                taken by its gain, shared among the epochs); σ over all epochs. Values are rounded to
                the real values' resolution (1/150 for 150 validation videos, found as the smallest
                n that makes every value a multiple of 1/n): trials that all sit exactly at chance
                tie, as real ones do at epoch 1 (and ASHA then stops none of them). σ_e holds the epoch-to-epoch jitter (training,
                a finite validation set) and each trial's own departure from the shared shape; the
                model draws it independently per epoch, the last included, so a point's final value
                carries seed-like noise too. A real trial's lasting departure (a late learner) is
                thus drawn as independent noise of the same size: the model does not know which
                configurations learn late.

A simulated trial at point p with seed s logs, at epoch e,
    chance + (final(p) − chance)·S(e) + σ·z(p, s, e), clipped to [0, 1],
with z a standard normal drawn from a hash of (p, s, e): the same trial logs the same values
whatever the order it runs in, is paused or resumed, so a FIFO grid's results follow without
running it (`grid`). A weight value whose only trials diverged (failed) has no effect to fit: it
is recorded in `diverged` with the epoch it failed at, and a simulated trial with that value fails
there too.

Imports numpy and pandas (and MLflow through records, in `fit_store`), nothing of Ray or torch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from orchestration import records

FORMAT = "rev2net.curves/1"
EPS = 1e-3   # gain shares are clipped to [EPS, 1 − EPS] before the logit


def logit(p: float) -> float:
    p = min(1.0 - EPS, max(EPS, float(p)))
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class CurveModel:
    """The fitted model (see the module docstring); `to_json` / `load` round-trip it."""

    metric: str                                   # the modelled per-epoch metric (val/top1)
    epochs: int                                   # E: the real trials' trainer.max_epochs
    chance: float                                 # where an untrained model's metric sits (1 / classes)
    intercept: float                              # logit of the gain share at every reference level
    effects: dict[str, list[list[float]]]         # weight key -> [[value, effect on the logit], ...]
    shape: list[float]                            # S(1..E), S(E) = 1
    noise_sd: float                               # σ over all epochs
    diverged: dict[str, list[list[float]]] = field(default_factory=dict)  # weight key -> [[value, epoch], ...]
    epoch_noise_sd: list[float] = field(default_factory=list)  # σ_e at each epoch (empty: noise_sd at every one)
    resolution: int = 0                           # values are multiples of 1/resolution (the validation videos; 0: any)
    final_residual_sd: Optional[float] = None     # the finals' residual sd (None: no degree of freedom left)
    source: dict[str, Any] = field(default_factory=dict)  # where it was fitted from (store, sweep, commit, date)

    @property
    def keys(self) -> list[str]:
        return list(self.effects)

    def _level(self, table: Mapping[str, list[list[float]]], key: str, value: float) -> Optional[float]:
        for v, x in table.get(key, ()):
            if math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-12):
                return x
        return None

    def diverges_at(self, point: Mapping[str, float]) -> Optional[int]:
        """The epoch a trial at `point` diverges at (the earliest of its diverging values), or None."""
        epochs = [self._level(self.diverged, k, float(point[k])) for k in self.diverged if k in point]
        epochs = [int(e) for e in epochs if e is not None]
        return min(epochs) if epochs else None

    def final(self, point: Mapping[str, float]) -> float:
        """The modelled (noise-free) final value at `point`."""
        eta = self.intercept
        for key in self.keys:
            if key not in point:
                raise KeyError(f"the point {dict(point)} has no {key}; the curve model needs {', '.join(self.keys)}")
            effect = self._level(self.effects, key, float(point[key]))
            if effect is None:
                if self._level(self.diverged, key, float(point[key])) is not None:
                    return math.nan
                known = [v for v, _ in self.effects[key]] + [v for v, _ in self.diverged.get(key, ())]
                raise KeyError(f"{key}={point[key]!r} is not a value the curve model was fitted on "
                               f"({', '.join(f'{v:g}' for v in sorted(known))}); fit it from a stage that ran it")
            eta += effect
        return self.chance + (1.0 - self.chance) * sigmoid(eta)

    def value(self, point: Mapping[str, float], seed: int, epoch: int) -> float:
        """The simulated metric of the trial (`point`, `seed`) at `epoch` (1-based)."""
        if not 1 <= epoch <= self.epochs:
            raise ValueError(f"epoch {epoch} is outside the model's 1..{self.epochs}; set trainer.max_epochs={self.epochs}")
        f = self.final(point)
        mean = self.chance + (f - self.chance) * self.shape[epoch - 1]
        value = min(1.0, max(0.0, mean + self.sd(epoch) * _normal(point, self.keys, seed, epoch)))
        return round(value * self.resolution) / self.resolution if self.resolution else value

    def sd(self, epoch: int) -> float:
        """The noise's standard deviation at `epoch`."""
        return self.epoch_noise_sd[epoch - 1] if self.epoch_noise_sd else self.noise_sd

    def curve(self, point: Mapping[str, float], seed: int) -> list[float]:
        return [self.value(point, seed, e) for e in range(1, self.epochs + 1)]

    def grid(self, points: Sequence[Mapping[str, float]], seed: int) -> pd.DataFrame:
        """What a FIFO grid over `points` logs under the model: one row per point, the weights, its
        simulated final value (`metric`; NaN where it diverges), its modelled noise-free final
        (`modelled`), status and a run id, in the shape `records.best_config` ranks."""
        rows = []
        for i, p in enumerate(points):
            fails = self.diverges_at(p)
            rows.append({**{k: float(p[k]) for k in self.keys}, "run_id": f"point-{i:05d}",
                         "status": records.FAILED if fails else records.COMPLETED,
                         self.metric: math.nan if fails else self.value(p, seed, self.epochs),
                         "modelled": math.nan if fails else self.final(p)})
        return pd.DataFrame(rows)

    def to_json(self) -> str:
        text = json.dumps({"format": FORMAT, **asdict(self)}, indent=1)
        # one line per innermost list of numbers ([value, effect] pairs, the shape)
        return re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",")
                      + "]", text)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path


def load(path: str | Path) -> CurveModel:
    data = json.loads(Path(path).read_text())
    if data.pop("format", None) != FORMAT:
        raise ValueError(f"{path} is not a curve model ({FORMAT}); write one with orchestration.curves.fit_store")
    return CurveModel(**data)


def _normal(point: Mapping[str, float], keys: Sequence[str], seed: int, epoch: int) -> float:
    text = repr((tuple(round(float(point[k]), 12) for k in keys), int(seed), int(epoch)))
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")).gauss(0.0, 1.0)


def fit(runs: pd.DataFrame, histories: pd.DataFrame, *, chance: float, metric: str = "val/top1",
        keys: Sequence[str] = records.WEIGHTS, margin: float = 0.05) -> CurveModel:
    """The curve model of `runs` (a `records.load_runs` frame: run_id, status, epochs, the weight
    params) from `histories` (`records.load_histories`: run_id, key, step, value). Completed trials
    fit the final values, the shape and the noise; failed ones only mark diverging values."""
    keys = list(keys)
    missing = [c for c in ("run_id", "status", *keys) if c not in runs]
    if missing:
        raise ValueError(f"the runs frame has no {', '.join(missing)} (pass a records.load_runs frame)")
    done = runs[runs["status"] == records.COMPLETED]
    if done.empty:
        raise ValueError(f"no completed trial among {len(runs)} runs: the curve model needs whole curves")
    table = histories[histories["key"] == metric].pivot_table(index="run_id", columns="step", values="value",
                                                             aggfunc="last")
    epochs = int(done["epochs"].max()) if "epochs" in done else int(table.columns.max())
    wanted = list(range(1, epochs + 1))
    short = [r for r in done["run_id"] if r not in table.index or table.loc[r, wanted].isna().any()] \
        if set(wanted) <= set(table.columns) else list(done["run_id"])
    if short:
        raise ValueError(f"{len(short)} completed trial(s) lack {metric} at some of epochs 1..{epochs} "
                         f"(e.g. run {short[0]}); fit from a store whose trials logged every epoch")
    curves = table.loc[list(done["run_id"]), wanted].to_numpy(dtype=float)            # (trials, E)
    gains = curves[:, -1] - chance
    learned = gains > margin
    if not learned.any():
        raise ValueError(f"no completed trial ends more than {margin} above chance ({chance:.3f}): the curves "
                         "have no shape to fit")
    for _ in range(3):   # the shape from the learned trials' normalised curves, then each trial's level on it
        shape = np.median((curves[learned] - chance) / gains[learned, None], axis=0)
        shape = shape / shape[-1]
        gains = (curves - chance) @ shape / float(shape @ shape)
        learned = gains > margin
        if not learned.any():
            raise ValueError(f"no completed trial's curve lies more than {margin} above chance ({chance:.3f})")
    residuals = curves - chance - gains[:, None] * shape[None, :]
    dof = residuals.size - len(gains)
    noise = float(np.sqrt(np.sum(residuals ** 2) / dof)) if dof > 0 else 0.0
    per_epoch = np.sqrt(np.sum(residuals ** 2, axis=0) / dof * epochs) if dof > 0 else np.zeros(epochs)
    levels = np.array([logit(g / (1.0 - chance)) for g in gains])
    intercept, effects, residual_sd = _main_effects(done[keys], levels, keys)
    diverged = _diverged(runs, done, keys, effects)
    return CurveModel(metric=metric, epochs=epochs, chance=float(chance), intercept=float(intercept), effects=effects,
                      shape=[float(x) for x in shape], noise_sd=noise, diverged=diverged,
                      epoch_noise_sd=[float(x) for x in per_epoch], resolution=resolution(curves),
                      final_residual_sd=residual_sd,
                      source={"trials": int(len(runs)), "completed": int(len(done)), "learned": int(learned.sum())})


def resolution(values: np.ndarray, most: int = 5000) -> int:
    """The smallest n <= `most` that makes every value a multiple of 1/n (an accuracy on n videos), else 0."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    for n in range(1, most + 1):
        if np.all(np.abs(v * n - np.round(v * n)) < 1e-6 * n):
            return n
    return 0


def _main_effects(design: pd.DataFrame, y: np.ndarray, keys: list[str]
                  ) -> tuple[float, dict[str, list[list[float]]], Optional[float]]:
    """Least squares of y on one-hot levels of `keys` (each key's most frequent value the reference)."""
    columns, levels = [np.ones(len(y))], []
    references = {}
    for key in keys:
        values = design[key].astype(float)
        counts = values.value_counts()
        ref = float(min(counts[counts == counts.max()].index))
        references[key] = ref
        for v in sorted(set(values) - {ref}):
            columns.append((values == v).to_numpy(dtype=float))
            levels.append((key, float(v)))
    x = np.stack(columns, axis=1)
    rank = int(np.linalg.matrix_rank(x))
    if rank < x.shape[1]:
        raise ValueError(f"the completed trials cannot separate the {len(levels)} main effects of "
                         f"{', '.join(keys)} (design rank {rank} of {x.shape[1]}): fit from an axes or factorial stage")
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(y) - x.shape[1]
    residual_sd = float(np.sqrt(np.sum((y - x @ beta) ** 2) / dof)) if dof > 0 else None
    effects: dict[str, list[list[float]]] = {k: [[references[k], 0.0]] for k in keys}
    for (key, v), b in zip(levels, beta[1:]):
        effects[key].append([v, float(b)])
    for key in keys:
        effects[key].sort()
    return float(beta[0]), effects, residual_sd


def _diverged(runs: pd.DataFrame, done: pd.DataFrame, keys: list[str],
              effects: dict[str, list[list[float]]]) -> dict[str, list[list[float]]]:
    """Weight values seen only in failed trials: value -> the earliest epoch they failed at."""
    failed = runs[runs["status"] == records.FAILED]
    out: dict[str, list[list[float]]] = {}
    for key in keys:
        fitted = {v for v, _ in effects[key]}
        for v, group in failed.groupby(failed[key].astype(float)):
            if not any(math.isclose(v, f, rel_tol=1e-9, abs_tol=1e-12) for f in fitted):
                epochs = group["epochs"].astype(int) + 1 if "epochs" in group else pd.Series([1])
                out.setdefault(key, []).append([float(v), float(max(1, int(epochs.min())))])
    return out


def fit_store(tracking_uri: str, experiment: str, *, chance: float, stage: str = "coarse",
              parent_run_id: Optional[str] = None, metric: str = "val/top1",
              keys: Sequence[str] = records.WEIGHTS) -> CurveModel:
    """`fit` on one stage invocation's trials in an MLflow store (by default the newest of `stage`),
    with where they came from in `source`: the store, experiment, parent run, its git commit, the date."""
    parent = parent_run_id or records.latest_sweep(tracking_uri, experiment, stage)
    if parent is None:
        raise LookupError(f"no {stage} stage in experiment {experiment!r} at {tracking_uri}; run it first")
    runs = records.load_runs(tracking_uri, experiment, parent_run_id=parent, best_epoch=False)
    histories = records.load_histories(tracking_uri, runs["run_id"].tolist(), [metric])
    model = fit(runs, histories, chance=chance, metric=metric, keys=keys)
    tags = records.client_for(tracking_uri).get_run(parent).data.tags
    model.source.update({"tracking_uri": tracking_uri, "experiment": experiment, "stage": stage,
                         "parent_run_id": parent, "mode": tags.get(records.TAG_MODE),
                         "git_commit": tags.get(records.TAG_GIT),
                         "fitted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return model
