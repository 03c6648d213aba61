"""A stage's plan: which trials it runs, each validated before the first one starts; the whole dry run.

    prepare(cfg) -> (cfg with absolute paths, Plan)
        the config's values checked (its dataclasses) -> the plan built from the stage's search
        space (orchestration/spaces.py), the fine and ablation stages reading earlier results from
        MLflow (orchestration/records.py) -> every planned trial's config checked for its model
        family (rev2net.registry.check_spec) and, for the generated dataset, for what the generator
        can make (rev2net.data.synthetic.check_params)
    prepare_data(cfg)      the embedded dataset generated on first use, the dataset checked; broken
                           videos refuse the start, or are left out (data.max_broken_fraction)
    trial_epochs(cfg, n)   how many trial-epochs the stage will train (the dry run prints it)
    device_hours(cfg, n, gpus_per_trial)   what they cost in GPU-hours, from search.step_time_s

Imports neither Ray nor torch: `grid.py --dry-run` runs this module and the console alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from orchestration import records
from orchestration.config import SweepConfig, experiment_name, resolve_paths, to_objects
from orchestration.errors import ConfigError
from orchestration.spaces import Plan, coarse_plan, fine_plan, load_space, space_path, variant_plan
from rev2net import registry
from rev2net.data.synthetic import check_params
from rev2net.registry import check_spec
from rev2net.spec import TrialSpec


def stage_best(cfg: DictConfig, stage: str, parent_run_id: Optional[str] = None) -> tuple[dict[str, float], str]:
    """The best weights of the latest finished `stage` (or of `parent_run_id`) in this experiment,
    and a line saying where they come from. LookupError when there is none."""
    exp, uri = experiment_name(cfg), cfg.mlflow.tracking_uri
    if records.store_missing(uri):  # do not create it by looking
        raise LookupError(f"no MLflow store at {uri}")
    from orchestration import tracking  # mlflow only where a store is read: a first stage's dry run never is

    client = tracking.client(uri)
    if client.get_experiment_by_name(exp) is None:
        raise LookupError(f"no MLflow experiment {exp!r} at {uri}")
    if parent_run_id is None:
        parents = records.stage_runs(client, exp, stage=stage, finished_only=True)
        if parents.empty:
            raise LookupError(f"no finished {stage} stage in MLflow experiment {exp!r} at {uri}")
        parent_run_id = parents.iloc[0]["run_id"]
    runs = records.load_runs(uri, exp, parent_run_id=parent_run_id)
    best = records.best_config(runs, metric=cfg.search.metric, mode=cfg.search.metric_mode)
    source = f"{stage} sweep {parent_run_id} (best {cfg.search.metric}={best.value:.4f}, run {best.run_id})"
    return {k: float(v) for k, v in best.params.items()}, source


def _fine(cfg: DictConfig, space: dict[str, Any]) -> Plan:
    s = cfg.search
    coarse_file = Path(space["_path"]).parent / space.get("coarse", "coarse.yaml")
    if coarse_file.name != "coarse.yaml":
        raise ConfigError(f"{space['_path']}: `coarse` must name a coarse.yaml")
    coarse_space = load_space("coarse", str(coarse_file.parent))
    try:
        best, source = stage_best(cfg, "coarse", s.coarse_sweep)
    except LookupError as e:
        raise ConfigError(f"the fine stage refines the coarse stage's results, but {e}; run "
                          "`python orchestration/grid.py --stage coarse` with the same data and mlflow settings "
                          "first (or set search.coarse_sweep=<parent run id>)") from e
    return fine_plan(space, coarse_space, best, mode=s.mode, algorithm=s.algorithm, num_samples=s.num_samples,
                     source=source)


def _weights(cfg: DictConfig, space: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Rev2Net's weights for a stage of variants: the fine stage's best (`weights: auto`), else the
    coarse stage's, else the loss config; `weights: config` always the loss config."""
    weights_from = space.get("weights", "auto")
    weights = {k: float(OmegaConf.select(cfg, k)) for k in records.WEIGHTS}
    if weights_from == "config":
        return weights, "the loss config"
    if weights_from != "auto":
        raise ConfigError(f"{space['_path']}: weights={weights_from!r} is not one of auto, config")
    for earlier in ("fine", "coarse"):
        try:
            return stage_best(cfg, earlier)
        except LookupError:
            continue
    return weights, f"the loss config (no finished fine or coarse stage in {experiment_name(cfg)})"


def _variants_stage(cfg: DictConfig, space: dict[str, Any], axes: Optional[list[dict[str, Any]]] = None) -> Plan:
    weights, source = _weights(cfg, space)
    s = cfg.search
    defaults = {f"{group}.{k}": v for group in ("model", "loss")
                for k, v in OmegaConf.to_container(cfg[group], resolve=True).items()}
    return variant_plan(cfg.stage, space, weights, seeds=s.seeds, variants=list(s.variants) or None,
                        splits=list(s.splits), axes=axes, first_seed=int(cfg.trainer.seed), source=source,
                        defaults=defaults, dataset=str(cfg.data.name))


def cross_directions(cfg: DictConfig, space: dict[str, Any]) -> list[dict[str, Any]]:
    """The cross stage's directions as partial points: `forward` is the configured source (data.name,
    data.root) and target (data.eval_name, data.eval_root), `reverse` the two swapped. On the
    generated dataset with no target set, the target is its shifted domain beside data.root."""
    d = OmegaConf.to_container(cfg.data, resolve=True)
    if d["eval_name"] is None:
        if d["name"] != "synthetic":
            raise ConfigError("the cross stage trains on one dataset and tests on another: set data.eval_name, "
                              "data.eval_root and data.class_map (e.g. data.eval_name=hmdb51 "
                              "data.eval_root=/data/HMDB51 data.class_map=ucf101_hmdb51_12)")
        d.update(eval_name="synthetic", eval_root=f"{d['root'].rstrip('/')}-shifted",
                 eval_synthetic={**d["synthetic"], "domain": "shifted"})
    def side(name: str, root: str, synthetic: dict[str, Any], as_target: bool) -> dict[str, Any]:
        prefix = "data.eval_" if as_target else "data."
        return {f"{prefix}name": name, f"{prefix}root": root,
                **{f"{prefix}synthetic.{k}": v for k, v in synthetic.items()}}

    one = (d["name"], d["root"], d["synthetic"])
    other = (d["eval_name"], d["eval_root"], d["eval_synthetic"])
    pairs = {"forward": (one, other), "reverse": (other, one)}
    wanted = list(space.get("directions") or ["forward", "reverse"])
    unknown = [w for w in wanted if w not in pairs]
    if unknown:
        raise ConfigError(f"{space['_path']}: directions {', '.join(unknown)} are not forward | reverse")
    own_flow = {"data.flow_root": None} if d["flow_root"] else {}  # a flow_root set for the source is not the target's
    label = lambda side: records.dataset_label(side[0], side[2]["domain"])  # noqa: E731
    return [{records.DIRECTION_PARAM: f"{label(a)} → {label(b)}",
             **side(*a, as_target=False), **side(*b, as_target=True), **(own_flow if a is other else {})}
            for a, b in (pairs[w] for w in wanted)]


def _cross(cfg: DictConfig, space: dict[str, Any]) -> Plan:
    adapt = list(space.get("adapt") or ["none", "dann"])
    axes = [{**direction, "adapt.name": method} for direction in cross_directions(cfg, space) for method in adapt]
    return _variants_stage(cfg, space, axes)


def build_plan(cfg: DictConfig) -> Plan:
    """What the stage will run; the fine and ablation stages read earlier results from MLflow."""
    s = cfg.search
    space = load_space(cfg.stage, s.spaces_dir)
    if cfg.stage == "coarse":
        return coarse_plan(space, mode=s.mode, algorithm=s.algorithm, num_samples=s.num_samples)
    if cfg.stage == "fine":
        return _fine(cfg, space)
    return _cross(cfg, space) if cfg.stage == "cross" else _variants_stage(cfg, space)


def _replace(obj: Any, changes: dict[str, Any]) -> Any:
    """A copy of a dataclass tree with dotted keys changed. Each node is rebuilt once with all of
    its changes, so its __post_init__ checks the new combination (not a half-applied one)."""
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            own[head] = value
    for head, sub in nested.items():
        own[head] = _replace(getattr(obj, head), sub)
    return dataclasses.replace(obj, **own)


def _check_keys(cfg: DictConfig, plan: Plan) -> None:
    """Each distinct (key, value) of the plan merges into the typed config (unknown keys, wrong types)."""
    pairs = {(k, json.dumps(v)) for p in plan.points for k, v in p.items() if k not in records.META_PARAMS}
    pairs |= {(k, json.dumps(v)) for k, vals in plan.values.items() if k not in records.META_PARAMS for v in vals}
    for key, value in sorted(pairs):
        try:
            OmegaConf.update(cfg.copy(), key, json.loads(value), merge=False)
        except Exception as e:  # noqa: BLE001 - OmegaConf raises several types for one mistake
            raise ConfigError(f"search space key {key}={json.loads(value)!r}: {str(e).splitlines()[0]}") from e


def trial_specs(cfg: DictConfig, plan: Plan) -> list[TrialSpec]:
    """Every distinct planned trial's config (for Optuna: every point TPE could pick), each checked:
    its dataclasses rebuilt (value checks), then for its model family (rev2net.registry.check_spec)
    and, for the generated dataset, for what the generator can make. ConfigError names the trial."""
    base = to_objects(cfg)
    points = plan.points
    if plan.algorithm == "optuna":
        keys = list(plan.values)
        points = [dict(zip(keys, c)) for c in itertools.product(*(plan.values[k] for k in keys))]
    specs, seen = [], set()
    for point in points:
        config_point = {k: v for k, v in point.items() if k not in records.META_PARAMS}
        ident = json.dumps(config_point, sort_keys=True, default=str)
        if ident in seen:
            continue
        seen.add(ident)
        try:
            obj = _replace(base, config_point)
            spec = TrialSpec(data=obj.data, model=obj.model, loss=obj.loss, trainer=obj.trainer, adapt=obj.adapt)
            check_spec(spec)
            if obj.data.name == "synthetic":  # what the generator can make (its own check)
                check_params(obj.data.synthetic)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"trial {records.run_name(point)}: {str(e).splitlines()[0]}") from e
        specs.append(spec)
    return specs


def check_points(cfg: DictConfig, plan: Plan) -> SweepConfig:
    """Every trial's config is valid, before the first trial starts: keys and types (`_check_keys`),
    then each distinct point's values and family (`trial_specs`)."""
    base = to_objects(cfg)
    _check_keys(cfg, plan)
    trial_specs(cfg, plan)
    return base


def prepare(cfg: DictConfig) -> tuple[DictConfig, Plan]:
    """Resolve paths, plan the stage and validate every trial: all that a dry run does. The config
    is checked before MLflow is consulted (the fine and ablation plans read earlier results)."""
    cfg = resolve_paths(cfg)
    to_objects(cfg)
    if cfg.stage != "coarse" and not records.store_missing(cfg.mlflow.tracking_uri):
        from orchestration import tracking

        tracking.check_reachable(cfg.mlflow.tracking_uri)
    plan = build_plan(cfg)
    if plan.num_trials == 0:
        raise ConfigError(f"stage {cfg.stage} plans no trials; check {space_path(cfg.stage, cfg.search.spaces_dir)}")
    check_points(cfg, plan)
    return cfg, plan


@dataclasses.dataclass
class BrokenVideos:
    """The broken videos data.max_broken_fraction tolerated (each left out of every trial's lists
    through data.exclude), per dataset; the parent run's artifact BROKEN_VIDEOS_ARTIFACT."""

    videos: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # path -> dataset, root, problem
    checked: dict[str, int] = dataclasses.field(default_factory=dict)  # "<dataset> at <root>" -> videos listed
    max_broken_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"count": len(self.videos), "max_broken_fraction": self.max_broken_fraction, "checked": self.checked,
                "videos": [{"path": path, **about} for path, about in self.videos.items()]}


REFUSAL_EXAMPLES = 3  # broken videos a refusal names (its one line: the command lists them all)


def prepare_data(cfg: DictConfig, plan: Plan, *, progress: bool = True) -> tuple[DictConfig, BrokenVideos]:
    """The datasets the planned trials read, ready and checked like `rev2net.data.check`: the
    generated dataset made on first use (with every video's flow when a planned family reads flow
    as its input), the cross-dataset target too. Broken videos (missing, unreadable, without flow)
    refuse the start with the first few named, unless data.max_broken_fraction of the split's
    videos tolerates them: then the returned config lists them in data.exclude (the trials leave
    them out of every list: `rev2net.data.datasets`), and BrokenVideos names them."""
    from rev2net.data import check_dataset, ensure_synthetic
    from rev2net.data.check import check_target, command
    from rev2net.data.synthetic import ensure_flow

    specs = trial_specs(cfg, plan)
    flow_input = any(registry.data_needs(s.model, s.loss).flow_pairs for s in specs)
    broken = BrokenVideos(max_broken_fraction=float(cfg.data.max_broken_fraction))
    for data in {json.dumps(dataclasses.asdict(s.data), sort_keys=True): s.data for s in specs}.values():
        for name, root, params in ((data.name, data.root, data.synthetic),
                                   (data.eval_name, data.eval_root, data.eval_synthetic)):
            if name == "synthetic":
                (ensure_flow if flow_input else ensure_synthetic)(root, params, progress=progress)
        # flow is read where it is stored and used: targets (unless a MotionNet computes them), inputs
        checked = dataclasses.replace(data, flow=data.stored_flow_targets or flow_input)
        report = check_dataset(checked, flow_everywhere=flow_input)
        how = f"list them all: {command(checked, flow_everywhere=flow_input)}"
        if report.layout_error:
            raise ConfigError(f"dataset {data.name} at {data.root} is not ready: "
                              f"{report.layout_error.splitlines()[0]} ({how})")
        found = report.broken()
        if len(found) > data.max_broken_fraction * report.videos + 1e-9:
            raise ConfigError(_refusal(data, report.videos, found, how))
        broken.checked[f"{data.name} at {data.root}"] = report.videos
        broken.videos.update({path: {"dataset": data.name, "root": data.root, "problem": problem}
                              for path, problem in found.items()})
        problems = check_target(data)
        if problems:
            raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if broken.videos:
        cfg = cfg.copy()
        cfg.data.exclude = list(dict.fromkeys([*cfg.data.exclude, *broken.videos]))
    return cfg, broken


def _refusal(data: Any, listed: int, found: dict[str, str], how: str) -> str:
    """Why a dataset with broken videos refuses the start, in one line: how many, the first few, what to do."""
    allowed = int(data.max_broken_fraction * listed + 1e-9)
    named = "; ".join(f"{path}: {problem}" for path, problem in list(found.items())[:REFUSAL_EXAMPLES])
    more = f"; and {len(found) - REFUSAL_EXAMPLES} more" if len(found) > REFUSAL_EXAMPLES else ""
    tolerate = _fraction_for(len(found), listed)
    fix = "fix or remove them" + (f", or set data.max_broken_fraction={tolerate} to leave them out of every trial "
                                  f"(named in the parent run's {records.BROKEN_VIDEOS_ARTIFACT})" if tolerate else "")
    return (f"dataset {data.name} at {data.root} is not ready: {len(found)} of its {listed} videos in split "
            f"{data.split} are broken (data.max_broken_fraction={data.max_broken_fraction:g} tolerates {allowed}): {named}{more} — "
            f"{how}; {fix}")


def _fraction_for(broken: int, listed: int) -> Optional[str]:
    """The data.max_broken_fraction that tolerates `broken` of `listed` videos (rounded up to two
    significant digits); None when that is not below 1."""
    ratio = broken / listed
    digits = 1 - math.floor(math.log10(ratio))
    value = math.ceil(ratio * 10 ** digits) / 10 ** digits
    return f"{value:.{digits}f}" if value < 1 else None


def log_broken_videos(client: Any, parent_run_id: str, broken: BrokenVideos) -> None:
    """Name the tolerated broken videos on the stage's parent run: the artifact
    records.BROKEN_VIDEOS_ARTIFACT and the count in records.TAG_BROKEN_VIDEOS. Nothing when none."""
    if not broken.videos:
        return
    client.log_text(parent_run_id, json.dumps(broken.to_dict(), indent=1), records.BROKEN_VIDEOS_ARTIFACT)
    client.set_tag(parent_run_id, records.TAG_BROKEN_VIDEOS, str(len(broken.videos)))


def confirm_plan(cfg: DictConfig, plan: Plan, parent_run_id: str) -> Optional[Plan]:
    """The confirmation re-runs of a coarse or fine stage (search.confirm_top_k, search.confirm_seeds):
    its best K configurations by the selection metric (rank_trials: the same order as best_config),
    each trained again with S more seeds. None when not asked for, or nothing ranked."""
    s = cfg.search
    if not s.confirm_top_k or cfg.stage not in ("coarse", "fine"):
        return None
    runs = records.load_runs(cfg.mlflow.tracking_uri, experiment_name(cfg), parent_run_id=parent_run_id)
    keys = [k for k in plan.values if k in runs]
    first = int(cfg.trainer.seed)
    mains = runs[runs["trainer.seed"] == first] if "trainer.seed" in runs else runs
    try:
        ranked, _ = records.rank_trials(mains, metric=s.metric, mode=s.metric_mode, keys=keys)
    except LookupError:
        return None
    best = ranked.drop_duplicates(keys).head(s.confirm_top_k)
    seeds = list(range(first + 1, first + 1 + s.confirm_seeds))
    points = [{**{k: row[k] for k in keys}, "trainer.seed": seed} for row in best.to_dict("records") for seed in seeds]
    values = {k: list(dict.fromkeys(p[k] for p in points)) for k in keys} | {"trainer.seed": seeds}
    note = (f"confirmation: the best {len(best)} configuration(s) by {s.metric} again with seeds "
            f"{', '.join(map(str, seeds))}")
    return Plan(cfg.stage, "confirm", points, values, {}, notes=[note])


SEARCH_MODES = ("axes", "factorial")  # the grid stages' plans (coarse, fine), which a scheduler may cut short


def stops_early(cfg: DictConfig, mode: str) -> bool:
    """Whether `scheduler` (asha) may stop this plan's trials early: only in a grid search (coarse,
    fine), and only with a rung before the last epoch (grace_period < trainer.max_epochs). The
    variant stages (ablation, compare, cross) and the confirmation re-runs train every trial to
    trainer.max_epochs whatever the scheduler: a variant stopped early would leave its row of the
    papers' tables without a test score."""
    return (cfg.scheduler.name == "asha" and mode in SEARCH_MODES
            and int(cfg.scheduler.grace_period) < int(cfg.trainer.max_epochs))


def trial_epochs(cfg: DictConfig, n_trials: int, mode: str = "axes") -> tuple[int, str]:
    """Trial-epochs the stage will train. For ASHA, the synchronous successive-halving count, an
    estimate and not a bound: Ray's ASHA is asynchronous, a trial reaching a rung goes on when it
    is in the top 1/η of the results that rung has seen *so far*, so the first trials of a wave
    pass against few rivals (85 trial-epochs measured against 44 promised on the embedded default,
    where nearly every trial is at chance after epoch 1) and late ones against many (33 against 35
    with the constant-time stand-in); benchmarks/schedulers.py measures it."""
    R = int(cfg.trainer.max_epochs)
    if not stops_early(cfg, mode):
        why = "" if cfg.scheduler.name == "fifo" else (
            f"; {cfg.scheduler.name} stops only grid-search trials early" if mode not in SEARCH_MODES else
            f"; {cfg.scheduler.name}'s first rung, epoch {cfg.scheduler.grace_period}, is not before the last")
        return n_trials * R, f"fifo: {n_trials} trials × {R} epochs{why}"
    g, eta = int(cfg.scheduler.grace_period), int(cfg.scheduler.reduction_factor)
    rungs = []
    r = g
    while r < R:
        rungs.append(r)
        r *= eta
    rungs.append(R)
    total, alive, prev = 0.0, float(n_trials), 0
    for rung in rungs:
        total += alive * (rung - prev)
        prev = rung
        alive = max(1.0, alive / eta)
    return int(round(total)), (f"asha: rungs at epochs {', '.join(map(str, rungs))}, keeping 1/{eta} at each "
                               f"(synchronous estimate: asynchronous ASHA may train up to about twice as many; {n_trials * R} "
                               f"without early stopping)")


def steps_per_epoch(cfg: DictConfig) -> tuple[Optional[int], str]:
    """Training steps (batches) per epoch of one trial: its training videos (the split's train list,
    less the held-out validation share) / (data.batch_size × data-parallel processes); (None, why)
    when the split list cannot be read yet (the embedded dataset is generated on first use)."""
    from rev2net.data.layouts import load_split

    data = to_objects(cfg).data
    try:
        train = len(load_split(data.name, data.root, data.split).train)
    except Exception as e:  # noqa: BLE001 - no dataset yet, or another layout problem: no estimate
        if data.name != "synthetic":
            return None, f"the {data.name} split list at {data.root} cannot be read ({str(e).splitlines()[0][:80]})"
        from rev2net.data.synthetic import video_plan   # not generated yet: its plan says what it will list

        syn = data.synthetic
        train = sum(1 for _, _, group, _ in video_plan(syn.classes, syn.videos_per_class) if group % 3 != data.split - 1)
    train = int(round(train * (1.0 - float(getattr(data, "val_fraction", 0.0) or 0.0))))
    per_step = int(data.batch_size) * to_objects(cfg).trial.world_size()
    return math.ceil(train / per_step), f"{train} training videos / {per_step} per step"


def device_hours(cfg: DictConfig, n_trials: int, gpus_per_trial: float, *,
                 extra_epochs: int = 0, mode: str = "axes") -> tuple[Optional[float], str]:
    """The stage's GPU-hours (CPU trials: device-hours) from a measured step time: trial-epochs
    (`trial_epochs`, the ASHA estimate included) × steps per epoch × search.step_time_s × GPUs per
    trial / 3600 — training steps only (evaluation, forward-only, adds about a tenth). (None, what
    is missing) without search.step_time_s or a readable split list. `extra_epochs`: trial-epochs
    beyond the plan's (the confirmation re-runs)."""
    step_s = cfg.search.step_time_s
    if step_s is None:
        return None, "pass search.step_time_s=<seconds per training step> (benchmarks/step.py at this fidelity)"
    steps, how = steps_per_epoch(cfg)
    if steps is None:
        return None, how
    epochs, _ = trial_epochs(cfg, n_trials, mode)
    epochs += int(extra_epochs)
    hours = epochs * steps * float(step_s) / 3600.0
    return hours * (gpus_per_trial if gpus_per_trial > 0 else 1.0), (
        f"{epochs} trial-epochs × {steps} steps ({how}) × {step_s:g} s"
        + (f" × {gpus_per_trial:g} GPU per trial" if gpus_per_trial > 0 else ", on CPU"))
