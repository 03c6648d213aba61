"""The configuration of one trial, as plain dataclasses that import no torch: `model.`, `loss.` and
`trainer.` (the data's is `rev2net.data.config.DataConfig`), and `TrialSpec`, the four together.

They are Hydra structured configs (field types OmegaConf accepts, every field with a default) and
check their own values in `__post_init__`, with the dotted key, the value and what is allowed, so a
sweep can validate every planned trial (`rev2net.registry.check_spec`) without building anything,
and a dry run imports neither torch nor Ray. What a model family makes of them is its own code's
business (rev2net/model.py documents every `model.` key of Rev2Net).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

from rev2net.data.config import DataConfig

DEFAULT_FAMILY = "rev2net"  # the model family a config builds unless model.name says otherwise (rev2net.registry)
I3D_FAMILY = "i3d"  # the I3D baseline's family (rev2net.registry.I3D), also model.pretrained's scheme of I3D weights
MODALITIES = ("rgb", "flow", "rgb_flow")  # what a two-stream family reads (TSN, TSM)
MOTIONNET_TRAINING = ("frozen", "action", "unsupervised")  # Zhu et al.'s fine-tuning variants (a), (b), (c)
FUSIONS = ("softmax", "logits")  # how a two-stream model fuses its streams' scores
DCD_BRANCHES = ("static", "motion", "change", "diff")  # rev2net.dcd
DECODER_ARCHS = ("paper", "plain", "deep")  # rev2net.decoders builds each (DECODER_ARCHS there)
DECODER_OUTPUT_STRIDE = 2  # the decoders predict on a grid of 1/2 the crop: where flow targets are wanted
FRAME_TARGETS = ("reversed", "forward")  # what output frame i of the frame decoder is compared with: T-1-i | i
# Low-level DDP pairs "<flow decoder layer>-<frame decoder layer>" whose features have equal shapes
# (C x T/2 x H/4 x W/4, every decoder_arch): the first layers of both, and the flow decoder's only
# hidden layer with the frame decoder's last hidden one (rev2net.decoders: LAYERS there).
DDP_LAYER_PAIRS = ("trunk-trunk", "trunk-refine")
IMAGENET_SCHEME = "imagenet"  # model.pretrained=imagenet:/path/googlenet.pth inflates 2D ImageNet weights
PRETRAINED_SCHEMES = (IMAGENET_SCHEME, I3D_FAMILY)  # rev2net.inflate.load_pretrained reads each
SCHEDULES = ("cosine", "step")
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("auto", "bf16", "off")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # trainer.memory_format (rev2net.train.memory_format)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_]*):(?!\\)(.*)$")  # "imagenet:/p", not "C:\p"


def parse_pretrained(value: str) -> tuple[Optional[str], str]:
    """A pretrained spec -> (its scheme or None for a bare path, the path); nothing is checked."""
    match = _SCHEME.match(value)
    return (match.group(1), match.group(2)) if match and not os.path.exists(value) else (None, value)


def split_pretrained(key: str, value: str) -> tuple[str, str]:
    """A pretrained spec -> (scheme, path): `imagenet:/p`, `i3d:/p`, or a bare path (scheme i3d).
    Raises ValueError naming `key` for an unknown scheme or a file that does not exist."""
    scheme, path = parse_pretrained(value)
    scheme = scheme or I3D_FAMILY
    if scheme not in PRETRAINED_SCHEMES:
        raise ValueError(f"{key}={value!r}: unknown scheme {scheme!r}; use {IMAGENET_SCHEME}:/path/googlenet.pth "
                         f"(inflate 2D ImageNet weights), {I3D_FAMILY}:/path/rgb_imagenet.pt or a bare path "
                         "(an I3D checkpoint)")
    if not os.path.isfile(path):
        raise ValueError(f"{key}={value!r} does not exist: no file at {path!r}; give a local checkpoint or "
                         f"{key}=null")
    return scheme, path


def _finite_nonnegative(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}={value!r} must be a finite number >= 0")


@dataclass
class ModelConfig:
    """The `model.` config group: which family (`name`, a name of rev2net.registry) and its settings.

    DDP is not a `model.` switch: Rev2Net always has both Gaussian heads (each decoder decodes from
    its sample) and both decoders' layers, and the loss weights say which DDP form trains
    (`loss.alpha` the KL, `loss.beta` the Frobenius term over `ddp_layers`), so "w/o DDP" is the
    same network with alpha = beta = 0 (rev2net.registry)."""

    name: str = DEFAULT_FAMILY  # model family (rev2net.registry.FAMILIES): rev2net | i3d
    width: float = 1.0  # channel multiplier of I3D and the decoders (1.0 = published I3D; ~0.25 for CPU trials)
    dropout: float = 0.5  # drop probability before the logits conv (the I3D port's 0.5)
    flow_decoder: bool = True  # build the flow decoder (predicts the TV-L1 flow of consecutive frame pairs)
    frame_decoder: bool = True  # build the decoder that reconstructs the frames in reversed order
    frame_target: str = "reversed"  # reversed: output frame i vs input frame T-1-i (the paper) | forward (ablation)
    ddp_layers: list[str] = field(default_factory=lambda: list(DDP_LAYER_PAIRS))  # low-level DDP's layer pairs
    decoder_arch: str = "paper"  # paper | plain (no background compositing) | deep (on Mixed_3c); rev2net.decoders
    decoder_channels: int = 32  # hidden channels of each decoder at width 1.0 (scaled by width)
    latent_dim: int = 64  # dimension of each Gaussian head's latent z, which its decoder decodes from
    bn_momentum: float = 0.01  # BatchNorm running-stats momentum; the port's 0.01 needs ~500 steps: 0.1 in short trials
    pretrained: Optional[str] = None  # imagenet:/p/googlenet.pth (inflated) | i3d:/p/rgb_imagenet.pt or /p (the port's)
    # Other families (rev2net.registry): what each reads is its `needs` there.
    modality: str = "rgb"  # tsn, tsm: rgb | flow | rgb_flow (late fusion of both streams)
    segments: int = 0  # tsn, tsm: segments per video (0: the paper's, TSN 3, TSM 8)
    new_length: int = 5  # tsn, tsm flow: consecutive flow pairs stacked per segment (TSN's 5)
    branches: List[str] = field(default_factory=lambda: ["static", "motion", "change"])  # dcd: its components
    fusion: str = "softmax"  # two-stream families: average the streams' softmax scores | their logits
    motionnet: Optional[str] = None  # hidden_two_stream: a pretrained MotionNet (python -m rev2net.motionnet_pretrain); None: fresh
    motionnet_width: float = 0.25  # hidden_two_stream: MotionNet's width when it starts fresh (a checkpoint has its own)
    motionnet_training: str = "unsupervised"  # hidden_two_stream: frozen (a) | action (b) | unsupervised (c: + its losses)
    unsupervised_weight: float = 1.0  # hidden_two_stream (c): weight of MotionNet's unsupervised losses

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the key, the bad value and what is allowed."""
        if not (math.isfinite(self.width) and 0.0 < self.width <= 4.0):
            raise ValueError(f"model.width={self.width!r} must be in (0, 4]")
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"model.dropout={self.dropout!r} must be in [0, 1)")
        _one_of("model.frame_target", self.frame_target, FRAME_TARGETS)
        _one_of("model.decoder_arch", self.decoder_arch, DECODER_ARCHS)
        layers = list(self.ddp_layers)
        if not layers:
            raise ValueError("model.ddp_layers=[] names no layer pair; list some of "
                             f"{', '.join(DDP_LAYER_PAIRS)} (set loss.beta=0 to switch the low-level DDP off)")
        for pair in layers:
            if pair not in DDP_LAYER_PAIRS:
                raise ValueError(f"model.ddp_layers: {pair!r} is not a pair of decoder layers of equal shape; "
                                 f"choose from {', '.join(DDP_LAYER_PAIRS)} ('<flow decoder layer>-<frame decoder "
                                 "layer>'; the other layers differ in channels or grid)")
        if len(set(layers)) != len(layers):
            raise ValueError(f"model.ddp_layers={layers!r} lists a pair twice")
        if self.decoder_channels < 1:
            raise ValueError(f"model.decoder_channels={self.decoder_channels!r} must be >= 1")
        if not (math.isfinite(self.bn_momentum) and 0.0 < self.bn_momentum <= 1.0):
            raise ValueError(f"model.bn_momentum={self.bn_momentum!r} must be in (0, 1]")
        if self.latent_dim < 1:
            raise ValueError(f"model.latent_dim={self.latent_dim!r} must be >= 1")
        _one_of("model.modality", self.modality, MODALITIES)
        _one_of("model.motionnet_training", self.motionnet_training, MOTIONNET_TRAINING)
        _finite_nonnegative("model.unsupervised_weight", self.unsupervised_weight)
        if not (math.isfinite(self.motionnet_width) and 0.0 < self.motionnet_width <= 4.0):
            raise ValueError(f"model.motionnet_width={self.motionnet_width!r} must be in (0, 4]")
        if self.motionnet is not None and not os.path.isfile(self.motionnet):
            raise ValueError(f"model.motionnet={self.motionnet!r} does not exist (pretrain one with "
                             "python -m rev2net.motionnet_pretrain --dataset D --root R --out ckpt.pt)")
        _one_of("model.fusion", self.fusion, FUSIONS)
        if self.segments < 0 or self.new_length < 1:
            raise ValueError(f"model.segments={self.segments!r} must be >= 0 (0: the family's own) and "
                             f"model.new_length={self.new_length!r} >= 1")
        if not self.branches or any(b not in DCD_BRANCHES for b in self.branches):
            raise ValueError(f"model.branches={list(self.branches)!r} must be a non-empty list of "
                             f"{', '.join(DCD_BRANCHES)}")
        if self.pretrained is not None:
            split_pretrained("model.pretrained", self.pretrained)
            if self.width != 1.0:
                raise ValueError(f"model.pretrained={self.pretrained!r} has the published widths but "
                                 f"model.width={self.width}; set model.width=1.0 or model.pretrained=null")

    @property
    def has_decoders(self) -> bool:
        return self.flow_decoder or self.frame_decoder


@dataclass
class LossConfig:
    """The `loss.` config group: the weights of eq. (3), defaults = the paper's optimum."""

    alpha: float = 0.01  # weight of the high-level DDP (KL between the two Gaussian heads)
    beta: float = 0.1  # weight of the low-level DDP (Frobenius distance of decoder layers)
    lambda_flow: float = 0.1  # weight of the flow prediction term ||O - O^||_F
    lambda_im: float = 0.1  # weight of the reversed-frame reconstruction term ||I - I^||_F

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for key in ("alpha", "beta", "lambda_flow", "lambda_im"):
            _finite_nonnegative(f"loss.{key}", getattr(self, key))

    def weight(self, term: str) -> float:
        return {"ce": 1.0, "ddp_high": self.alpha, "ddp_low": self.beta, "flow": self.lambda_flow,
                "im": self.lambda_im}[term]


@dataclass
class TrainerConfig:
    """The `trainer.` config group (batch size and loader workers belong to the data config);
    rev2net/train.py says why these defaults."""

    max_epochs: int = 40  # epochs of one trial
    max_train_s: float = 0.0  # a wall-time budget per trial (0 = none): whole epochs (each with its validation) while
                              # the next one, at the mean epoch time so far, fits in it, summed over the trial's attempts;
                              # the LR schedule then spans the budget instead of max_epochs (rev2net/train.py, "Budgets")
    optimizer: str = "sgd"  # sgd (with momentum, as I3D is trained) | adamw (for short from-scratch trials)
    lr: float = 0.01  # SGD learning rate at the start (I3D's 0.1 at 160 clips per update, scaled to ~8-16 clips)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 penalty on every parameter
    schedule: str = "cosine"  # cosine (annealed to 0 over max_epochs) | step (x step_gamma every step_every epochs)
    step_every: int = 10  # step schedule: epochs between decays
    step_gamma: float = 0.1  # step schedule: decay factor
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    amp: str = "auto"  # auto (bf16 autocast on CUDA, off on CPU) | bf16 | off
    seed: int = 0  # seeds python, numpy and torch (call seed_everything before build_model too)
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU; CPU is deterministic anyway)
    # The GPU path (rev2net/train.py, "Speed"): none of these changes what is computed beyond rounding.
    memory_format: str = "auto"  # auto (channels_last on CUDA, and on a CPU for all-3D-conv models) | channels_last | contiguous:
                                 # the layout of the model's 3D (and 2D) conv weights and of its 5D inputs
    compile: bool = False  # torch.compile the training step's forward + objective (decoders and DDP terms included);
                           # worth it on a GPU, minutes of warm-up on a CPU
    sync_every: int = 50  # training steps between host synchronisations (the divergence check; metrics stay on the
                          # device until the epoch ends); 1 = every step (a diverged step then never updates)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"trainer.max_epochs={self.max_epochs!r} must be >= 1")
        if not (math.isfinite(self.max_train_s) and self.max_train_s >= 0):
            raise ValueError(f"trainer.max_train_s={self.max_train_s!r} must be a number of seconds >= 0 (0 = no budget)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"trainer.lr={self.lr!r} must be a finite number > 0")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"trainer.momentum={self.momentum!r} must be in [0, 1)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"trainer.weight_decay={self.weight_decay!r} must be a finite number >= 0")
        _one_of("trainer.optimizer", self.optimizer, OPTIMIZERS)
        _one_of("trainer.schedule", self.schedule, SCHEDULES)
        if self.step_every < 1:
            raise ValueError(f"trainer.step_every={self.step_every!r} must be >= 1")
        if not (math.isfinite(self.step_gamma) and 0 < self.step_gamma <= 1):
            raise ValueError(f"trainer.step_gamma={self.step_gamma!r} must be in (0, 1]")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"trainer.grad_clip={self.grad_clip!r} must be a finite number >= 0 (0 = off)")
        _one_of("trainer.amp", self.amp, AMP_MODES)
        _one_of("trainer.memory_format", self.memory_format, MEMORY_FORMATS)
        if isinstance(self.sync_every, bool) or self.sync_every < 1:
            raise ValueError(f"trainer.sync_every={self.sync_every!r} must be an integer >= 1 (1 = every step)")
        if not _DEVICE.match(self.device):
            raise ValueError(f"trainer.device={self.device!r} is not auto or a torch device (cpu, cuda, cuda:N)")


ADAPT_METHODS = ("none", "dann")


@dataclass
class AdaptConfig:
    """The `adapt.` config group: domain adaptation towards data.eval_name's unlabelled training
    videos (the cross-dataset protocol). The papers apply DANN to every model they compare."""

    name: str = "none"  # none (source only) | dann (Ganin & Lempitsky 2015, rev2net.dann)
    domain_weight: float = 1.0  # weight of the domain classifier's loss in the objective
    gamma: float = 10.0  # the gradient reversal's schedule: coefficient 2 / (1 + exp(-gamma p)) - 1
    target_decoders: bool = False  # the target clips also train Rev2Net's self-supervised decoders
    target_batch_size: Optional[int] = None  # target clips per step (None: data.batch_size, as DANN pairs them)

    def __post_init__(self) -> None:
        _one_of("adapt.name", self.name, ADAPT_METHODS)
        if self.target_batch_size is not None and self.target_batch_size < 1:
            raise ValueError(f"adapt.target_batch_size={self.target_batch_size!r} must be null or >= 1")
        _finite_nonnegative("adapt.domain_weight", self.domain_weight)
        _finite_nonnegative("adapt.gamma", self.gamma)


@dataclass
class TrialSpec:
    """Everything one trial needs to know; `rev2net.registry.check_spec` checks the combination."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

