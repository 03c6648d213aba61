"""Unsupervised MotionNet pretraining on a dataset's training videos (no flow, no labels).

    python -m rev2net.motionnet_pretrain --dataset D --root R --out ckpt.pt [--epochs N] [--width W] [--frames T]
        [--size S] [--short-side S'] [--batch-size B] [--lr LR] [--clips-per-video K] [--threads N] ...

Zhu et al., "Hidden Two-Stream Convolutional Networks for Action Recognition", Sec. 3.1: MotionNet
is pretrained on the action dataset's own videos with the unsupervised objective
(`rev2net.motionnet.unsupervised_terms`). Clips come from the project's data pipeline
(`rev2net.data.datasets.ClipDataset` on the split's training list: random temporal offset,
`--size` crop of frames whose short side is resized to `--short-side`, horizontal flip; a short
video repeats its last frame, a zero-flow pair, rather than wrapping around). An epoch visits
every training video `--clips-per-video` times, in an order that is a function of (seed, epoch).

Adam with a cosine learning-rate decay over all steps and the gradient norm clipped at
`--clip-grad`. A run that diverges stops with an error: a non-finite loss, or a flow that points
every pixel out of the frame (border masking then leaves nothing to compare, a degenerate minimum
with no gradient back). A checkpoint (`--out`: weights, optimizer, schedule, per-epoch history)
is written atomically after every epoch; running the same command again resumes from it, and a
checkpoint of another configuration is refused with the key that differs. Per epoch it prints the unsupervised terms and, for a dataset with exact flow (the
generated `synthetic` one), the end-point error on the test list's videos at their own resolution
(all frame pairs, over all pixels and on the moving objects, beside zero flow). The last stdout
line is a JSON object: `epe` (null without ground truth), `object_epe`, `checkpoint`, timings.

The CPU-scale setting for the generated dataset (80x80 videos), whose 16-frame window matches the
embedded default's 16-frame clips (one MotionNet forward per clip for on-the-fly targets):

    python -m rev2net.motionnet_pretrain --dataset synthetic --root data/synthetic --out motionnet.pt \
        --width 0.25 --frames 16 --size 64 --short-side 80 --epochs 10 --clips-per-video 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from rev2net.batch import FRAMES, normalize_frames
from rev2net.data.config import DATASETS
from rev2net.data.datasets import ClipDataset, ClipSpec, EpochSampler
from rev2net.data.layouts import VideoRecord, load_split
from rev2net.data.video import open_video, read_frames
from rev2net.motionnet import (
    UNSUPERVISED_TERMS,
    MotionNet,
    MotionNetLoss,
    build_motionnet,
    motionnet_state,
    unsupervised_terms,
)
from rev2net.train import seed_everything

CHECKPOINT_FORMAT = 1


@dataclass
class PretrainConfig:
    """One pretraining run. Fields marked (identity) must match a checkpoint to resume from it."""

    dataset: str  # data layout (rev2net.data.config.DATASETS)
    root: str  # dataset folder
    out: str  # checkpoint path: written every epoch, resumed from when it exists
    split: int = 1  # (identity) official split whose training list is used
    epochs: int = 10  # (identity) the cosine schedule spans all of them
    width: float = 0.25  # (identity) MotionNet channel multiplier
    frames: int = 11  # (identity) frames per clip = the network's window (the paper: 11)
    size: int = 80  # (identity) square crop side, pixels
    short_side: Optional[int] = None  # (identity) short side resized to this before cropping; None: = size
    batch_size: int = 8  # (identity)
    lr: float = 1e-3  # (identity) Adam's peak learning rate
    weight_decay: float = 0.0  # (identity)
    clip_grad: float = 1.0  # (identity) gradient norm clipped to this (0: off); see the module docstring
    clips_per_video: int = 1  # (identity) clips per training video per epoch
    seed: int = 0  # (identity) data order, crops, flips and initial weights
    loss: MotionNetLoss = field(default_factory=MotionNetLoss)  # (identity) the lambdas and deltas
    workers: int = 1  # loader processes (0: decode in this process)
    threads: int = 0  # torch CPU threads (0: torch's default)
    eval_videos: Optional[int] = None  # test videos used for the end-point error (None: all)
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.dataset in DATASETS, "--dataset", self.dataset, " | ".join(DATASETS)),
            (self.epochs >= 1, "--epochs", self.epochs, "an integer >= 1"),
            (math.isfinite(self.width) and self.width > 0, "--width", self.width, "a number > 0"),
            (self.frames >= 2, "--frames", self.frames, "an integer >= 2"),
            (self.size >= 8, "--size", self.size, "an integer >= 8"),
            (self.short_side is None or self.short_side >= self.size, "--short-side", self.short_side,
             f"an integer >= --size ({self.size})"),
            (self.batch_size >= 1, "--batch-size", self.batch_size, "an integer >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "--lr", self.lr, "a number > 0"),
            (math.isfinite(self.clip_grad) and self.clip_grad >= 0, "--clip-grad", self.clip_grad, "a number >= 0"),
            (self.clips_per_video >= 1, "--clips-per-video", self.clips_per_video, "an integer >= 1"),
            (self.workers >= 0, "--workers", self.workers, "an integer >= 0"),
            (self.eval_videos is None or self.eval_videos >= 1, "--eval-videos", self.eval_videos, "an integer >= 1"),
        ]
        for ok, key, value, allowed in checks:
            if not ok:
                raise ValueError(f"{key}={value!r} is not allowed: expected {allowed}")

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed."""
        keys = ("dataset", "split", "epochs", "width", "frames", "size", "short_side", "batch_size", "lr",
                "weight_decay", "clip_grad", "clips_per_video", "seed")
        return {**{k: getattr(self, k) for k in keys}, "loss": self.loss.as_dict()}


# ------------------------------------------------------------------------------ ground truth


def has_ground_truth(dataset: str, root: str) -> bool:
    return dataset == "synthetic" and os.path.isdir(os.path.join(root, "flow_gt"))


@torch.no_grad()
def ground_truth_epe(model: MotionNet, root: str, records: list[VideoRecord], device: torch.device) -> dict[str, float]:
    """End-point error (pixels) of MotionNet's flow against the generated dataset's exact flow, every
    frame pair of every video in `records`, at the videos' own resolution: over all pixels (`epe`)
    and on the moving objects (`object_epe`), with zero flow's errors beside (as
    `rev2net.data.synthetic.flow_epe` measures stored TV-L1 flow)."""
    from rev2net.data.synthetic import ground_truth_flow

    was_training = model.training
    model.eval()
    sums = dict.fromkeys(("epe", "zero_flow_epe", "object_epe", "object_zero_flow_epe"), 0.0)
    pixels = object_pixels = pairs = 0
    try:
        for record in records:
            gt, objects = ground_truth_flow(root, record.key)  # (F-1, 2, H, W), (F-1, H, W)
            reader = open_video(record.path)
            frames = read_frames(reader, np.arange(len(reader)), record.path)  # (F, H, W, 3)
            clip = normalize_frames(torch.from_numpy(frames).permute(3, 0, 1, 2)[None]).to(device)
            flow = model(clip)[0].transpose(0, 1).cpu().numpy()  # (F-1, 2, H, W)
            n = min(len(flow), len(gt))
            error = np.sqrt(((flow[:n] - gt[:n]) ** 2).sum(1))
            magnitude = np.sqrt((gt[:n] ** 2).sum(1))
            on = objects[:n]
            sums["epe"] += float(error.sum())
            sums["zero_flow_epe"] += float(magnitude.sum())
            sums["object_epe"] += float(error[on].sum())
            sums["object_zero_flow_epe"] += float(magnitude[on].sum())
            pixels += error.size
            object_pixels += int(on.sum())
            pairs += n
    finally:
        model.train(was_training)
    result = {k: round(v / max(object_pixels if k.startswith("object") else pixels, 1), 4) for k, v in sums.items()}
    return {**result, "pairs": pairs}


# ----------------------------------------------------------------------------------- training


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (loader workers)."""
    try:
        import psutil

        me = psutil.Process()
        times = [me.cpu_times()] + [c.cpu_times() for c in me.children(recursive=True)]
        return float(sum(t.user + t.system for t in times))
    except Exception:  # psutil missing, or a child ended while being read
        return time.process_time()


def _save(path: str, state: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _resume(cfg: PretrainConfig) -> Optional[dict[str, Any]]:
    if not os.path.isfile(cfg.out):
        return None
    state = torch.load(cfg.out, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT or "identity" not in state:
        raise ValueError(f"--out {cfg.out} exists and is not a pretraining checkpoint of this version; "
                         "choose another --out or delete it")
    wanted = json.loads(json.dumps(cfg.identity()))
    for key, value in wanted.items():
        if state["identity"].get(key) != value:
            raise ValueError(f"--out {cfg.out} was written with {key}={state['identity'].get(key)!r}, this run has "
                             f"{key}={value!r}: use the same value to resume, or another --out to start afresh")
    return state


def _loader(cfg: PretrainConfig, records: list[VideoRecord]) -> DataLoader:
    spec = ClipSpec(frames=cfg.frames, stride=1, crop_size=cfg.size, short_side=cfg.short_side or cfg.size,
                    policy="pad")  # a repeated frame is a zero-flow pair; a wrap-around would be a jump
    dataset = ClipDataset(records * cfg.clips_per_video, spec)
    sampler = EpochSampler(len(dataset), seed=cfg.seed)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=len(dataset) >= cfg.batch_size,
                      num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                      worker_init_fn=_worker_init if cfg.workers else None)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train (or resume) MotionNet as configured; returns the final summary (what the CLI prints as JSON)."""
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    split = load_split(cfg.dataset, cfg.root, cfg.split)
    if not split.train:
        raise ValueError(f"split {cfg.split} of {cfg.dataset} at {cfg.root} lists no training videos")
    ground_truth = has_ground_truth(cfg.dataset, cfg.root)
    eval_records = split.test[: cfg.eval_videos] if ground_truth else []

    seed_everything(cfg.seed)
    model = build_motionnet(frames=cfg.frames, width=cfg.width).to(device)
    loader = _loader(cfg, split.train)
    steps_per_epoch = len(loader)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    state = _resume(cfg)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start_epoch = state["epoch"]
        print(f"resuming {cfg.out} after epoch {start_epoch}/{cfg.epochs}", file=sys.stderr)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        loader.sampler.set_epoch(epoch)
        epoch_wall, epoch_cpu = time.perf_counter(), _cpu_seconds()
        sums = dict.fromkeys((*UNSUPERVISED_TERMS, "total"), 0.0)
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                       disable=not cfg.progress, file=sys.stderr)
        for batch in batches:
            frames = normalize_frames(batch[FRAMES].to(device))
            terms = unsupervised_terms(frames, model.pyramid(frames), cfg.loss)
            total = cfg.loss.total(terms)
            if not torch.isfinite(total) or terms["pixel"].item() == 0:
                what = "every pixel's flow leaves the frame" if torch.isfinite(total) else f"the loss is {total.item()}"
                raise FloatingPointError(f"MotionNet diverged at epoch {epoch + 1}: {what} "
                                         f"({', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())}); "
                                         "lower --lr or --clip-grad")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            for name, value in terms.items():
                sums[name] += value.item()
            sums["total"] += total.item()
            batches.set_postfix(loss=f"{total.item():.4f}")
        record: dict[str, Any] = {"epoch": epoch + 1, **{k: round(v / steps_per_epoch, 5) for k, v in sums.items()},
                                  "lr": optimizer.param_groups[0]["lr"],
                                  "wall_s": round(time.perf_counter() - epoch_wall, 2),
                                  "cpu_s": round(_cpu_seconds() - epoch_cpu, 2)}
        if ground_truth:
            record.update(ground_truth_epe(model, cfg.root, eval_records, device))
        history.append(record)
        _save(cfg.out, motionnet_state(model, format=CHECKPOINT_FORMAT, identity=cfg.identity(), epoch=epoch + 1,
                                       optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                       history=history))
        line = (f"epoch {epoch + 1}/{cfg.epochs}  total {record['total']:.4f}  pixel {record['pixel']:.4f}  "
                f"smooth {record['smooth']:.4f}  ssim {record['ssim']:.4f}  lr {record['lr']:.2e}  "
                f"{record['wall_s']:.0f} s ({record['cpu_s']:.0f} s CPU)")
        if ground_truth:
            line += (f"  EPE {record['epe']:.3f} px (zero flow {record['zero_flow_epe']:.3f}), moving objects "
                     f"{record['object_epe']:.3f} px (zero flow {record['object_zero_flow_epe']:.3f})")
        print(line, flush=True)

    last = history[-1] if history else {}
    if ground_truth and state is not None and start_epoch >= cfg.epochs:  # nothing trained: measure anew
        last = {**last, **ground_truth_epe(model, cfg.root, eval_records, device)}
    summary: dict[str, Any] = {
        "epe": last.get("epe") if ground_truth else None,
        "object_epe": last.get("object_epe") if ground_truth else None,
        "zero_flow_epe": last.get("zero_flow_epe") if ground_truth else None,
        "object_zero_flow_epe": last.get("object_zero_flow_epe") if ground_truth else None,
        "eval_pairs": last.get("pairs") if ground_truth else None,
        "checkpoint": os.path.abspath(cfg.out),
        "epochs": len(history),
        "terms": {k: last.get(k) for k in (*UNSUPERVISED_TERMS, "total")},
        "motionnet": model.config,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(_cpu_seconds() - cpu0, 1),
        "train_wall_s": round(sum(r["wall_s"] for r in history), 1),
        "train_cpu_s": round(sum(r["cpu_s"] for r in history), 1),
    }
    marker = os.path.join(cfg.root, "synthetic.json")
    if ground_truth and os.path.isfile(marker):
        with open(marker) as f:
            summary["tvl1_vs_ground_truth"] = json.load(f).get("tvl1_vs_ground_truth")
    return summary


# ---------------------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[list[str]] = None) -> PretrainConfig:
    defaults = PretrainConfig(dataset="synthetic", root=".", out="motionnet.pt")
    loss = defaults.loss
    p = argparse.ArgumentParser(prog="python -m rev2net.motionnet_pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="checkpoint path (resumed from when it exists)")
    p.add_argument("--split", type=int, default=defaults.split)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--width", type=float, default=defaults.width, help="channel multiplier (1.0: the full MotionNet)")
    p.add_argument("--frames", type=int, default=defaults.frames, help="frames per clip and network window")
    p.add_argument("--size", type=int, default=defaults.size, help="square crop side, pixels")
    p.add_argument("--short-side", type=int, default=None, help="short side before cropping (default: --size)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--clip-grad", type=float, default=defaults.clip_grad, help="gradient norm bound (0: off)")
    p.add_argument("--clips-per-video", type=int, default=defaults.clips_per_video)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--pixel", type=float, default=loss.pixel, help="lambda of the Charbonnier photometric term")
    p.add_argument("--smooth", type=float, default=loss.smooth, help="lambda of the smoothness term")
    p.add_argument("--ssim", type=float, default=loss.ssim, help="lambda of the SSIM term")
    p.add_argument("--scales", type=float, nargs=5, default=list(loss.scales), metavar="D",
                   help="per-scale weights, flow2 (finest) .. flow6")
    p.add_argument("--workers", type=int, default=defaults.workers, help="loader processes")
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--eval-videos", type=int, default=None, help="test videos for the end-point error (default: all)")
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        loss_cfg = MotionNetLoss(pixel=args.pixel, smooth=args.smooth, ssim=args.ssim, scales=tuple(args.scales))
        return PretrainConfig(dataset=args.dataset, root=args.root, out=args.out, split=args.split, epochs=args.epochs,
                              width=args.width, frames=args.frames, size=args.size, short_side=args.short_side,
                              batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                              clip_grad=args.clip_grad,
                              clips_per_video=args.clips_per_video, seed=args.seed, loss=loss_cfg,
                              workers=args.workers, threads=args.threads, eval_videos=args.eval_videos,
                              device=args.device, progress=not args.no_progress)
    except ValueError as error:
        p.error(str(error))


def main(argv: Optional[list[str]] = None) -> int:
    cfg = parse_args(argv)
    try:
        summary = pretrain(cfg)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
