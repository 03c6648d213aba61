"""Data-parallel trials (rev2net.trial.run_trial(processes=N), rev2net.train.fit(distributed=True)),
on CPU with the gloo backend and 2 processes: the sharded sampler, metrics over all ranks, exact
resume, and one Tune trial on 2 processes as one MLflow run."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import yaml

from orchestration import records
from rev2net.data.config import DataConfig
from rev2net.data.datasets import EpochSampler, ShardSampler, build_loaders
from rev2net.spec import LossConfig, ModelConfig, TrainerConfig, TrialSpec
from rev2net.model import build_model
from rev2net.train import evaluate
from rev2net.trial import run_trial
from sweep_helpers import child_runs, small_spaces, steps, tiny_overrides


@pytest.mark.parametrize("size,world", [(10, 2), (11, 2), (11, 3), (2, 2)])
def test_epoch_sampler_shards_one_epoch_among_ranks(size, world):
    whole = EpochSampler(size, seed=5)
    whole.set_epoch(3)
    single = list(whole)
    shards = []
    for rank in range(world):
        s = EpochSampler(size, seed=5, rank=rank, num_replicas=world)
        s.set_epoch(3)
        shards.append(list(s))
        assert len(shards[-1]) == len(s) == size // world, "every rank gets the same number of samples"
    union = [pair for shard in shards for pair in shard]
    assert len({i for i, _ in union}) == len(union), "no sample on two ranks"
    assert sorted(union) == sorted(single[:size // world * world]), "the single-process epoch, same seeds, tail trimmed"


def test_shard_sampler_reads_every_video_once():
    shards = [list(ShardSampler(7, rank=r, num_replicas=3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    with pytest.raises(ValueError, match="rank=3"):
        ShardSampler(7, rank=3, num_replicas=3)


def _spec(root: str, params, epochs: int = 2) -> TrialSpec:
    data = DataConfig(name="synthetic", root=root, synthetic=params, frames=8, crop_size=32, short_side=40,
                      batch_size=2, num_workers=0, eval_clips=1, flow_downsample=2)
    return TrialSpec(data=data, model=ModelConfig(width=0.125),
                     loss=LossConfig(alpha=0.01, beta=0.1, lambda_flow=0.1, lambda_im=0.1),
                     trainer=TrainerConfig(max_epochs=epochs, lr=0.01, seed=0))


def test_two_process_trial_reports_once_per_epoch_over_all_data_and_resumes_exactly(synthetic_root, synthetic_params):
    spec = _spec(synthetic_root, synthetic_params)
    reports = []

    def keep(report):
        reports.append((report.epoch, dict(report.metrics), report.state_dict()))

    run_trial(spec, on_epoch_end=keep, processes=2)
    assert [e for e, _, _ in reports] == [1, 2], "rank 0 alone reports, once per epoch"
    state = reports[-1][2]
    assert len(state["rng_ranks"]) == 2 and all(torch.isfinite(torch.tensor(m["train/loss"])) for _, m, _ in reports)

    # the reported validation metrics are over every rank's shard: a single process evaluating the
    # same model on the whole validation set finds the same numbers
    model = build_model(spec.model, num_classes=synthetic_params.classes)
    model.load_state_dict(state["model"])
    whole = build_loaders(dataclasses.replace(spec.data, flow=False), seed=0).val
    single = evaluate(model, whole, "cpu")
    metrics = reports[-1][1]
    assert metrics["val/top1"] == pytest.approx(single["top1"]) and metrics["val/loss"] == pytest.approx(single["loss"], rel=1e-5)

    # resumed from epoch 1's checkpoint, epoch 2 comes out as in the uninterrupted run
    resumed = []
    run_trial(spec, resume=reports[0][2], on_epoch_end=lambda r: resumed.append((r.epoch, dict(r.metrics), r.state_dict())),
              processes=2)
    assert [e for e, _, _ in resumed] == [2]
    for key in ("train/loss", "train/ce", "train/top1", "val/loss", "val/top1"):
        assert resumed[0][1][key] == reports[1][1][key], key
    for name, tensor in resumed[0][2]["model"].items():
        assert torch.equal(tensor, state["model"][name]), f"{name} differs after the resume"


def test_ranks_stop_together_under_a_wall_time_budget(synthetic_root, synthetic_params):
    """Rank 0's clock decides when a budget is spent (broadcast each epoch): every rank leaves the
    loop after the same epoch, so none waits in a collective for an epoch that never comes."""
    spec = _spec(synthetic_root, synthetic_params, epochs=3)
    spec = dataclasses.replace(spec, trainer=dataclasses.replace(spec.trainer, max_train_s=0.001))
    reports = []
    run_trial(spec, on_epoch_end=lambda r: reports.append((r.epoch, r.last)), processes=2)
    assert reports == [(1, True)]


def test_a_data_parallel_tune_trial_is_one_mlflow_run(tmp_path, synthetic_root):
    import ray

    from orchestration.config import compose_config
    from orchestration.stage import run_stage

    spaces = small_spaces(tmp_path)
    keys = ["loss.alpha", "loss.beta", "loss.lambda_flow", "loss.lambda_im"]
    (spaces / "coarse.yaml").write_text(yaml.safe_dump({"values": {k: [0.1] for k in keys},
                                                        "base": {k: 0.1 for k in keys}}))
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        cfg = compose_config(tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={spaces}",
                                            "trial.processes=2", "trial.cpus=2", "trainer.max_epochs=2"), stage="coarse")
        result = run_stage(cfg, progress=False)
    finally:
        if started:
            ray.shutdown()
    runs = child_runs(result.tracking_uri, parent=result.parent_run_id)
    assert result.plan.num_trials == 1 and len(runs) == 1, "one Tune trial, one MLflow run, whatever its processes"
    run = runs[0]
    assert run.data.tags[records.TAG_STATUS] == "completed", run.data.tags.get(records.TAG_FAILURE)
    assert steps(result.tracking_uri, run.info.run_id) == [1, 2] and steps(result.tracking_uri, run.info.run_id,
                                                                            "train/loss") == [1, 2]
