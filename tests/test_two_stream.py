"""Two-stream I3D: the flow I3D's shapes and head, late fusion equal to the average of the streams'
softmax scores, pooled features and head consistent with forward, per-stream training, multiply-adds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rev2net.i3d import InceptionI3d, endpoint_shapes
from rev2net.two_stream import TwoStream, build_i3d_flow, build_two_stream_i3d

from model_helpers import calibrate_batch_norm, fit

WIDTH = 0.125  # Mixed_5c: 384 + 384 + 128 + 128 published channels -> 48 + 48 + 16 + 16 = 128


def _inputs(b: int = 2, t: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, 3, t, size, size) * 2 - 1, torch.rand(b, 2, t, size, size) * 2 - 1


def test_flow_i3d_shapes_and_head_size() -> None:
    model = build_i3d_flow(9, width=WIDTH)
    assert isinstance(model, InceptionI3d)
    assert model.Conv3d_1a_7x7.conv3d.weight.shape == (8, 2, 7, 7, 7), "2 input channels: x and y"
    assert sum(p.numel() for p in model.logits.parameters()) == 128 * 9 + 9, "1x1x1 logits conv = F * classes + classes"
    assert model(_inputs()[1]).shape == (2, 9)


def test_fusion_is_the_average_of_the_streams_softmax_scores() -> None:
    torch.manual_seed(0)
    model = build_two_stream_i3d(6, width=WIDTH)
    frames, flow = _inputs()
    calibrate_batch_norm(model, frames, flow)
    with torch.no_grad():
        fused = model(frames, flow)
        streams = model.forward_streams(frames, flow)
    expected = (streams["rgb"].softmax(-1) + streams["flow"].softmax(-1)) / 2
    torch.testing.assert_close(fused.softmax(-1), expected)
    torch.testing.assert_close(fused.exp(), expected, msg="the fused logits are log-probabilities")
    assert not torch.allclose(streams["rgb"].softmax(-1), streams["flow"].softmax(-1)), "the streams must differ"
    with torch.no_grad():
        torch.testing.assert_close(streams["flow"], model.flow(flow))


def test_weighted_and_one_sided_fusion() -> None:
    torch.manual_seed(0)
    model = build_two_stream_i3d(6, width=WIDTH, fusion_weights=(0.0, 2.0))
    frames, flow = _inputs()
    calibrate_batch_norm(model, frames, flow)
    with torch.no_grad():
        torch.testing.assert_close(model(frames, flow), F.log_softmax(model.flow(flow), -1))
    with pytest.raises(ValueError, match=r"fusion weights=\(-1.0, 1.0\)"):
        build_two_stream_i3d(6, width=WIDTH, fusion_weights=(-1.0, 1.0))
    with pytest.raises(ValueError, match="fusion='max'"):
        build_two_stream_i3d(6, width=WIDTH, fusion="max")
    with pytest.raises(ValueError, match="rgb 6, flow 5"):
        TwoStream(InceptionI3d(6, width=WIDTH), build_i3d_flow(5, width=WIDTH))


def test_pooled_features_and_head_give_forward_in_eval() -> None:
    torch.manual_seed(0)
    model = build_two_stream_i3d(6, width=WIDTH)
    frames, flow = _inputs(t=16, size=64)  # a Mixed_5c map of 2 x 2 x 2 positions, pooled by the head
    calibrate_batch_norm(model, frames, flow)
    with torch.no_grad():
        features = model.forward_features(frames, flow)
        assert features.shape == (2, model.num_features) == (2, 256)
        torch.testing.assert_close(model.forward_head(features), model(frames, flow))
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(frames, flow).shape == (2, 3)


def test_training_each_stream_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = build_two_stream_i3d(3, width=WIDTH, dropout=0.0)

    def loss_fn(m, inputs, y):
        return sum(F.cross_entropy(logits, y) for logits in m.forward_streams(*inputs).values())

    losses = fit(model, _inputs(), torch.tensor([0, 2]), loss_fn)
    assert losses[-1] < losses[0], f"loss did not go down on a fixed batch: {losses}"


def test_flow_i3d_costs_one_input_channel_less_in_conv1() -> None:
    """At 32 x 224 x 224 the flow I3D saves exactly a third of Conv3d_1a_7x7's multiply-adds."""
    counts = []
    with torch.device("meta"):
        for model, channels in ((InceptionI3d(101), 3), (build_i3d_flow(101), 2)):
            with FlopCounterMode(display=False) as counter:
                model.eval()(torch.zeros(1, channels, 32, 224, 224))
            counts.append(counter.get_total_flops() // 2)
        conv1 = endpoint_shapes(InceptionI3d(101), 32, 224)["Conv3d_1a_7x7"]  # (64, 16, 112, 112)
    per_input_channel = conv1[0] * conv1[1] * conv1[2] * conv1[3] * 7 * 7 * 7
    assert counts[0] - counts[1] == per_input_channel, counts
