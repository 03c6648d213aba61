"""MotionNet's speed: flow against TV-L1, the hidden two-stream family against I3D, and flow targets
computed on the fly against a Rev2Net training step.

    .venv/bin/python benchmarks/motionnet.py [--widths 1.0 0.5 0.25] [--window 11]
        [--frames 16 --size 64 --width 0.25 --batch 4 --motionnet-width 0.25] [--target-frames 16
        --target-size 56 --target-width 0.1875 --target-batch 8 --target-motionnet-width 0.25]

Three parts, every model timed alternately with its comparison (machine-load drifts hit both alike),
the median of `--steps` runs after `--warmup`:
  1. ONE CPU core (torch and OpenCV at one thread), 320x240 frames of a generated video: MotionNet
     inference frame pairs/s per `--widths` (a window of `--window` frames: window - 1 pairs per
     forward) against the project's TV-L1 (`rev2net.data.flow.FlowComputer`, the "fast" preset the
     datasets are extracted with). Target: MotionNet >= 5x TV-L1's pairs/s.
  2. The hidden two-stream variants (a, b, c) against an RGB I3D on the same clips: a training step
     (forward, losses, backward, SGD) and inference (eval forward), at `--frames`x`--size`, I3D width
     `--width`, MotionNet width `--motionnet-width` seeing the whole clip at once (its window).
  3. Flow targets on the fly (`rev2net.motionnet.flow_targets`, a frozen MotionNet on the clip,
     targets at the flow decoder's grid) against one Rev2Net training step with both decoders and
     both DDP forms (as `benchmarks/step.py` times it), at the embedded default's fidelity by default
     (16x56x56, width 0.1875, batch 8). MotionNet's window is the clip (`--target-window`, default
     `--target-frames`: one forward per clip; a shorter window costs a forward per window). Target:
     targets <= 25% of the step.
Parts 2 and 3 run at `--threads` (default 1). Timings are wall-clock on whatever else the machine
runs: on a shared machine, run it twice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rev2net.batch import normalize_frames  # noqa: E402
from rev2net.data.flow import DEFAULT_PRESET, FlowComputer  # noqa: E402
from rev2net.data.synthetic import MOTIONS, render_video  # noqa: E402
from rev2net.hidden_two_stream import VARIANTS, build_hidden_two_stream  # noqa: E402
from rev2net.i3d import InceptionI3d  # noqa: E402
from rev2net.losses import LossConfig, needs, objective  # noqa: E402
from rev2net.model import build_model, flow_size, model_config  # noqa: E402
from rev2net.motionnet import build_motionnet, flow_targets  # noqa: E402
from rev2net.train import seed_everything  # noqa: E402


def timed(fns: dict[str, Callable[[], object]], steps: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, run alternately."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def video_320x240(frames: int) -> np.ndarray:
    """A generated 320x240 clip (objects over a panning background), uint8 (F, 240, 320, 3) RGB."""
    video, _, _ = render_video(MOTIONS[4], frames=frames, height=240, width=320, rng=np.random.default_rng(0),
                               background_rng=np.random.default_rng(1))
    return video


def flow_speed(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    video = video_320x240(args.window)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video]
    tvl1 = FlowComputer("tvl1", DEFAULT_PRESET)
    clip = normalize_frames(torch.from_numpy(video).permute(3, 0, 1, 2)[None].contiguous())  # (1, 3, F, 240, 320)
    pairs = args.window - 1
    fns: dict[str, Callable[[], object]] = {"tvl1": lambda: [tvl1(a, b) for a, b in zip(grey[:pairs], grey[1:])]}
    for width in args.widths:
        model = build_motionnet(frames=args.window, width=width).eval()

        def infer(model=model) -> None:
            with torch.no_grad():
                model(clip)

        fns[f"motionnet_w{width:g}"] = infer
    seconds = timed(fns, max(1, args.steps // 2), 1)
    rates = {name: pairs / s for name, s in seconds.items()}
    print(f"1. flow at 320x240 on ONE core (torch/OpenCV 1 thread), frame pairs/s, {pairs} pairs per call:")
    print(f"   {'TV-L1 (' + DEFAULT_PRESET + ')':28s}{rates['tvl1']:8.1f}")
    for width in args.widths:
        rate = rates[f"motionnet_w{width:g}"]
        print(f"   {f'MotionNet width {width:g}':28s}{rate:8.1f}   {rate / rates['tvl1']:5.1f}x TV-L1   (target >= 5x)")
    return {"pairs_per_s": rates, "speedup_vs_tvl1": {k: v / rates["tvl1"] for k, v in rates.items() if k != "tvl1"}}


def two_stream_cost(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    seed_everything(0)
    x = torch.rand(args.batch, 3, args.frames, args.size, args.size) * 2 - 1
    label = torch.randint(0, args.num_classes, (args.batch,))
    models: dict[str, torch.nn.Module] = {"i3d": InceptionI3d(args.num_classes, width=args.width)}
    for variant in VARIANTS:
        models[variant] = build_hidden_two_stream(args.num_classes, variant=variant, width=args.width,
                                                  motionnet_width=args.motionnet_width, motionnet_frames=args.frames)
    optims = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
              for k, m in models.items()}

    def step(name: str) -> None:
        model = models[name].train()
        optims[name].zero_grad(set_to_none=True)
        if name == "i3d":
            loss = torch.nn.functional.cross_entropy(model(x), label)
        else:
            loss = model.objective(model.forward_streams(x), label)["total"]
        loss.backward()
        optims[name].step()

    def infer(name: str) -> None:
        with torch.no_grad():
            models[name].eval()(x)

    train = timed({k: (lambda k=k: step(k)) for k in models}, args.steps, args.warmup)
    inference = timed({k: (lambda k=k: infer(k)) for k in ("i3d", "c")}, args.steps, args.warmup)
    print(f"2. hidden two-stream vs RGB I3D, clips {tuple(x.shape)}, I3D width {args.width}, MotionNet width "
          f"{args.motionnet_width}, {torch.get_num_threads()} thread(s):")
    rows = [("I3D (RGB) train step", train["i3d"], train["i3d"])]
    for variant, what in zip(VARIANTS, ("MotionNet frozen", "end to end", "end to end + unsupervised")):
        rows.append((f"hidden two-stream ({variant}: {what}) step", train[variant], train["i3d"]))
    rows += [("I3D (RGB) inference", inference["i3d"], inference["i3d"]),
             ("hidden two-stream inference", inference["c"], inference["i3d"])]
    print(f"   {'':54s}{'seconds':>9s}{'x I3D':>8s}")
    for label, seconds, reference in rows:
        print(f"   {label:54s}{seconds:9.3f}{seconds / reference:8.2f}")
    return {"train_step_s": train, "inference_s": inference}


def target_cost(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    seed_everything(0)
    batch, frames, size = args.target_batch, args.target_frames, args.target_size
    model = build_model(model_config("rev2net", width=args.target_width), args.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_cfg = LossConfig()
    window = args.target_window or frames
    motionnet = build_motionnet(frames=window, width=args.target_motionnet_width).eval()
    frames_u8 = torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8)
    x = normalize_frames(frames_u8)
    label = torch.randint(0, args.num_classes, (batch,))
    grid = flow_size(frames, size, size)[1:]
    flow = flow_targets(motionnet, x, grid)

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        objective(model(x, need=needs(loss_cfg)), label, x, flow, loss_cfg)["total"].backward()
        optimizer.step()

    seconds = timed({"rev2net_step": step, "targets": lambda: flow_targets(motionnet, x, grid)}, args.steps,
                    args.warmup)
    ratio = seconds["targets"] / seconds["rev2net_step"]
    print(f"3. flow targets on the fly vs a Rev2Net training step, clips ({batch}, 3, {frames}, {size}, {size}), "
          f"Rev2Net width {args.target_width}, targets {tuple(flow.shape)} from MotionNet width "
          f"{args.target_motionnet_width} (window {window}), {torch.get_num_threads()} thread(s):")
    print(f"   Rev2Net step {seconds['rev2net_step']:.3f} s, targets {seconds['targets']:.3f} s: "
          f"{100 * ratio:.0f}% of the step (target <= 25%)")
    return {"seconds": seconds, "ratio": ratio}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3])
    p.add_argument("--widths", nargs="+", type=float, default=[1.0, 0.5, 0.25], help="MotionNet widths for part 1")
    p.add_argument("--window", type=int, default=11, help="MotionNet window (frames) in part 1 (the paper's 11)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=float, default=0.25, help="I3D width (both streams) in part 2")
    p.add_argument("--motionnet-width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--target-frames", type=int, default=16)
    p.add_argument("--target-size", type=int, default=56)
    p.add_argument("--target-width", type=float, default=0.1875, help="Rev2Net width in part 3")
    p.add_argument("--target-batch", type=int, default=8)
    p.add_argument("--target-motionnet-width", type=float, default=0.25)
    p.add_argument("--target-window", type=int, default=None, help="MotionNet window in part 3 (default: the clip)")
    p.add_argument("--num-classes", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="torch threads in parts 2 and 3")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args()
    print(f"torch {torch.__version__}, cv2 {cv2.__version__}; median of {args.steps} after {args.warmup} warm-up")
    parts = {1: flow_speed, 2: two_stream_cost, 3: target_cost}
    result = {f"part{k}": parts[k](args) for k in args.parts}
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
