"""rev2net/spec.py: every key of the model, loss and trainer config groups is checked, and a bad
value is named with its key and what is allowed; importing it imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rev2net.spec import LossConfig, ModelConfig, TrainerConfig


def test_importing_the_specs_imports_no_torch() -> None:
    code = "import sys, rev2net.spec, rev2net.registry; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(frame_target="backward"), "model.frame_target='backward' is not one of reversed, forward"),
        (dict(ddp_layers=["trunk-head"]), "model.ddp_layers: 'trunk-head' is not a pair of decoder layers of equal"),
        (dict(ddp_layers=[]), r"model.ddp_layers=\[\] names no layer pair.*set loss.beta=0"),
        (dict(ddp_layers=["trunk-trunk", "trunk-trunk"]), "lists a pair twice"),
        (dict(decoder_arch="unet"), "model.decoder_arch='unet' is not one of paper, plain, deep"),
        (dict(width=0.0), "model.width=0.0"),
        (dict(width=float("nan")), "model.width=nan"),
        (dict(dropout=1.0), "model.dropout=1.0"),
        (dict(latent_dim=0), "model.latent_dim=0"),
        (dict(decoder_channels=0), "model.decoder_channels=0"),
        (dict(bn_momentum=0.0), "model.bn_momentum=0.0"),
        (dict(pretrained="/nonexistent/i3d.pt"), "model.pretrained='/nonexistent/i3d.pt' does not exist"),
        (dict(pretrained="imagenet:/nonexistent/g.pth"), "model.pretrained='imagenet:/nonexistent/g.pth' does not "
                                                         "exist: no file at '/nonexistent/g.pth'"),
        (dict(pretrained="kinetics:/w.pt"), r"^model.pretrained='kinetics:/w.pt': unknown scheme 'kinetics'; use "
                                            r"imagenet:/path/googlenet.pth [^\n]*$"),
    ],
)
def test_model_config_names_the_bad_key(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_pretrained_needs_the_published_width(tmp_path) -> None:
    path = tmp_path / "i3d.pt"
    path.write_bytes(b"")
    for spec in (str(path), f"i3d:{path}", f"imagenet:{path}"):
        with pytest.raises(ValueError, match="model.width=0.25; set model.width=1.0"):
            ModelConfig(width=0.25, pretrained=spec)
        assert ModelConfig(pretrained=spec).pretrained == spec


def test_model_config_defaults_are_the_papers_reading() -> None:
    cfg = ModelConfig()
    assert cfg.frame_target == "reversed" and cfg.ddp_layers == ["trunk-trunk", "trunk-refine"]
    assert cfg.flow_decoder and cfg.frame_decoder and cfg.decoder_arch == "paper"


@pytest.mark.parametrize("key", ["alpha", "beta", "lambda_flow", "lambda_im"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_loss_config_rejects_bad_weights(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"loss.{key}="):
        LossConfig(**{key: value})


def test_defaults_are_the_papers_optimum() -> None:
    assert LossConfig() == LossConfig(alpha=0.01, beta=0.1, lambda_flow=0.1, lambda_im=0.1)


@pytest.mark.parametrize("overrides, message", [
    (dict(max_epochs=0), "trainer.max_epochs=0"),
    (dict(lr=0.0), "trainer.lr=0.0"),
    (dict(lr=float("nan")), "trainer.lr=nan"),
    (dict(momentum=1.0), "trainer.momentum=1.0"),
    (dict(schedule="linear"), "trainer.schedule='linear' is not one of cosine, step"),
    (dict(optimizer="adam"), "trainer.optimizer='adam' is not one of sgd, adamw"),
    (dict(amp="fp16"), "trainer.amp='fp16' is not one of auto, bf16, off"),
    (dict(grad_clip=-1.0), "trainer.grad_clip=-1.0"),
    (dict(step_gamma=0.0), "trainer.step_gamma=0.0"),
    (dict(device="tpu:x"), "trainer.device='tpu:x'"),
    (dict(memory_format="nhwc"), "trainer.memory_format='nhwc' is not one of auto, channels_last, contiguous"),
    (dict(sync_every=0), "trainer.sync_every=0 must be an integer >= 1"),
])
def test_trainer_config_names_the_bad_key(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**overrides)
