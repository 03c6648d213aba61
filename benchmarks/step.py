"""Rev2Net's cost against I3D's: a training step and inference, same input, same run.

    .venv/bin/python benchmarks/step.py --frames 16 --size 64 --width 0.25 --batch 8 --device cpu --threads 1
    python benchmarks/step.py --frames 32 --size 224 --width 1.0 --batch 8 --device cuda     # bf16 on a GPU

A training step is forward + objective + backward + SGD update: Rev2Net with both decoders and
both DDP forms (the paper's default weights) against the I3D baseline (cross-entropy only). The two
are timed alternately, `--steps` times each after `--warmup` untimed steps, and the median is
reported. Inference is the eval-mode forward under no_grad (Rev2Net runs only I3D there). Memory:
on CUDA the peak allocated during a step; everywhere, the bytes autograd saves for the backward
pass (the activation memory a step needs), counted with saved-tensor hooks. Multiply-adds and
parameters at the measured size and at the full 32x224x224 come from the FLOP counter
(`rev2net.summary`). Targets: training step <= 1.5x I3D's, inference <= 1.05x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rev2net.batch import normalize_frames  # noqa: E402
from rev2net import registry  # noqa: E402
from rev2net.spec import LossConfig  # noqa: E402
from rev2net.losses import needs, objective  # noqa: E402
from rev2net.model import flow_size  # noqa: E402
from rev2net.summary import summarize  # noqa: E402
from rev2net.train import autocast, seed_everything  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn` runs its forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    p.add_argument("--decoder-arch", default="paper")
    p.add_argument("--num-classes", type=int, default=101)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seed_everything(0)

    I3D, REV2NET = registry.I3D, registry.REV2NET
    cfgs = {
        I3D: registry.model_config(I3D, width=args.width),
        REV2NET: registry.model_config(REV2NET, width=args.width, decoder_arch=args.decoder_arch),
    }
    losses = {I3D: LossConfig(alpha=0, beta=0, lambda_flow=0, lambda_im=0), REV2NET: LossConfig()}
    models = {k: registry.build(c, args.num_classes).to(device) for k, c in cfgs.items()}
    optims = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}

    frames_u8 = torch.randint(0, 256, (args.batch, 3, args.frames, args.size, args.size), dtype=torch.uint8)
    frames = normalize_frames(frames_u8.to(device))
    flow = (torch.randn(args.batch, 2, *flow_size(args.frames, args.size, args.size)) * 3).to(device)
    label = torch.randint(0, args.num_classes, (args.batch,), device=device)

    def forward_loss(name: str) -> torch.Tensor:
        with autocast(device, args.amp):
            out = models[name](frames, need=needs(losses[name]))
        return objective(out, label, frames, flow, losses[name])["total"]

    def train_step(name: str) -> None:
        models[name].train()
        optims[name].zero_grad(set_to_none=True)
        forward_loss(name).backward()
        optims[name].step()

    @torch.no_grad()
    def infer(name: str) -> None:
        models[name].eval()
        with autocast(device, args.amp):
            models[name](frames)

    times: dict[str, list[float]] = {f"{kind}_{name}": [] for kind in ("train", "infer") for name in models}
    for kind, fn in (("train", train_step), ("infer", infer)):
        for i in range(args.warmup + args.steps):
            for name in models:  # alternate, so drifts in machine load hit both alike
                _sync(device)
                t0 = time.perf_counter()
                fn(name)
                _sync(device)
                if i >= args.warmup:
                    times[f"{kind}_{name}"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    saved = {}
    peak = {}
    for name in models:
        models[name].train()
        saved[name] = _saved_bytes(lambda: forward_loss(name))
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            train_step(name)
            _sync(device)
            peak[name] = torch.cuda.max_memory_allocated(device)

    here = {k: summarize(c, args.num_classes, args.frames, args.size) for k, c in cfgs.items()}
    full = {k: summarize(c, args.num_classes, 32, 224) for k, c in cfgs.items()}

    result = {
        "input": [args.batch, 3, args.frames, args.size, args.size],
        "width": args.width,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "decoder_arch": args.decoder_arch,
        "train_step_s": {k: med[f"train_{k}"] for k in models},
        "infer_s": {k: med[f"infer_{k}"] for k in models},
        "train_ratio": med[f"train_{REV2NET}"] / med[f"train_{I3D}"],
        "infer_ratio": med[f"infer_{REV2NET}"] / med[f"infer_{I3D}"],
        "saved_activation_bytes": saved,
        "cuda_peak_bytes": peak,
        "macs_per_clip_here": {k: {"inference": here[k]["macs_inference"],
                                   "training_forward": here[k]["macs_training"]} for k in models},
        "full_size_32x224x224": {k: {"params_inference": full[k]["params_inference"],
                                     "params_training": full[k]["params_training"],
                                     "macs_inference": full[k]["macs_inference"],
                                     "macs_training_forward": full[k]["macs_training"]} for k in models},
    }

    mib = 2**20
    print(f"input (B, C, T, H, W) = {tuple(result['input'])}, width {args.width}, {result['device']}, "
          f"{result['threads']} threads, amp {args.amp}, decoders '{args.decoder_arch}', "
          f"median of {args.steps} after {args.warmup} warm-up")
    print(f"{'':<26}{'I3D':>12}{'Rev2Net':>12}{'ratio':>8}   target")
    print(f"{'train step (fwd+bwd+SGD)':<26}{med[f'train_{I3D}'] * 1e3:>10.1f}ms{med[f'train_{REV2NET}'] * 1e3:>10.1f}ms"
          f"{result['train_ratio']:>8.2f}   <= 1.5")
    print(f"{'inference (eval fwd)':<26}{med[f'infer_{I3D}'] * 1e3:>10.1f}ms{med[f'infer_{REV2NET}'] * 1e3:>10.1f}ms"
          f"{result['infer_ratio']:>8.2f}   <= 1.05")
    print(f"{'saved activations':<26}{saved[I3D] / mib:>10.1f}MB{saved[REV2NET] / mib:>10.1f}MB"
          f"{saved[REV2NET] / saved[I3D]:>8.2f}")
    if peak:
        print(f"{'CUDA peak allocated':<26}{peak[I3D] / mib:>10.1f}MB{peak[REV2NET] / mib:>10.1f}MB"
              f"{peak[REV2NET] / peak[I3D]:>8.2f}")
    hi, hr = here[I3D]["macs_training"], here[REV2NET]["macs_training"]
    print(f"{'fwd MACs/clip here':<26}{hi / 1e9:>11.3f}G{hr / 1e9:>11.3f}G{hr / hi:>8.2f}")
    fi, fr = full[I3D], full[REV2NET]
    print(f"{'fwd MACs/clip 32x224x224':<26}{fi['macs_training'] / 1e9:>11.2f}G{fr['macs_training'] / 1e9:>11.2f}G"
          f"{fr['macs_training'] / fi['macs_training']:>8.2f}   (inference {fr['macs_inference'] / 1e9:.2f}G)")
    print(f"{'params 32x224x224':<26}{fi['params_training']:>12,}{fr['params_training']:>12,}"
          f"{fr['params_training'] / fi['params_training']:>8.2f}   (inference {fr['params_inference']:,})")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
