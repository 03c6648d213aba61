"""A constructed MLflow store whose statistical answer is known, logged through the sweep's own writer
(tracking.start_parent, tracking.ChildRun, records.write_predictions): what the analysis tests read.

    coarse    six weight settings on 400 test videos, one seed each (selection by val/top1, reports
              by test/top1). The best by val/top1 ("A") is at 70%; ONE setting ("B") is planted 20
              points lower (McNemar: 80 discordant videos, all one way); the four others differ from
              A on a handful of videos in both directions (indistinguishable). Then confirmation
              re-runs: A and C get seeds 1 and 2 under the same parent; C's mean over its three seeds
              beats A's, so the seed-aware best is C although A has the best single value.
    ablation  rev2net (the reference), no_ddp planted 15 points lower on every seed, no_flow_decoder
              and i3d within a few videos of it (both directions): 3 seeds × 300 test videos each.
    compare   no predictions (per-run accuracies only): rev2net, i3d planted 12 points lower on
              every (seed, split), no_ddp at ±1 point; 2 seeds × 2 splits. Tested with the paired
              t test over seeds × splits.
Every trial logs the cost metrics; a failed trial and a running one in coarse are counted, never ranked.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from orchestration import records, tracking
from rev2net import registry

EXPERIMENT = "rev2net-planted"
CLASSES = 6
COARSE_VIDEOS, ABLATION_VIDEOS = 400, 300
W = records.WEIGHTS


@dataclass
class Planted:
    tracking_uri: str
    experiment: str
    parents: dict[str, str]                       # stage -> parent run id
    configs: dict[str, dict[str, float]]          # coarse: name -> weights
    runs: dict[tuple[str, str, int], str] = field(default_factory=dict)   # (stage, name, seed[*10+split]) -> run id
    correct: dict[str, np.ndarray] = field(default_factory=dict)          # run id -> per-video correctness
    failed_run: str = ""
    running_run: str = ""


def _weights(a: float, b: float, f: float, i: float) -> dict[str, float]:
    return dict(zip(W, (a, b, f, i)))


# name -> weights; A is the best by a single val/top1, C wins on the mean over seeds
COARSE = {"A": _weights(0.1, 0.1, 0.1, 0.1), "B": _weights(10.0, 0.1, 0.1, 0.1), "C": _weights(0.01, 0.1, 0.1, 0.1),
          "D": _weights(0.1, 0.0, 0.1, 0.1), "E": _weights(0.1, 0.1, 0.0, 0.1), "F": _weights(0.1, 0.1, 0.1, 0.0)}


def correctness(n: int, k: int, drop: int = 0, add: int = 0, shift: int = 0) -> np.ndarray:
    """Videos [0, k) correct, then `drop` of them (from `shift` on) wrong and `add` beyond k right:
    against the plain pattern of the same k, `drop` + `add` discordant videos in both directions."""
    c = np.zeros(n, dtype=bool)
    c[:k] = True
    c[shift:shift + drop] = False
    c[k:k + add] = True
    return c


def _predictions(c: np.ndarray, prefix: str, rng: np.random.Generator) -> pd.DataFrame:
    n = len(c)
    label = np.arange(n) % CLASSES
    wrong = (label + 1 + rng.integers(0, CLASSES - 1, n)) % CLASSES
    pred = np.where(c, label, wrong)
    top5 = np.stack([(pred + j) % CLASSES for j in range(5)], axis=1)
    score = np.where(c, 0.6, 0.1)
    return pd.DataFrame({"video_id": [f"{prefix}/v_{i:04d}.avi" for i in range(n)], "label": label, "pred": pred,
                         "top5": list(top5), "label_score": score})


def _log(c: MlflowClient, exp_id: str, parent: str, stage: str, key: str, params: dict, *, val: float,
         test: float | None, status: str = records.COMPLETED, predictions: pd.DataFrame | None = None,
         gpu_fraction: float = 0.25, wall_s: float = 600.0) -> str:
    run = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id=f"planted-{stage}", key=key,
                                 run_name=records.run_name({k: v for k, v in params.items() if k in W}
                                                           if "variant" not in params else params),
                                 params=params, tags={records.TAG_STAGE: stage, records.TAG_RAY_TRIAL: key})
    history = [{"val/top1": val - 0.05, "val/loss": 1.2, "train/loss": 1.5},
               {"val/top1": val, "val/loss": 1.0 - val, "train/loss": 1.0}]
    final = dict(history[-1])
    if test is not None:
        final.update({"test/top1": test, "test/top5": min(1.0, test + 0.2), "test/loss": 1.0 - test})
    final.update(records.trial_cost(wall_s=wall_s, gpu_fraction=gpu_fraction, cpu_s=wall_s * 2, clips=1000.0))
    history[-1] = final
    run.sync(history if status != records.RUNNING else history[:1], raise_errors=True)
    if predictions is not None:
        with tempfile.TemporaryDirectory() as tmp:
            records.write_predictions(predictions, Path(tmp) / records.predictions_path(records.TEST))
            c.log_artifacts(run.run_id, tmp)
    if status != records.RUNNING:
        tracking.finish(c, run.run_id, status=status, reason="loss is nan at epoch 2" if status == records.FAILED else None)
    return run.run_id


def build(root: Path) -> Planted:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp_id = c.create_experiment(EXPERIMENT, artifact_location=str(root / "mlartifacts"))
    rng = np.random.default_rng(0)
    out = Planted(uri, EXPERIMENT, {}, dict(COARSE))

    # ---- coarse: (val, seed -> correctness on 400 videos)
    n = COARSE_VIDEOS
    plan = {
        "A": (0.72, {0: correctness(n, 280), 1: correctness(n, 282, 4, 4, 100), 2: correctness(n, 279, 3, 5, 50)}),
        "B": (0.55, {0: correctness(n, 200)}),
        "C": (0.71, {0: correctness(n, 282, 6, 4, 10), 1: correctness(n, 284, 5, 5, 120),
                     2: correctness(n, 286, 4, 6, 200)}),
        "D": (0.70, {0: correctness(n, 276, 6, 8, 30)}),
        "E": (0.69, {0: correctness(n, 278, 5, 5, 60)}),
        "F": (0.68, {0: correctness(n, 281, 7, 4, 90)}),
    }
    vals = {("A", 1): 0.64, ("A", 2): 0.63, ("C", 1): 0.70, ("C", 2): 0.70}
    parent, _ = tracking.start_parent(c, exp_id, sweep_id="planted-coarse", stage="coarse", mode="axes",
                                      run_name="coarse · planted", params={"stage": "coarse", "scheduler": "fifo"},
                                      tags={})
    out.parents["coarse"] = parent
    for seed in (0, 1, 2):   # the first seed of every setting, then the confirmation re-runs
        for name, (val, seeds) in plan.items():
            if seed not in seeds:
                continue
            cor = seeds[seed]
            params = {**COARSE[name], "model.name": registry.REV2NET, "trainer.seed": seed, "data.split": 1,
                      "data.name": "synthetic"}
            run_id = _log(c, exp_id, parent, "coarse", f"coarse-{name}-{seed}", params, val=vals.get((name, seed), val),
                          test=float(cor.mean()), predictions=_predictions(cor, "test", rng))
            out.runs[("coarse", name, seed)] = run_id
            out.correct[run_id] = cor
    out.failed_run = _log(c, exp_id, parent, "coarse", "coarse-failed", {**_weights(10.0, 10.0, 0.1, 0.1),
                          "trainer.seed": 0, "data.split": 1}, val=0.99, test=None, status=records.FAILED)
    out.running_run = _log(c, exp_id, parent, "coarse", "coarse-running", {**_weights(1.0, 1.0, 1.0, 1.0),
                           "trainer.seed": 0, "data.split": 1}, val=0.99, test=None, status=records.RUNNING)
    c.set_terminated(parent, "FINISHED")

    # ---- ablation: 3 seeds × 300 videos, planted: no_ddp 15 points lower
    n = ABLATION_VIDEOS
    ablation = {
        registry.REV2NET: [correctness(n, 210), correctness(n, 204), correctness(n, 207)],
        registry.NO_DDP: [correctness(n, 165, 3, 3, 5), correctness(n, 159, 2, 2, 40), correctness(n, 162, 4, 2, 80)],
        registry.NO_FLOW_DECODER: [correctness(n, 208, 5, 4, 20), correctness(n, 205, 4, 5, 60),
                                   correctness(n, 206, 6, 6, 100)],
        registry.I3D: [correctness(n, 209, 6, 5, 0), correctness(n, 203, 5, 4, 70), correctness(n, 208, 4, 6, 140)],
    }
    parent, _ = tracking.start_parent(c, exp_id, sweep_id="planted-ablation", stage="ablation", mode="variants",
                                      run_name="ablation · planted", params={"stage": "ablation"}, tags={})
    out.parents["ablation"] = parent
    for variant, per_seed in ablation.items():
        for seed, cor in enumerate(per_seed):
            params = {**COARSE["A"], **registry.VARIANTS[variant].overrides, "variant": variant, "model.name": registry.VARIANTS[variant].family,
                      "trainer.seed": seed, "data.split": 1, "data.name": "synthetic"}
            run_id = _log(c, exp_id, parent, "ablation", f"ablation-{variant}-{seed}", params, val=float(cor.mean()),
                          test=float(cor.mean()), predictions=_predictions(cor, "test", rng),
                          gpu_fraction=1.0 if variant != registry.I3D else 0.0, wall_s=1200.0)
            out.runs[("ablation", variant, seed)] = run_id
            out.correct[run_id] = cor
    c.set_terminated(parent, "FINISHED")

    # ---- compare: per-run accuracies only (no predictions), 3 seeds × 3 splits
    parent, _ = tracking.start_parent(c, exp_id, sweep_id="planted-compare", stage="compare", mode="variants",
                                      run_name="compare · planted", params={"stage": "compare"}, tags={})
    out.parents["compare"] = parent
    offsets = {registry.REV2NET: 0.0, registry.I3D: -0.12, registry.NO_DDP: 0.0}
    for variant, offset in offsets.items():
        for seed in range(2):
            for split in (1, 2):
                base = 0.6 + 0.03 * seed - 0.02 * split
                wobble = {registry.REV2NET: 0.005 * ((seed * 3 + split) % 3 - 1),
                          registry.I3D: 0.01 * (1 if seed == split else -1),
                          registry.NO_DDP: 0.01 * (1 if (seed + split) % 2 else -1)}[variant]
                acc = base + offset + wobble
                params = {**COARSE["A"], "variant": variant, "model.name": registry.VARIANTS[variant].family,
                          "trainer.seed": seed, "data.split": split, "data.name": "synthetic"}
                run_id = _log(c, exp_id, parent, "compare", f"compare-{variant}-{seed}-{split}", params, val=acc,
                              test=acc, wall_s=300.0)
                out.runs[("compare", variant, seed * 10 + split)] = run_id
    c.set_terminated(parent, "FINISHED")
    return out
