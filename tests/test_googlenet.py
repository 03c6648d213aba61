"""The 2D Inception-v1 backbone: torchvision's state-dict layout and published size, block shapes,
checkpoints (unused, missing and mis-shaped keys by name) and cross-modality initialisation."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rev2net.googlenet import BLOCKS, INCEPTION_BLOCKS, GoogLeNet, cross_modality_kernel, load_googlenet_state

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _torchvision_keys() -> set[str]:
    """torchvision googlenet's state-dict keys without the auxiliary classifiers, from its naming scheme."""
    units = ["conv1", "conv2", "conv3"]
    for block in INCEPTION_BLOCKS:
        units += [f"{block}.{u}" for u in ("branch1", "branch2.0", "branch2.1", "branch3.0", "branch3.1", "branch4.1")]
    keys = {"fc.weight", "fc.bias"}
    for unit in units:
        keys.add(f"{unit}.conv.weight")
        keys |= {f"{unit}.bn.{p}" for p in BN_KEYS}
    return keys


def test_state_dict_has_torchvisions_layout() -> None:
    with torch.device("meta"):
        model = GoogLeNet(1000)
    assert set(model.state_dict()) == _torchvision_keys()
    assert INCEPTION_BLOCKS == ("inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
                                "inception4d", "inception4e", "inception5a", "inception5b")


def test_size_and_cost_are_torchvisions() -> None:
    """torchvision documents googlenet's ImageNet weights as 6,624,904 parameters and 1.498 G ops at 224."""
    with torch.device("meta"):
        model = GoogLeNet(1000).eval()
        x = torch.zeros(1, 3, 224, 224)
    assert sum(p.numel() for p in model.parameters()) == 6_624_904
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() / 2 == pytest.approx(1.498e9, rel=5e-4)


def test_block_shapes_at_224() -> None:
    with torch.device("meta"):
        model = GoogLeNet(101)
        feats, kept = model.forward_intermediates(torch.zeros(2, 3, 224, 224), BLOCKS)
    assert list(kept) == list(BLOCKS)
    expected = {"conv1": (64, 112, 112), "maxpool1": (64, 56, 56), "conv3": (192, 56, 56),
                "inception3b": (480, 28, 28), "inception4e": (832, 14, 14), "maxpool4": (832, 7, 7),
                "inception5b": (1024, 7, 7)}
    for name, shape in expected.items():
        assert tuple(kept[name].shape[1:]) == shape, f"{name} is {tuple(kept[name].shape)}"
    for name, t in kept.items():
        assert t.shape[1] == model.channels[name], f"channels[{name!r}] disagrees with the tensor"
    assert feats.shape == (2, 1024, 7, 7) and model.num_features == 1024


def test_features_head_and_reset_classifier() -> None:
    model = GoogLeNet(7, width=0.125, in_channels=10).eval()
    x = torch.randn(2, 10, 40, 36)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features) == (2, 128)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3
    with pytest.raises(ValueError, match=r"\(N, 10, H, W\), got \(2, 3, 40, 36\)"):
        model(torch.randn(2, 3, 40, 36))
    with pytest.raises(ValueError, match="inception6a"):
        model.forward_intermediates(x, ["inception6a"])


def test_width_scales_every_block() -> None:
    model = GoogLeNet(5, width=0.25)
    assert model.channels["conv3"] == 48 and model.channels["inception3b"] == 120 and model.num_features == 256


def _randomise_bn(model: GoogLeNet) -> GoogLeNet:
    for module in model.modules():  # non-trivial running statistics, so they are checked too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def test_checkpoint_round_trip_and_torchvision_extras(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    source = _randomise_bn(GoogLeNet(10, width=0.125)).eval()
    state = dict(source.state_dict())
    state["aux1.fc2.weight"] = torch.zeros(10, 8)  # torchvision's files carry the auxiliary classifiers
    state["aux2.conv.conv.weight"] = torch.zeros(16, 66, 1, 1)
    torch.save(state, tmp_path / "googlenet.pth")
    model = GoogLeNet(10, width=0.125).eval()
    with caplog.at_level(logging.WARNING, logger="rev2net.googlenet"):
        report = load_googlenet_state(model, tmp_path / "googlenet.pth")
    assert report.unexpected == ["aux1.fc2.weight", "aux2.conv.conv.weight"]
    assert (report.missing, report.replaced) == ([], [])
    assert len(report.loaded) == len(_torchvision_keys())
    assert "aux1" not in caplog.text, "torchvision's auxiliary classifiers are expected, not warned about"
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), source(x)), "a loaded model reproduces the checkpoint's outputs"


def test_checkpoint_reports_missing_and_replaced_keys_by_name(caplog) -> None:
    state = GoogLeNet(1000, width=0.125).state_dict()
    del state["inception4c.branch3.1.conv.weight"]
    del state["inception3a.branch1.bn.num_batches_tracked"]  # absent from old checkpoints: not reported
    with caplog.at_level(logging.WARNING, logger="rev2net.googlenet"):
        report = load_googlenet_state(GoogLeNet(51, width=0.125), state)
    assert report.missing == ["inception4c.branch3.1.conv.weight"]
    assert report.replaced == ["fc.bias", "fc.weight"], "another class count: the classifier stays fresh"
    assert "inception4c.branch3.1.conv.weight" in caplog.text


def test_checkpoint_mis_shaped_keys_are_named() -> None:
    state = GoogLeNet(10, width=0.25).state_dict()
    with pytest.raises(ValueError, match=r"'conv2.conv.weight' \(16, 16, 1, 1\) \(model: \(8, 8, 1, 1\)\).*width"):
        load_googlenet_state(GoogLeNet(10, width=0.125), state)


def test_missing_checkpoint_file_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="GoogLeNet checkpoint.*nope.pth"):
        load_googlenet_state(GoogLeNet(10, width=0.125), tmp_path / "nope.pth")


def test_cross_modality_initialisation_for_a_flow_stack() -> None:
    torch.manual_seed(0)
    rgb = _randomise_bn(GoogLeNet(10, width=0.125))
    flow = GoogLeNet(10, width=0.125, in_channels=10)
    report = load_googlenet_state(flow, rgb.state_dict())
    assert "conv1.conv.weight" in report.loaded and report.missing == []
    kernel = rgb.conv1.conv.weight.detach()
    expected = kernel.mean(dim=1, keepdim=True).repeat(1, 10, 1, 1)
    assert torch.equal(flow.conv1.conv.weight.detach(), expected), "RGB kernel averaged, then replicated"
    assert torch.equal(cross_modality_kernel(kernel, 2), expected[:, :2])
    for key, value in rgb.state_dict().items():
        if key != "conv1.conv.weight":
            assert torch.equal(flow.state_dict()[key], value), f"{key} copied unchanged"
