"""TSN: Temporal Segment Networks on a 2D Inception-v1.

Wang et al., "Temporal Segment Networks: Towards Good Practices for Deep Action Recognition" (ECCV
2016). A video is split into K segments; one snippet per segment goes through a shared 2D ConvNet;
the snippets' class scores are combined by a segmental consensus. What this follows from the paper:

- K = 3 segments in training (`segments`, the number the data pipeline samples; the model accepts
  any K, e.g. the paper's 25 at test time);
- average consensus of the snippet scores (the paper's best consensus), in training and in eval;
- the spatial stream sees one RGB frame per segment; the temporal stream a stack of L consecutive
  flow fields (x1, y1, ..., xL, yL as 2L input channels), L = `new_length` = 5;
- cross-modality pre-training: the flow network's conv1 is the ImageNet RGB kernel averaged over
  its channels and replicated (rev2net.googlenet.load_googlenet_state does it for `in_channels != 3`);
- partial BN (`partial_bn=True`): every BatchNorm but the first keeps its running mean and variance
  frozen in training (its affine parameters still learn), which only makes sense with pretrained
  weights, hence off by default;
- extra dropout after global pooling: 0.8 for RGB, 0.7 for flow by default (the paper's ratios);
- two modalities fused late (rev2net.two_stream.TwoStream) with weights RGB 1 : flow 1.5 (the paper's).

Where this chooses:
- the backbone is torchvision's Inception-v1 (rev2net.googlenet) instead of BN-Inception, so that
  TSN, TSM, DCD and I3D share one ImageNet source;
- the two streams are fused by averaging softmax scores (`fusion="softmax"`, as the two-stream I3D);
  the paper fuses the scores before the softmax, available as `fusion="logits"`;
- inputs follow the project's conventions: RGB (B, 3, K, H, W) in [-1, 1], flow (B, 2, K * L, H, W)
  in pixels / FLOW_BOUND (the paper's flow JPEGs, quantised over +-20 px, are the same scale).

Shapes: `forward_segments` gives the snippet scores (B, K, classes), `forward` their mean (B, classes);
`forward_features` the mean of the snippets' pooled features (B, F), so that in eval mode
forward_head(forward_features(x)) equals forward(x) (the head is linear); in training each snippet
has its own dropout mask, as in the paper.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from rev2net.googlenet import GoogLeNet
from rev2net.two_stream import TwoStream

MODALITIES = ("rgb", "flow", "rgb_flow")
DROPOUT = {"rgb": 0.8, "flow": 0.7}  # Wang et al. 2016: dropout after global pooling, per stream


class TSN(nn.Module):
    """One stream of TSN: GoogLeNet on every segment's snippet, average consensus of the scores.

    Args:
        num_classes: classes of the shared classifier.
        modality: "rgb" (one frame per segment) or "flow" (`new_length` flow pairs per segment).
        segments: K, the segments the data pipeline samples per video (any K is accepted).
        new_length: flow pairs per segment (flow only; RGB uses one frame).
        width: backbone channel multiplier (1.0 = the published Inception-v1).
        dropout: drop probability before the classifier.
        partial_bn: freeze the running statistics of every BatchNorm but the first in training.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        modality: str = "rgb",
        segments: int = 3,
        new_length: int = 5,
        width: float = 1.0,
        dropout: float = 0.8,
        partial_bn: bool = False,
    ) -> None:
        super().__init__()
        if modality not in ("rgb", "flow"):
            raise ValueError(f"TSN stream modality={modality!r} is not one of rgb, flow "
                             "(rgb_flow is two streams: build_tsn(..., modality='rgb_flow'))")
        if segments < 1 or new_length < 1:
            raise ValueError(f"segments={segments} and new_length={new_length} must be >= 1")
        self.modality = modality
        self.segments = segments
        self.new_length = 1 if modality == "rgb" else new_length
        self.partial_bn = partial_bn
        in_channels = 3 if modality == "rgb" else 2 * self.new_length
        self.backbone = GoogLeNet(num_classes, width=width, in_channels=in_channels, dropout=dropout)
        self.num_features = self.backbone.num_features

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    def reset_classifier(self, num_classes: int) -> None:
        self.backbone.reset_classifier(num_classes)

    def train(self, mode: bool = True) -> "TSN":
        """Partial BN: after switching modes, every BatchNorm but the first stays in eval mode in training."""
        super().train(mode)
        if mode and self.partial_bn:
            norms = [m for m in self.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
            for norm in norms[1:]:
                norm.eval()
        return self

    # --------------------------------------------------------------------------------- forward
    def snippets(self, x: Tensor) -> tuple[Tensor, int]:
        """RGB (B, 3, K, H, W) or flow (B, 2, K * L, H, W) -> the snippets (B * K, C', H, W) and K.

        A flow snippet stacks its L pairs as channels x1, y1, ..., xL, yL (C' = 2L)."""
        channels = 3 if self.modality == "rgb" else 2
        if x.dim() != 5 or x.shape[1] != channels:
            layout = "(B, 3, K, H, W)" if self.modality == "rgb" else f"(B, 2, K * {self.new_length}, H, W)"
            raise ValueError(f"TSN {self.modality} input must be {layout}, got {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        if t % self.new_length:
            raise ValueError(f"TSN flow input has {t} flow fields, not a multiple of new_length={self.new_length} "
                             "(K segments of L consecutive flow pairs)")
        k = t // self.new_length
        x = x.reshape(b, c, k, self.new_length, h, w)  # (B, C, K, L, H, W)
        x = x.permute(0, 2, 3, 1, 4, 5)  # (B, K, L, C, H, W): channels x1, y1, x2, y2, ...
        return x.reshape(b * k, self.new_length * c, h, w), k

    def snippet_features(self, snippets: Tensor, segments: int) -> Tensor:
        """(B * K, C', H, W) -> pooled backbone features (B * K, F); TSM shifts in time here."""
        return self.backbone.forward_features(snippets)

    def forward_segment_features(self, x: Tensor) -> Tensor:
        """Input -> every snippet's pooled features (B, K, F)."""
        snippets, k = self.snippets(x)
        return self.snippet_features(snippets, k).reshape(x.shape[0], k, -1)

    def forward_features(self, x: Tensor) -> Tensor:
        """Input -> the snippets' mean pooled features (B, F)."""
        return self.forward_segment_features(x).mean(dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        """(..., F) -> (..., classes): dropout and the shared classifier."""
        return self.backbone.forward_head(features)

    def forward_segments(self, x: Tensor) -> Tensor:
        """Input -> every snippet's class scores (B, K, classes)."""
        return self.forward_head(self.forward_segment_features(x))

    def forward(self, x: Tensor) -> Tensor:
        """Input -> the average consensus of the snippet scores (B, classes)."""
        return self.forward_segments(x).mean(dim=1)


def build_tsn(
    num_classes: int,
    *,
    modality: str = "rgb",
    segments: int = 3,
    new_length: int = 5,
    width: float = 1.0,
    dropout: Optional[float] = None,
    partial_bn: bool = False,
    fusion_weights: Sequence[float] = (1.0, 1.5),
    fusion: str = "softmax",
) -> nn.Module:
    """TSN (Wang et al. 2016) for `modality` "rgb" | "flow" (a `TSN`, forward(x)) or "rgb_flow" (a
    `TwoStream` of both, forward(frames, flow)). `dropout=None` takes the paper's per-stream ratio
    (0.8 RGB, 0.7 flow); `fusion_weights` are (rgb, flow). See the module docstring."""
    if modality not in MODALITIES:
        raise ValueError(f"TSN modality={modality!r} is not one of {', '.join(MODALITIES)}")

    def stream(kind: str) -> TSN:
        return TSN(num_classes, modality=kind, segments=segments, new_length=new_length, width=width,
                   dropout=DROPOUT[kind] if dropout is None else dropout, partial_bn=partial_bn)

    if modality == "rgb_flow":
        return TwoStream(stream("rgb"), stream("flow"), weights=fusion_weights, fusion=fusion)
    return stream(modality)
