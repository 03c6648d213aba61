"""Domain-adversarial training (DANN): a gradient-reversal layer and a domain classifier head.

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation" (ICML 2015). Both Rev2Net
papers add DANN to every model of their UCF101 <-> HMDB51 experiments (Wang, Yao et al. 2018,
Tables 2 and 4; Yao, Wang et al., ICME 2020, Tables 1 and 5) without saying how; this module
follows Ganin & Lempitsky:

    pooled features f (B, F) --GRL(lambda_p)--> domain classifier --> logit (B,) --> BCE vs domain
                                                                                     (0 source, 1 target)

- Gradient reversal layer (the paper's method): identity forward; backward multiplies the gradient
  by -lambda_p, so the classifier learns to tell the domains apart while the encoder below it
  learns to make them indistinguishable, in one backward pass and one optimiser.
- Schedule (the experiments' training procedure): lambda_p = 2 / (1 + exp(-gamma * p)) - 1 with
  gamma = 10 and p the training progress from 0 to 1 (`coefficient`): 0 at the start, while the
  domain classifier is still random and its gradient noise, rising to ~1 by mid-training.
- Domain classifier (the experiments' architecture for the deep Office models): x -> 1024 -> 1024
  -> domain, ReLU, with dropout 0.5 after each hidden layer as in the public reference
  implementations. One logit with binary cross-entropy rather than two with softmax: the same
  model for two domains.

Where we had to choose (neither Rev2Net paper nor DANN fixes these for video):
- Input: the encoder's clip-level feature vector, i.e. what the action classifier reads (Mixed_5c
  averaged over (t, h, w) for I3D / Rev2Net). `DomainAdversary` pools any (B, C, *positions)
  features itself, so every model family plugs in through `forward_features`.
- Width: the hidden layers are 1024 x width (`rev2net.i3d.scale_channels`, at least 1), the same
  multiplier as the encoder, so that a thin CPU-scale encoder (F = 1024 x width) gets a proportionally
  thin head rather than a 1024-wide one that would dwarf it.
- Loss weight 1 (as in DANN: lambda_p alone trades the adversary off); the domain loss is the mean
  BCE over source and target clips together, so a batch should hold both (equal shares, as in DANN).
- Initialisation: PyTorch's default for Linear layers.

Defaults: gamma = 10, hidden = 1024 x width (two layers), dropout 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rev2net.i3d import scale_channels

GAMMA = 10.0  # steepness of the lambda_p schedule (Ganin & Lempitsky 2015)
HIDDEN = 1024  # width of each of the domain classifier's two hidden layers at width 1.0 (ibid.)
DROPOUT = 0.5  # after each hidden layer


# ------------------------------------------------------------------------------------- schedule


def coefficient(progress: float, *, gamma: float = GAMMA) -> float:
    """lambda_p = 2 / (1 + exp(-gamma * p)) - 1 for training progress p in [0, 1] (0 at p = 0,
    0.987 at p = 0.5 with gamma = 10, 1 - 9e-5 at p = 1)."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"DANN progress={progress!r} is not in [0, 1]: pass (step done) / (total steps)")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


# ------------------------------------------------------------------------------ gradient reversal


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -coefficient."""

    @staticmethod
    def forward(ctx, x: Tensor, coefficient: float) -> Tensor:  # type: ignore[override]
        ctx.coefficient = coefficient
        return x.view_as(x)  # a new tensor node, so that autograd calls our backward

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * -ctx.coefficient, None


def reverse_gradient(x: Tensor, coefficient: float) -> Tensor:
    """x unchanged; its gradient is multiplied by -coefficient on the way back."""
    return GradientReversal.apply(x, coefficient)


def pool_features(features: Tensor) -> Tensor:
    """(B, F) unchanged, or (B, C, *positions) (e.g. Mixed_5c (B, C, t, h, w)) averaged to (B, C)."""
    if features.dim() < 2:
        raise ValueError(f"domain features of shape {tuple(features.shape)}: expected (B, F) or (B, C, t, h, w)")
    return features if features.dim() == 2 else features.flatten(2).mean(2)


# ------------------------------------------------------------------------------------------ head


class DomainClassifier(nn.Module):
    """(B, F) pooled features -> domain logits (B,): Linear-ReLU-Dropout twice, then Linear -> 1.

    A positive logit means "target" (domain 1)."""

    def __init__(self, in_features: int, *, width: float = 1.0, hidden: int = HIDDEN, dropout: float = DROPOUT) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"DomainClassifier in_features={in_features} must be >= 1 (the encoder's num_features)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DomainClassifier dropout={dropout} must be in [0, 1)")
        self.hidden = scale_channels(hidden, width)
        self.layers = nn.Sequential(
            nn.Linear(in_features, self.hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(self.hidden, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features).squeeze(1)  # (B, F) -> (B,)


# ---------------------------------------------------------------------------------- adversary


@dataclass
class DomainLoss:
    """One step's domain term: `loss` to add to the objective (it carries the reversed gradient to
    the encoder), `accuracy` (detached; 0.5 is chance on a balanced batch) and the lambda_p used."""

    loss: Tensor  # scalar: mean binary cross-entropy over the batch
    accuracy: Tensor  # scalar, no gradient: share of clips whose domain the classifier gets right
    coefficient: float  # lambda_p the gradient was reversed with


class DomainAdversary(nn.Module):
    """Gradient reversal + domain classifier: features (B, F) or (B, C, *positions), progress p in
    [0, 1] and domain labels (B,) (0 = source, 1 = target) -> `DomainLoss`.

    No host synchronisation: the labels' values are not checked (they must be 0 or 1)."""

    def __init__(self, in_features: int, *, width: float = 1.0, hidden: int = HIDDEN, dropout: float = DROPOUT,
                 gamma: float = GAMMA) -> None:
        super().__init__()
        self.gamma = gamma
        self.classifier = DomainClassifier(in_features, width=width, hidden=hidden, dropout=dropout)

    def forward(self, features: Tensor, progress: float, domains: Tensor) -> DomainLoss:
        pooled = pool_features(features)  # (B, F)
        if domains.shape != pooled.shape[:1]:
            raise ValueError(f"domain labels of shape {tuple(domains.shape)} for features of shape "
                             f"{tuple(features.shape)}: expected ({pooled.shape[0]},), 0 = source, 1 = target")
        lam = coefficient(progress, gamma=self.gamma)
        logits = self.classifier(reverse_gradient(pooled, lam)).float()  # (B,); fp32 under autocast
        target = domains.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        accuracy = ((logits.detach() > 0) == (target > 0.5)).float().mean()
        return DomainLoss(loss, accuracy, lam)


def build_domain_adversary(num_features: int, *, width: float = 1.0, hidden: int = HIDDEN, dropout: float = DROPOUT,
                           gamma: float = GAMMA) -> DomainAdversary:
    """The DANN head for an encoder with `num_features` pooled features (`InceptionI3d.num_features`,
    `Rev2Net.encoder.num_features`: 1024 x width); `width` should be the encoder's."""
    return DomainAdversary(num_features, width=width, hidden=hidden, dropout=dropout, gamma=gamma)
