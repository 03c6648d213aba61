"""Clip datasets and the loaders a trial uses (batch format: `rev2net.batch`).

Training samples draw their randomness (temporal offset, crop, flip, replacements of unreadable
videos) from a per-sample seed that `EpochSampler` sends with each index, computed from
(seed, epoch, position). A worker process therefore needs no state from the main process, and a
given (seed, epoch) yields the same batches with any number of workers and after a resume: call
`train_loader.sampler.set_epoch(epoch)` before each epoch.

A video that cannot be read (missing, empty, not a video, undecodable, or with unreadable flow
JPEGs) never stops training: it is reported once per file and worker with an
`UnreadableVideoWarning`, replaced by another video chosen from the sample seed (evaluation: the
next video), and counted in the batch's `skipped` field.

Frames travel as uint8 and become float in [-1, 1] on the device (`rev2net.batch.to_device`).

Data-parallel trials (DDP, `rev2net.trial.run_trial(processes=N)`): `build_loaders(..., rank=r,
num_replicas=N)` gives rank r every N-th position of the same epoch order with the same
per-sample seeds (`EpochSampler`), and every N-th validation video (`ShardSampler`).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rev2net.batch import FLOW, FRAMES, INDEX, LABEL, SKIPPED
from rev2net.data.config import DataConfig
from rev2net.data.flow import extraction_command, flow_dir_of, read_pair, stored_grid
from rev2net.data.layouts import Split, VideoRecord, apply_class_map, load_class_map, load_split
from rev2net.data.shuffle import PROTOCOLS, shuffle_order
from rev2net.data.transforms import Crop, centre_crop, crop_flow, crop_frames, flow_window, random_crop
from rev2net.data.video import UnreadableVideo, clip_indices, eval_starts, open_video, read_frames, train_start

MAX_REPLACEMENTS = 20  # consecutive unreadable videos before a sample gives up


class UnreadableVideoWarning(RuntimeWarning):
    pass


class FlowMissingError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut: shared by training and evaluation datasets."""

    frames: int = 32
    stride: int = 1
    crop_size: int = 224
    short_side: int = 256
    policy: str = "loop"

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "ClipSpec":
        return cls(cfg.frames, cfg.frame_stride, cfg.crop_size, cfg.short_side, cfg.short_video_policy)

    @property
    def span(self) -> int:
        return (self.frames - 1) * self.stride + 1


class _Videos(Dataset):
    """Shared by both datasets: the video list, and remembering unreadable files."""

    def __init__(self, records: list[VideoRecord], spec: ClipSpec):
        if not records:
            raise ValueError("no videos to load (empty split after filtering)")
        self.records = list(records)
        self.spec = spec
        self._unreadable: set[str] = set()  # per process: files already reported

    def __len__(self) -> int:
        return len(self.records)

    def _report(self, record: VideoRecord, error: Exception) -> None:
        if record.path not in self._unreadable:
            self._unreadable.add(record.path)
            warnings.warn(f"skipping unreadable video {record.path}: {error}", UnreadableVideoWarning, stacklevel=3)


class ClipDataset(_Videos):
    """Training clips: random temporal offset and crop, horizontal flip, and flow targets through the
    same window and geometry. Items are `(index, sample_seed)` pairs (a bare index uses seed = index)."""

    def __init__(self, records: list[VideoRecord], spec: ClipSpec, *, flow_root: str | None = None,
                 flow_size: int | None = None):
        super().__init__(records, spec)
        self.flow_root = flow_root
        self.flow_size = flow_size or spec.crop_size
        self._grids: dict[str, tuple[int, int, int]] = {}  # per process: stored flow (h, w, pairs)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, item)
        for attempt in range(MAX_REPLACEMENTS + 1):
            record = self.records[index]
            if record.path not in self._unreadable:
                try:
                    sample = self._load(record, np.random.default_rng([seed, attempt, 0]))
                    sample.update({LABEL: record.label, INDEX: index, SKIPPED: attempt})
                    return sample
                except UnreadableVideo as error:
                    self._report(record, error)
            index = int(np.random.default_rng([seed, attempt, 1]).integers(len(self.records)))
        raise RuntimeError(f"{MAX_REPLACEMENTS + 1} unreadable videos in a row while making one sample; "
                           "check the dataset with python -m rev2net.data.check")

    def _load(self, record: VideoRecord, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        spec = self.spec
        reader = open_video(record.path)
        length = len(reader)
        indices = clip_indices(train_start(length, spec.span, rng), spec.frames, spec.stride, length, spec.policy)
        frames = read_frames(reader, indices, record.path)  # (T, H, W, 3)
        height, width = frames.shape[1:3]
        crop = random_crop(height, width, crop_size=spec.crop_size, short_side=spec.short_side, rng=rng)
        sample = {FRAMES: torch.from_numpy(crop_frames(frames, crop, spec.crop_size))}
        if self.flow_root is not None:
            flow = self._flow(record, indices, crop, (height, width))
            sample[FLOW] = torch.from_numpy(flow).half()  # torch converts to float16 faster than numpy
        return sample

    def _flow(self, record: VideoRecord, indices: np.ndarray, crop: Crop, frame_hw: tuple[int, int]) -> np.ndarray:
        """float32 (2, T-1, s, s): flow between consecutive clip frames (the sum of the video's pairs
        in between when stride > 1; zero across a loop's wrap or a padded repeat)."""
        flow_dir = flow_dir_of(self.flow_root, record.key)
        if record.key not in self._grids:
            try:
                self._grids[record.key] = stored_grid(flow_dir)
            except (OSError, ValueError, KeyError) as error:
                raise UnreadableVideo(f"{flow_dir}: cannot read flow ({error})") from error
        stored_h, stored_w, pairs = self._grids[record.key]
        size = self.flow_size
        window = flow_window(crop, frame_hw, (stored_h, stored_w), size)
        out = np.zeros((2, len(indices) - 1, size, size), np.float32)
        for j, (a, b) in enumerate(zip(indices[:-1], indices[1:])):
            if b - a != self.spec.stride:
                continue
            for pair in range(a, b):
                quantized = read_pair(flow_dir, min(pair, pairs - 1), window.reduce)
                out[:, j] += crop_flow(quantized, window, size, crop.flip)
        return out


class EvalDataset(_Videos):
    """Evaluation clips: `clips` evenly spaced clips per video, centre crop, frames (K, 3, T, H, W),
    reordered by the frame-shuffle `protocol` (deterministic by `seed`, video and clip)."""

    def __init__(self, records: list[VideoRecord], spec: ClipSpec, *, clips: int = 1, protocol: str = "none",
                 seed: int = 0):
        super().__init__(records, spec)
        if protocol not in PROTOCOLS:
            raise ValueError(f"shuffle protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        self.clips = clips
        self.protocol = protocol
        self.seed = seed

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        for skipped in range(MAX_REPLACEMENTS + 1):
            record = self.records[index]
            if record.path not in self._unreadable:
                try:
                    return {FRAMES: torch.from_numpy(self._load(record, index)), LABEL: record.label,
                            INDEX: index, SKIPPED: skipped}
                except UnreadableVideo as error:
                    self._report(record, error)
            index = (index + 1) % len(self.records)
        raise RuntimeError(f"{MAX_REPLACEMENTS + 1} unreadable videos in a row; "
                           "check the dataset with python -m rev2net.data.check")

    def _load(self, record: VideoRecord, index: int) -> np.ndarray:
        spec = self.spec
        reader = open_video(record.path)
        length = len(reader)
        starts = eval_starts(length, spec.span, self.clips)
        indices = np.concatenate([clip_indices(s, spec.frames, spec.stride, length, spec.policy) for s in starts])
        frames = read_frames(reader, indices, record.path)  # (K*T, H, W, 3)
        crop = centre_crop(*frames.shape[1:3], crop_size=spec.crop_size, short_side=spec.short_side)
        clips = crop_frames(frames, crop, spec.crop_size).reshape(3, self.clips, spec.frames, spec.crop_size, spec.crop_size)
        clips = clips.transpose(1, 0, 2, 3, 4)  # (K, 3, T, H, W)
        if self.protocol != "none":
            orders = [shuffle_order(spec.frames, self.protocol, np.random.default_rng([self.seed, index, k]))
                      for k in range(self.clips)]
            clips = np.stack([clip[:, order] for clip, order in zip(clips, orders)])
        return np.ascontiguousarray(clips)


class EpochSampler(Sampler):
    """Yields (index, sample_seed) pairs: a permutation (or the identity) and per-position seeds, both
    from (seed, epoch). `set_epoch` before each epoch, like torch's DistributedSampler.

    With `num_replicas` > 1 (DDP), rank r yields positions r, r + N, r + 2N, ... of that same epoch
    order, trimmed so that every rank yields `size // N` samples: equal batch counts keep DDP's
    collectives in step. The ranks together yield the single-process epoch less its last `size % N`
    positions, each sample with the seed it has in the single-process epoch."""

    def __init__(self, size: int, *, seed: int, shuffle: bool = True, rank: int = 0, num_replicas: int = 1):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        seeds = rng.integers(0, 2**62, self.size)
        if self.num_replicas > 1:
            shard = slice(self.rank, len(self) * self.num_replicas, self.num_replicas)
            order, seeds = order[shard], seeds[shard]
        return iter(zip(order.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.size // self.num_replicas if self.num_replicas > 1 else self.size


class ShardSampler(Sampler):
    """Evaluation under DDP: rank r reads indices r, r + N, r + 2N, ... in order. No padding, so every
    video counts exactly once when the ranks' sums are added (shards may differ by one video)."""

    def __init__(self, size: int, *, rank: int, num_replicas: int):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --- what a trial calls --------------------------------------------------------------------------

@dataclass
class DataBundle:
    train: DataLoader  # training batches; call train.sampler.set_epoch(epoch) each epoch
    val: DataLoader  # evaluation batches (K clips per video, no shuffle protocol)
    num_classes: int
    class_names: list[str]


def build_loaders(cfg: DataConfig, *, seed: int, device_is_cuda: bool = False, rank: int = 0,
                  num_replicas: int = 1) -> DataBundle:
    """The training and validation loaders of a trial (of its DDP rank `rank` of `num_replicas`).

    Raises FlowMissingError (how many, and the extraction command) when cfg.flow is on and listed
    training videos have no flow; LayoutError when the root or a split file is missing.
    """
    split = _split(cfg, cfg.name, cfg.root)
    train, val = _train_val(split, cfg.val_fraction)
    spec = ClipSpec.from_config(cfg)
    flow_root = None
    if cfg.flow:
        flow_root = cfg.resolved_flow_root()
        require_flow(train, flow_root, dataset=cfg.name, root=cfg.root, algorithm=cfg.flow_algorithm)
    train_set = ClipDataset(train, spec, flow_root=flow_root, flow_size=cfg.flow_size)
    sampler = EpochSampler(len(train_set), seed=seed, rank=rank, num_replicas=num_replicas)
    train_loader = _loader(train_set, cfg, batch_size=cfg.batch_size, sampler=sampler, device_is_cuda=device_is_cuda,
                           drop_last=len(sampler) >= cfg.batch_size, persistent=True)
    val_set = EvalDataset(val, spec, clips=cfg.eval_clips)
    val_sampler = ShardSampler(len(val_set), rank=rank, num_replicas=num_replicas) if num_replicas > 1 else None
    val_loader = _loader(val_set, cfg, batch_size=cfg.eval_batch_size or cfg.batch_size, sampler=val_sampler,
                         device_is_cuda=device_is_cuda, drop_last=False, persistent=True)
    return DataBundle(train_loader, val_loader, len(split.class_names), list(split.class_names))


def build_eval_loader(cfg: DataConfig, *, protocol: str = "none", seed: int = 0, cross_dataset: bool = False,
                      device_is_cuda: bool = False) -> DataLoader:
    """An evaluation loader over the split's test list under a frame-shuffle `protocol`
    (none | long_term | short_term | complete), deterministic by `seed`. With `cross_dataset`, the
    test list of cfg.eval_name at cfg.eval_root, relabelled through cfg.class_map."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"shuffle protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if cross_dataset:
        if cfg.eval_name is None:
            raise ValueError("cross-dataset evaluation needs data.eval_name, data.eval_root and data.class_map")
        split = _split(cfg, cfg.eval_name, cfg.eval_root)
    else:
        split = _split(cfg, cfg.name, cfg.root)
    dataset = EvalDataset(split.test, ClipSpec.from_config(cfg), clips=cfg.eval_clips, protocol=protocol, seed=seed)
    return _loader(dataset, cfg, batch_size=cfg.eval_batch_size or cfg.batch_size, sampler=None,
                   device_is_cuda=device_is_cuda, drop_last=False, persistent=False)


def require_flow(records: list[VideoRecord], flow_root: str, *, dataset: str, root: str, algorithm: str = "tvl1") -> None:
    """Raise FlowMissingError if any video lacks its flow folder."""
    missing = [r.path for r in records if not os.path.isdir(flow_dir_of(flow_root, r.key))]
    if missing:
        raise FlowMissingError(
            f"{len(missing)} of {len(records)} listed videos have no flow under {flow_root} "
            f"(e.g. {missing[0]}). Extract it with:\n  {extraction_command(dataset, root, flow_root, algorithm)}\n"
            "or set data.flow=false to train without flow targets.")


def _split(cfg: DataConfig, name: str, root: str) -> Split:
    if name == "synthetic":
        from rev2net.data.synthetic import ensure_synthetic

        ensure_synthetic(root, cfg.synthetic, progress=False)
    split = load_split(name, root, cfg.split)
    if cfg.class_map is not None:
        split = apply_class_map(split, load_class_map(cfg.class_map), name)
    return split


def _train_val(split: Split, val_fraction: float) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(train, val): the split's test list, or whole groups held out of train (the same for every trial)."""
    if val_fraction == 0:
        return split.train, split.test
    groups = sorted({r.group for r in split.train})
    held = set(np.random.default_rng(0).permutation(groups)[: max(1, math.ceil(val_fraction * len(groups)))].tolist())
    return [r for r in split.train if r.group not in held], [r for r in split.train if r.group in held]


def _worker_init(worker_id: int) -> None:
    cv2.setNumThreads(1)  # each loader process is one core's worth of work
    torch.set_num_threads(1)


def _loader(dataset: Dataset, cfg: DataConfig, *, batch_size: int, sampler: Sampler | None, device_is_cuda: bool,
            drop_last: bool, persistent: bool) -> DataLoader:
    workers = cfg.num_workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      num_workers=workers, pin_memory=device_is_cuda, worker_init_fn=_worker_init if workers else None,
                      persistent_workers=persistent and workers > 0,
                      prefetch_factor=cfg.prefetch_factor if workers else None)
