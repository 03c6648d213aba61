"""orchestration/spaces.py and orchestration/fine.py: the plans every stage runs, as data."""

from __future__ import annotations

import doctest
import math
import shutil

import pytest
import yaml

from orchestration.errors import ConfigError
from orchestration import fine as fine_rules
from orchestration.fine import best_as_scale, log_bracket, upper_neighbour
from orchestration.spaces import (SPACES_DIR, WEIGHT_KEYS, ablation_plan, coarse_plan, fine_plan, grid_points, load_space,
                                  point_key, space_seeds, variant_plan)

COARSE = [0, 0.0001, 0.001, 0.1, 1, 10]


def test_coarse_factorial_is_the_full_product():
    plan = coarse_plan(load_space("coarse"), mode="factorial")
    assert plan.num_trials == 6 ** 4 == 1296
    assert len({point_key(p) for p in plan.points}) == 1296, "factorial points must be distinct"
    for key in WEIGHT_KEYS:
        assert plan.values[key] == COARSE
        assert sorted({p[key] for p in plan.points}) == COARSE


def test_coarse_axes_is_21_trials_covering_every_value_of_every_weight():
    plan = coarse_plan(load_space("coarse"), mode="axes")
    assert plan.num_trials == 21
    base = plan.base
    assert all(base[k] == 0.1 for k in WEIGHT_KEYS)
    assert base in plan.points, "the shared centre of the axes is a trial"
    for key in WEIGHT_KEYS:
        on_axis = [p for p in plan.points if all(p[k] == base[k] for k in WEIGHT_KEYS if k != key)]
        assert sorted(p[key] for p in on_axis) == COARSE, f"axis {key} must take all six coarse values"
    # every point differs from the base in at most one weight
    assert all(sum(p[k] != base[k] for k in WEIGHT_KEYS) <= 1 for p in plan.points)


def test_axes_needs_a_base_on_the_grid(tmp_path):
    (tmp_path / "coarse.yaml").write_text(yaml.safe_dump(
        {"values": {"loss.alpha": [0, 1]}, "base": {"loss.alpha": 0.5}}))
    with pytest.raises(ConfigError, match="not on its grid"):
        coarse_plan(load_space("coarse", str(tmp_path)), mode="axes")


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "x"])
def test_weights_must_be_finite_and_non_negative(tmp_path, bad):
    (tmp_path / "coarse.yaml").write_text(yaml.safe_dump({"values": {"loss.alpha": [0, bad]}}))
    with pytest.raises(ConfigError, match="loss.alpha=.*finite, non-negative"):
        coarse_plan(load_space("coarse", str(tmp_path)), mode="factorial")


def test_space_files_reject_unknown_keys(tmp_path):
    (tmp_path / "coarse.yaml").write_text("values: {loss.alpha: [0]}\nbsae: {}\n")
    with pytest.raises(ConfigError, match="unknown key.*bsae"):
        load_space("coarse", str(tmp_path))


def test_unknown_stage_names_the_stages():
    with pytest.raises(ConfigError, match="stage 'corse' is not one of coarse, fine, ablation"):
        load_space("corse")


def test_upper_neighbour_rule():
    factors = [0, 0.25, 0.5, 0.75, 1]
    assert upper_neighbour(0.1, COARSE, factors) == [0, 0.1, 0.25, 0.5, 0.75, 1]
    assert upper_neighbour(0.001, COARSE, factors) == [0, 0.001, 0.025, 0.05, 0.075, 0.1]
    # the largest coarse value has no neighbour above: it is its own scale
    assert upper_neighbour(10, COARSE, factors) == [0, 2.5, 5, 7.5, 10]
    assert upper_neighbour(0, COARSE, factors) == [0, 2.5e-05, 5e-05, 7.5e-05, 0.0001]
    assert best_as_scale(1, COARSE, factors) == [0, 0.25, 0.5, 0.75, 1]


def test_fine_plan_from_a_coarse_best():
    best = {"loss.alpha": 0.001, "loss.beta": 0.1, "loss.lambda_flow": 0, "loss.lambda_im": 10}
    coarse = load_space("coarse")
    factorial = fine_plan(load_space("fine"), coarse, best, mode="factorial")
    assert factorial.values["loss.alpha"] == [0, 0.0001, 0.000316228, 0.001, 0.01, 0.1]
    assert factorial.values["loss.beta"] == [0, 0.001, 0.01, 0.1, 0.316228, 1]
    assert factorial.values["loss.lambda_flow"] == [0, 1e-05, 3.16228e-05, 0.0001]
    assert factorial.values["loss.lambda_im"] == [0, 1, 3.16228, 10, 31.6228, 100], "one coarse step past the edge"
    assert factorial.num_trials == 6 * 6 * 4 * 6
    axes = fine_plan(load_space("fine"), coarse, best, mode="axes")
    assert axes.base == best and best in axes.points
    assert axes.num_trials == 1 + 5 + 5 + 3 + 5
    assert "fine values by rule orchestration.fine:log_bracket, factors 0, 0.5, 1: Values between the best's " \
           "lower and upper coarse neighbours, spaced on a log scale, plus 0" in axes.notes


@pytest.mark.parametrize("coarse_best", [0.1, 0.001])
def test_default_fine_grid_reaches_the_papers_alpha(coarse_best):
    """The paper reports alpha = 0.01, between the coarse values 0.001 and 0.1: the default rule
    brackets the coarse best on both sides, so from either neighbour it proposes 0.01."""
    best = dict.fromkeys(WEIGHT_KEYS, coarse_best)
    plan = fine_plan(load_space("fine"), load_space("coarse"), best, mode="axes")
    for key in WEIGHT_KEYS:
        values = plan.values[key]
        assert 0.01 in values and 0 in values and coarse_best in values, (key, values)
        below = max(v for v in COARSE if 0 < v < coarse_best)
        above = min(v for v in COARSE if v > coarse_best)
        assert min(v for v in values if v > 0) == below and max(values) == above, "bracketed by both neighbours"
    # the rule before it looked upwards only, and from these bests never proposed 0.01
    assert 0.01 not in upper_neighbour(coarse_best, COARSE, [0, 0.25, 0.5, 0.75, 1])


def test_log_bracket_rule():
    assert log_bracket(0.1, COARSE, [0, 0.5, 1]) == [0, 0.001, 0.01, 0.1, 0.316228, 1]
    assert log_bracket(0.0001, COARSE, [0, 0.5, 1]) == [0, 1e-05, 3.16228e-05, 0.0001, 0.000316228, 0.001]
    assert log_bracket(0, COARSE, [0, 1]) == [0, 1e-05, 0.0001], "a best of 0: 0 and a coarse step below the grid"
    assert log_bracket(2.0, [0, 2.0], [0, 1]) == [0, 0.2, 2, 20], "one positive coarse value: a decade each way"
    assert log_bracket(0.05, [0, 0.1], [0, 1]) == [0, 0.025, 0.05, 0.1], "a best off the grid is its own centre"
    values = log_bracket(0.1, COARSE, [0, 0.25, 0.5, 0.75, 1])
    logs = [math.log10(v) for v in values if v > 0]
    assert logs == pytest.approx([-3 + 0.5 * i for i in range(5)] + [-1 + 0.25 * i for i in range(1, 5)], abs=1e-5), \
        "evenly spaced on a log scale on both sides"


def test_fine_rules_are_doctested():
    assert doctest.testmod(fine_rules, raise_on_error=False).failed == 0


def test_todays_rule_and_the_papers_factors_stay_options(tmp_path):
    shutil.copy(SPACES_DIR / "coarse.yaml", tmp_path)
    (tmp_path / "fine.yaml").write_text(yaml.safe_dump({"rule": "orchestration.fine:upper_neighbour",
                                                        "factors": [0, 0.25, 0.5, 0.75, 1]}))
    best = {"loss.alpha": 0.001, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 10}
    plan = fine_plan(load_space("fine", str(tmp_path)), load_space("coarse", str(tmp_path)), best, mode="factorial")
    assert plan.values["loss.alpha"] == [0, 0.001, 0.025, 0.05, 0.075, 0.1]
    assert plan.values["loss.beta"] == [0, 0.1, 0.25, 0.5, 0.75, 1]
    assert plan.values["loss.lambda_im"] == [0, 2.5, 5, 7.5, 10]
    assert any(n.startswith("fine values by rule orchestration.fine:upper_neighbour, factors 0, 0.25, 0.5, 0.75, 1")
               for n in plan.notes)


def test_fine_rule_is_swappable(tmp_path):
    shutil.copy(SPACES_DIR / "coarse.yaml", tmp_path)
    (tmp_path / "fine.yaml").write_text(yaml.safe_dump({"keys": ["loss.alpha"], "factors": [0.5, 1],
                                                        "rule": "orchestration.fine:best_as_scale"}))
    plan = fine_plan(load_space("fine", str(tmp_path)), load_space("coarse", str(tmp_path)), {"loss.alpha": 1.0},
                     mode="factorial")
    assert plan.values == {"loss.alpha": [0.5, 1.0]}
    (tmp_path / "fine.yaml").write_text(yaml.safe_dump({"rule": "orchestration.fine:nope"}))
    with pytest.raises(ConfigError, match="cannot be imported"):
        fine_plan(load_space("fine", str(tmp_path)), load_space("coarse", str(tmp_path)), {"loss.alpha": 1.0},
                  mode="factorial")


def test_seeds_per_dataset_with_a_default():
    """compare and cross run 1 seed on the embedded generated dataset (its 10-minute budget) and 2
    elsewhere; search.seeds overrides both; a mapping without `default` is refused."""
    weights = {"loss.alpha": 0.01, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1}
    for stage in ("compare", "cross"):
        space = load_space(stage)
        assert (space_seeds(space, "synthetic"), space_seeds(space, "ucf101"), space_seeds(space, "hmdb51")) == (1, 2, 2)
    space = load_space("compare")
    seeds = lambda plan: sorted({p["trainer.seed"] for p in plan.points})  # noqa: E731
    assert seeds(variant_plan("compare", space, weights, dataset="synthetic")) == [0]
    assert seeds(variant_plan("compare", space, weights, dataset="ucf101")) == [0, 1]
    assert seeds(variant_plan("compare", space, weights, dataset="synthetic", seeds=3)) == [0, 1, 2]
    assert space_seeds({"seeds": 4, "_path": "x.yaml"}, "synthetic") == 4
    with pytest.raises(ConfigError, match="x.yaml.*default"):
        space_seeds({"seeds": {"synthetic": 1}, "_path": "x.yaml"}, "ucf101")


def test_ablation_plan_is_variants_times_seeds():
    weights = {"loss.alpha": 0.01, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1}
    space = load_space("ablation")
    plan = ablation_plan(space, weights, seeds=3)
    variants = list(space["variants"])
    assert {"rev2net", "no_frame_decoder", "no_flow_decoder", "no_ddp", "ddp_low_only", "ddp_high_only",
            "decoder_plain", "decoder_deep", "i3d"} <= set(variants)
    assert plan.num_trials == len(variants) * 3
    assert plan.shuffle_protocols == ["none", "long_term", "short_term", "complete"]
    by_variant = {p["variant"]: p for p in plan.points if p["trainer.seed"] == 0}
    assert by_variant["rev2net"]["loss.alpha"] == 0.01
    assert by_variant["i3d"]["model.flow_decoder"] is False and by_variant["i3d"]["loss.lambda_im"] == 0.0
    assert by_variant["no_ddp"]["loss.alpha"] == 0.0 and by_variant["no_ddp"]["loss.lambda_flow"] == 0.1
    assert sorted(p["trainer.seed"] for p in plan.points if p["variant"] == "rev2net") == [0, 1, 2]
    only = ablation_plan(space, weights, seeds=1, variants=["i3d", "rev2net"])
    assert [p["variant"] for p in only.points] == ["i3d", "rev2net"]
    with pytest.raises(ConfigError, match="variant.*nope"):
        ablation_plan(space, weights, variants=["nope"])


def test_ablation_plan_names_variants_that_the_weights_make_identical():
    space = load_space("ablation")
    paper = {"loss.alpha": 0.01, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1}
    assert not [n for n in ablation_plan(space, paper, seeds=1).notes if n.startswith("identical")]
    # beta = 0 (e.g. the best of a coarse stage): the low-level form changes nothing, so "DDP low
    # only" is "no DDP", and "DDP high only" is the full model (its heads run either way)
    notes = [n for n in ablation_plan(space, {**paper, "loss.beta": 0.0}, seeds=1).notes if n.startswith("identical")]
    assert len(notes) == 2, notes
    assert any("no_ddp and ddp_low_only" in n for n in notes) and any("rev2net and ddp_high_only" in n for n in notes)
    # lambda_im = 0: the frame target's order is read by no term, so forward_frames is the full model
    notes = [n for n in ablation_plan(space, {**paper, "loss.lambda_im": 0.0}, seeds=1).notes
             if n.startswith("identical")]
    assert notes == [n for n in notes if "rev2net and forward_frames" in n] and len(notes) == 1, notes
    # the config's own value counts where a point does not set the key
    defaults = {"model.frame_target": "forward"}
    notes = [n for n in ablation_plan(space, paper, seeds=1, defaults=defaults).notes if n.startswith("identical")]
    assert len(notes) == 1 and "rev2net and forward_frames" in notes[0], notes


def test_grid_points_dedupes_and_keeps_order():
    pts = grid_points({"a": [1, 2], "b": [3, 4]}, {"a": 1, "b": 3}, "axes")
    assert pts == [{"a": 1, "b": 3}, {"a": 2, "b": 3}, {"a": 1, "b": 4}]
    assert math.prod([2, 2]) == len(grid_points({"a": [1, 2], "b": [3, 4]}, {}, "factorial"))
