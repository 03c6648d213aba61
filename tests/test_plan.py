"""orchestration/plan.py `prepare_data`: a dataset with broken videos refuses the start and names
them, or, within data.max_broken_fraction, leaves them out of every trial and names them on the
parent run and in the stage summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from orchestration import plan as planning
from orchestration import records
from orchestration.config import compose_config, to_objects
from orchestration.errors import ConfigError
from rev2net.data.datasets import build_eval_loader, build_loaders
from rev2net.data.layouts import load_split
from sweep_helpers import SIM, small_spaces, tiny_overrides

LOSS_KEYS = ("loss.alpha", "loss.beta", "loss.lambda_flow", "loss.lambda_im")


def _prepared(tmp_path: Path, root: str, *extra: str):
    """The coarse stage of one trial on the dataset at `root`, prepared as `run_stage` does."""
    spaces = small_spaces(tmp_path)
    (spaces / "coarse.yaml").write_text(yaml.safe_dump({"values": {"loss.alpha": [0.1]},
                                                        "base": {k: 0.1 for k in LOSS_KEYS}}))
    cfg = compose_config(tiny_overrides(tmp_path, root, f"search.spaces_dir={spaces}", *extra), stage="coarse")
    return planning.prepare(cfg)


def _break(root: str) -> tuple[str, str]:
    """A zero-byte training video and a test video cut to its first 200 bytes (inside its header)."""
    split = load_split("synthetic", root, 1)
    empty, cut = split.train[0].path, split.test[1].path
    open(empty, "wb").close()
    data = open(cut, "rb").read()
    with open(cut, "wb") as f:
        f.write(data[:200])
    return empty, cut


def test_broken_videos_refuse_the_start_by_name_with_the_command_that_lists_them(tmp_path, synthetic_copy):
    empty, cut = _break(synthetic_copy)
    cfg, plan = _prepared(tmp_path, synthetic_copy)
    with pytest.raises(ConfigError) as error:
        planning.prepare_data(cfg, plan, progress=False)
    message = str(error.value)
    head, rest = message.split(f": {empty}: empty file; {cut}: cannot open (")
    assert "\n" not in message and head == (f"dataset synthetic at {synthetic_copy} is not ready: 2 of its 15 videos "
                                            "in split 1 are broken (data.max_broken_fraction=0 tolerates 0)")
    assert rest.endswith(f" — list them all: python -m rev2net.data.check --dataset synthetic --root {synthetic_copy} "
                         "--split 1 --frames 8 --limit 0; fix or remove them, or set data.max_broken_fraction=0.14 to "
                         "leave them out of every trial (named in the parent run's broken_videos.json)"), rest
    cfg, plan = _prepared(tmp_path, synthetic_copy, "data.max_broken_fraction=0.1")
    with pytest.raises(ConfigError, match=r"2 of its 15 videos in split 1 are broken \(data.max_broken_fraction=0.1 "
                                          r"tolerates 1\)"):
        planning.prepare_data(cfg, plan, progress=False)


def test_tolerated_broken_videos_are_in_no_trial_list(tmp_path, synthetic_copy):
    empty, cut = _break(synthetic_copy)
    cfg, plan = _prepared(tmp_path, synthetic_copy, "data.max_broken_fraction=0.14")
    prepared, broken = planning.prepare_data(cfg, plan, progress=False)
    assert list(prepared.data.exclude) == [empty, cut] and list(cfg.data.exclude) == [], "a new config"
    assert broken.to_dict()["count"] == 2 and broken.checked == {f"synthetic at {synthetic_copy}": 15}
    assert broken.videos[empty] == {"dataset": "synthetic", "root": synthetic_copy, "problem": "empty file"}
    data = to_objects(prepared).data  # what every trial reads (its config is this one's YAML)
    listed = {r.path for r in build_loaders(data, seed=0).train.dataset.records}
    listed |= {r.path for r in build_eval_loader(data).dataset.records}
    assert listed and not {empty, cut} & listed
    again, _ = planning.prepare_data(prepared, plan, progress=False)
    assert list(again.data.exclude) == [empty, cut], "the excluded videos are checked no more, and listed once"


@pytest.mark.slow
def test_a_stage_names_the_broken_videos_it_left_out_on_its_parent_run(tmp_path, synthetic_copy):
    import ray

    from orchestration.console import format_summary
    from orchestration.stage import run_stage

    empty, cut = _break(synthetic_copy)
    cfg, _ = _prepared(tmp_path, synthetic_copy, SIM, "trainer.max_epochs=1", "data.max_broken_fraction=0.2",
                       "ray.num_cpus=2")
    ours = not ray.is_initialized()
    try:
        result = run_stage(cfg, progress=False)
    finally:
        if ours:  # a Ray runtime another test started is left to it
            ray.shutdown()
    client = MlflowClient(tracking_uri=result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert result.complete and parent.data.tags[records.TAG_BROKEN_VIDEOS] == "2"
    artifact = json.loads(Path(client.download_artifacts(parent.info.run_id, records.BROKEN_VIDEOS_ARTIFACT,
                                                         str(tmp_path))).read_text())
    assert [v["path"] for v in artifact["videos"]] == [empty, cut] and artifact["max_broken_fraction"] == 0.2
    config = client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path))
    logged = yaml.safe_load(Path(config).read_text())
    assert logged["data"]["exclude"] == [empty, cut], "the trials' config leaves them out"
    summary = format_summary(result, []).splitlines()
    assert summary[1] == ("2 broken video(s) left out of every trial (data.max_broken_fraction), listed in the parent "
                          "run's broken_videos.json:")
    assert summary[2] == f"  {empty}: empty file"
