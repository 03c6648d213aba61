"""Data pipeline speed: clips/s per loader process, and flow extraction frame pairs/s per core.

    .venv/bin/python benchmarks/loader.py [--videos 8] [--frames 64] [--samples 48] [--max-workers N]
    .venv/bin/python benchmarks/loader.py --only workers [--target-clips-per-s FULL,COARSE]

Generates 320x240 videos (rev2net.data.synthetic, XVID) and their TV-L1 flow in a temporary
folder, then prints
  1. TV-L1 ("fast" preset) and Farneback frame pairs/s per core with 1..N extraction workers,
  2. clips/s of one process making 32x224x224 training clips: RGB alone, and RGB + flow targets at
     224x224, 112x112 and 56x56 (flow_downsample 1, 2, 4); and 16x112x112 clips with 56x56 flow
     (the coarse stage's reduced fidelity on a cluster),
  3. clips/s of a DataLoader (RGB + 112x112 flow, batch 8) with 1..N worker processes,
  4. the same set copied at short side 128 (rev2net.data.resize): frames/s of the copy, its PSNR
     against the source frames resized, and clips/s at the coarse fidelity from the copy with the
     source's flow linked and with flow resampled to the copy's grid (and how much the resampled
     flow targets differ from the linked ones).
  5. loader processes one GPU needs (`--only workers` prints this alone): clips/s of one process at
     full size (32x224x224 from 320x240 video, 112x112 flow targets: the fine and ablation stages'
     Rev2Net) and at the coarse fidelity (16x112x112 from a 128 short side, 56x56 flow), RGB alone
     (I3D) and RGB + flow, with the augmentation in the loader (`data.augment_on=cpu`) and on the
     device (`device`: the loader ships the uncut uint8 square), the bytes a clip's frames take, and
     ceil(target / clips per process) for a target rate: `--target-clips-per-s FULL,COARSE`, by
     default what an H200 trains at 40% MFU (989 TFLOP/s dense bf16; a Rev2Net training clip costs
     3 x its forward FLOPs, counted by rev2net.summary): an assumed GPU rate, not a measured one.
Timings are wall-clock on whatever else the machine is doing: on a shared machine, run twice.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import tempfile
import time

import math

import cv2
import numpy as np
import torch

from rev2net.data.config import DataConfig
from rev2net.data.datasets import ClipDataset, ClipSpec, build_loaders
from rev2net.data.flow import DEFAULT_PRESET, FlowComputer, extract_flow, flow_dir_of, grey_frames, quantize
from rev2net.data.jobs import worker_init
from rev2net.data.layouts import all_videos, load_split
from rev2net.data.resize import resize_dataset
from rev2net.data.synthetic import flow_epe, generate_dataset
from rev2net.data.transforms import Crop
from rev2net.data.video import open_video

HEIGHT, WIDTH, FRAMES, CROP, SHORT_SIDE = 240, 320, 32, 224, 256


def _flow_job(job: tuple[str, str]) -> int:
    """Flow of every frame pair of one video, quantized and JPEG-encoded in memory; returns pairs."""
    path, algorithm = job
    compute = FlowComputer(algorithm)
    frames = list(grey_frames(path, None))
    for prev, nxt in zip(frames, frames[1:]):
        quantized = quantize(compute(prev, nxt))
        cv2.imencode(".jpg", quantized[..., 0])
        cv2.imencode(".jpg", quantized[..., 1])
    return len(frames) - 1


def _start(_: int) -> None:
    time.sleep(0.5)  # keeps a worker busy so that the pool starts all of them


def extraction_rates(root: str, max_workers: int) -> None:
    """Frame pairs/s per core with 1..max_workers processes (2 videos each), after the workers started."""
    videos = [r.path for r in all_videos("synthetic", root)]
    print("flow extraction, 320x240 frame pairs/s (total, per core):")
    for algorithm in ("tvl1", "farneback"):
        for workers in range(1, max_workers + 1):
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=worker_init) as pool:
                list(pool.map(_start, range(workers)))
                start = time.perf_counter()
                pairs = sum(pool.map(_flow_job, [(path, algorithm) for path in videos[: 2 * workers]]))
                rate = pairs / (time.perf_counter() - start)
            label = f"{algorithm} ({DEFAULT_PRESET})" if algorithm == "tvl1" else algorithm
            print(f"  {label:12s} workers={workers}: {rate:7.1f} total, {rate / workers:7.1f} per core")


def clips_per_second(dataset: ClipDataset, samples: int) -> float:
    dataset[(0, 0)]  # warm up: imports, first file opens
    start = time.perf_counter()
    for i in range(samples):
        dataset[(i % len(dataset), i)]
    return samples / (time.perf_counter() - start)


def loader_rates(root: str, samples: int, max_workers: int) -> None:
    records = load_split("synthetic", root, 1).train
    spec = ClipSpec(FRAMES, 1, CROP, SHORT_SIDE, "loop")
    flow_root = os.path.join(root, "flow_tvl1")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    print(f"one process, {FRAMES}x{CROP}x{CROP} clips from {WIDTH}x{HEIGHT} videos, clips/s:")
    print(f"  {'RGB':20s} {clips_per_second(ClipDataset(records, spec), samples):6.1f}")
    for size in (224, 112, 56):  # flow_downsample 1, 2, 4
        dataset = ClipDataset(records, spec, flow_root=flow_root, flow_size=size)
        print(f"  {f'RGB + flow {size}x{size}':20s} {clips_per_second(dataset, samples):6.1f}")
    # The coarse stage's reduced fidelity on a cluster (cluster=gpu_shared, the README's GPU plan).
    coarse = ClipSpec(16, 1, 112, 128, "loop")
    dataset = ClipDataset(records, coarse, flow_root=flow_root, flow_size=56)
    print(f"  {'coarse fidelity: 16x112x112 RGB + flow 56x56':20s} {clips_per_second(dataset, samples):6.1f}")
    print("DataLoader (RGB + flow 112x112, batch 8, persistent workers), clips/s:")
    for workers in range(1, max_workers + 1):
        # the generated set is in the UCF101 layout
        cfg = DataConfig(name="ucf101", root=root, frames=FRAMES, crop_size=CROP, short_side=SHORT_SIDE,
                         flow_downsample=2, batch_size=8, num_workers=workers)
        loader = build_loaders(cfg, seed=0).train
        iterator = iter(loader)
        next(iterator)  # workers started
        start = time.perf_counter()
        clips = 0
        while clips < samples:
            try:
                clips += len(next(iterator)["label"])
            except StopIteration:
                loader.sampler.set_epoch(loader.sampler.epoch + 1)
                iterator = iter(loader)
        rate = clips / (time.perf_counter() - start)
        print(f"  workers={workers}: {rate:6.1f} total, {rate / workers:6.1f} per worker")


def copy_rates(root: str, copies: str, samples: int, workers: int) -> None:
    """The coarse fidelity read from a 128-pixel copy of the set (written under `copies`), against
    the 320x240 source."""
    short = 128
    linked, resampled = os.path.join(copies, "linked"), os.path.join(copies, "resampled")
    result = resize_dataset("synthetic", root, linked, short_side=short, flow="link", workers=workers, progress=False)
    summary = result["video_summary"]
    print(f"copy at short side {short} (rev2net.data.resize, {workers} workers): {summary.units / summary.seconds:.0f} "
          f"frames/s, {summary.units / summary.seconds / workers:.0f} per core")
    resize_dataset("synthetic", root, resampled, short_side=short, flow="resample", workers=workers, progress=False)
    records = load_split("synthetic", root, 1).train
    errors = []
    for record in records[:4]:
        source, copy = open_video(record.path), open_video(os.path.join(linked, os.path.relpath(record.path, root)))
        frames = source.get_batch(list(range(len(source)))).asnumpy()
        expected = np.stack([cv2.resize(f, copy[0].shape[1::-1], interpolation=cv2.INTER_AREA) for f in frames])
        errors.append(np.mean((copy.get_batch(list(range(len(copy)))).asnumpy().astype(np.float64) - expected) ** 2))
    print(f"  PSNR of the copy against the source frames resized: {10 * np.log10(255**2 / np.mean(errors)):.1f} dB")
    coarse = ClipSpec(16, 1, 112, short, "loop")
    print("  one process, coarse fidelity (16x112x112 clips, 56x56 flow), clips/s:")
    rows = [("320x240 source", root, os.path.join(root, "flow_tvl1")),
            ("copy, flow linked", linked, os.path.join(linked, "flow_tvl1")),
            ("copy, flow resampled", resampled, os.path.join(resampled, "flow_tvl1"))]
    datasets = {}
    for label, folder, flow_root in rows:
        folder_records = load_split("ucf101", folder, 1).train
        datasets[label] = ClipDataset(folder_records, coarse, flow_root=flow_root, flow_size=56)
        rgb = clips_per_second(ClipDataset(folder_records, coarse), samples)
        print(f"    {label:22s} RGB {rgb:6.1f}   RGB + flow {clips_per_second(datasets[label], samples):6.1f}")
    copy_records = datasets["copy, flow linked"].records
    height, width = open_video(copy_records[0].path)[0].shape[:2]
    crop = Crop((width - 112) // 2, (height - 112) // 2, 112)
    differences, magnitudes = [], []
    for record in copy_records:
        a = datasets["copy, flow linked"]._flow(record, np.arange(16), crop, (height, width))
        b = datasets["copy, flow resampled"]._flow(record, np.arange(16), crop, (height, width))
        differences.append(np.abs(a - b).mean())
        magnitudes.append(np.abs(a).mean())
    print(f"  resampled vs linked flow targets: mean |difference| {np.mean(differences):.3f} px of the 56-pixel "
          f"target (mean |flow| {np.mean(magnitudes):.3f} px)")


H200_BF16_FLOPS, TARGET_MFU = 989e12, 0.40


def default_targets() -> tuple[float, float]:
    """Clips/s an H200 trains at TARGET_MFU: Rev2Net (width 1, 101 classes) at full size and at the
    coarse fidelity, a training clip counted as 3 x its training forward (rev2net.summary)."""
    from rev2net import registry
    from rev2net.summary import summarize

    cfg = registry.model_config(registry.REV2NET)
    rates = []
    for frames, size in ((32, 224), (16, 112)):
        flops = 3 * 2 * summarize(cfg, 101, frames, size)["macs_training"]
        rates.append(TARGET_MFU * H200_BF16_FLOPS / flops)
    return rates[0], rates[1]


def workers_needed(root: str, samples: int, targets: tuple[float, float], target_note: str, rounds: int = 3) -> None:
    """Loader processes one GPU needs, with the augmentation in the loader and on the device."""
    records = load_split("synthetic", root, 1).train
    flow_root = os.path.join(root, "flow_tvl1")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    fidelities = [("full 32x224x224, flow 112", ClipSpec(FRAMES, 1, CROP, SHORT_SIDE, "loop"), 112, targets[0]),
                  ("coarse 16x112x112, flow 56", ClipSpec(16, 1, 112, 128, "loop"), 56, targets[1])]
    print(f"loader processes per GPU, {WIDTH}x{HEIGHT} source videos; target clips/s: {target_note}")
    print(f"  {'fidelity':<28}{'reads':<12}{'augment on':<12}{'clips/s/process':>16}{'frames KB/clip':>15}"
          f"{'target':>8}{'processes':>10}")
    for label, spec, flow_size, target in fidelities:
        for reads, flow in (("RGB", None), ("RGB + flow", flow_root)):
            datasets = {where: ClipDataset(records, spec, flow_root=flow, flow_size=flow_size,
                                           device_augment=where == "device") for where in ("cpu", "device")}
            rates = {where: 0.0 for where in datasets}
            for _ in range(rounds):  # alternately, the best round of each: load from elsewhere hits both alike
                for where, dataset in datasets.items():
                    rates[where] = max(rates[where], clips_per_second(dataset, samples))
            for where, dataset in datasets.items():
                sample = dataset[(0, 0)]
                shipped = (sample["frames"] if "frames" in sample else sample["region"]).numel() / 1024
                print(f"  {label:<28}{reads:<12}{where:<12}{rates[where]:>16.1f}{shipped:>15.0f}{target:>8.0f}"
                      f"{math.ceil(target / rates[where]):>10d}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=12, help="videos to generate (4 classes, >= 3 each)")
    parser.add_argument("--frames", type=int, default=64, help="frames per video")
    parser.add_argument("--samples", type=int, default=48, help="clips timed per configuration")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=("all", "workers"), default="all",
                        help="workers: only the loader processes one GPU needs (section 5)")
    parser.add_argument("--target-clips-per-s", default=None,
                        help="FULL,COARSE: the GPU's training rate at full size and at the coarse fidelity "
                             "(default: an H200 at 40%% MFU, assumed)")
    args = parser.parse_args()
    if args.target_clips_per_s:
        full, coarse = (float(x) for x in args.target_clips_per_s.split(","))
        targets, note = (full, coarse), "given (--target-clips-per-s)"
    else:
        targets = default_targets()
        note = (f"an H200 at {TARGET_MFU:.0%} MFU on Rev2Net ({targets[0]:.0f} full, {targets[1]:.0f} coarse; assumed, "
                "not measured)")
    print(f"{os.cpu_count()} CPU cores; cv2 {cv2.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as root, tempfile.TemporaryDirectory() as copies:
        start = time.perf_counter()
        per_class = max(3, -(-args.videos // 4))
        count = generate_dataset(root, classes=4, videos_per_class=per_class, frames=args.frames, height=HEIGHT,
                                 width=WIDTH, seed=0)
        generated = time.perf_counter()
        jobs = [(r.path, flow_dir_of(os.path.join(root, "flow_tvl1"), r.key)) for r in all_videos("synthetic", root)]
        summary = extract_flow(jobs, workers=args.max_workers, progress=False)
        epe = flow_epe(root)
        print(f"{count} videos {WIDTH}x{HEIGHT}x{args.frames} generated in {generated - start:.1f} s; "
              f"TV-L1 flow in {summary.seconds:.1f} s ({summary.units} pairs, {args.max_workers} workers); "
              f"EPE vs ground truth {epe['epe']:.3f} px (zero flow {epe['zero_flow_epe']:.3f}), on moving objects "
              f"{epe['object_epe']:.3f} px (zero flow {epe['object_zero_flow_epe']:.3f})")
        if args.only == "all":
            extraction_rates(root, args.max_workers)
            loader_rates(root, args.samples, args.max_workers)
            copy_rates(root, copies, args.samples, args.max_workers)
        workers_needed(root, args.samples, targets, note)


if __name__ == "__main__":
    main()
