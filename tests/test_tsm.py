"""TSM: the shift moves exactly 1/8 + 1/8 of the channels by one step with zeros at the ends, it runs
before every Inception block, shapes, head size, a training step and multiply-adds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rev2net.googlenet import INCEPTION_BLOCKS
from rev2net.tsm import TSM, build_tsm, temporal_shift
from rev2net.tsn import build_tsn
from rev2net.two_stream import TwoStream

from model_helpers import calibrate_batch_norm, fit

WIDTH = 0.125


def test_shift_moves_one_eighth_each_way_with_zero_ends() -> None:
    b, t, c, h, w = 2, 5, 16, 3, 2
    x = torch.arange(b * t * c * h * w, dtype=torch.float32).reshape(b * t, c, h, w) + 1  # no zeros in x
    out = temporal_shift(x, segments=t).reshape(b, t, c, h, w)
    x = x.reshape(b, t, c, h, w)
    assert torch.equal(out[:, :-1, 0:2], x[:, 1:, 0:2]), "channels 0-1 (1/8) come from the next step"
    assert torch.equal(out[:, 1:, 2:4], x[:, :-1, 2:4]), "channels 2-3 (1/8) come from the previous step"
    assert torch.equal(out[:, :, 4:], x[:, :, 4:]), "the other 3/4 stay"
    assert (out[:, -1, 0:2] == 0).all() and (out[:, 0, 2:4] == 0).all(), "zeros where the shift leaves the clip"
    assert (out != 0).sum() == x.numel() - 2 * (2 * b * h * w), "exactly the two end slices are zero"
    assert torch.equal(temporal_shift(x.reshape(b * t, c, h, w), t, shift_div=4).reshape(b, t, c, h, w)[:, 1:, 4:8],
                       x[:, :-1, 4:8]), "shift_div sets the proportion"
    with pytest.raises(ValueError, match="10 snippets are not a whole number of clips of 3 segments"):
        temporal_shift(x.reshape(b * t, c, h, w), segments=3)


def test_shift_runs_before_every_inception_block() -> None:
    torch.manual_seed(0)
    model = build_tsm(5, segments=4, width=WIDTH).eval()
    seen = {}
    for name in INCEPTION_BLOCKS:
        block = getattr(model.backbone, name)
        block.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
    stem = {}
    model.backbone.maxpool2.register_forward_hook(lambda m, args, out: stem.__setitem__("out", out))
    with torch.no_grad():
        model(torch.rand(2, 3, 4, 32, 32) * 2 - 1)
    assert list(seen) == list(INCEPTION_BLOCKS)
    assert torch.equal(seen["inception3a"], temporal_shift(stem["out"], 4)), "the stem output, shifted"


def test_shapes_head_size_and_segments() -> None:
    model = build_tsm(7, width=WIDTH)
    assert isinstance(model, TSM) and model.segments == 8 and model.backbone.dropout.p == 0.5
    assert sum(p.numel() for p in model.backbone.fc.parameters()) == 128 * 7 + 7, "fc = F * classes + classes"
    x = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    assert model(x).shape == (2, 7) and model.forward_features(x).shape == (2, 128)
    assert model.forward_segments(x).shape == (2, 8, 7)
    flow = build_tsm(7, modality="flow", segments=4, new_length=2, width=WIDTH)
    assert flow(torch.rand(2, 2, 8, 32, 32)).shape == (2, 7)
    both = build_tsm(7, modality="rgb_flow", segments=4, new_length=2, width=WIDTH)
    assert isinstance(both, TwoStream) and both(x[:, :, :4], torch.rand(2, 2, 8, 32, 32)).shape == (2, 7)


def test_segments_exchange_information_unlike_tsn() -> None:
    """Changing one segment's frame changes another segment's score in TSM, never in TSN."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    tsm = calibrate_batch_norm(build_tsm(5, segments=4, width=WIDTH), x)
    tsn = build_tsn(5, segments=4, width=WIDTH).eval()
    tsn.load_state_dict(tsm.state_dict())  # same weights and statistics, the shift is the only difference
    y = x.clone()
    y[:, :, 3] = torch.rand(2, 3, 32, 32) * 2 - 1  # the last segment changes
    with torch.no_grad():
        tsm_x, tsm_y = tsm.forward_segment_features(x), tsm.forward_segment_features(y)
        tsn_x, tsn_y = tsn.forward_segment_features(x), tsn.forward_segment_features(y)
    change = (tsm_x[:, 0] - tsm_y[:, 0]).abs().max() / tsm_x[:, 0].abs().max()
    assert change > 0.01, f"TSM: the first segment's features moved by only {change:.2e} (relative)"
    assert torch.equal(tsn_x[:, :3], tsn_y[:, :3]), "TSN: the other segments' features are untouched"
    assert not torch.equal(tsn_x[:, 3], tsn_y[:, 3])


def test_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = build_tsm(3, segments=4, width=WIDTH, dropout=0.0)
    x, y = torch.rand(2, 3, 4, 32, 32) * 2 - 1, torch.tensor([0, 2])
    losses = fit(model, (x,), y, lambda m, x, y: F.cross_entropy(m(*x), y))
    assert losses[-1] < losses[0], f"loss did not go down on a fixed batch: {losses}"


def test_shift_costs_no_multiply_adds() -> None:
    with torch.device("meta"):
        tsm = build_tsm(101, segments=8).eval()
        tsn = build_tsn(101, segments=8).eval()
        x = torch.zeros(1, 3, 8, 224, 224)
    counts = []
    for model in (tsm, tsn):
        with FlopCounterMode(display=False) as counter:
            model(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0, counts
