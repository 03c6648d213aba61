"""Helpers shared by the sweep tests: tiny settings, small search spaces, reading MLflow back."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from mlflow import MlflowClient

from orchestration import records
from orchestration.spaces import SPACES_DIR

SIM = "trial.runner=orchestration.simulate:constant_step"


def tiny_overrides(tmp: Path, synthetic_root: str, *extra: str) -> list[str]:
    """The embedded default shrunk to seconds: the session's tiny generated dataset, a thin model
    on 8-frame 32-pixel clips, stores in `tmp`, every trial trained to trainer.max_epochs (scheduler=fifo:
    the embedded default's ASHA would stop a 4-epoch trial after 3)."""
    return [
        f"data.root={synthetic_root}", "data.synthetic.classes=3", "data.synthetic.videos_per_class=3",
        "data.synthetic.val_videos_per_class=1", "data.synthetic.test_videos_per_class=1",
        "data.synthetic.frames=12", "data.synthetic.size=64",
        "data.frames=8", "data.crop_size=32", "data.short_side=40", "data.batch_size=2",
        "model.width=0.125", "trainer.max_epochs=2", "scheduler=fifo",
        f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", f"ray.storage_path={tmp / 'ray'}",
        *extra,
    ]


def small_spaces(tmp: Path) -> Path:
    """search_spaces/ with a 2-value coarse grid (axes: 5 trials, factorial: 16) and 2 fine factors."""
    spaces = tmp / "spaces"
    spaces.mkdir(exist_ok=True)
    for name in ("ablation.yaml", "compare.yaml", "cross.yaml"):
        shutil.copy(SPACES_DIR / name, spaces)
    keys = ["loss.alpha", "loss.beta", "loss.lambda_flow", "loss.lambda_im"]
    (spaces / "coarse.yaml").write_text(yaml.safe_dump({"values": {k: [0.001, 0.1] for k in keys},
                                                        "base": {k: 0.1 for k in keys}}))
    fine = yaml.safe_load((SPACES_DIR / "fine.yaml").read_text())
    fine["factors"] = [0.5, 1]
    (spaces / "fine.yaml").write_text(yaml.safe_dump(fine))
    return spaces


def child_runs(uri: str, experiment: str = "rev2net-synthetic", parent: str | None = None) -> list:
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    flt = "tags.`rev2net.role` = 'trial'" + (f" and tags.`{records.PARENT}` = '{parent}'" if parent else "")
    return list(c.search_runs([exp.experiment_id], filter_string=flt, max_results=5000))


def parent_runs(uri: str, experiment: str = "rev2net-synthetic") -> list:
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    return list(c.search_runs([exp.experiment_id], filter_string="tags.`rev2net.role` = 'stage'"))


def steps(uri: str, run_id: str, key: str = "val/top1") -> list[int]:
    return [m.step for m in sorted(MlflowClient(tracking_uri=uri).get_metric_history(run_id, key),
                                   key=lambda m: (m.step, m.timestamp))]
