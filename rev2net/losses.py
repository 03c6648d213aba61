"""The Rev2Net objective, eq. (3) of Yao, Wang et al. (ICME 2020):

    L = CE(c, y) + alpha * KL(N(mu1, s1) || N(mu2, s2)) + beta * sum_l ||f_D1^l - f_D2^l||_F
        + lambda_flow * ||O - O^||_F + lambda_im * ||I - I^||_F

Normalisation (the grid values only mean something against a fixed one):
- `ce`: cross-entropy of the logits, averaged over the batch.
- Every ||.||_F is the Frobenius norm as the paper writes it, NOT squared, of one sample's whole
  tensor (all channels, time steps and pixels), then averaged over the batch.
- `ddp_high`: closed-form KL between the diagonal Gaussians (log-variance parameterisation), summed
  over the latent dimensions, averaged over the batch.
- `ddp_low`: sum over the compared decoder layer pairs (model.ddp_layers) of the per-sample
  Frobenius distance of the two decoders' features, averaged over the batch.
- `im`: I = the input frames (in [-1, 1]) reversed in time and area-resized to the frame decoder's
  grid (T, ceil(H/2), ceil(W/2)); I^ is the decoder's output on that grid, as it comes: its frame i,
  made at clip position i, is compared with input frame T-1-i (rev2net.decoders says why). The
  `forward` frame target (model.frame_target, an ablation) compares it with input frame i.
- `flow`: O = the target flow area-resized to the flow decoder's grid (T-1, ceil(H/2), ceil(W/2)),
  its vectors scaled by the size ratio so they are in pixels of that grid, then divided by
  FLOW_BOUND = 20 px (the TV-L1 clipping bound): targets delivered at the decoder grid lie in [-1, 1],
  the frames' scale. O^ is the decoder's output in those units.
Because the norms are not squared, their values grow with the square root of the tensor size (at
32x224x224, ||I - I^||_F of a blank prediction is ~600) while their gradients have norm 1 per
sample and term; the paper's optimum (alpha=0.01, beta=0.1, lambda_flow=0.1, lambda_im=0.1) is
the default. A term whose weight is 0 is not computed and is absent from the result; the model
runs only what `needs(cfg)` asks for.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from rev2net.batch import FLOW_BOUND  # px; stored flow is clipped at +-20 (rev2net.data.flow.BOUND)
from rev2net.model import Need
from rev2net.output import ModelOutput
from rev2net.spec import FRAME_TARGETS, LossConfig

TERMS = ("ce", "ddp_high", "ddp_low", "flow", "im")  # in the order they are checked for divergence


def needs(cfg: LossConfig) -> Need:
    """What the model's training forward must produce for this objective (weights > 0)."""
    return Need(flow=cfg.lambda_flow > 0, frames=cfg.lambda_im > 0, ddp_low=cfg.beta > 0, ddp_high=cfg.alpha > 0)


# ---------------------------------------------------------------------------------------- terms


def frobenius(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample Frobenius norm ||a - b||_F over all non-batch dimensions, averaged over the batch."""
    if a.shape != b.shape:
        raise ValueError(f"Frobenius term compares tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.linalg.vector_norm((a.float() - b.float()).flatten(1), dim=1).mean()


def kl_diag_gaussians(mu1: Tensor, logvar1: Tensor, mu2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mu1, exp(logvar1)) || N(mu2, exp(logvar2))) per sample (B,), summed over dimensions:
    0.5 * sum(logvar2 - logvar1 + exp(logvar1 - logvar2) + (mu1 - mu2)^2 * exp(-logvar2) - 1)."""
    mu1, logvar1, mu2, logvar2 = (t.float() for t in (mu1, logvar1, mu2, logvar2))
    kl = logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mu1 - mu2).square() * torch.exp(-logvar2) - 1.0
    return 0.5 * kl.sum(dim=1)


def area_resize(x: Tensor, size: tuple[int, int, int]) -> Tensor:
    """(B, C, T, H, W) -> (B, C, *size) by area averaging (an average pool where the ratios are integers)."""
    size = tuple(size)
    if tuple(x.shape[2:]) == size:
        return x
    ratios = [src // dst if dst and src % dst == 0 else 0 for src, dst in zip(x.shape[2:], size)]
    if all(ratios):
        return F.avg_pool3d(x, ratios)
    return F.interpolate(x, size=size, mode="area")


def flow_target(flow: Tensor, size: tuple[int, int, int]) -> Tensor:
    """(B, 2, T-1, h', w') in pixels of its own grid -> (B, 2, T-1, h, w) in FLOW_BOUND pixels of the
    (h, w) grid: area-resized, x scaled by w/w' and y by h/h'."""
    if flow.dim() != 5 or flow.shape[1] != 2:
        raise ValueError(f"flow target must be (B, 2, T-1, h, w), got {tuple(flow.shape)}")
    t, h, w = size
    if flow.shape[2] != t:
        raise ValueError(f"flow target has {flow.shape[2]} time steps, the prediction {t} "
                         "(one per consecutive frame pair)")
    src_h, src_w = flow.shape[-2:]
    flow = area_resize(flow.float(), (t, h, w))
    scale = flow.new_tensor([w / src_w / FLOW_BOUND, h / src_h / FLOW_BOUND]).view(1, 2, 1, 1, 1)
    return flow * scale


def frame_target(frames: Tensor, size: tuple[int, int, int], order: str = "reversed") -> Tensor:
    """Input frames (B, 3, T, H, W) in [-1, 1] -> area-resized to (T, h, w) and, for the `reversed`
    order, reversed in time: target frame i is input frame T-1-i (`forward`: input frame i)."""
    if order not in FRAME_TARGETS:
        raise ValueError(f"frame target order {order!r} is not one of {', '.join(FRAME_TARGETS)} (model.frame_target)")
    target = area_resize(frames.float(), size)  # resized first: area averaging commutes with the flip
    return target.flip(2) if order == "reversed" else target


# ------------------------------------------------------------------------------------ objective


def objective(
    out: ModelOutput, label: Tensor, frames: Tensor, flow: Optional[Tensor], cfg: LossConfig
) -> dict[str, Tensor]:
    """Eq. (3), every term separately: keys `ce`, then `ddp_high`, `ddp_low`, `flow`, `im` for the
    terms whose weight is > 0, then the model's own auxiliary terms (`out.aux`, already weighted),
    and `total` (the sum). Computed in float32. A multi-stream model's `ce` is the sum of its
    streams' cross-entropies (each stream learns from the labels on its own, as two-stream networks
    are trained); its fused logits are what evaluation scores. The labelled samples come first:
    `label` may be shorter than the batch (a domain-adaptation batch whose unlabelled target clips
    follow), and the cross-entropy reads only those; the self-supervised terms read every sample."""
    n = label.shape[0]
    terms: dict[str, Tensor] = {"ce": sum(F.cross_entropy(logits[:n].float(), label)
                                          for logits in (out.stream_logits or [out.logits]))}
    if cfg.alpha > 0:
        if out.gaussians is None:
            raise ValueError(f"loss.alpha={cfg.alpha} > 0 but the model returned no Gaussians "
                             "(build both decoders and pass need=needs(loss_cfg))")
        terms["ddp_high"] = kl_diag_gaussians(*out.gaussians).mean()
    if cfg.beta > 0:
        if not out.ddp_pairs:
            raise ValueError(f"loss.beta={cfg.beta} > 0 but the model returned no decoder features "
                             "(build both decoders and pass need=needs(loss_cfg))")
        terms["ddp_low"] = torch.stack([frobenius(a, b) for a, b in out.ddp_pairs]).sum()
    if cfg.lambda_flow > 0:
        if out.flow is None:
            raise ValueError(f"loss.lambda_flow={cfg.lambda_flow} > 0 but the model returned no flow "
                             "(model.flow_decoder=true and need=needs(loss_cfg))")
        if flow is None:
            raise ValueError(f"loss.lambda_flow={cfg.lambda_flow} > 0 but the batch has no 'flow' target")
        terms["flow"] = frobenius(out.flow, flow_target(flow, tuple(out.flow.shape[2:])))
    if cfg.lambda_im > 0:
        if out.frames is None:
            raise ValueError(f"loss.lambda_im={cfg.lambda_im} > 0 but the model returned no frames "
                             "(model.frame_decoder=true and need=needs(loss_cfg))")
        terms["im"] = frobenius(out.frames, frame_target(frames, tuple(out.frames.shape[2:]),
                                                         out.frame_target or "reversed"))
    total = terms["ce"]
    for name in TERMS[1:]:
        if name in terms:
            total = total + cfg.weight(name) * terms[name]
    for name, value in out.aux.items():
        if name in TERMS:
            raise ValueError(f"the model's auxiliary term {name!r} clashes with a term of eq. (3)")
        terms[name] = value.float()
        total = total + terms[name]
    terms["total"] = total
    return terms
