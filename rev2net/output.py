"""What every model family's forward returns to the training loop and the objective.

A family's model takes its inputs in the registry's order (`rev2net.registry.input_keys`: the RGB
clip, and/or flow stacks) and returns a `ModelOutput`. Only `logits` is required; the rest is filled
by the models that have it: the pooled features a domain classifier reads, each stream's logits
for a multi-stream model (each trained by its own cross-entropy, their softmax scores averaged into
`logits`), named auxiliary terms a model computes itself (weighted by its own config, added to the
objective), and Rev2Net's decoder outputs for eq. (3).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from torch import Tensor


@dataclass
class ModelOutput:
    """A forward's results; fields a model does not have, or that were not needed, are None / empty."""

    logits: Tensor  # (B, classes): class scores; a multi-stream model's are log(mean of its streams' softmax)
    features: Optional[Tensor] = None  # (B, F) pooled features before the classifier (DANN's domain head reads them)
    stream_logits: list[Tensor] = field(default_factory=list)  # (B, classes) per stream, each trained by its own CE
    aux: dict[str, Tensor] = field(default_factory=dict)  # named auxiliary loss terms, already weighted by the model
    flow: Optional[Tensor] = None  # Rev2Net: (B, 2, T-1, h, w), in FLOW_BOUND pixels of the h x w grid
    frames: Optional[Tensor] = None  # Rev2Net: (B, 3, T, h, w) in [-1, 1], frame i at clip position i
    frame_target: Optional[str] = None  # Rev2Net: what out.frames is compared with (rev2net.losses.frame_target)
    ddp_pairs: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # Rev2Net: (flow-, frame-decoder feature)
    gaussians: Optional[tuple[Tensor, Tensor, Tensor, Tensor]] = None  # Rev2Net: mu1, logvar1, mu2, logvar2 (B, L)

    def take(self, index: slice) -> "ModelOutput":
        """The output of some samples of the batch (e.g. the labelled ones of a mixed source/target
        batch): every per-sample tensor indexed on its first dimension; `aux` (batch means) is kept."""
        def part(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t[index]

        return replace(self, logits=self.logits[index], features=part(self.features),
                       stream_logits=[t[index] for t in self.stream_logits], flow=part(self.flow),
                       frames=part(self.frames), ddp_pairs=[(a[index], b[index]) for a, b in self.ddp_pairs],
                       gaussians=None if self.gaussians is None else tuple(t[index] for t in self.gaussians))
