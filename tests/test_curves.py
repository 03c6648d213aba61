"""orchestration/curves.py: the learning-curve model recovers what was planted in trials' histories
(main effects, shape, noise, diverging values), from frames and from an MLflow store, and round-trips
through its JSON."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from orchestration import curves, records, tracking

W = records.WEIGHTS
VALUES = [0.0, 0.0001, 0.001, 0.1, 1.0, 10.0]
CHANCE = 1 / 6
SHAPE = [0.05, 0.3, 0.55, 0.75, 0.9, 1.0]


def planted(noise_sd: float = 0.0, values=VALUES) -> curves.CurveModel:
    """Known effects on the logit scale: each weight's reference 0.1 at 0, the others spread out."""
    effects = {k: [[v, 0.0 if v == 0.1 else round(-0.3 * (j + 1) * (i - 2.5) / 3, 4)] for i, v in enumerate(values)]
               for j, k in enumerate(W)}
    return curves.CurveModel(metric="val/top1", epochs=len(SHAPE), chance=CHANCE, intercept=0.4, effects=effects,
                             shape=list(SHAPE), noise_sd=noise_sd)


def axes_points(values=VALUES, base: float = 0.1) -> list[dict[str, float]]:
    points = [{k: base for k in W}]
    for k in W:
        points += [{**{j: base for j in W}, k: v} for v in values if v != base]
    return points


def histories_of(model: curves.CurveModel, points, seed: int = 0, failed=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a stage of `points` would leave in the store under `model` (runs frame, long histories);
    points in `failed` (index -> epochs logged) diverged after those epochs."""
    runs, rows = [], []
    for i, p in enumerate(points):
        run_id = f"r{i:03d}"
        failed = failed or {}
        epochs = failed.get(i, model.epochs)
        runs.append({"run_id": run_id, **p, "epochs": epochs,
                     "status": records.FAILED if i in failed else records.COMPLETED})
        for e in range(1, epochs + 1):
            rows.append({"run_id": run_id, "key": "val/top1", "step": e, "value": model.value(p, seed, e)})
    return pd.DataFrame(runs), pd.DataFrame(rows)


def effect_table(model: curves.CurveModel) -> dict[tuple[str, float], float]:
    return {(k, v): e for k, levels in model.effects.items() for v, e in levels}


def test_the_fit_recovers_planted_main_effects_and_shape_from_an_axes_design():
    truth = planted()
    runs, histories = histories_of(truth, axes_points())
    assert len(runs) == 21
    fitted = curves.fit(runs, histories, chance=CHANCE)
    assert fitted.intercept == pytest.approx(truth.intercept, abs=1e-9)
    want, got = effect_table(truth), effect_table(fitted)
    assert got.keys() == want.keys()
    for level, effect in want.items():
        assert got[level] == pytest.approx(effect, abs=1e-9), f"main effect {level}"
    assert fitted.shape == pytest.approx(SHAPE, abs=1e-9)
    assert fitted.noise_sd == pytest.approx(0.0, abs=1e-9)
    assert fitted.final_residual_sd is None, "an axes design leaves no residual for the finals"
    point = {"loss.alpha": 10.0, "loss.beta": 0.0, "loss.lambda_flow": 1.0, "loss.lambda_im": 0.0001}
    assert fitted.final(point) == pytest.approx(truth.final(point), abs=1e-9), "the additive extrapolation"


def test_the_fit_estimates_the_noise_and_effects_from_a_noisy_factorial_design():
    values = [0.0001, 0.1, 10.0]
    truth = planted(noise_sd=0.02, values=values)
    points = [dict(zip(W, combo)) for combo in itertools.product(values, repeat=4)]
    runs, histories = histories_of(truth, points)
    fitted = curves.fit(runs, histories, chance=CHANCE)
    assert fitted.noise_sd == pytest.approx(0.02, rel=0.15)
    assert fitted.final_residual_sd is not None and fitted.final_residual_sd < 0.3, "no interactions planted: noise only"
    want, got = effect_table(truth), effect_table(fitted)   # each weight's effects up to its reference level
    for (k, v), effect in want.items():
        assert got[k, v] - got[k, 0.1] == pytest.approx(effect - want[k, 0.1], abs=0.06), f"main effect {k}={v}"
    finals = np.array([fitted.final(p) - truth.final(p) for p in points])
    assert np.abs(finals).max() < 0.02, "the modelled finals"


def test_values_seen_only_in_diverged_trials_diverge_in_the_model():
    truth = planted()
    points = axes_points()
    blown = [i for i, p in enumerate(points) if p["loss.lambda_flow"] == 10.0]
    runs, histories = histories_of(truth, points, failed={blown[0]: 2})
    fitted = curves.fit(runs, histories, chance=CHANCE)
    assert fitted.diverged == {"loss.lambda_flow": [[10.0, 3.0]]}
    bad = {**points[0], "loss.lambda_flow": 10.0}
    assert fitted.diverges_at(bad) == 3 and math.isnan(fitted.final(bad))
    grid = fitted.grid([points[0], bad], seed=0)
    assert grid["status"].tolist() == [records.COMPLETED, records.FAILED]
    assert records.best_config(grid).run_id == "point-00000"


def test_a_design_that_cannot_separate_the_effects_is_refused():
    truth = planted()
    runs, histories = histories_of(truth, [{k: 0.1 for k in W}, {k: 1.0 for k in W}])
    with pytest.raises(ValueError, match="cannot separate"):
        curves.fit(runs, histories, chance=CHANCE)


def test_values_are_deterministic_by_point_seed_and_epoch():
    model = planted(noise_sd=0.03)
    p = {k: 0.1 for k in W}
    assert model.curve(p, 0) == model.curve(p, 0)
    assert model.curve(p, 0) != model.curve(p, 1)
    with pytest.raises(KeyError, match="not a value the curve model was fitted on"):
        model.final({**p, "loss.alpha": 0.5})


def test_fit_store_reads_the_trials_back_from_mlflow_and_the_model_round_trips(tmp_path):
    from mlflow import MlflowClient

    truth = planted(values=[0.001, 0.1])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp_id = tracking.experiment_id(c, "rev2net-curves")
    parent, _ = tracking.start_parent(c, exp_id, sweep_id="coarse-axes-x", stage="coarse", mode="axes",
                                      run_name="coarse · axes", params={"stage": "coarse"},
                                      tags={records.TAG_GIT: "abc123"})
    points = axes_points([0.001, 0.1])
    for i, p in enumerate(points):
        run = tracking.ChildRun.open(c, experiment_id=exp_id, parent_id=parent, sweep_id="coarse-axes-x", key=f"k{i}",
                                     run_name=records.run_name(p), params={**p, "trainer.seed": 0},
                                     tags={records.TAG_STAGE: "coarse", records.TAG_RAY_TRIAL: f"t{i}"})
        run.sync([{"val/top1": v} for v in truth.curve(p, 0)], raise_errors=True)
        tracking.finish(c, run.run_id, status=records.COMPLETED)
    c.set_terminated(parent, "FINISHED")

    fitted = curves.fit_store(uri, "rev2net-curves", chance=CHANCE)
    assert fitted.source["parent_run_id"] == parent and fitted.source["git_commit"] == "abc123"
    assert fitted.source["completed"] == len(points) == 5
    for level, effect in effect_table(truth).items():
        assert effect_table(fitted)[level] == pytest.approx(effect, abs=1e-6), f"main effect {level}"
    again = curves.load(fitted.save(tmp_path / "model.json"))
    assert again == fitted
    np.testing.assert_allclose(again.curve(points[1], 0), truth.curve(points[1], 0), atol=1e-6)


def test_the_noise_is_per_epoch_and_values_keep_the_validation_sets_resolution():
    truth = planted(noise_sd=0.02)
    truth.epoch_noise_sd = [0.0] + [0.02] * (truth.epochs - 1)   # every trial exactly at its mean after epoch 1
    truth.resolution = 150
    points = axes_points()
    runs, histories = histories_of(truth, points)
    assert all(abs(v * 150 - round(v * 150)) < 1e-9 for v in histories["value"])
    fitted = curves.fit(runs, histories, chance=CHANCE)
    assert fitted.resolution == 150 and curves.resolution(np.array([0.25, 0.5, 1 / 3])) == 12
    assert fitted.sd(1) < fitted.sd(4), "epoch 1 quieter than the later epochs, as planted"
    simulated = [fitted.value(p, 0, e) for p in points for e in (1, 4)]
    assert all(abs(v * 150 - round(v * 150)) < 1e-9 for v in simulated), "simulated values in steps of 1/150"
