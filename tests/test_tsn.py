"""TSN: snippet layout (flow pairs as x1, y1, ..., xL, yL), average consensus equal to per-segment
calls, head size, partial BN, a training step, two-modality fusion and multiply-adds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rev2net.googlenet import GoogLeNet
from rev2net.tsn import TSN, build_tsn
from rev2net.two_stream import TwoStream

from model_helpers import calibrate_batch_norm, fit

WIDTH = 0.125  # backbone features: 384 + 384 + 128 + 128 published inception5b branches -> 48 + 48 + 16 + 16


def _rgb(b: int = 2, k: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, k, size, size) * 2 - 1


def _flow(b: int = 2, k: int = 3, length: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 2, k * length, size, size) * 2 - 1


def test_output_shapes_and_head_size() -> None:
    model = build_tsn(11, modality="rgb", width=WIDTH)
    assert isinstance(model, TSN) and model.num_features == 128
    assert sum(p.numel() for p in model.backbone.fc.parameters()) == 128 * 11 + 11, "fc = F * classes + classes"
    x = _rgb()
    assert model.forward_segments(x).shape == (2, 3, 11)
    assert model.forward_features(x).shape == (2, 128)
    assert model(x).shape == (2, 11)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4) and model.num_classes == 4
    flow = build_tsn(11, modality="flow", new_length=2, width=WIDTH)
    assert flow.backbone.in_channels == 4 and flow(_flow()).shape == (2, 11)
    assert flow.backbone.dropout.p == 0.7 and model.backbone.dropout.p == 0.8, "the paper's dropout per stream"


def test_eval_is_the_average_of_per_segment_calls() -> None:
    torch.manual_seed(0)
    model = build_tsn(5, modality="rgb", width=WIDTH)
    x = _rgb(k=4)  # any K at test time (the paper uses 25)
    calibrate_batch_norm(model, x)
    with torch.no_grad():
        per_segment = torch.stack([model.backbone(x[:, :, k]) for k in range(4)], dim=1)
        torch.testing.assert_close(model(x), per_segment.mean(dim=1))
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))


def test_flow_snippets_stack_consecutive_pairs_as_x1_y1_to_xL_yL() -> None:
    torch.manual_seed(0)
    model = build_tsn(5, modality="flow", new_length=3, width=WIDTH)
    x = _flow(k=2, length=3)
    calibrate_batch_norm(model, x)
    snippets, k = model.snippets(x)
    assert k == 2 and snippets.shape == (4, 6, 32, 32)
    for b in range(2):
        for seg in range(2):
            expected = torch.stack([x[b, axis, seg * 3 + pair] for pair in range(3) for axis in (0, 1)])
            assert torch.equal(snippets[b * 2 + seg], expected), f"clip {b}, segment {seg}"
    with torch.no_grad():
        per_segment = torch.stack([model.backbone(snippets.reshape(2, 2, 6, 32, 32)[:, s]) for s in range(2)], 1)
        torch.testing.assert_close(model(x), per_segment.mean(dim=1))


def test_bad_inputs_are_named() -> None:
    flow = build_tsn(5, modality="flow", new_length=5, width=WIDTH)
    with pytest.raises(ValueError, match="7 flow fields, not a multiple of new_length=5"):
        flow(torch.zeros(1, 2, 7, 32, 32))
    with pytest.raises(ValueError, match=r"rgb input must be \(B, 3, K, H, W\), got \(1, 2, 3, 32, 32\)"):
        build_tsn(5, width=WIDTH)(torch.zeros(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="modality='depth'"):
        build_tsn(5, modality="depth")


def test_partial_bn_freezes_every_statistic_but_the_first() -> None:
    torch.manual_seed(0)
    model = build_tsn(5, modality="rgb", width=WIDTH, partial_bn=True).train()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [n.running_mean.clone() for n in norms]
    model(_rgb())
    assert not torch.equal(norms[0].running_mean, before[0]), "the first BatchNorm keeps learning statistics"
    assert all(torch.equal(n.running_mean, b) for n, b in zip(norms[1:], before[1:])), "the others are frozen"
    assert all(n.weight.requires_grad for n in norms), "affine parameters still learn (the paper freezes statistics)"
    assert norms[1].training is False and norms[0].training is True


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_training_lowers_the_loss(modality: str) -> None:
    torch.manual_seed(0)
    model = build_tsn(3, modality=modality, new_length=2, width=WIDTH, dropout=0.0)
    x = _rgb() if modality == "rgb" else _flow()
    losses = fit(model, (x,), torch.tensor([0, 2]), lambda m, x, y: F.cross_entropy(m(*x), y))
    assert losses[-1] < losses[0], f"{modality}: loss did not go down on a fixed batch: {losses}"


def test_two_modalities_fuse_softmax_scores_with_the_papers_weights() -> None:
    torch.manual_seed(0)
    model = build_tsn(5, modality="rgb_flow", new_length=2, width=WIDTH)
    assert isinstance(model, TwoStream) and model.weights == pytest.approx((0.4, 0.6)), "RGB 1 : flow 1.5"
    frames, flow = _rgb(), _flow()
    calibrate_batch_norm(model, frames, flow)
    with torch.no_grad():
        fused = model(frames, flow)
        expected = (1.0 * model.rgb(frames).softmax(-1) + 1.5 * model.flow(flow).softmax(-1)) / 2.5
    torch.testing.assert_close(fused.softmax(-1), expected)
    torch.testing.assert_close(fused.exp().sum(-1), torch.ones(2), msg="the fused logits are log-probabilities")
    logits = build_tsn(5, modality="rgb_flow", new_length=2, width=WIDTH, fusion="logits")
    logits.load_state_dict(model.state_dict())
    logits.eval()
    with torch.no_grad():
        expected = (logits.rgb(frames) + 1.5 * logits.flow(flow)) / 2.5
        torch.testing.assert_close(logits(frames, flow), expected)


def test_two_modalities_train_on_one_loss_per_stream() -> None:
    torch.manual_seed(0)
    model = build_tsn(3, modality="rgb_flow", new_length=2, width=WIDTH, dropout=0.0)

    def loss_fn(m, inputs, y):
        return sum(F.cross_entropy(logits, y) for logits in m.forward_streams(*inputs).values())

    losses = fit(model, (_rgb(), _flow()), torch.tensor([0, 2]), loss_fn)
    assert losses[-1] < losses[0], f"loss did not go down on a fixed batch: {losses}"


def test_multiply_adds_are_k_times_one_frame() -> None:
    """TSN adds nothing to the 2D network but K forwards (the consensus is a mean)."""
    with torch.device("meta"):
        tsn = build_tsn(101, modality="rgb", segments=3).eval()
        frame = GoogLeNet(101).eval()
        clip, image = torch.zeros(1, 3, 3, 224, 224), torch.zeros(1, 3, 224, 224)
    counts = []
    for model, x in ((tsn, clip), (frame, image)):
        with FlopCounterMode(display=False) as counter:
            model(x)
        counts.append(counter.get_total_flops() // 2)
    assert counts[0] == 3 * counts[1], counts
