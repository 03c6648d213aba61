"""Training-step speed: Rev2Net's cost against I3D's, and every model family's step on the GPU path.

    .venv/bin/python benchmarks/step.py --frames 16 --size 64 --width 0.25 --batch 8 --device cpu --threads 1
    python benchmarks/step.py --frames 32 --size 224 --width 1.0 --batch 8 --device cuda     # bf16 on a GPU

Two tables (`--table compare|families|both`, default both):

`families`: for I3D, Rev2Net and every family of the registry (`--families`, default all), eager and
compiled (`--modes`; default eager,compiled on CUDA, eager on a CPU, where inductor's C++ warm-up
takes many minutes per model), with the trainer's layout (`--memory-format`, auto = channels-last on
CUDA) and cudnn.benchmark on as in training: clips/s over `--steps` steps run back to back (one
synchronisation at the end), the step's split into data (host batch to model inputs: the pinned
uint8 batch's copy to the device and its normalisation, or with `--augment device` the resize and
flip of uncut regions there: the loader's own speed is benchmarks/loader.py's), forward (with the
objective), backward and optimizer (CUDA events, or the wall clock on a CPU, one step at a time),
peak memory (CUDA: allocated; CPU: the process's peak resident set during the family's steps), and
MFU = the step's FLOPs (multiply-adds x 2 of forward + backward, counted by
torch.utils.flop_counter.FlopCounterMode on one real step) / step time / the device's peak dense bf16
FLOP/s (PEAK_TFLOPS; `--peak-tflops` for another device; n/a on a CPU unless given).

`compare`: Rev2Net as configured by default against I3D, below.

A training step is forward + objective + backward + SGD update: Rev2Net as configured by default
(both decoders decoding from their Gaussian samples, the reversed frame target, both DDP forms at
the paper's weights) against the I3D baseline (cross-entropy only). The two are timed alternately,
`--steps` times each after `--warmup` untimed steps, and the median is reported. Inference is the
eval-mode forward under no_grad (Rev2Net runs only I3D there).

Memory:
- saved activations: the bytes autograd saves for the backward pass (the activation memory a step
  needs), counted with saved-tensor hooks, everywhere;
- peak RSS (CPU): each model's training step and inference run in a fresh process of their own
  (`--rss-child`), which builds the model and the batch, resets the kernel's peak-RSS mark
  (/proc/self/clear_refs), then runs `--rss-steps` steps: the peak resident set while they ran is
  reported, and that peak less the resident set just before them (what the steps add: activations,
  gradients, optimizer state, the allocator's slack). One process per figure, so that neither
  model's memory, nor memory the allocator kept from the other, is counted for the other;
- on CUDA the peak allocated during a step (torch.cuda.max_memory_allocated).
Multiply-adds and parameters at the measured size and at the full 32x224x224 come from the FLOP
counter (`rev2net.summary`). Targets: training step <= 1.3x I3D's, inference <= 1.05x, training
forward multiply-adds at 32x224x224 <= 1.10x.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rev2net.batch import normalize_frames  # noqa: E402
from rev2net import registry  # noqa: E402
from rev2net.spec import LossConfig  # noqa: E402
from rev2net.losses import needs, objective  # noqa: E402
from rev2net.model import flow_size  # noqa: E402
from rev2net.summary import summarize  # noqa: E402
from rev2net.train import (TrainingStep, autocast, memory_format, seed_everything,  # noqa: E402
                           to_channels_last)
from rev2net.batch import FLOW, FLOW_INPUT, FRAMES, GEOMETRY, LABEL, REGION, to_device  # noqa: E402
from rev2net.data.config import DataConfig  # noqa: E402
from rev2net.spec import ModelConfig  # noqa: E402

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets; matched against
# torch.cuda.get_device_name. MFU is reported against these.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # H100: the SXM part (PCIe: 756, use --peak-tflops)


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


def _proc_status_kib(field: str) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _steps_peak_rss(steps: Callable[[], None]) -> dict[str, int]:
    """Run `steps`; return the resident set just before them and its peak while they ran, in bytes.
    Linux: the peak (VmHWM) is reset first through /proc/self/clear_refs, so what the process did
    before (importing, building) does not count; elsewhere the process's lifetime peak (ru_maxrss)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
        before = _proc_status_kib("VmRSS") * 1024
        steps()
        return {"before_steps": before, "peak": _proc_status_kib("VmHWM") * 1024, "peak_of": "steps"}
    except OSError:
        steps()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"before_steps": 0, "peak": peak if sys.platform == "darwin" else peak * 1024, "peak_of": "process"}


def _args() -> argparse.Namespace:
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
    p.add_argument("--rss-steps", type=int, default=2, help="steps each peak-RSS process runs (0 = no RSS figures)")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)  # "<model>:<train|infer>", internal
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.add_argument("--table", default="both", choices=("compare", "families", "both"))
    p.add_argument("--families", default="all", help="comma-separated registry families for the families table")
    p.add_argument("--modes", default="auto", help="eager,compiled (auto: both on CUDA, eager on a CPU)")
    p.add_argument("--memory-format", default="auto", choices=("auto", "channels_last", "contiguous"))
    p.add_argument("--augment", default="cpu", choices=("cpu", "device"),
                   help="device: the batch holds uncut uint8 regions, resized and flipped on the device")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense bf16 peak (0: from PEAK_TFLOPS)")
    return p.parse_args()


def _setup(args: argparse.Namespace, names: list[str]):
    """Models, optimizers, losses and one batch, on the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as rev2net.train.fit does (trainer.deterministic=false)
    seed_everything(0)
    I3D, REV2NET = registry.I3D, registry.REV2NET
    cfgs = {
        I3D: registry.model_config(I3D, width=args.width),
        REV2NET: registry.model_config(REV2NET, width=args.width, decoder_arch=args.decoder_arch),
    }
    cfgs = {k: c for k, c in cfgs.items() if k in names}
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

    return device, cfgs, models, forward_loss, train_step, infer


def _rss_child(args: argparse.Namespace) -> None:
    """One model, one kind of step, in this fresh process: print its peak RSS figures as JSON."""
    name, kind = args.rss_child.split(":")
    _, _, _, _, train_step, infer = _setup(args, [name])

    def steps() -> None:
        for _ in range(args.rss_steps):
            (train_step if kind == "train" else infer)(name)

    print(json.dumps(_steps_peak_rss(steps)))


def _rss_figures(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, int]]:
    """{"<model>:<kind>": {"peak", "before_steps"}}, each from a fresh process of its own."""
    figures = {}
    for name in names:
        for kind in ("train", "infer"):
            argv = [sys.executable, __file__, "--rss-child", f"{name}:{kind}", "--frames", str(args.frames),
                    "--size", str(args.size), "--width", str(args.width), "--batch", str(args.batch),
                    "--device", "cpu", "--threads", str(args.threads), "--amp", args.amp,
                    "--decoder-arch", args.decoder_arch, "--num-classes", str(args.num_classes),
                    "--rss-steps", str(args.rss_steps)]
            done = subprocess.run(argv, capture_output=True, text=True, check=True)
            figures[f"{name}:{kind}"] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _peak_flops(device: torch.device, override: float) -> tuple[float, str]:
    if override > 0:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{tflops:g} TFLOP/s dense bf16 ({key})"
        return 0.0, f"unknown for {name}: pass --peak-tflops"
    return 0.0, "n/a on a CPU (pass --peak-tflops for one)"


def _family_batch(args: argparse.Namespace, name: str, pin: bool) -> tuple[ModelConfig, LossConfig, DataConfig, dict]:
    """The family's registered variant at this size, its loss, and one host batch as a loader makes it."""
    v = registry.variant(name)
    cfg = registry.model_config(name, width=args.width)
    loss = LossConfig(**{k.removeprefix("loss."): val for k, val in v.overrides.items() if k.startswith("loss.")})
    frames = v.overrides.get("data.frames", args.frames)
    data = DataConfig(frames=frames, crop_size=args.size, short_side=args.size, batch_size=args.batch)
    needs_ = registry.data_needs(cfg, loss)
    n = needs_.segments or frames
    g = torch.Generator().manual_seed(0)
    b, size = args.batch, args.size
    batch: dict = {LABEL: torch.randint(0, args.num_classes, (b,), generator=g)}
    if needs_.rgb:
        if args.augment == "device":  # uncut squares of 7/8 the crop (a 256 short side cut to 224)
            side = max(8, size * 7 // 8)
            batch[REGION] = torch.randint(0, 256, (b, n, side, side, 3), dtype=torch.uint8, generator=g)
            batch[GEOMETRY] = torch.tensor([[side, i % 2, size] for i in range(b)])
        else:
            batch[FRAMES] = torch.randint(0, 256, (b, 3, n, size, size), dtype=torch.uint8, generator=g)
    if needs_.flow_pairs:
        batch[FLOW_INPUT] = (torch.randn(b, 2, n * needs_.flow_pairs, size, size, generator=g) * 3).half()
    if needs_.flow_targets:
        batch[FLOW] = (torch.randn(b, 2, *flow_size(n, size, size), generator=g) * 3).half()
    if pin:
        batch = {k: t.pin_memory() if k != GEOMETRY else t for k, t in batch.items()}
    return cfg, loss, data, batch


def _family_row(args: argparse.Namespace, device: torch.device, name: str, compiled: bool,
                peak: float) -> dict:
    """One family, eager or compiled: throughput, the step's split, peak memory, FLOPs and MFU."""
    seed_everything(0)
    cfg, loss, data, host = _family_batch(args, name, pin=device.type == "cuda")
    model = registry.build(cfg, args.num_classes, data).to(device).train()
    layout = memory_format(device, args.memory_format, model)
    if layout is not None:
        to_channels_last(model)
    inputs = registry.input_keys(registry.data_needs(cfg, loss))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step_fn = TrainingStep(model, loss, device, args.amp, compile=compiled)
    cuda = device.type == "cuda"

    def mark():
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(a, b) -> float:
        return a.elapsed_time(b) / 1e3 if cuda else b - a

    def step(marks: list | None = None) -> None:
        if marks is not None:
            marks.append(mark())
        batch = to_device(dict(host), device)
        xs = [batch[k].contiguous(memory_format=layout) if layout is not None and batch[k].dim() == 5 else batch[k]
              for k in inputs]
        if marks is not None:
            marks.append(mark())
        terms, _, _ = step_fn(xs, batch[LABEL], batch.get(FRAMES), batch.get(FLOW), n=batch[LABEL].shape[0])
        if marks is not None:
            marks.append(mark())
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if marks is not None:
            marks.append(mark())
        optimizer.step()
        if marks is not None:
            marks.append(mark())

    started = time.perf_counter()
    for _ in range(max(args.warmup, 2 if compiled else 1)):  # compiled: the first call compiles
        step()
    _sync(device)
    warmup_s = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss = {}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss["before"] = _proc_status_kib("VmRSS") * 1024
    except OSError:
        pass
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak_bytes = torch.cuda.max_memory_allocated(device) if cuda else (
        _proc_status_kib("VmHWM") * 1024 if rss else 0)
    split = {"data": [], "forward": [], "backward": [], "optimizer": []}
    for _ in range(args.steps):
        marks: list = []
        step(marks)
        _sync(device)
        for i, key in enumerate(split):
            split[key].append(seconds(marks[i], marks[i + 1]))
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step_s = elapsed / args.steps
    return {"family": name, "mode": "compiled" if compiled else "eager", "clips_per_s": args.batch / step_s,
            "step_s": step_s, "split_s": {k: statistics.median(v) for k, v in split.items()},
            "peak_bytes": peak_bytes, "flops_per_step": flops, "flops_per_clip": flops / args.batch,
            "tflops": flops / step_s / 1e12, "mfu": flops / step_s / peak if peak else None,
            "warmup_s": warmup_s}


def families_table(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as rev2net.train.fit does (trainer.deterministic=false)
    names = list(registry.FAMILIES) if args.families == "all" else args.families.split(",")
    modes = ("eager", "compiled") if args.modes == "auto" and device.type == "cuda" else \
        ("eager",) if args.modes == "auto" else tuple(args.modes.split(","))
    peak, peak_text = _peak_flops(device, args.peak_tflops)
    layout = {"channels_last": "channels-last", "contiguous": "contiguous"}.get(
        args.memory_format, "channels-last" if device.type == "cuda" else "layout auto (channels-last for all-3D models)")
    print(f"families: batch {args.batch} x {args.frames}x{args.size}x{args.size} (DCD 8 frames, TSN 3 and TSM 8 "
          f"segments), width {args.width}, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads, amp {args.amp}, "
          f"{layout}, augment on {args.augment}; "
          f"median of {args.steps} steps; peak {peak_text}")
    print(f"{'family':<18}{'mode':<9}{'clips/s':>9}{'step':>9}{'data':>8}{'fwd':>8}{'bwd':>8}{'opt':>8}"
          f"{'peak mem':>10}{'GFLOP/clip':>11}{'TFLOP/s':>9}{'MFU':>7}{'warm-up':>9}")
    rows = []
    for name in names:
        registry.family(name)
        for mode in modes:
            row = _family_row(args, device, name, mode == "compiled", peak)
            rows.append(row)
            sp = {k: f"{v * 1e3:.0f}ms" for k, v in row["split_s"].items()}
            mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
            print(f"{name:<18}{mode:<9}{row['clips_per_s']:>9.1f}{row['step_s'] * 1e3:>7.0f}ms{sp['data']:>8}"
                  f"{sp['forward']:>8}{sp['backward']:>8}{sp['optimizer']:>8}{row['peak_bytes'] / 2**20:>8.0f}MB"
                  f"{row['flops_per_clip'] / 1e9:>11.2f}{row['tflops']:>9.3f}{mfu:>7}{row['warmup_s']:>8.1f}s",
                  flush=True)
    return rows


def main() -> None:
    args = _args()
    if args.rss_child:
        _rss_child(args)
        return
    families = families_table(args) if args.table in ("families", "both") else []
    if args.table == "families":
        if args.json:
            print(json.dumps({"families": families}))
        return
    I3D, REV2NET = registry.I3D, registry.REV2NET
    device, cfgs, models, forward_loss, train_step, infer = _setup(args, [I3D, REV2NET])

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
    peak: dict[str, int] = {}  # CUDA: "<model>:<kind>" -> peak allocated bytes during one step
    for name in models:
        models[name].train()
        saved[name] = _saved_bytes(lambda: forward_loss(name))
        if device.type == "cuda":
            for kind, fn in (("train", train_step), ("infer", infer)):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                fn(name)
                _sync(device)
                peak[f"{name}:{kind}"] = torch.cuda.max_memory_allocated(device)
    rss = _rss_figures(args, list(models)) if device.type == "cpu" and args.rss_steps > 0 else {}

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
        "peak_rss_bytes": rss,
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
          f"{result['train_ratio']:>8.2f}   <= 1.3")
    print(f"{'inference (eval fwd)':<26}{med[f'infer_{I3D}'] * 1e3:>10.1f}ms{med[f'infer_{REV2NET}'] * 1e3:>10.1f}ms"
          f"{result['infer_ratio']:>8.2f}   <= 1.05")
    print(f"{'saved activations':<26}{saved[I3D] / mib:>10.1f}MB{saved[REV2NET] / mib:>10.1f}MB"
          f"{saved[REV2NET] / saved[I3D]:>8.2f}")
    for kind, what in (("train", "train step"), ("infer", "inference")):
        if peak:
            a, b = peak[f"{I3D}:{kind}"], peak[f"{REV2NET}:{kind}"]
            print(f"{'CUDA peak, ' + what:<26}{a / mib:>10.1f}MB{b / mib:>10.1f}MB{b / a:>8.2f}")
        if rss:
            a, b = rss[f"{I3D}:{kind}"], rss[f"{REV2NET}:{kind}"]
            added = (f"steps add {(a['peak'] - a['before_steps']) / mib:.1f}MB vs "
                     f"{(b['peak'] - b['before_steps']) / mib:.1f}MB" if a["peak_of"] == "steps"
                     else "(peaks of the whole processes)")
            print(f"{'peak RSS, ' + what:<26}{a['peak'] / mib:>10.1f}MB{b['peak'] / mib:>10.1f}MB"
                  f"{b['peak'] / a['peak']:>8.2f}   {added}")
    hi, hr = here[I3D]["macs_training"], here[REV2NET]["macs_training"]
    print(f"{'fwd MACs/clip here':<26}{hi / 1e9:>11.3f}G{hr / 1e9:>11.3f}G{hr / hi:>8.2f}")
    fi, fr = full[I3D], full[REV2NET]
    print(f"{'fwd MACs/clip 32x224x224':<26}{fi['macs_training'] / 1e9:>11.2f}G{fr['macs_training'] / 1e9:>11.2f}G"
          f"{fr['macs_training'] / fi['macs_training']:>8.3f}   <= 1.10 (inference {fr['macs_inference'] / 1e9:.2f}G)")
    print(f"{'params 32x224x224':<26}{fi['params_training']:>12,}{fr['params_training']:>12,}"
          f"{fr['params_training'] / fi['params_training']:>8.2f}   (inference {fr['params_inference']:,})")
    if args.json:
        print(json.dumps({**result, "families": families}))


if __name__ == "__main__":
    main()
