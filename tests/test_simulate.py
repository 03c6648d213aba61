"""orchestration/simulate.py's curve_step: it logs the curve model's values for its point and seed,
the same after a resume, and under ASHA through the real stage path it is stopped early."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from orchestration import curves, records
from orchestration.config import compose_config
from orchestration.simulate import curve_step
from orchestration.stage import run_stage
from rev2net.train import DivergedError
from sweep_helpers import child_runs, small_spaces, tiny_overrides

W = records.WEIGHTS


def model(noise_sd: float = 0.0) -> curves.CurveModel:
    """0.001 better than 0.1, 1 worse, by a different amount for each weight; λ_im=10 diverged in the
    'real' trials at epoch 2."""
    effects = {k: [[0.001, 0.3 * (j + 1)], [0.1, 0.0], [1.0, -0.2 * (j + 1)]] for j, k in enumerate(W)}
    return curves.CurveModel(metric="val/top1", epochs=3, chance=1 / 3, intercept=-1.0, effects=effects,
                             shape=[0.2, 0.6, 1.0], noise_sd=noise_sd, diverged={"loss.lambda_im": [[10.0, 2.0]]})


def spec(seed: int = 0, epochs: int = 3, **weights: float) -> SimpleNamespace:
    loss = {"alpha": 0.1, "beta": 0.1, "lambda_flow": 0.1, "lambda_im": 0.1, **weights}
    return SimpleNamespace(loss=SimpleNamespace(**loss), trainer=SimpleNamespace(seed=seed, max_epochs=epochs))


def run(path, s, resume=None) -> tuple[list[float], list]:
    reports = []
    curve_step(s, resume=resume, on_epoch_end=reports.append, curves=str(path))
    return [r.metrics["val/top1"] for r in reports], reports


def test_curve_step_logs_the_modelled_values_deterministically_by_seed(tmp_path):
    m = model(noise_sd=0.02)
    path = m.save(tmp_path / "curves.json")
    point = {"loss.alpha": 0.001, "loss.beta": 0.1, "loss.lambda_flow": 0.001, "loss.lambda_im": 0.1}
    s = spec(alpha=0.001, lambda_flow=0.001)
    values, reports = run(path, s)
    assert values == pytest.approx(m.curve(point, 0), abs=1e-12)
    assert run(path, s)[0] == values, "the same trial logs the same values"
    assert run(path, spec(seed=1, alpha=0.001, lambda_flow=0.001))[0] != values, "another seed, other noise"
    resumed, _ = run(path, s, resume=reports[1].state_dict())
    assert resumed == values[2:], "resumed after epoch 2: epoch 3 as before"
    with pytest.raises(DivergedError, match="loss.lambda_im"):
        run(path, spec(lambda_im=10.0))
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        run(path, spec(epochs=4))


def test_asha_stops_curve_step_trials_early_through_the_stage(local_ray, tmp_path, synthetic_root):
    m = model()
    path = m.save(tmp_path / "curves.json")
    spaces = small_spaces(tmp_path)   # a 3 x 3 factorial over α and β: 9 trials
    (spaces / "coarse.yaml").write_text(yaml.safe_dump({"values": {"loss.alpha": [0.001, 0.1, 1.0],
                                                                   "loss.beta": [1.0, 0.1, 0.001],
                                                                   "loss.lambda_flow": [0.1], "loss.lambda_im": [0.1]},
                                                        "base": {k: 0.1 for k in W}}))
    cfg = compose_config(tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={spaces}",
                                        "search.mode=factorial", "scheduler=asha", "scheduler.grace_period=1", "trainer.max_epochs=3",
                                        "trial.runner=orchestration.simulate:curve_step",
                                        f"+trial.runner_args.curves={path}"), stage="coarse")
    result = run_stage(cfg, progress=False)
    runs = child_runs(result.tracking_uri, parent=result.parent_run_id)
    assert len(runs) == 9
    status = [r.data.tags[records.TAG_STATUS] for r in runs]
    assert status.count(records.STOPPED_EARLY) > 0 and status.count(records.COMPLETED) > 0, status
    epochs = sum(int(r.data.tags[records.TAG_LOGGED_EPOCH]) for r in runs)
    assert epochs < 9 * 3, "ASHA trained fewer trial-epochs than the grid"
    for r in runs:
        point = {k: float(r.data.params[k]) for k in W}
        logged = int(r.data.tags[records.TAG_LOGGED_EPOCH])
        assert r.data.metrics["val/top1"] == pytest.approx(m.value(point, 0, logged), abs=1e-9), r.info.run_name
    winner = records.best_config(m.grid(result.plan.points, seed=0), keys=W)
    assert result.best["params"] == winner.params, "noise-free: ASHA keeps the grid's winner"
