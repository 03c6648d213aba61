"""rev2net/dann.py: the gradient-reversal layer against autograd, the lambda_p schedule, the domain
classifier on separable features, and the adversarial game on synthetic Gaussians (the GRL pushes
the domain accuracy to chance where a cooperating feature extractor drives it to 1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rev2net.dann import (
    DomainAdversary,
    DomainClassifier,
    build_domain_adversary,
    coefficient,
    pool_features,
    reverse_gradient,
)
from rev2net.i3d import InceptionI3d

PROGRESS = (0.0, 0.05, 0.3, 0.5, 1.0)


@pytest.fixture
def one_thread():
    """Hundreds of steps on tensors of a few hundred numbers: a second thread only adds overhead
    (on a shared 2-core machine, a lot of it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reversal_is_the_identity_forward():
    x = torch.randn(4, 7, requires_grad=True)
    y = reverse_gradient(x, 0.8)
    assert torch.equal(y, x) and y.requires_grad


@pytest.mark.parametrize("p", PROGRESS)
def test_reversal_multiplies_the_gradient_by_minus_the_coefficient(p):
    """Through a nonlinear function of the reversed tensor: the gradient is exactly -lambda_p times
    the one autograd gives without the layer."""
    torch.manual_seed(0)
    x = torch.randn(5, 6, requires_grad=True)
    w = torch.randn(6, 3)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ w).pow(2).sum()

    plain, = torch.autograd.grad(f(x), x)
    lam = coefficient(p)
    reversed_, = torch.autograd.grad(f(reverse_gradient(x, lam)), x)
    assert torch.allclose(reversed_, -lam * plain, rtol=1e-6, atol=1e-7), (p, lam)
    if p == 0.0:
        assert not reversed_.any(), "lambda_0 = 0: no gradient reaches the features at the start"
    else:
        assert (reversed_ * plain <= 0).all() and reversed_.abs().sum() > 0, "the sign is flipped"


def test_coefficient_schedule():
    assert coefficient(0.0) == 0.0
    ps = [i / 100 for i in range(101)]
    values = [coefficient(p) for p in ps]
    assert all(b > a for a, b in zip(values, values[1:])), "strictly increasing in p"
    assert 0.999 < coefficient(1.0) < 1.0
    for p in (0.1, 0.5, 0.9):
        assert coefficient(p) == pytest.approx(2 / (1 + math.exp(-10 * p)) - 1)
    assert coefficient(0.5, gamma=1.0) == pytest.approx(2 / (1 + math.exp(-0.5)) - 1)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"DANN progress={bad}"):
            coefficient(bad)


def test_head_sizes_scale_with_width():
    head = DomainClassifier(192, width=0.1875)
    assert head.hidden == 192
    assert [m.out_features for m in head.layers if isinstance(m, nn.Linear)] == [192, 192, 1]
    assert DomainClassifier(8, width=1e-6).hidden == 1, "at least one unit"
    assert DomainClassifier(1024).hidden == 1024, "the DANN head at width 1"
    assert head(torch.randn(3, 192)).shape == (3,)
    with pytest.raises(ValueError, match="dropout=1.0"):
        DomainClassifier(8, dropout=1.0)


def test_features_are_pooled_over_positions():
    x = torch.randn(2, 5, 2, 3, 3)
    assert torch.allclose(pool_features(x), x.mean(dim=(2, 3, 4)))
    flat = torch.randn(2, 5)
    assert pool_features(flat) is flat
    adversary = DomainAdversary(5, width=1 / 64)
    with pytest.raises(ValueError, match=r"domain labels of shape \(3,\)"):
        adversary(flat, 0.5, torch.zeros(3))


def test_loss_and_accuracy_on_known_logits():
    adversary = DomainAdversary(4, width=1 / 256, dropout=0.0)
    last = adversary.classifier.layers[-1]
    with torch.no_grad():  # logit = +2 for every clip: "target"
        for p in adversary.parameters():
            p.zero_()
        last.bias.fill_(2.0)
    domains = torch.tensor([0, 1, 1, 1])
    out = adversary(torch.randn(4, 4), 0.5, domains)
    expected = F.binary_cross_entropy_with_logits(torch.full((4,), 2.0), domains.float())
    assert torch.allclose(out.loss, expected)
    assert out.accuracy.item() == 0.75 and not out.accuracy.requires_grad
    assert out.coefficient == coefficient(0.5)


def test_the_encoder_below_gets_the_reversed_gradient():
    """A thin I3D: Mixed_5c (B, C, t, h, w) in, pooled by the adversary; the encoder's gradient from
    the domain loss is -lambda_p times the one it would get from the domain classifier directly."""
    torch.manual_seed(0)
    encoder = InceptionI3d(3, width=0.0625).eval()
    adversary = build_domain_adversary(encoder.num_features, width=0.0625).eval()  # eval: no dropout noise
    clips = torch.rand(2, 3, 8, 32, 32) * 2 - 1  # (B, 3, T, H, W) in [-1, 1]
    domains = torch.tensor([0, 1])
    feats = encoder.forward_features(clips)
    assert feats.dim() == 5 and feats.shape[1] == encoder.num_features == adversary.classifier.layers[0].in_features
    weight = encoder.Conv3d_1a_7x7.conv3d.weight
    out = adversary(feats, 0.3, domains)
    reversed_, = torch.autograd.grad(out.loss, weight)
    direct = F.binary_cross_entropy_with_logits(adversary.classifier(pool_features(encoder.forward_features(clips))),
                                                domains.float())
    plain, = torch.autograd.grad(direct, weight)
    assert torch.allclose(out.loss, direct)
    assert plain.abs().sum() > 0
    assert torch.allclose(reversed_, -coefficient(0.3) * plain, rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------ the adversarial game, on Gaussians

DIM = 8


def _gaussians(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n source and n target points in R^8: N(0, I), and N(0, I) shifted by 3 in dimensions 0-3
    (clearly separable). The task label is the sign of dimension 4 in both domains."""
    source, target = torch.randn(n, DIM, generator=g), torch.randn(n, DIM, generator=g)
    target[:, :4] += 3.0
    x = torch.cat([source, target])
    return x, (x[:, 4] > 0).long(), torch.cat([torch.zeros(n), torch.ones(n)])


def test_domain_classifier_separates_two_distributions(one_thread):
    """No reversal, fixed features: the head (default dropout) learns to tell the domains apart."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    adversary = DomainAdversary(DIM, width=1 / 32)  # 32 hidden units
    optimizer = torch.optim.Adam(adversary.parameters(), lr=1e-2)
    for step in range(150):
        x, _, domains = _gaussians(g, 64)
        out = adversary(x, 1.0, domains)  # features need no gradient: the GRL changes nothing here
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    adversary.eval()
    x, _, domains = _gaussians(g, 1000)
    with torch.no_grad():
        assert adversary(x, 1.0, domains).accuracy.item() > 0.97


def _train_jointly(reverse: bool, steps: int = 300) -> tuple[float, float, float]:
    """A tiny MLP feature extractor, a task head trained on source labels, and the domain head, in
    one optimiser (the domain head 10x faster), as in DANN. `reverse=False` is the control: the
    extractor cooperates with the domain head. Returns (held-out domain accuracy, mean training
    domain accuracy over the last 100 steps, held-out task accuracy on the target domain)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    extractor = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, 8))
    task = nn.Linear(8, 2)
    adversary = DomainAdversary(8, width=1 / 32)
    optimizer = torch.optim.Adam([{"params": [*extractor.parameters(), *task.parameters()], "lr": 1e-3},
                                  {"params": adversary.parameters(), "lr": 1e-2}], betas=(0.5, 0.999))
    accuracies = []
    for step in range(steps):
        x, labels, domains = _gaussians(g, 64)
        feats = extractor(x)  # (B, 8)
        if reverse:
            out = adversary(feats, step / (steps - 1), domains)
            domain_loss, accuracy = out.loss, out.accuracy
        else:
            logits = adversary.classifier(feats)
            domain_loss = F.binary_cross_entropy_with_logits(logits, domains)
            accuracy = ((logits > 0) == (domains > 0.5)).float().mean()
        loss = domain_loss + F.cross_entropy(task(feats[:64]), labels[:64])  # labels of the source only
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracies.append(accuracy.item())
    adversary.eval()
    x, labels, domains = _gaussians(g, 1000)
    with torch.no_grad():
        feats = extractor(x)
        held_out = adversary(feats, 1.0, domains).accuracy.item()
        target_task = (task(feats[1000:]).argmax(1) == labels[1000:]).float().mean().item()
    return held_out, sum(accuracies[-100:]) / 100, target_task


def test_gradient_reversal_pushes_domain_accuracy_towards_chance(one_thread):
    cooperative, cooperative_train, _ = _train_jointly(reverse=False)
    assert cooperative > 0.97 and cooperative_train > 0.97, "control: without reversal the domains stay apart"
    adversarial, adversarial_train, target_task = _train_jointly(reverse=True)
    assert adversarial < 0.7 and adversarial_train < 0.65, (adversarial, adversarial_train)
    assert target_task > 0.85, "the features still carry the task: they were aligned, not erased"
