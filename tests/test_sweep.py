"""orchestration/sweep.py: a sweep's identity."""

from __future__ import annotations

from omegaconf import OmegaConf, open_dict

from orchestration.config import compose_config
from orchestration.plan import build_plan
from orchestration.sweep import sweep_id


def test_a_key_added_at_its_default_leaves_existing_sweep_ids_as_they_were():
    """trainer.max_train_s came after sweeps existed: at 0 the id is the one computed without the
    key (a sweep started before the upgrade continues); any budget is another sweep."""
    cfg = compose_config([], stage="coarse")
    plan = build_plan(cfg)
    before = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(before):
        del before.trainer["max_train_s"]
    assert sweep_id(cfg, plan) == sweep_id(before, plan)
    budget = compose_config(["trainer.max_train_s=60"], stage="coarse")
    assert sweep_id(budget, build_plan(budget)) != sweep_id(cfg, plan)
