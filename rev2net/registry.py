"""The model registry: every model family and every named variant, declared once.

A **family** is a kind of network with its builder (`model.name` selects it): what it needs from
the data, how a trial's config is checked for it, its label in tables. A **variant** is a named
configuration of a family (the rows of the ablation table, the models a comparison runs): its
family, the dotted config keys it sets, its label. The config schema, the search spaces'
validation (the ablation stage names variants by these names), the trial and the tables all ask
this module; nothing else spells a family's or a variant's name.

Like timm's registry, but importable without torch (builders are "module:function" strings,
imported when a model is built), so a dry run validates every planned trial without torch.

    family(name) / variant(name)   the entries (a KeyError-free ValueError naming the known ones)
    build(cfg, num_classes)        the model of cfg.name (torch is imported here, on first use)
    data_needs(model, loss)        what a trial of this config reads from the data (DataNeeds)
    check_spec(spec)               a trial's config, checked for its family before anything is built
    identify(params)               the variant a logged run trained (its `variant` param, else its settings)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

from rev2net.data.config import DataConfig
from rev2net.spec import DECODER_OUTPUT_STRIDE, DEFAULT_FAMILY, I3D_FAMILY, LossConfig, ModelConfig, TrialSpec

# Names (each spelled here only, the default family and I3D's in the config's schema, where I3D's
# also names its checkpoints' model.pretrained scheme; everything else refers to these constants or
# asks the registry).
REV2NET = DEFAULT_FAMILY
I3D = I3D_FAMILY
I3D_FLOW = "i3d_flow"
TWO_STREAM_I3D = "two_stream_i3d"
DCD = "dcd"
TSN = "tsn"
TSM = "tsm"
NO_FRAME_DECODER = "no_frame_decoder"
NO_FLOW_DECODER = "no_flow_decoder"
NO_DDP = "no_ddp"
DDP_LOW_ONLY = "ddp_low_only"
DDP_HIGH_ONLY = "ddp_high_only"
DECODER_PLAIN = "decoder_plain"
DECODER_DEEP = "decoder_deep"
FORWARD_FRAMES = "forward_frames"


@dataclass(frozen=True)
class DataNeeds:
    """What a trial of a family reads from the data (rev2net.data.datasets.ClipSpec samples it)."""

    rgb: bool = True  # the RGB frames as input
    flow_pairs: int = 0  # the flow of this many consecutive pairs from each frame, as input (flow streams)
    segments: int = 0  # 0: a clip of data.frames consecutive frames; K: one frame per segment of K (TSN)
    flow_targets: bool = False  # optical flow of the clip's frame pairs as a training target
    frame_targets: bool = False  # the clip itself as a reconstruction target (its frames, already in the batch)
    target_clips: bool = False  # unlabelled clips of a target domain (domain adaptation)


def input_keys(needs: DataNeeds) -> tuple[str, ...]:
    """The batch keys a family's forward takes, in its order (rev2net.batch)."""
    return (("frames",) if needs.rgb else ()) + (("flow_input",) if needs.flow_pairs else ())


@dataclass(frozen=True)
class Family:
    """A kind of network: `model.name` selects it."""

    name: str
    label: str  # in tables and plots
    builder: str  # "module:function" taking (ModelConfig, num_classes) -> nn.Module
    needs: Callable[[ModelConfig, LossConfig], DataNeeds]
    check: Callable[[TrialSpec], None]  # raises ValueError naming the keys to change


@dataclass(frozen=True)
class Variant:
    """A named configuration of a family: a row of the ablation or comparison tables."""

    name: str
    family: str
    label: str  # in tables and plots
    overrides: Mapping[str, Any] = field(default_factory=dict)  # dotted config keys (model.*, loss.*, data.*) it sets
    system: str = ""  # the comparison table's row (a system, whatever it reads): e.g. "I3D" for i3d, i3d_flow
    modality: str = "rgb"  # the comparison table's column: rgb | flow | rgb_flow


# --------------------------------------------------------------------------- Rev2Net and I3D

def _rev2net_needs(model: ModelConfig, loss: LossConfig) -> DataNeeds:
    return DataNeeds(flow_targets=model.flow_decoder and loss.lambda_flow > 0,
                     frame_targets=model.frame_decoder and loss.lambda_im > 0)


def check_compatible(model: ModelConfig, loss: LossConfig) -> None:
    """Raise ValueError for a Rev2Net model/loss combination that cannot train as asked, naming
    the keys and the fix: a weighted term needs the part that computes it, and either DDP form
    compares the two decoders (their layers, or the Gaussians they decode from)."""
    model.validate()
    loss.validate()
    if loss.lambda_flow > 0 and not model.flow_decoder:
        raise ValueError(f"loss.lambda_flow={loss.lambda_flow} needs the flow decoder but model.flow_decoder=false; "
                         "set loss.lambda_flow=0 or model.flow_decoder=true")
    if loss.lambda_im > 0 and not model.frame_decoder:
        raise ValueError(f"loss.lambda_im={loss.lambda_im} needs the frame decoder but model.frame_decoder=false; "
                         "set loss.lambda_im=0 or model.frame_decoder=true")
    off = [f"model.{k}=false" for k in ("flow_decoder", "frame_decoder") if not getattr(model, k)]
    for key, value, what in (("loss.beta", loss.beta, "the two decoders' layers"),
                             ("loss.alpha", loss.alpha, "the Gaussians the two decoders decode from")):
        if value > 0 and off:
            raise ValueError(f"{key}={value} weights a DDP term comparing {what} but {' and '.join(off)}; "
                             f"set {key}=0 or build both decoders")


def _check_rev2net(spec: TrialSpec) -> None:
    check_compatible(spec.model, spec.loss)
    if spec.data.flow and data_needs(spec.model, spec.loss).flow_targets \
            and spec.data.flow_downsample != DECODER_OUTPUT_STRIDE:
        raise ValueError(
            f"data.flow_downsample={spec.data.flow_downsample} delivers flow at {spec.data.flow_size} px, but the flow "
            f"decoder predicts at 1/{DECODER_OUTPUT_STRIDE} of the crop: set data.flow_downsample={DECODER_OUTPUT_STRIDE}")


def _check_i3d(spec: TrialSpec) -> None:
    if spec.model.has_decoders:
        raise ValueError(f"model.name={I3D} has no decoders, but model.flow_decoder={spec.model.flow_decoder}, "
                         f"model.frame_decoder={spec.model.frame_decoder}; choose model={I3D} (which switches them "
                         f"off) or model.name={REV2NET}")
    _check_rev2net(spec)


# --------------------------------------------------------------------------- the compared families

def _classifier_check(spec: TrialSpec) -> None:
    """Families without decoders train on cross-entropy alone: eq. (3)'s weights must be 0."""
    weighted = [k for k in ("alpha", "beta", "lambda_flow", "lambda_im") if getattr(spec.loss, k) > 0]
    if weighted:
        raise ValueError(f"model.name={spec.model.name} trains on cross-entropy alone, but "
                         + ", ".join(f"loss.{k}={getattr(spec.loss, k)}" for k in weighted)
                         + " weight Rev2Net's decoders; set them to 0 (loss=zero)")


def _flow_check(spec: TrialSpec) -> None:
    _classifier_check(spec)
    if data_needs(spec.model, spec.loss).flow_pairs and not spec.data.flow:
        raise ValueError(f"model.name={spec.model.name} (modality {spec.model.modality}) reads optical flow, but "
                         "data.flow=false; set data.flow=true (its flow is extracted with python -m rev2net.data.flow)")


def _dcd_needs(model: ModelConfig, loss: LossConfig) -> DataNeeds:
    return DataNeeds()


def _segment_needs(default_segments: int):
    def needs_(model: ModelConfig, loss: LossConfig) -> DataNeeds:
        return DataNeeds(rgb=model.modality != "flow", flow_pairs=model.new_length if model.modality != "rgb" else 0,
                         segments=model.segments or default_segments)
    return needs_


def _i3d_flow_needs(model: ModelConfig, loss: LossConfig) -> DataNeeds:
    return DataNeeds(rgb=False, flow_pairs=1)


def _two_stream_needs(model: ModelConfig, loss: LossConfig) -> DataNeeds:
    return DataNeeds(flow_pairs=1)


_NO_DECODERS = {"model.flow_decoder": False, "model.frame_decoder": False}
_ZERO = {"loss.alpha": 0.0, "loss.beta": 0.0, "loss.lambda_flow": 0.0, "loss.lambda_im": 0.0}
_BASELINE = {**_NO_DECODERS, **_ZERO}  # a compared family: no Rev2Net decoders, cross-entropy alone

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(REV2NET, "Rev2Net", "rev2net.model:build_model", _rev2net_needs, _check_rev2net),
    Family(I3D, "I3D", "rev2net.model:build_model", _rev2net_needs, _check_i3d),
    Family(I3D_FLOW, "I3D (flow)", "rev2net.families:build_i3d_flow", _i3d_flow_needs, _flow_check),
    Family(TWO_STREAM_I3D, "two-stream I3D", "rev2net.families:build_two_stream_i3d", _two_stream_needs, _flow_check),
    Family(DCD, "DCD", "rev2net.families:build_dcd", _dcd_needs, _classifier_check),
    Family(TSN, "TSN", "rev2net.families:build_tsn", _segment_needs(3), _flow_check),
    Family(TSM, "TSM", "rev2net.families:build_tsm", _segment_needs(8), _flow_check),
)}

# In the order the tables list them: the full model, its ablations (the papers' Table 2, the earlier
# paper's decoder architectures, the frame target's order), the baseline. "w/o DDP" and the one-form
# rows change only loss weights: the same network, trained without the penalty (Table 2).
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(REV2NET, REV2NET, "Rev2Net (full)", system="Rev2Net"),
    Variant(NO_FRAME_DECODER, REV2NET, "w/o frame decoder",
            {"model.frame_decoder": False, "loss.lambda_im": 0.0, "loss.alpha": 0.0, "loss.beta": 0.0}),
    Variant(NO_FLOW_DECODER, REV2NET, "w/o flow decoder",
            {"model.flow_decoder": False, "loss.lambda_flow": 0.0, "loss.alpha": 0.0, "loss.beta": 0.0}),
    Variant(NO_DDP, REV2NET, "w/o DDP", {"loss.alpha": 0.0, "loss.beta": 0.0}),
    Variant(DDP_LOW_ONLY, REV2NET, "DDP low-level only (β)", {"loss.alpha": 0.0}),
    Variant(DDP_HIGH_ONLY, REV2NET, "DDP high-level only (α)", {"loss.beta": 0.0}),
    Variant(DECODER_PLAIN, REV2NET, "plain decoders", {"model.decoder_arch": "plain"}),
    Variant(DECODER_DEEP, REV2NET, "deep decoders", {"model.decoder_arch": "deep"}),
    Variant(FORWARD_FRAMES, REV2NET, "frames in input order", {"model.frame_target": "forward"}),
    Variant(I3D, I3D, "I3D (no decoders)", {"model.name": I3D, **_BASELINE}, system="I3D"),
    # The compared systems (the papers' Tables 2, 3, 5; the comparison stage): the rows are systems,
    # the columns what they read (RGB, flow, both); Rev2Net reads RGB only (its decoders train only).
    Variant(I3D_FLOW, I3D_FLOW, "I3D (flow)", {"model.name": I3D_FLOW, **_BASELINE}, system="I3D", modality="flow"),
    Variant(TWO_STREAM_I3D, TWO_STREAM_I3D, "two-stream I3D", {"model.name": TWO_STREAM_I3D, **_BASELINE},
            system="I3D", modality="rgb_flow"),
    Variant(TSN, TSN, "TSN (RGB)", {"model.name": TSN, "model.modality": "rgb", **_BASELINE}, system="TSN"),
    Variant("tsn_flow", TSN, "TSN (flow)", {"model.name": TSN, "model.modality": "flow", **_BASELINE},
            system="TSN", modality="flow"),
    Variant("tsn_rgb_flow", TSN, "TSN (RGB + flow)", {"model.name": TSN, "model.modality": "rgb_flow", **_BASELINE},
            system="TSN", modality="rgb_flow"),
    Variant(TSM, TSM, "TSM (RGB)", {"model.name": TSM, "model.modality": "rgb", **_BASELINE}, system="TSM"),
    Variant("tsm_flow", TSM, "TSM (flow)", {"model.name": TSM, "model.modality": "flow", **_BASELINE},
            system="TSM", modality="flow"),
    Variant("tsm_rgb_flow", TSM, "TSM (RGB + flow)", {"model.name": TSM, "model.modality": "rgb_flow", **_BASELINE},
            system="TSM", modality="rgb_flow"),
    Variant(DCD, DCD, "DCD", {"model.name": DCD, "data.frames": 8, **_BASELINE}, system="DCD"),
    Variant("dcd_static", DCD, "DCD static appearance only",
            {"model.name": DCD, "model.branches": ["static"], "data.frames": 8, **_BASELINE}),
    Variant("dcd_motion", DCD, "DCD apparent motion only",
            {"model.name": DCD, "model.branches": ["motion"], "data.frames": 8, **_BASELINE}),
    Variant("dcd_change", DCD, "DCD appearance change only",
            {"model.name": DCD, "model.branches": ["change"], "data.frames": 8, **_BASELINE}),
)}


# --------------------------------------------------------------------------- asking the registry

def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"model.name={name!r} is not a model family; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"model variant {name!r} is not registered; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def label(name: str) -> str:
    """The table label of a variant or family (the name itself when unknown)."""
    entry = VARIANTS.get(name) or FAMILIES.get(name)
    return entry.label if entry is not None else name


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named variant (its `model.*` keys), with `overrides` (e.g. width=0.25)."""
    chosen = {k.removeprefix("model."): v for k, v in variant(name).overrides.items() if k.startswith("model.")}
    chosen.setdefault("name", variant(name).family)
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown ModelConfig keys {sorted(unknown)}; valid: "
                         f"{', '.join(sorted(ModelConfig.__dataclass_fields__))}")
    return replace(ModelConfig(), **{**chosen, **overrides})


def data_needs(model: ModelConfig, loss: LossConfig) -> DataNeeds:
    """What a trial of this config reads from the data besides labelled RGB clips."""
    return family(model.name).needs(model, loss)


def check_spec(spec: TrialSpec) -> None:
    """Cross-group consistency of one trial's config for its family, raised before anything is built
    (the orchestration calls it for every planned trial before the first one starts)."""
    family(spec.model.name).check(spec)
    if spec.adapt.name != "none" and spec.data.eval_name is None:
        raise ValueError(f"adapt.name={spec.adapt.name} adapts to a target dataset, but data.eval_name is not set; "
                         "set data.eval_name, data.eval_root and data.class_map (or adapt=none)")


def build(cfg: ModelConfig, num_classes: int, data: Optional[DataConfig] = None) -> Any:
    """The model of `cfg` for clips of `data` (its family's builder; imports torch)."""
    module, _, function = family(cfg.name).builder.partition(":")
    return getattr(importlib.import_module(module), function)(cfg, num_classes, data)


def _same(logged: Any, value: Any) -> bool:
    """A logged param equals a variant's setting: as numbers where both are numbers (MLflow logs
    0.0 as "0.0", a hand-made run may say "0"), else as text."""
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            return float(logged) == float(value)
        except (TypeError, ValueError):
            return False
    return str(logged) == str(value)


def identify(params: Mapping[str, Any]) -> str:
    """The variant a logged run trained: its `variant` param when it has one, else the registered
    variant whose settings (`model.*` and `loss.*`) all match its params, the most specific one
    (ties: registry order). A setting the params do not hold is not counted either way (runs logged
    before a key existed), so the variants that differ only in loss weights (no_ddp, ddp_*_only) are
    told apart only when the loss.* params are logged; params may be logged strings or typed."""
    if params.get("variant") not in (None, ""):
        return str(params["variant"])
    best, matched = params.get("model.name") or REV2NET, -1
    for v in VARIANTS.values():
        if v.family != (params.get("model.name") or v.family):
            continue
        keys = [k for k in v.overrides if k != "model.name" and k in params]
        if all(_same(params[k], v.overrides[k]) for k in keys) and len(keys) > matched:
            best, matched = v.name, len(keys)
    return best
