"""rev2net/registry.py: every family and variant is declared once and everything asks it — the
configs it makes, the checks of a trial's config for its family, what a trial reads from the data,
the variant a logged run trained; and every registered variant builds, trains a step and runs in eval."""

from __future__ import annotations

import pytest
import torch

from rev2net import registry
from rev2net.data.config import DataConfig
from rev2net.registry import DataNeeds, check_compatible, check_spec, data_needs, identify, model_config
from rev2net.spec import LossConfig, ModelConfig, TrialSpec

ZERO = dict(alpha=0.0, beta=0.0, lambda_flow=0.0, lambda_im=0.0)


@pytest.mark.parametrize(
    "model, loss, message",
    [
        (dict(flow_decoder=False), dict(lambda_flow=0.1, alpha=0, beta=0),
         "loss.lambda_flow=0.1 needs the flow decoder but model.flow_decoder=false; set loss.lambda_flow=0"),
        (dict(frame_decoder=False), dict(lambda_im=0.1, lambda_flow=0, alpha=0, beta=0),
         "loss.lambda_im=0.1 needs the frame decoder"),
        (dict(frame_decoder=False), dict(lambda_im=0, alpha=0, beta=0.1),
         r"loss.beta=0.1 weights a DDP term comparing the two decoders' layers but model.frame_decoder=false; "
         r"set loss.beta=0 or build both decoders"),
        (dict(flow_decoder=False), dict(lambda_flow=0, alpha=0.01, beta=0), r"loss.alpha=0.01 .* Gaussians .* "
         r"model.flow_decoder=false; set loss.alpha=0"),
    ],
)
def test_check_compatible_names_keys_and_fix(model: dict, loss: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_compatible(ModelConfig(**model), LossConfig(**loss))


@pytest.mark.parametrize(
    "variant, loss",
    [("rev2net", {}), ("i3d", ZERO), ("no_ddp", dict(alpha=0, beta=0)), ("no_ddp", {}),
     ("no_flow_decoder", dict(alpha=0, beta=0, lambda_flow=0)), ("ddp_low_only", dict(alpha=0)),
     ("forward_frames", {})],
)
def test_check_compatible_accepts_consistent_configs(variant: str, loss: dict) -> None:
    check_compatible(model_config(variant), LossConfig(**loss))


def test_model_config_of_an_unknown_variant_or_key() -> None:
    with pytest.raises(ValueError, match="model variant 'resnet' is not registered"):
        model_config("resnet")
    with pytest.raises(ValueError, match="widht"):
        model_config("rev2net", widht=0.5)


def _inputs(needs: DataNeeds, frames: int) -> dict[str, torch.Tensor]:
    """A batch of 2 as a family reads it, already on the model's scale ([-1, 1])."""
    anchors = needs.segments or frames
    return {"frames": torch.rand(2, 3, anchors, 32, 32) * 2 - 1,
            "flow_input": torch.rand(2, 2, anchors * max(needs.flow_pairs, 1), 32, 32) * 2 - 1}


@pytest.mark.parametrize("name", list(registry.VARIANTS))
def test_every_variant_builds_trains_a_step_and_runs_in_eval(name: str) -> None:
    """Registering a variant is enough to have it tested: it builds from its config, reads what its
    needs declare, trains one step through the objective (every trainable parameter gets a gradient)
    and runs in eval mode, with the registry's label."""
    from rev2net.losses import needs, objective

    v = registry.variant(name)
    loss = LossConfig(**{k.removeprefix("loss."): val for k, val in v.overrides.items() if k.startswith("loss.")})
    frames = int(v.overrides.get("data.frames", 8))
    spec = TrialSpec(data=DataConfig(frames=frames, crop_size=32, short_side=32, flow_downsample=2),
                     model=model_config(name, width=0.125), loss=loss)
    check_spec(spec)
    torch.manual_seed(0)
    model = registry.build(spec.model, 3, spec.data).train()
    declared = data_needs(spec.model, spec.loss)
    batch = _inputs(declared, frames)
    xs = [batch[k] for k in registry.input_keys(declared)]
    out = model(*xs, need=needs(loss))
    assert out.logits.shape == (2, 3) and out.features.shape == (2, model.num_features), name
    terms = objective(out, torch.tensor([0, 1]), batch["frames"], torch.randn(2, 2, frames - 1, 16, 16), loss)
    terms["total"].backward()
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not [n for n in frozen if not n.startswith(("flow_", "frame_"))], f"{name}: no gradient for {frozen[:3]}"
    assert model.eval()(*xs).logits.shape == (2, 3)
    assert registry.label(name) == v.label and registry.family(v.family).name == v.family


def test_data_needs_follow_the_weights() -> None:
    assert data_needs(ModelConfig(), LossConfig()) == DataNeeds(flow_targets=True, frame_targets=True)
    assert data_needs(ModelConfig(), LossConfig(lambda_flow=0.0)) == DataNeeds(frame_targets=True)
    assert data_needs(model_config("i3d"), LossConfig(**ZERO)) == DataNeeds()


def test_check_spec_checks_for_the_family() -> None:
    with pytest.raises(ValueError, match="model.name=i3d has no decoders, but model.flow_decoder=True"):
        check_spec(TrialSpec(model=ModelConfig(name="i3d"), loss=LossConfig(**ZERO)))
    with pytest.raises(ValueError, match="model.name='resnet' is not a model family; known: rev2net, i3d"):
        check_spec(TrialSpec(model=ModelConfig(name="resnet")))
    with pytest.raises(ValueError, match="data.flow_downsample=1 .* set data.flow_downsample=2"):
        check_spec(TrialSpec(data=DataConfig(flow_downsample=1)))


def _logged(name: str, as_text: bool = True) -> dict:
    """The params a trial of a variant logs: its model.* and loss.* settings (MLflow keeps text)."""
    v = registry.variant(name)
    cfg = model_config(name)
    loss = LossConfig(**{k.removeprefix("loss."): val for k, val in v.overrides.items() if k.startswith("loss.")})
    params = {**{f"model.{k}": getattr(cfg, k) for k in ("name", "flow_decoder", "frame_decoder", "frame_target",
                                                         "ddp_layers", "decoder_arch", "modality", "branches",
                                                         "motionnet_training")},
              **{f"loss.{k}": getattr(loss, k) for k in ("alpha", "beta", "lambda_flow", "lambda_im")}}
    return {k: str(val) for k, val in params.items()} if as_text else params


def test_identify_reads_the_variant_back_from_logged_params() -> None:
    for name in registry.VARIANTS:
        assert identify(_logged(name)) == name, name
        assert identify(_logged(name, as_text=False)) == name, name
        assert identify({**_logged(name), "variant": "custom"}) == "custom"
    old = {"model.flow_decoder": "False", "model.frame_decoder": "False", "model.ddp": "none"}  # before model.name
    assert identify(old) == registry.I3D


def test_identify_tells_the_loss_weight_variants_apart_by_the_weights() -> None:
    """no_ddp and the one-form variants are the full network: only the loss.* params tell them apart,
    and a weight logged as "0" is the variant's 0.0."""
    full = _logged("rev2net")
    assert identify({**full, "loss.alpha": "0", "loss.beta": "0"}) == registry.NO_DDP
    assert identify({**full, "loss.alpha": "0"}) == registry.DDP_LOW_ONLY
    assert identify({**full, "loss.beta": "0.0"}) == registry.DDP_HIGH_ONLY
    without_weights = {k: v for k, v in _logged("no_ddp").items() if not k.startswith("loss.")}
    assert identify(without_weights) == registry.REV2NET, "without its weights, no_ddp is the full model"
