"""orchestration/config.py: every config group option composes into the typed schema, and every
mistake is one line that names the key."""

from __future__ import annotations

import pytest

from orchestration.config import CONF_DIR, compose_config, resolve_paths, to_objects
from orchestration.errors import ConfigError

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
REQUIRED = {"data": ["data.root=/datasets/x"], "cluster": ["ray.storage_path=/shared/ray"]}


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))])
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"] + (REQUIRED.get(group, []) if option not in ("synthetic", "local") else [])
    cfg = to_objects(compose_config(overrides))
    assert cfg.stage == "coarse"


def test_groups_are_one_per_concern():
    assert GROUPS == ["adapt", "cluster", "data", "loss", "mlflow", "model", "scheduler", "search", "trainer"]


def test_embedded_default_is_thin_and_real_datasets_get_the_paper_model():
    tiny = to_objects(compose_config([]))
    assert (tiny.data.name, tiny.model.width, tiny.data.frames, tiny.data.crop_size) == ("synthetic", 0.1875, 16, 56)
    assert tiny.search.mode == "axes" and tiny.mlflow.tracking_uri == "sqlite:///mlflow.db"
    full = to_objects(compose_config(["data=ucf101", "data.root=/data/UCF101"]))
    assert (full.model.width, full.data.frames, full.data.crop_size, full.trainer.max_epochs) == (1.0, 32, 224, 40)
    assert full.loss.alpha == 0.01 and full.loss.beta == 0.1, "loss=paper is the default preset"


@pytest.mark.parametrize("overrides,message", [
    (["data.rooot=/x"], "unknown config key 'data.rooot'"),
    (["foo=1"], "unknown config key 'foo'"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs: Value 'abc'"),
    (["data=ucf"], "config option 'data/ucf' does not exist; data is one of generic, hmdb51, kinetics400, synthetic, ucf101"),
    (["loss.alpha=-1"], "loss.alpha=-1.0 must be a finite number >= 0"),
    (["loss.beta=nan"], "loss.beta=nan"),
    (["model.frame_target=backward"], "model.frame_target='backward' is not one of reversed, forward"),
    (["model.ddp_layers=[trunk-out]"], "model.ddp_layers: 'trunk-out' is not a pair of decoder layers"),
    (["model.pretrained=kinetics:/w.pt"], "model.pretrained='kinetics:/w.pt': unknown scheme 'kinetics'"),
    (["data=ucf101"], "data.root='' is not allowed"),
    (["cluster=gpu"], "ray.storage_path='' is not allowed"),
    (["search.mode=grid"], "search.mode='grid' is not allowed: expected factorial | axes"),
    (["search=optuna", "search.mode=axes"], "search.mode='axes' is not allowed: expected factorial with search=optuna"),
    (["trial.gpus=1.5"], "trial.gpus=1.5 is not allowed"),
    (["ray.snapshot_period_s=0"], "ray.snapshot_period_s=0.0 is not allowed: expected seconds > 0"),
])
def test_mistakes_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        to_objects(compose_config(overrides))
    text = str(err.value)
    assert message in text, text
    assert "\n" not in text, "one line"


def test_stage_must_be_known():
    with pytest.raises(ConfigError, match="stage='corse'"):
        to_objects(compose_config([], stage="corse"))


def test_relative_paths_become_absolute(tmp_path):
    cfg = resolve_paths(compose_config(["ray.storage_path=rr", "mlflow.tracking_uri=sqlite:///m.db"]), cwd=str(tmp_path))
    assert cfg.data.root == str(tmp_path / "data" / "synthetic")
    assert cfg.ray.storage_path == str(tmp_path / "rr")
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'm.db'}"
    for given, resolved in (("w/g.pth", tmp_path / "w" / "g.pth"), ("imagenet:w/g.pth", f"imagenet:{tmp_path}/w/g.pth"),
                            ("i3d:/abs/i3d.pt", "i3d:/abs/i3d.pt")):
        cfg = resolve_paths(compose_config([f"model.pretrained={given}"]), cwd=str(tmp_path))
        assert cfg.model.pretrained == str(resolved), "a pretrained spec keeps its scheme, its path becomes absolute"
    remote = resolve_paths(compose_config(["mlflow.tracking_uri=http://h:5000", "ray.storage_path=s3://b/p"]))
    assert remote.mlflow.tracking_uri == "http://h:5000" and remote.ray.storage_path == "s3://b/p"
