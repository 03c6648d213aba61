"""rev2net/trial.py: a trial is selected on its validation videos every epoch and scored once on the
test list at its end, with per-video predictions; a domain-adversarial trial never sees a target label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rev2net import registry
from rev2net.data.config import DataConfig
from rev2net.data.layouts import load_split
from rev2net.spec import AdaptConfig, LossConfig, TrainerConfig, TrialSpec
from rev2net.trial import run_trial


def _spec(root: str, params, name: str = registry.REV2NET, epochs: int = 2, **data) -> TrialSpec:
    v = registry.variant(name)
    loss = LossConfig(**{k.removeprefix("loss."): x for k, x in v.overrides.items() if k.startswith("loss.")})
    cfg = DataConfig(name="synthetic", root=root, frames=int(v.overrides.get("data.frames", 8)), crop_size=32,
                     short_side=40, flow_downsample=2, batch_size=3, num_workers=0, synthetic=params, **data)
    return TrialSpec(data=cfg, model=registry.model_config(name, width=0.0625, bn_momentum=0.1), loss=loss,
                     trainer=TrainerConfig(max_epochs=epochs, optimizer="adamw", lr=1e-3))


def _run(spec: TrialSpec, **kwargs) -> list:
    reports = []
    run_trial(spec, on_epoch_end=lambda r: reports.append((r.epoch, dict(r.metrics), r.predictions)), **kwargs)
    return reports


def test_validated_every_epoch_and_tested_once_with_per_video_predictions(synthetic_root, synthetic_params):
    reports = _run(_spec(synthetic_root, synthetic_params), shuffle_protocols=["none", "complete"])
    split = load_split("synthetic", synthetic_root, 1)
    assert [e for e, _, _ in reports] == [1, 2] and all("val/top1" in m for _, m, _ in reports)
    assert "test/top1" not in reports[0][1] and not reports[0][2], "the test list is scored once, at the end"
    metrics, predictions = reports[-1][1], reports[-1][2]
    assert {"test/top1", "test/top5", "test/loss", "shuffle/none/top1", "shuffle/complete/top1"} <= set(metrics)
    assert metrics["shuffle/none/top1"] == metrics["test/top1"], "no shuffle is the plain test"
    assert set(predictions) == {"test", "shuffle/none", "shuffle/complete"}
    test = predictions["test"]
    assert sorted(test["video_id"]) == sorted(r.key for r in split.test), "one row per test video"
    assert not set(test["video_id"]) & {r.key for r in split.val}, "validation videos are never tested"
    assert np.mean(test["pred"] == test["label"]) == pytest.approx(metrics["test/top1"])
    assert (test["top5"][:, 0] == test["pred"]).all() and ((0 <= test["label_score"]) & (test["label_score"] <= 1)).all()


def test_flow_streams_train_and_are_tested_on_flow(synthetic_copy, synthetic_params, name="tsn_rgb_flow"):
    from rev2net.data.synthetic import ensure_flow

    ensure_flow(synthetic_copy, synthetic_params, progress=False, workers=1)  # their input is read at test too
    metrics = _run(_spec(synthetic_copy, synthetic_params, name, epochs=1))[-1][1]
    assert 0 <= metrics["test/top1"] <= 1 and np.isfinite(metrics["train/loss"])


def _target(root: str, params):
    shifted = dataclasses.replace(params, domain="shifted")
    return dict(eval_name="synthetic", eval_root=root + "-shifted", eval_synthetic=shifted)


def test_domain_adversarial_training_adds_its_terms_and_scores_the_target(synthetic_root, synthetic_params):
    spec = _spec(synthetic_root, synthetic_params, epochs=1, **_target(synthetic_root, synthetic_params))
    metrics = _run(dataclasses.replace(spec, adapt=AdaptConfig(name="dann")))[-1][1]
    assert {"train/domain", "train/domain_acc", "cross/top1", "cross/top5"} <= set(metrics)
    assert 0 <= metrics["train/domain_acc"] <= 1


def test_target_labels_never_reach_the_training_step(synthetic_root, synthetic_params, monkeypatch):
    """The same DANN trial with the target's labels scrambled trains to the same weights."""
    from rev2net.data import datasets
    from rev2net.data.layouts import Split

    spec = dataclasses.replace(_spec(synthetic_root, synthetic_params, epochs=1, **_target(synthetic_root,
                                                                                          synthetic_params)),
                               adapt=AdaptConfig(name="dann", target_decoders=True))
    weights = []
    real = datasets._split
    for scramble in (False, True):
        def split(cfg, name, root, scramble=scramble):
            out = real(cfg, name, root)
            if scramble and root == cfg.eval_root:
                rng = np.random.default_rng(1)
                out = Split(out.class_names, [dataclasses.replace(r, label=int(rng.integers(3))) for r in out.train],
                            out.test, out.missing, out.val)
            return out

        monkeypatch.setattr(datasets, "_split", split)
        states = []
        run_trial(spec, on_epoch_end=lambda r: states.append(r.state_dict()["model"]))
        weights.append(states[-1])
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], msg=key)
