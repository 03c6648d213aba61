"""Parameter counts, multiply-adds and endpoint shapes of Rev2Net, without running it for real.

    python -m rev2net.summary --num-classes 101 --frames 32 --size 224 [--width 1.0] [--json]

The model is built on the meta device (no memory, no compute) and its forward traced by
torch.utils.flop_counter.FlopCounterMode; multiply-adds = counted FLOPs / 2, per clip. "inference"
is the eval-mode forward (I3D alone), "training" the train-mode forward with every built part run
(forward only; a training step is roughly 3x that).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from typing import Any, Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from rev2net.i3d import endpoint_shapes
from rev2net import registry
from rev2net.spec import ModelConfig
from rev2net.model import flow_size

_PARTS = ("encoder", "flow_decoder", "frame_decoder", "flow_gaussian", "frame_gaussian")


def _macs(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Multiply-adds per clip of model(x), in total and per top-level part."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    per_clip = 2 * x.shape[0]  # FLOPs = 2 x multiply-adds
    by_module = counter.get_flop_counts()
    parts = {part: sum(by_module[f"Rev2Net.{part}"].values()) // per_clip
             for part in _PARTS[1:] if f"Rev2Net.{part}" in by_module}
    total = counter.get_total_flops() // per_clip
    parts = {"encoder": total - sum(parts.values()), **parts}  # the encoder runs through forward_intermediates
    return total, parts


def summarize(cfg: ModelConfig, num_classes: int, frames: int, size: int) -> dict[str, Any]:
    """Parameters, multiply-adds per clip and endpoint shapes for a (1, 3, frames, size, size) clip."""
    cfg = replace(cfg, pretrained=None)  # weights do not change any count
    with torch.device("meta"):
        model = registry.build(cfg, num_classes)
        x = torch.zeros(2, 3, frames, size, size)  # 2 clips: train-mode BatchNorm needs > 1 value per channel
    model.eval()
    macs_inference, _ = _macs(model, x)
    model.train()
    macs_training, macs_by_part = _macs(model, x)
    return {
        "config": asdict(cfg),
        "num_classes": num_classes,
        "input": [3, frames, size, size],
        "params_inference": model.inference_parameters(),
        "params_training": sum(p.numel() for p in model.parameters()),
        "macs_inference": macs_inference,
        "macs_training": macs_training,
        "macs_training_by_part": macs_by_part,
        "flow_size": list(flow_size(frames, size, size)),
        "endpoints": {k: list(v) for k, v in endpoint_shapes(model.encoder, frames, size).items()},
    }


def _format(s: dict[str, Any]) -> str:
    lines = [
        f"Rev2Net {s['config']}",
        f"input (B, {', '.join(map(str, s['input']))}), {s['num_classes']} classes",
        f"parameters   inference {s['params_inference']:>14,}   training {s['params_training']:>14,}",
        f"multiply-adds inference {s['macs_inference'] / 1e9:>12.3f} G   "
        f"training {s['macs_training'] / 1e9:>12.3f} G (forward, per clip)",
    ]
    for part, macs in s["macs_training_by_part"].items():
        lines.append(f"  {part:<14} {macs / 1e6:>14,.1f} M")
    lines.append(f"flow target (T-1, h, w): {tuple(s['flow_size'])}")
    lines.append("endpoints (without batch):")
    lines += [f"  {name:<18} {tuple(shape)}" for name, shape in s["endpoints"].items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rev2net.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-classes", type=int, default=101)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--variant", default=registry.REV2NET, choices=list(registry.VARIANTS),
                        help="named model variant (rev2net.registry.VARIANTS)")
    parser.add_argument("--decoder-arch", default=None, help="override model.decoder_arch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"width": args.width}
    if args.decoder_arch is not None:
        overrides["decoder_arch"] = args.decoder_arch
    try:
        cfg = registry.model_config(args.variant, **overrides)
    except ValueError as err:
        parser.error(str(err))
    summary = summarize(cfg, args.num_classes, args.frames, args.size)
    print(json.dumps(summary) if args.json else _format(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
