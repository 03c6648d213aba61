"""The I3D encoder: exact size and shapes of the published network, TF "same" padding on odd sizes,
and checkpoints in the public port's state-dict layout."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from rev2net.i3d import (
    ENDPOINT_STRIDES,
    ENDPOINTS,
    InceptionI3d,
    MaxPool3dSame,
    Unit3D,
    endpoint_shapes,
    load_i3d_state,
    same_padding,
)
from rev2net.model import build_model
from rev2net.registry import model_config

MIXED = ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c")


def _port_keys() -> set[str]:
    """The state-dict keys of the public PyTorch port, written out from its naming scheme."""
    units = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
    units += [f"{m}.{b}" for m in MIXED for b in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")]
    keys = {"logits.conv3d.weight", "logits.conv3d.bias"}
    for unit in units:
        keys.add(f"{unit}.conv3d.weight")
        keys |= {f"{unit}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    return keys


@pytest.mark.parametrize("classes, expected", [(101, 12_390_789), (400, 12_697_264)])
def test_parameter_count_is_the_published_networks(classes: int, expected: int) -> None:
    with torch.device("meta"):
        model = InceptionI3d(classes)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_endpoint_shapes_at_full_size() -> None:
    with torch.device("meta"):
        model = InceptionI3d(101)
    shapes = endpoint_shapes(model, frames=32, size=224)
    assert list(shapes) == [*ENDPOINTS, "Logits"], "every endpoint, in the port's order"
    assert shapes["Conv3d_2c_3x3"] == (192, 16, 56, 56), f"Conv3d_2c_3x3 is {shapes['Conv3d_2c_3x3']}"
    assert shapes["Mixed_5c"] == (1024, 4, 7, 7), f"Mixed_5c is {shapes['Mixed_5c']}"
    assert shapes["Conv3d_1a_7x7"] == (64, 16, 112, 112)
    assert shapes["Mixed_4f"] == (832, 8, 14, 14)
    assert shapes["Logits"] == (101,)


def test_state_dict_has_the_port_layout() -> None:
    with torch.device("meta"):
        model = InceptionI3d(101)
    assert set(model.state_dict()) == _port_keys()


@pytest.mark.parametrize("size", range(1, 40))
@pytest.mark.parametrize("kernel, stride", [(1, 1), (3, 1), (3, 2), (7, 2), (2, 2), (1, 2)])
def test_same_padding_is_tensorflows(size: int, kernel: int, stride: int) -> None:
    front, back = same_padding(size, kernel, stride)
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)  # TF's "SAME"
    assert (front, back) == (total // 2, total - total // 2)
    assert (size + front + back - kernel) // stride + 1 == math.ceil(size / stride)


@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 32), (1, 3, 9, 33, 35), (1, 3, 7, 31, 30)])
def test_padded_layers_equal_explicit_tf_padding(shape: tuple[int, ...]) -> None:
    """The symmetric shortcut (conv/pool padding) and the asymmetric path both equal pad-then-op."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(shape))  # pooled tensors are ReLU outputs in I3D
    conv = Unit3D(3, 5, (7, 7, 7), (2, 2, 2), batch_norm=False, activation=False)
    pads = [same_padding(s, 7, 2) for s in shape[2:]]
    f_pads = [p for front_back in reversed(pads) for p in front_back]
    expected = F.conv3d(F.pad(x, f_pads), conv.conv3d.weight, conv.conv3d.bias, stride=2)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-5)
    pools = (((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (1, 1, 1)))
    for kernel, stride in pools:
        pads = [same_padding(s, k, st) for s, k, st in zip(shape[2:], kernel, stride)]
        f_pads = [p for front_back in reversed(pads) for p in front_back]
        expected = F.max_pool3d(F.pad(x, f_pads), kernel, stride)  # the port pads with zeros
        assert torch.equal(MaxPool3dSame(kernel, stride)(x), expected), f"max pool {kernel}/{stride} on {shape}"
        # on CPU the pool runs on a channels-last copy: same gradient, and the usual layout comes back
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = MaxPool3dSame(kernel, stride)(a)
        assert out.is_contiguous(), "the next layer gets the usual memory layout"
        out.square().sum().backward()
        F.max_pool3d(F.pad(b, f_pads), kernel, stride).square().sum().backward()
        assert torch.equal(a.grad, b.grad), f"max pool {kernel}/{stride} gradient on {shape}"


@pytest.mark.parametrize("frames, height, width", [(9, 33, 30), (1, 16, 17)])
def test_odd_sizes_give_ceil_of_stride_at_every_endpoint(frames: int, height: int, width: int) -> None:
    model = InceptionI3d(5, width=0.125).eval()
    x = torch.randn(2, 3, frames, height, width)
    with torch.no_grad():
        feats, kept = model.forward_intermediates(x, ENDPOINTS)
        logits = model.forward_head(feats)
    for name, t in kept.items():
        t_stride, s_stride = ENDPOINT_STRIDES[name]
        expected = (math.ceil(frames / t_stride), math.ceil(height / s_stride), math.ceil(width / s_stride))
        assert tuple(t.shape[2:]) == expected, f"{name} is {tuple(t.shape)} for input {tuple(x.shape)}"
    assert logits.shape == (2, 5), f"logits {tuple(logits.shape)}: the head pools adaptively on small clips"
    assert torch.isfinite(logits).all()


def test_width_scales_every_layer() -> None:
    model = InceptionI3d(10, width=0.25)
    assert model.channels["Conv3d_2c_3x3"] == 48
    assert model.channels["Mixed_5c"] == model.num_features == 256


def _i3d_checkpoint(tmp_path, classes: int, seed: int = 0) -> tuple[str, InceptionI3d]:
    torch.manual_seed(seed)
    source = InceptionI3d(classes)
    for module in source.modules():  # non-trivial running statistics, so they are checked too
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "rgb_i3d.pt"
    torch.save(source.state_dict(), path)
    return str(path), source


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path) -> None:
    path, source = _i3d_checkpoint(tmp_path, classes=101)
    model = build_model(model_config("i3d", pretrained=path), num_classes=101)
    report = model.pretrained_report
    assert (report.missing, report.unexpected, report.replaced) == ([], [], [])
    assert len(report.loaded) == len(_port_keys())
    x = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    source.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, source(x)), "loaded model must reproduce the checkpoint's outputs"


def test_checkpoint_with_another_class_count_replaces_the_classifier(tmp_path, caplog) -> None:
    path, source = _i3d_checkpoint(tmp_path, classes=400)
    model = build_model(model_config("i3d", pretrained=path), num_classes=101)
    assert model.pretrained_report.replaced == ["logits.conv3d.bias", "logits.conv3d.weight"]
    assert model.num_classes == 101
    x = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    source.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), source.forward_features(x))


def test_checkpoint_reports_missing_and_unexpected_keys_by_name(tmp_path, caplog) -> None:
    model = InceptionI3d(7, width=0.125)
    state = model.state_dict()
    del state["Mixed_4d.b2b.conv3d.weight"]
    del state["Mixed_3b.b0.bn.num_batches_tracked"]  # absent from old checkpoints: not reported
    state["Mixed_6a.b0.conv3d.weight"] = torch.zeros(1)
    with caplog.at_level(logging.WARNING, logger="rev2net.i3d"):
        report = load_i3d_state(InceptionI3d(7, width=0.125), state)
    assert report.missing == ["Mixed_4d.b2b.conv3d.weight"]
    assert report.unexpected == ["Mixed_6a.b0.conv3d.weight"]
    assert "Mixed_4d.b2b.conv3d.weight" in caplog.text and "Mixed_6a.b0.conv3d.weight" in caplog.text


def test_checkpoint_shape_mismatch_names_the_key_and_the_reason() -> None:
    state = InceptionI3d(7, width=0.25).state_dict()
    with pytest.raises(ValueError, match=r"'Conv3d_1a_7x7.conv3d.weight' has shape \(16, 3, 7, 7, 7\).*width"):
        load_i3d_state(InceptionI3d(7, width=0.125), state)


def test_checkpoint_wrappers_are_unwrapped(tmp_path) -> None:
    source = InceptionI3d(7, width=0.125)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    report = load_i3d_state(InceptionI3d(7, width=0.125), wrapped)
    assert (report.missing, report.unexpected) == ([], [])


def test_missing_checkpoint_file_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_i3d_state(InceptionI3d(7, width=0.125), tmp_path / "nope.pt")
