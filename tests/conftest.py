"""Shared fixtures. Data: one tiny generated dataset (real XVID videos, TV-L1 flow, exact flow),
made once per session; tests that damage data work on a copy."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass

import pytest

from rev2net.data.config import SyntheticConfig

# pytest-xdist (pyproject.toml: -n 2 --dist loadgroup). A module's tests share a worker, so its module
# and session fixtures are built once there; the simulated multi-node clusters share one group, so two
# of them never run at once; the modules of independent heavy tests are spread test by test.
CLUSTER_MODULES = {"test_cluster", "test_submit"}
SPREAD_MODULES = {"test_stage", "test_claim"}
# the longest modules start first (workers take groups in order), so none of them ends the run alone
FIRST = ["test_cluster", "test_submit", "test_stage", "test_pipeline", "test_claim", "test_tracking_server"]


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        module = item.module.__name__.rpartition(".")[2]
        return FIRST.index(module) if module in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: each module's tests stay together and in their order
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        if module in CLUSTER_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray_cluster"))
        elif module not in SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))


# 3 motion classes x 3 videos (one per group: split 1 trains on 2, tests on 1) of 12 frames, 64 px, and
# one validation and one more test video per class
TINY_SYNTHETIC = SyntheticConfig(classes=3, videos_per_class=3, val_videos_per_class=1, test_videos_per_class=1,
                                 frames=12, size=64, seed=0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """A complete generated dataset with TV-L1 flow; read-only for tests (copy it to modify)."""
    from rev2net.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic"
    ensure_synthetic(str(root), TINY_SYNTHETIC, progress=False, workers=1)
    return str(root)


@pytest.fixture
def synthetic_params() -> SyntheticConfig:
    """The parameters `synthetic_root` was generated with."""
    return TINY_SYNTHETIC


@pytest.fixture
def synthetic_copy(synthetic_root, tmp_path) -> str:
    """A private copy of the tiny generated dataset, for tests that break it."""
    return str(shutil.copytree(synthetic_root, tmp_path / "synthetic"))


# --------------------------------------------------------------------------- analysis: one real sweep store

@dataclass
class SweepStore:
    """An MLflow store written by the sweep itself (analysis tests read it back)."""

    root: str
    tracking_uri: str
    experiment: str                 # coarse -> fine -> ablation of the embedded dataset
    cross_experiment: str           # hand-logged cross-dataset trials (hmdb51 -> ucf101)
    parents: dict                   # stage -> parent run id (cross: its own parent)
    running_run_id: str             # a trial left running (its driver "died")


def _log_cross_dataset(uri: str, name: str) -> str:
    """Cross-dataset trials (trained on hmdb51, evaluated on ucf101) through the sweep's own MLflow
    writer: rev2net and i3d over two seeds, one failed rev2net trial and one completed trial whose
    cross-dataset evaluation is missing. Returns the parent run id."""
    from mlflow import MlflowClient
    from orchestration import records, tracking

    c = MlflowClient(tracking_uri=uri)
    exp_id = tracking.experiment_id(c, name)
    parent, _ = tracking.start_parent(c, exp_id, sweep_id="ablation-variants-cross", stage="ablation", mode="variants",
                                      run_name="ablation · variants · cross", params={"stage": "ablation"}, tags={})
    base = {"model.frame_target": "reversed", "model.decoder_arch": "paper", "model.width": 1.0, "data.name": "hmdb51",
            "data.eval_name": "ucf101", "data.class_map": "ucf101_hmdb51_12", "data.split": 1, "trainer.max_epochs": 2}
    trials = [("rev2net", 0, "completed", 0.61), ("rev2net", 1, "completed", 0.64), ("rev2net", 2, "failed", None),
              ("rev2net", 3, "completed", None), ("i3d", 0, "completed", 0.55), ("i3d", 1, "completed", 0.58)]
    for variant, seed, status, cross in trials:
        off = variant == "i3d"
        params = {**base, "variant": variant, "trainer.seed": seed, "model.flow_decoder": not off,
                  "model.frame_decoder": not off, **{k: 0.0 if off else v for k, v in {
                      "loss.alpha": 0.01, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1}.items()}}
        run = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id="ablation-variants-cross",
                                     key=f"{variant}-{seed}", run_name=f"{variant} seed={seed}", params=params,
                                     tags={records.TAG_STAGE: "ablation", records.TAG_RAY_TRIAL: f"x{seed}"})
        history = [{"val/top1": 0.5, "val/loss": 1.0, "train/loss": 1.2}, {"val/top1": 0.6, "val/loss": 0.9,
                                                                          "train/loss": 1.0}]
        if cross is not None:
            history[-1].update({"cross/top1": cross, "cross/top5": min(1.0, cross + 0.2)})
        run.sync(history if status == "completed" else history[:1], raise_errors=True)
        tracking.finish(c, run.run_id, status=status, reason="loss term 'flow' is nan at epoch 2" if status == "failed" else None)
    c.set_terminated(parent, "FINISHED")
    return parent


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory, synthetic_root) -> SweepStore:
    """coarse -> fine -> ablation through `orchestration.stage.run_stage` with the constant-time
    runner (the real Ray Tune + MLflow path), once per session, ~1 min on 2 cores:
      * coarse (21 trials, ASHA with a rung at epoch 2): trials with a weight of 10 diverge at epoch 2
        (failed, with a reason), ASHA stops some (stopped_early), the rest complete;
      * then a trial left `running` under the coarse parent, with the best val/top1 of all (0.99), as
        a driver that died would leave it: nothing may choose or average it;
      * fine (21 trials) from the coarse best; ablation (10 variants x 2 seeds, shuffle metrics);
      * a second experiment with cross-dataset trials (`_log_cross_dataset`)."""
    import ray
    from mlflow import MlflowClient

    from orchestration import records, tracking
    from orchestration.config import compose_config
    from orchestration.stage import run_stage

    root = tmp_path_factory.mktemp("sweep_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    common = ["trial.runner=orchestration.simulate:constant_step", f"mlflow.tracking_uri={uri}",
              f"ray.storage_path={root / 'ray'}", f"data.root={synthetic_root}", "trainer.max_epochs=3",
              "data.frames=8", *(f"data.synthetic.{k}={v}" for k, v in dataclasses.asdict(TINY_SYNTHETIC).items())]
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        parents = {}
        coarse = run_stage(compose_config(common + [
            "scheduler=asha", "scheduler.grace_period=2", "+trial.runner_args.nan_at_epoch=2",
            "+trial.runner_args.diverge_above=5"], stage="coarse"), progress=False)
        parents["coarse"] = coarse.parent_run_id
        c = MlflowClient(tracking_uri=uri)
        running = tracking.ChildRun.open(
            c, experiment_id=c.get_experiment_by_name(coarse.experiment).experiment_id, parent_id=coarse.parent_run_id,
            sweep_id=coarse.sweep_id, key="left-running", run_name="α=1 β=1 λf=1 λi=1",
            params={"loss.alpha": 1.0, "loss.beta": 1.0, "loss.lambda_flow": 1.0, "loss.lambda_im": 1.0,
                    "model.flow_decoder": True, "model.frame_decoder": True, "model.frame_target": "reversed",
                    "model.decoder_arch": "paper", "data.name": "synthetic", "data.eval_name": None, "trainer.seed": 0},
            tags={records.TAG_STAGE: "coarse", records.TAG_RAY_TRIAL: "left-running"})
        running.sync([{"val/top1": 0.99, "val/loss": 0.01, "train/loss": 0.5, "train/ce": 0.5}], raise_errors=True)
        parents["fine"] = run_stage(compose_config(common, stage="fine"), progress=False).parent_run_id
        parents["ablation"] = run_stage(compose_config(common + ["search.seeds=2"], stage="ablation"),
                                        progress=False).parent_run_id
        parents["cross"] = _log_cross_dataset(uri, "rev2net-hmdb51")
    finally:
        if started_ray:
            ray.shutdown()
    return SweepStore(str(root), uri, coarse.experiment, "rev2net-hmdb51", parents, running.run_id)


@pytest.fixture(scope="session")
def logged_trials(sweep_store) -> dict:
    """experiment name -> every child run in it, read straight from MlflowClient (what the analysis
    tests compare the library's frames and tables against)."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=sweep_store.tracking_uri)
    out = {}
    for name in (sweep_store.experiment, sweep_store.cross_experiment):
        exp_id = c.get_experiment_by_name(name).experiment_id
        runs, token = [], None
        while True:
            page = c.search_runs([exp_id], "tags.`rev2net.role` = 'trial'", max_results=50, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        out[name] = runs
    return out


@pytest.fixture(scope="session")
def planted_store(tmp_path_factory):
    """A constructed store whose statistical answer is known (tests/planted.py): coarse settings with
    one planted difference and confirmation re-runs, an ablation and a compare stage, each with one
    planted variant; logged through the sweep's writer, a few seconds, no Ray."""
    from planted import build

    return build(tmp_path_factory.mktemp("planted"))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that changes torch's intra-op threads (an in-process data-parallel rank does) gives
    them back: the thread count changes float reduction order, and later tests' numbers with it."""
    import sys

    torch = sys.modules.get("torch")   # never imported here: dry-run tests check that torch stays out
    before = torch.get_num_threads() if torch is not None else None
    yield
    if before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray runtime for a module's real stages (left running if another test started one)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    if started:
        ray.shutdown()
