"""ImageNet inflation into I3D: every key covered, "boring video" equivalence with the 2D layers,
missing and mis-shaped keys by name, the inflated network trains, and the `load_pretrained` dispatcher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rev2net.googlenet import GoogLeNet
from rev2net.i3d import InceptionI3d, same_padding
from rev2net.inflate import googlenet_key, inflate_googlenet_into_i3d, load_pretrained


def _googlenet(width: float, seed: int = 0) -> GoogLeNet:
    torch.manual_seed(seed)
    model = GoogLeNet(1000, width=width)
    for module in model.modules():  # non-trivial statistics, so that copying them is checked too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def googlenet_file(tmp_path_factory) -> str:
    """A randomly initialised width-1 GoogLeNet saved in torchvision's layout, aux classifier keys included."""
    state = dict(_googlenet(1.0).state_dict())
    state["aux1.conv.conv.weight"] = torch.zeros(128, 512, 1, 1)
    path = tmp_path_factory.mktemp("weights") / "googlenet.pth"
    torch.save(state, path)
    return str(path)


def test_every_i3d_key_but_the_classifier_is_inflated(googlenet_file) -> None:
    i3d = InceptionI3d(101)
    report = inflate_googlenet_into_i3d(i3d, googlenet_file)
    keys = set(i3d.state_dict())
    assert report.replaced == ["logits.conv3d.bias", "logits.conv3d.weight"], "the classifier stays fresh"
    assert set(report.loaded) == keys - set(report.replaced), "every other I3D key has a 2D source"
    assert report.missing == []
    assert report.unexpected == ["aux1.conv.conv.weight", "fc.bias", "fc.weight"]
    state2d = torch.load(googlenet_file, weights_only=True)
    for key in report.loaded:
        if key.endswith("conv3d.weight"):
            w3d, w2d = i3d.state_dict()[key], state2d[googlenet_key(key)]
            torch.testing.assert_close(w3d.sum(dim=2), w2d, msg=f"{key}: the time slices sum to the 2D kernel")
            assert torch.equal(w3d[:, :, 0], w3d[:, :, -1]), f"{key}: repeated over time"
        else:
            assert torch.equal(i3d.state_dict()[key], state2d[googlenet_key(key)]), f"{key} copied unchanged"


def _interior(frames: int, kernel: int, stride: int) -> list[int]:
    """Output time steps whose receptive field lies inside the clip (no temporal padding)."""
    front, _ = same_padding(frames, kernel, stride)
    out = -(-frames // stride)
    return [j for j in range(out) if j * stride - front >= 0 and j * stride - front + kernel <= frames]


@pytest.mark.parametrize("unit2d, unit3d, channels, size, frames, kernel_t, stride", [
    ("conv1", "Conv3d_1a_7x7", 3, 33, 16, 7, 2),  # odd size: TF "same" pads 3 | 3 like torchvision
    ("conv3", "Conv3d_2c_3x3", 16, 20, 6, 3, 1),
    ("inception3a", "Mixed_3b", 48, 12, 5, 3, 1),
])
def test_boring_video_gives_the_2d_output(unit2d, unit3d, channels, size, frames, kernel_t, stride) -> None:
    """Carreira & Zisserman 2017 ("boring video"): on a static clip an inflated layer answers like the 2D one."""
    net2d = _googlenet(0.25)
    i3d = InceptionI3d(10, width=0.25).eval()
    inflate_googlenet_into_i3d(i3d, net2d.state_dict())
    torch.manual_seed(1)
    image = torch.randn(2, channels, size, size)
    if unit2d != "conv1":
        image = F.relu(image)  # inner layers see ReLU outputs (I3D pads its pools with -inf only where they are)
    clip = image.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()  # (B, C, T, H, W), one image repeated
    with torch.no_grad():
        out2d = net2d._modules[unit2d](image)
        out3d = i3d._modules[unit3d](clip)
    steps = _interior(frames, kernel_t, stride)
    assert steps, "the clip must be long enough to have interior steps"
    for t in steps:
        torch.testing.assert_close(out3d[:, :, t], out2d, rtol=1e-4, atol=1e-4, msg=f"{unit3d} at t={t}")


def test_flow_i3d_gets_the_cross_modality_kernel() -> None:
    net2d = _googlenet(0.125)
    flow = InceptionI3d(10, width=0.125, in_channels=2)
    report = inflate_googlenet_into_i3d(flow, net2d.state_dict())
    assert "Conv3d_1a_7x7.conv3d.weight" in report.loaded and report.missing == []
    rgb_kernel = net2d.conv1.conv.weight.detach()  # (O, 3, 7, 7)
    expected = rgb_kernel.mean(dim=1, keepdim=True).repeat(1, 2, 1, 1).unsqueeze(2).repeat(1, 1, 7, 1, 1) / 7
    torch.testing.assert_close(flow.Conv3d_1a_7x7.conv3d.weight.detach(), expected)


def test_missing_and_mis_shaped_keys_are_named() -> None:
    state = dict(_googlenet(0.125).state_dict())
    del state["inception4d.branch2.1.conv.weight"]
    del state["inception5a.branch4.1.bn.running_var"]
    report = inflate_googlenet_into_i3d(InceptionI3d(10, width=0.125), state)
    assert report.missing == ["Mixed_4e.b1b.conv3d.weight", "Mixed_5b.b3b.bn.running_var"]
    state["inception3b.branch3.1.conv.weight"] = torch.zeros(12, 4, 5, 5)  # the paper's 5x5, not torchvision's 3x3
    with pytest.raises(ValueError, match=r"'inception3b.branch3.1.conv.weight' -> 'Mixed_3c.b2b.conv3d.weight'"):
        inflate_googlenet_into_i3d(InceptionI3d(10, width=0.125), state)
    with pytest.raises(ValueError, match=r"'conv1.conv.weight' -> 'Conv3d_1a_7x7.conv3d.weight'.*width"):
        inflate_googlenet_into_i3d(InceptionI3d(10, width=0.25), _googlenet(0.125).state_dict())


def test_inflated_i3d_trains(googlenet_file) -> None:
    torch.manual_seed(0)
    model = InceptionI3d(2, dropout=0.0)
    inflate_googlenet_into_i3d(model, googlenet_file)
    clips = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(clips), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], f"loss did not go down on a fixed batch: {losses}"


def test_load_pretrained_dispatches_on_the_scheme(tmp_path, googlenet_file) -> None:
    report = load_pretrained(InceptionI3d(101), f"imagenet:{googlenet_file}")
    assert report.replaced == ["logits.conv3d.bias", "logits.conv3d.weight"] and report.missing == []
    source = InceptionI3d(7, width=0.125)
    torch.save(source.state_dict(), tmp_path / "rgb_imagenet.pt")
    for spec in (f"i3d:{tmp_path / 'rgb_imagenet.pt'}", str(tmp_path / "rgb_imagenet.pt")):
        model = InceptionI3d(7, width=0.125)
        report = load_pretrained(model, spec)
        assert (report.missing, report.unexpected, report.replaced) == ([], [], []), spec
        assert torch.equal(model.Mixed_4c.b1b.conv3d.weight, source.Mixed_4c.b1b.conv3d.weight), spec


def test_load_pretrained_names_a_bad_spec(tmp_path, googlenet_file) -> None:
    with pytest.raises(ValueError, match=r"pretrained='kinetics:/w.pt': unknown scheme 'kinetics'"):
        load_pretrained(InceptionI3d(7, width=0.125), "kinetics:/w.pt")
    missing = tmp_path / "nope.pth"
    for spec in (f"imagenet:{missing}", f"i3d:{missing}", str(missing)):
        with pytest.raises(ValueError, match=f"pretrained='{spec}'.*no file"):
            load_pretrained(InceptionI3d(7, width=0.125), spec)
