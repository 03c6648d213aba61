"""The model summary: published counts at full size, cheap decoders, and the CLI's JSON."""

from __future__ import annotations

import json

import pytest

from rev2net.spec import ModelConfig
from rev2net.registry import model_config
from rev2net.summary import main, summarize


def test_full_size_counts_and_endpoints() -> None:
    s = summarize(ModelConfig(), num_classes=101, frames=32, size=224)
    assert s["params_inference"] == 12_390_789
    assert s["macs_inference"] == pytest.approx(55.6e9, rel=0.005), "I3D's conv multiply-adds at 32x224x224"
    assert s["macs_inference"] < s["macs_training"] <= 1.1 * s["macs_inference"], "decoders cost < 10% of I3D"
    assert s["params_inference"] < s["params_training"]
    assert s["endpoints"]["Conv3d_2c_3x3"] == [192, 16, 56, 56]
    assert s["endpoints"]["Mixed_5c"] == [1024, 4, 7, 7]
    assert s["flow_size"] == [31, 112, 112]
    assert set(s["macs_training_by_part"]) == {"encoder", "flow_decoder", "frame_decoder", "flow_gaussian",
                                              "frame_gaussian"}


def test_i3d_baseline_trains_at_inference_cost() -> None:
    s = summarize(model_config("i3d"), num_classes=101, frames=32, size=224)
    assert s["params_training"] == s["params_inference"] == 12_390_789
    assert s["macs_training"] == s["macs_inference"]


def test_cli_prints_one_json_object(capsys) -> None:
    assert main(["--num-classes", "51", "--frames", "16", "--size", "112", "--width", "0.5", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    for key in ("params_inference", "params_training", "macs_inference", "macs_training", "endpoints"):
        assert key in s
    assert s["endpoints"]["Conv3d_2c_3x3"] == [96, 8, 28, 28]
    assert s["endpoints"]["Logits"] == [51]


def test_cli_prints_a_table(capsys) -> None:
    assert main(["--frames", "8", "--size", "64", "--width", "0.25", "--decoder-arch", "deep"]) == 0
    out = capsys.readouterr().out
    assert "Mixed_5c" in out and "multiply-adds" in out and "'decoder_arch': 'deep'" in out


def test_cli_rejects_a_bad_width(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--width", "0"])
    assert "model.width=0.0" in capsys.readouterr().err
