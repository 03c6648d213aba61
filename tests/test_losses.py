"""The objective (eq. 3): each term on known tensors, its targets, what a zero weight switches off,
and that every auxiliary term trains the encoder."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from rev2net.losses import (
    FLOW_BOUND,
    area_resize,
    flow_target,
    frame_target,
    frobenius,
    kl_diag_gaussians,
    needs,
    objective,
)
from rev2net.model import Need, build_model, flow_size
from rev2net.output import ModelOutput
from rev2net.registry import model_config
from rev2net.spec import LossConfig

PARTS = ("flow_decoder", "frame_decoder", "flow_gaussian", "frame_gaussian")
WEIGHTS = {"ddp_high": "alpha", "ddp_low": "beta", "flow": "lambda_flow", "im": "lambda_im"}
ZERO = dict(alpha=0.0, beta=0.0, lambda_flow=0.0, lambda_im=0.0)


def parts_run(model, fn) -> set[str]:
    """Which of the training-only parts ran their forward while `fn()` ran."""
    seen: set[str] = set()
    handles = [getattr(model, part).register_forward_hook(lambda *_, part=part: seen.add(part))
               for part in PARTS if getattr(model, part) is not None]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return seen


def tiny_batch(frames: int = 8, size: int = 32, batch: int = 2):
    torch.manual_seed(1)
    x = torch.rand(batch, 3, frames, size, size) * 2 - 1
    flow = torch.randn(batch, 2, *flow_size(frames, size, size)) * 5
    label = torch.arange(batch) % 5
    return x, flow, label


def tiny_model(**overrides):
    torch.manual_seed(0)
    return build_model(model_config("rev2net", width=0.125, **overrides), num_classes=5).train()


def test_frobenius_is_per_sample_unsquared_and_batch_averaged() -> None:
    a = torch.stack([torch.ones(3, 4), 2 * torch.ones(3, 4)])  # sample norms sqrt(12) and 2 sqrt(12)
    b = torch.zeros(2, 3, 4)
    assert frobenius(a, b).item() == pytest.approx(1.5 * math.sqrt(12))
    assert frobenius(b, b).item() == 0.0
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    frobenius(x, torch.zeros(1, 2)).backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.6, 0.8]]))  # d||x||/dx = x / ||x||: unit norm
    z = torch.zeros(1, 2, requires_grad=True)
    frobenius(z, torch.zeros(1, 2)).backward()
    assert torch.equal(z.grad, torch.zeros(1, 2)), "no NaN gradient where the two agree exactly"


def test_objective_terms_on_known_tensors() -> None:
    """Each term of eq. (3) on outputs with known distances to their targets."""
    b, t, h, w = 2, 4, 8, 8
    frames = torch.ones(b, 3, t, 2 * h, 2 * w)  # target: reversed, area-resized: still all ones
    flow = torch.full((b, 2, t - 1, h, w), FLOW_BOUND)  # at the prediction's grid: 1 after scaling
    pairs = [(torch.zeros(b, 4, 2, 2), torch.full((b, 4, 2, 2), 3.0)),  # per-sample norm 3 * 4 = 12
             (torch.zeros(b, 1, 1, 1), torch.full((b, 1, 1, 1), -2.0))]  # per-sample norm 2
    mu, logvar = torch.zeros(b, 3), torch.zeros(b, 3)
    out = ModelOutput(
        logits=torch.zeros(b, 5), flow=torch.zeros(b, 2, t - 1, h, w), frames=torch.zeros(b, 3, t, h, w),
        ddp_pairs=pairs, gaussians=(mu, logvar, mu + 2.0, logvar),  # KL = 0.5 * 3 * 2^2 = 6
    )
    cfg = LossConfig(alpha=1.0, beta=0.5, lambda_flow=0.25, lambda_im=2.0)
    terms = objective(out, torch.tensor([0, 3]), frames, flow, cfg)
    expected = {"ce": math.log(5), "ddp_high": 6.0, "ddp_low": 14.0,
                "flow": math.sqrt(2 * (t - 1) * h * w), "im": math.sqrt(3 * t * h * w)}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-6), name
    total = expected["ce"] + 6.0 + 0.5 * 14.0 + 0.25 * expected["flow"] + 2.0 * expected["im"]
    assert terms["total"].item() == pytest.approx(total, rel=1e-6)


def test_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mu1, mu2 = torch.randn(4, 16), torch.randn(4, 16)
    lv1, lv2 = torch.randn(4, 16) * 2, torch.randn(4, 16) * 2
    expected = kl_divergence(Normal(mu1, torch.exp(0.5 * lv1)), Normal(mu2, torch.exp(0.5 * lv2))).sum(dim=1)
    torch.testing.assert_close(kl_diag_gaussians(mu1, lv1, mu2, lv2), expected)
    assert torch.allclose(kl_diag_gaussians(mu1, lv1, mu1, lv1), torch.zeros(4), atol=1e-6)


def test_kl_is_finite_at_the_log_variance_bounds() -> None:
    mu = torch.zeros(1, 4)
    kl = kl_diag_gaussians(mu, torch.full((1, 4), 8.0), mu + 100, torch.full((1, 4), -8.0))
    assert torch.isfinite(kl).all()


def test_frame_target_is_the_clip_reversed_in_time_and_area_resized() -> None:
    t = 6
    frames = torch.arange(t, dtype=torch.float32).view(1, 1, t, 1, 1).expand(2, 3, t, 8, 8).clone()
    frames[:, :, :, :4, :4] += 0.5  # a block the resize must average, not subsample
    target = frame_target(frames, (t, 4, 4))
    assert target.shape == (2, 3, t, 4, 4)
    for step in range(t):
        expected = torch.full((4, 4), float(t - 1 - step))
        expected[:2, :2] += 0.5
        torch.testing.assert_close(target[0, 0, step], expected, msg=f"target step {step} is input step {t - 1 - step}")


def test_frame_target_in_input_order_is_the_clip_resized() -> None:
    frames = torch.rand(2, 3, 5, 8, 8)
    torch.testing.assert_close(frame_target(frames, (5, 4, 4), "forward"), area_resize(frames, (5, 4, 4)))
    with pytest.raises(ValueError, match="'backward' is not one of reversed, forward"):
        frame_target(frames, (5, 4, 4), "backward")


@pytest.mark.parametrize("order", ["reversed", "forward"])
def test_im_term_compares_output_frame_i_with_input_frame_t_minus_1_minus_i(order: str) -> None:
    """The default (the paper's reversed order): ||I - I^||_F with output frame i against input
    frame T-1-i, written out frame by frame; `forward`: against input frame i. The model's output is
    taken as it comes (nothing reorders it)."""
    model = tiny_model(frame_target=order)
    x, flow, label = tiny_batch()
    cfg = LossConfig(**{**ZERO, "lambda_im": 1.0})
    out = model(x, need=needs(cfg))
    t, h, w = out.frames.shape[2:]
    squared = torch.zeros(x.shape[0])
    for i in range(t):
        source = t - 1 - i if order == "reversed" else i
        target = torch.nn.functional.avg_pool2d(x[:, :, source], 2)  # (B, 3, h, w): the frame at the output grid
        squared += (out.frames[:, :, i] - target).square().sum(dim=(1, 2, 3))
    expected = squared.sqrt().mean()
    terms = objective(out, label, x, flow, cfg)
    torch.testing.assert_close(terms["im"], expected)
    other = "forward" if order == "reversed" else "reversed"
    out.frame_target = other
    assert not torch.allclose(objective(out, label, x, flow, cfg)["im"], expected), "the order matters"


def test_flow_target_resizes_by_area_and_scales_the_vectors() -> None:
    flow = torch.zeros(1, 2, 3, 8, 16)
    flow[:, 0] = 8.0  # 8 px right on a 16-px-wide grid
    flow[:, 1] = 4.0  # 4 px down on an 8-px-high grid
    flow[:, 0, :, :2, :4] = 16.0  # one 2x4 block moves twice as far
    target = flow_target(flow.half(), (3, 4, 4))  # float16, as the data pipeline delivers it
    assert target.dtype == torch.float32 and target.shape == (1, 2, 3, 4, 4)
    x_expected = torch.full((4, 4), 8.0 * 4 / 16 / FLOW_BOUND)
    x_expected[0, 0] *= 2
    torch.testing.assert_close(target[0, 0, 1], x_expected)
    torch.testing.assert_close(target[0, 1], torch.full((3, 4, 4), 4.0 * 4 / 8 / FLOW_BOUND))
    same = flow_target(flow, (3, 8, 16))
    torch.testing.assert_close(same, flow / FLOW_BOUND)
    odd = flow_target(torch.ones(1, 2, 3, 10, 10), (3, 4, 4))  # non-integer ratio: area interpolation
    torch.testing.assert_close(odd, torch.full((1, 2, 3, 4, 4), 0.4 / FLOW_BOUND))


def test_flow_target_must_have_one_field_per_frame_pair() -> None:
    with pytest.raises(ValueError, match="time steps"):
        flow_target(torch.zeros(1, 2, 8, 4, 4), (7, 4, 4))


def test_zero_weights_give_total_equal_ce_and_run_no_decoder() -> None:
    model = tiny_model()
    x, flow, label = tiny_batch()
    cfg = LossConfig(**ZERO)
    terms: dict = {}
    run = parts_run(model, lambda: terms.update(objective(model(x, need=needs(cfg)), label, x, flow, cfg)))
    assert list(terms) == ["ce", "total"]
    assert torch.equal(terms["total"], terms["ce"])
    assert run == set(), f"{sorted(run)} ran although no term needs them"


@pytest.mark.parametrize("term", sorted(WEIGHTS))
def test_a_zero_weight_removes_only_its_term(term: str) -> None:
    model = tiny_model()
    x, flow, label = tiny_batch()
    cfg = LossConfig(**{WEIGHTS[term]: 0.0})
    terms = objective(model(x, need=needs(cfg)), label, x, flow, cfg)
    assert set(terms) == {"ce", "total", *WEIGHTS} - {term}
    expected = terms["ce"] + sum(cfg.weight(n) * terms[n] for n in WEIGHTS if n in terms)
    torch.testing.assert_close(terms["total"], expected)


def test_flow_term_alone_runs_no_frame_decoder() -> None:
    model = tiny_model()
    x, flow, label = tiny_batch()
    cfg = LossConfig(**{**ZERO, "lambda_flow": 0.1})
    run = parts_run(model, lambda: objective(model(x, need=needs(cfg)), label, x, flow, cfg))
    assert run == {"flow_decoder", "flow_gaussian"}, "only the flow decoder and the head of its latent z1"


@pytest.mark.parametrize("term", sorted(WEIGHTS))
def test_each_auxiliary_term_sends_gradient_to_the_encoder(term: str) -> None:
    model = tiny_model()
    x, flow, label = tiny_batch()
    cfg = LossConfig(**{**ZERO, WEIGHTS[term]: 1.0})
    terms = objective(model(x, need=needs(cfg)), label, x, flow, cfg)
    assert terms[term].item() > 0
    terms[term].backward()  # the term alone, not the total (which has CE)
    first = model.encoder.Conv3d_1a_7x7.conv3d.weight.grad
    assert first is not None and torch.isfinite(first).all(), term
    assert first.abs().sum() > 0, f"{term} does not reach Conv3d_1a"
    if term == "ddp_high":
        assert model.encoder.Mixed_5c.b0.conv3d.weight.grad.abs().sum() > 0, "KL reaches the high-level features"


def test_objective_names_what_is_missing() -> None:
    model = tiny_model()
    x, flow, label = tiny_batch()
    out = model(x, need=Need())
    with pytest.raises(ValueError, match="loss.lambda_flow=0.1 > 0 but the model returned no flow"):
        objective(out, label, x, flow, LossConfig(**{**ZERO, "lambda_flow": 0.1}))
    out = model(x, need=Need(flow=True))
    with pytest.raises(ValueError, match="the batch has no 'flow'"):
        objective(out, label, x, None, LossConfig(**{**ZERO, "lambda_flow": 0.1}))


