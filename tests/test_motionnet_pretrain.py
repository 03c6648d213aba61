"""rev2net/motionnet_pretrain.py (python -m rev2net.motionnet_pretrain): unsupervised pretraining on a dataset's
training videos, a checkpoint per epoch, resume, the end-point error where ground truth exists, and
a JSON last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rev2net.motionnet import load_motionnet
from rev2net.motionnet_pretrain import main

TINY = ["--width", "0.0625", "--frames", "4", "--size", "32", "--short-side", "64", "--batch-size", "2",
        "--eval-videos", "1", "--workers", "0", "--no-progress"]


def run(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def test_pretrains_checkpoints_and_measures_end_point_error(synthetic_root, tmp_path, capsys):
    out = str(tmp_path / "motionnet.pt")
    command = ["--dataset", "synthetic", "--root", synthetic_root, "--out", out, *TINY]
    code, lines, _ = run(capsys, *command, "--epochs", "2")
    assert code == 0
    summary = json.loads(lines[-1])
    assert summary["checkpoint"] == os.path.abspath(out) and os.path.isfile(out)
    assert summary["epochs"] == 2 and sum(line.startswith("epoch ") for line in lines) == 2
    assert "EPE" in lines[0] and "moving objects" in lines[0]
    for key in ("epe", "object_epe", "zero_flow_epe", "object_zero_flow_epe"):
        assert isinstance(summary[key], float) and summary[key] >= 0, key
    assert summary["object_zero_flow_epe"] > 0.5, "the test video's objects move"
    assert summary["eval_pairs"] == 11, "every pair of the one evaluated 12-frame video"
    assert set(summary["terms"]) == {"pixel", "smooth", "ssim", "total"}
    model = load_motionnet(out)
    assert model.config == {"frames": 4, "width": 0.0625}
    state = torch.load(out, weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2

    # the same command again: nothing left to train, the same result, the same weights
    code, lines, err = run(capsys, *command, "--epochs", "2")
    assert code == 0 and "resuming" in err
    again = json.loads(lines[-1])
    assert again["epochs"] == 2 and again["epe"] == summary["epe"]
    assert not any(line.startswith("epoch ") for line in lines)

    # another configuration is refused, naming the key
    code, _, err = run(capsys, *command, "--epochs", "3")
    assert code == 2 and "epochs=2" in err and "epochs=3" in err


def test_resuming_after_an_interruption_continues_the_same_run(synthetic_root, tmp_path, capsys, monkeypatch):
    """A run killed after its first epoch's checkpoint, then started again with the same command, ends
    with the weights of an uninterrupted run (the data order is a function of seed and epoch)."""
    import rev2net.motionnet_pretrain as pretrain_module

    common = ["--dataset", "synthetic", "--root", synthetic_root, "--epochs", "2", *TINY]
    assert run(capsys, *common, "--out", str(tmp_path / "whole.pt"))[0] == 0
    save = pretrain_module._save

    def save_then_die(path: str, state: dict) -> None:
        save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main([*common, "--out", str(tmp_path / "killed.pt")])
    monkeypatch.undo()
    assert torch.load(tmp_path / "killed.pt", weights_only=True)["epoch"] == 1
    code, lines, err = run(capsys, *common, "--out", str(tmp_path / "killed.pt"))
    assert code == 0 and "resuming" in err and sum(line.startswith("epoch 2/2") for line in lines) == 1
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert [h["total"] for h in resumed["history"]] == [h["total"] for h in whole["history"]]
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_without_ground_truth_epe_is_null(synthetic_root, tmp_path, capsys):
    # the generated set is in the UCF101 layout; read as ucf101 it has no exact flow
    out = str(tmp_path / "motionnet.pt")
    code, lines, _ = run(capsys, "--dataset", "ucf101", "--root", synthetic_root, "--out", out, "--epochs", "1", *TINY)
    assert code == 0
    summary = json.loads(lines[-1])
    assert summary["epe"] is None and summary["checkpoint"] == os.path.abspath(out)
    assert "EPE" not in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs=0"),
    (["--size", "64", "--short-side", "32"], "--short-side=32"),
])
def test_bad_arguments_name_the_option(synthetic_root, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "synthetic", "--root", synthetic_root, "--out", str(tmp_path / "x.pt"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_runs_as_python_dash_m(tmp_path):
    """`python -m rev2net.motionnet_pretrain` reaches the CLI (a missing root is an error naming it)."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    result = subprocess.run([sys.executable, "-m", "rev2net.motionnet_pretrain", "--dataset", "synthetic", "--root",
                             str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.pt")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "nowhere" in result.stderr
