"""Search spaces: YAML data keyed by dotted config path -> a plan of trial points -> Ray Tune objects.

A *point* is a flat dict {dotted config key: value}; a trial's config is the composed sweep config
with its point applied (`apply_point`). Every stage is planned here as data first, so that a dry
run, the validation before the first trial and the real sweep all see the same trials.

    coarse   values per key; mode `factorial` = the product, mode `axes` = one key at a time
             around `base` (points shared by several axes are kept once)
    fine     the same two modes over values derived from the coarse best (see orchestration.fine)
    ablation registered variants (rev2net.registry) x seeds, around the chosen weights
"""

from __future__ import annotations

import importlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from orchestration import fine
from orchestration.errors import ConfigError
from orchestration.records import META_PARAMS, VARIANT_PARAM
from orchestration.records import WEIGHTS as WEIGHT_KEYS
from rev2net import registry

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
STAGES = ("coarse", "fine", "ablation", "compare", "cross")
MODES = ("factorial", "axes")


@dataclass
class Plan:
    """Everything a stage will run, before anything runs."""

    stage: str
    mode: str                                   # factorial | axes | variants (ablation)
    points: list[dict[str, Any]]                # one per trial (grid); optuna: empty, values hold the space
    values: dict[str, list[Any]]                # every swept key and the values it takes
    base: dict[str, Any] = field(default_factory=dict)   # shared by every trial unless a point sets it
    algorithm: str = "grid"                     # grid | optuna
    num_samples: int = 0                        # optuna: the trial budget
    shuffle_protocols: list[str] = field(default_factory=list)  # evaluated at the end of each trial
    notes: list[str] = field(default_factory=list)        # provenance, e.g. which coarse run was refined

    @property
    def num_trials(self) -> int:
        return self.num_samples if self.algorithm == "optuna" else len(self.points)


def space_path(stage: str, spaces_dir: str | None = None) -> Path:
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} is not one of {', '.join(STAGES)} (see search_spaces/)")
    return Path(spaces_dir or SPACES_DIR) / f"{stage}.yaml"


def load_space(stage: str, spaces_dir: str | None = None) -> dict[str, Any]:
    path = space_path(stage, spaces_dir)
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist (search.spaces_dir={spaces_dir!r})")
    with open(path) as f:
        space = yaml.safe_load(f) or {}
    allowed = {
        "coarse": {"values", "base"},
        "fine": {"keys", "factors", "rule", "coarse"},
        "ablation": {"weights", "seeds", "shuffle_protocols", "variants"},
        "compare": {"weights", "seeds", "shuffle_protocols", "variants"},
        "cross": {"weights", "seeds", "shuffle_protocols", "variants", "adapt", "directions"},
    }[stage]
    unknown = set(space) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    space["_path"] = str(path)
    return space


def space_seeds(space: dict[str, Any], dataset: str) -> int:
    """The space's seeds per variant on `dataset`: `seeds: N`, or `seeds: {default: N, <data.name>: M}`
    (e.g. fewer on the embedded generated dataset, so the stage fits its time budget there)."""
    seeds = space.get("seeds", 3)
    if not isinstance(seeds, dict):
        return seeds
    if "default" not in seeds:
        raise ConfigError(f"{space['_path']}: seeds: {seeds} needs a `default` entry (the seeds of every other dataset)")
    return seeds.get(dataset, seeds["default"])


def check_weight(key: str, value: Any, where: str) -> None:
    """Weights of eq. (3) must be finite and non-negative."""
    if key not in WEIGHT_KEYS:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: {key}={value!r} must be a finite, non-negative number")


def _dedupe(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple] = set()
    out = []
    for p in points:
        k = tuple(sorted(p.items()))
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


def grid_points(values: dict[str, list[Any]], base: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """The trial points of a grid: `factorial` = product of all value lists; `axes` = one key at a
    time over its values with the other keys at `base` (a point that several axes share is kept once)."""
    keys = list(values)
    if mode == "factorial":
        return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]
    if mode == "axes":
        missing = [k for k in keys if k not in base]
        if missing:
            raise ConfigError(f"search.mode=axes needs a base value for {', '.join(missing)} (the `base` of the space)")
        points = []
        for k in keys:
            for v in values[k]:
                points.append({**{kk: base[kk] for kk in keys}, k: v})
        return _dedupe(points)
    raise ConfigError(f"search.mode={mode!r} is not one of {', '.join(MODES)}")


def _check_values(values: dict[str, list[Any]], where: str) -> None:
    if not values:
        raise ConfigError(f"{where}: `values` is empty; give at least one dotted key and its values")
    for key, vals in values.items():
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}: {key} must map to a non-empty list of values, got {vals!r}")
        for v in vals:
            check_weight(key, v, where)


def coarse_plan(space: dict[str, Any], *, mode: str, algorithm: str = "grid", num_samples: int = 0) -> Plan:
    where = space["_path"]
    values = {k: list(v) for k, v in (space.get("values") or {}).items()}
    _check_values(values, where)
    base = dict(space.get("base") or {})
    for k, v in base.items():
        check_weight(k, v, where)
    if algorithm == "optuna":
        return Plan("coarse", "factorial", [], values, base, algorithm, num_samples,
                    notes=[f"Optuna TPE over the {math.prod(len(v) for v in values.values())}-point product"])
    if mode == "axes":
        off_grid = [k for k in values if k in base and base[k] not in values[k]]
        if off_grid:
            raise ConfigError(f"{where}: base value of {', '.join(off_grid)} is not on its grid, so the axes would not "
                              "share their centre; put the base point on the grid")
    return Plan("coarse", mode, grid_points(values, base, mode), values, base)


def load_rule(spec: str) -> Callable[..., list[float]]:
    """`module:function` -> the function (the fine grid rule is swappable)."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"fine rule {spec!r} cannot be imported ({e}); give it as 'module:function'") from e


def fine_plan(space: dict[str, Any], coarse_space: dict[str, Any], coarse_best: dict[str, float], *,
              mode: str, algorithm: str = "grid", num_samples: int = 0, source: str = "") -> Plan:
    """The fine grid: per key, `rule(best, coarse_values, factors)`; axes are centred on the coarse best."""
    where = space["_path"]
    rule_spec = space.get("rule", fine.DEFAULT_RULE)
    rule = load_rule(rule_spec)
    factors = [float(f) for f in space.get("factors", fine.DEFAULT_FACTORS)]
    keys = list(space.get("keys") or WEIGHT_KEYS)
    coarse_values = coarse_space.get("values") or {}
    values: dict[str, list[Any]] = {}
    for key in keys:
        if key not in coarse_best:
            raise ConfigError(f"{where}: the coarse result has no value for {key}; "
                              f"it has {', '.join(sorted(coarse_best)) or 'nothing'}")
        if key not in coarse_values:
            raise ConfigError(f"{where}: {key} is not searched by the coarse space {coarse_space['_path']}")
        values[key] = rule(float(coarse_best[key]), [float(v) for v in coarse_values[key]], factors)
    _check_values(values, where)
    base = {k: float(coarse_best[k]) for k in keys}
    doc = (rule.__doc__ or "").strip().splitlines()
    notes = [f"fine grid from {source or 'the coarse best'}: " + ", ".join(f"{k}={base[k]:g}" for k in keys),
             f"fine values by rule {rule_spec}, factors {', '.join(f'{f:g}' for f in factors)}"
             + (f": {doc[0].rstrip('.')}" if doc else "")]
    if algorithm == "optuna":
        return Plan("fine", "factorial", [], values, base, algorithm, num_samples, notes=notes)
    return Plan("fine", mode, grid_points(values, base, mode), values, base, notes=notes)


# Settings that only a term of eq. (3) reads: with that term's weight at 0 they cannot change training.
_READ_ONLY_BY = {"model.ddp_layers": "loss.beta", "model.frame_target": "loss.lambda_im"}


def _trains_as(point: dict[str, Any], defaults: Mapping[str, Any]) -> tuple:
    """What a variant's point trains, up to what cannot change training: its settings over the
    config's (`defaults`), less those only a zero-weighted term reads (the low-level DDP's layer
    pairs when beta = 0, the frame target's order when lambda_im = 0). Variants that differ only in
    loss weights (no_ddp, ddp_*_only) are the same network, so equal weights make them equal."""
    settings = {**defaults, **{k: v for k, v in point.items() if k not in META_PARAMS}}
    for key, weight in _READ_ONLY_BY.items():
        if float(settings.get(weight, 1.0)) == 0.0:
            settings.pop(key, None)
    return tuple(sorted((k, repr(v)) for k, v in settings.items()))


def _variants(space: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The space's variants: registered names (a list, or a mapping to extra dotted-key overrides),
    each with its overrides from rev2net.registry, then the space's own."""
    where = space["_path"]
    listed = space.get("variants") or []
    listed = dict.fromkeys(listed, None) if isinstance(listed, list) else dict(listed)
    unknown = [name for name in listed if name not in registry.VARIANTS]
    if unknown:
        raise ConfigError(f"{where}: variant(s) {', '.join(map(str, unknown))} are not registered; known: "
                          f"{', '.join(registry.VARIANTS)} (rev2net/registry.py)")
    return {name: {**registry.variant(name).overrides, **(extra or {})} for name, extra in listed.items()}


def variant_plan(stage: str, space: dict[str, Any], weights: dict[str, float], *, seeds: int | None = None,
                 variants: list[str] | None = None, splits: list[int] | tuple[int, ...] = (),
                 axes: list[dict[str, Any]] | None = None, seed_key: str = "trainer.seed", first_seed: int = 0,
                 source: str = "", defaults: Mapping[str, Any] | None = None, dataset: str = "") -> Plan:
    """Registered variants x `axes` (partial points, e.g. cross-dataset direction x adaptation) x
    `splits` x seeds. Each point = the chosen weights, then the variant's overrides, then the axis
    entry's, then the split (data.split, when `splits` are given) and the seed. `defaults` (dotted
    key -> the config's value) fill in what a point does not set when the plan notes the variants
    that would train alike. `seeds` (search.seeds) overrides the space's `seeds`: a number, or a
    mapping of dataset name (data.name) to a number with a `default` for the others."""
    where = space["_path"]
    all_variants = _variants(space)
    chosen = list(variants) if variants else list(all_variants)
    unknown = [v for v in chosen if v not in all_variants]
    if unknown:
        raise ConfigError(f"{stage} variant(s) {', '.join(unknown)} not in {where}; "
                          f"known: {', '.join(all_variants)}")
    n_seeds = int(seeds if seeds is not None else space_seeds(space, dataset))
    if n_seeds < 1:
        raise ConfigError(f"search.seeds={n_seeds} must be at least 1")
    for k, v in weights.items():
        check_weight(k, v, f"{stage} weights")
    seed_values = list(range(first_seed, first_seed + n_seeds))
    split_points = [{"data.split": int(n)} for n in splits] or [{}]
    points = []
    for name in chosen:
        for k, v in all_variants[name].items():
            check_weight(k, v, f"{where} variant {name}")
        for axis in axes or [{}]:
            for split in split_points:
                for seed in seed_values:
                    points.append({VARIANT_PARAM: name, **weights, **all_variants[name], **axis, **split, seed_key: seed})
    values: dict[str, list[Any]] = {VARIANT_PARAM: chosen}
    for key in dict.fromkeys(k for axis in axes or [] for k in axis if k in META_PARAMS or k == "adapt.name"):
        values[key] = list(dict.fromkeys(axis[key] for axis in axes))
    if splits:
        values["data.split"] = [int(n) for n in splits]
    values[seed_key] = seed_values
    notes = [f"weights from {source or 'the loss config'}: " + ", ".join(f"{k}={v:g}" for k, v in weights.items())]
    notes += _identical_variants([p for p in points if p[seed_key] == first_seed], defaults or {}, where)
    protocols = list(space.get("shuffle_protocols") or ["none"])
    return Plan(stage, "variants", points, values, dict(weights), shuffle_protocols=protocols, notes=notes)


def _identical_variants(points: list[dict[str, Any]], defaults: Mapping[str, Any], where: str) -> list[str]:
    """Notes naming the variants that train exactly alike with these weights (per direction,
    adaptation and split)."""
    same: dict[tuple, list[str]] = {}
    for p in points:
        context = tuple(sorted((k, repr(v)) for k, v in p.items() if k in (*META_PARAMS[1:], "adapt.name",
                                                                          "data.split")))
        same.setdefault((context, _trains_as(p, defaults)), []).append(p[VARIANT_PARAM])
    return [f"identical variants: {' and '.join(names)} train exactly alike with these weights (they differ only "
            "in weights these already set, or in settings that only a zero-weighted term reads); set `weights: "
            f"config` in {where} and the loss.* weights to tell them apart"
            for names in dict.fromkeys(tuple(n) for n in same.values() if len(n) > 1)]


def ablation_plan(space: dict[str, Any], weights: dict[str, float], **kwargs: Any) -> Plan:
    """The ablation stage: registered variants x seeds around the chosen weights (`variant_plan`)."""
    return variant_plan("ablation", space, weights, **kwargs)


def point_key(point: dict[str, Any]) -> str:
    """A stable identity of a trial point (sorted `key=value` pairs), used to find its MLflow run again."""
    return ",".join(f"{k}={point[k]!r}" for k in sorted(point))
