"""Clip datasets and the loaders a trial uses (batch format: `rev2net.batch`).

What a sample holds is a `ClipSpec`, made from what the trial's model family declares it needs
(rev2net.registry.DataNeeds): one loader path, one augmentation contract for every family.

    sampling   clip      `frames` consecutive frames (every `stride`) from a random start: I3D,
                         Rev2Net, DCD, the flow I3D
               segments  the video cut into K equal segments, one anchor frame at a random place in
                         each (the centre for evaluation): TSN, TSM (Wang et al. 2016, "sparse temporal sampling")
    frames     the anchor frames, uint8 (3, N, H, W), N = frames or K
    flow_input the flow of `flow_pairs` consecutive pairs from each anchor, at the crop's size and in
               its pixels, float16 (2, N * flow_pairs, H, W): the flow streams' input (the I3D flow
               stream: 1 pair per frame; TSN's: a stack of 5 per segment)
    flow       the flow between consecutive clip frames at `flow_size`, float16 (2, N - 1, h, w):
               Rev2Net's flow-decoder target (clip sampling only)
Every one of them goes through the same crop, resize and flip (flipped flow has its x negated).

Training samples draw their randomness (temporal offset, crop, flip, replacements of unreadable
videos) from a per-sample seed that `EpochSampler` sends with each index, computed from
(seed, epoch, position). A worker process therefore needs no state from the main process, and a
given (seed, epoch) yields the same batches with any number of workers and after a resume: call
`train_loader.sampler.set_epoch(epoch)` before each epoch.

Validation and test: every trial is selected on the split's validation videos (the layout's own
validation list, or a held-out share of the training groups: `rev2net.data.layouts.validation_split`)
and scored once, at its end, on the official test list (`build_eval_loader`). Unlabelled clips of
a target domain for domain adaptation come from `build_target_loader`: its samples have no label.

Every list leaves out the videos in data.exclude (`rev2net.data.layouts.exclude_videos`): the
sweep's driver adds the broken videos that data.max_broken_fraction tolerates, so every trial on
every node reads the same lists. A video that still cannot be read (missing, empty, not a video,
undecodable, or with unreadable flow JPEGs) never stops training: it is reported once per file and worker with an
`UnreadableVideoWarning`, replaced by another video chosen from the sample seed (evaluation: the
next video), and counted in the batch's `skipped` field.

Frames travel as uint8 and become float in [-1, 1] on the device (`rev2net.batch.to_device`).
With `data.augment_on=device`, training clips travel uncut: the crop's square region as decoded
and its geometry (`region`, `geometry`: rev2net.batch), resized and flipped on the device; the
randomness is drawn here exactly as for `cpu`, so the same seeds give the same clips either way.

Data-parallel trials (DDP, `rev2net.trial.run_trial(processes=N)`): `build_loaders(..., rank=r,
num_replicas=N)` gives rank r every N-th position of the same epoch order with the same
per-sample seeds (`EpochSampler`), and every N-th validation video (`ShardSampler`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from typing import Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from rev2net.batch import FLOW, FLOW_INPUT, FRAMES, GEOMETRY, INDEX, LABEL, REGION, SKIPPED
from rev2net.data.config import DataConfig
from rev2net.data.flow import extraction_command, flow_dir_of, read_pair, stored_grid
from rev2net.data.layouts import (Split, VideoRecord, apply_class_map, exclude_videos, load_class_map, load_split,
                                  validation_split)
from rev2net.data.shuffle import PROTOCOLS, shuffle_order
from rev2net.data.transforms import (Crop, centre_crop, crop_flow, crop_frames, crop_region, flow_window,
                                     random_crop)
from rev2net.data.video import UnreadableVideo, clip_indices, eval_starts, open_video, read_frames, train_start

MAX_REPLACEMENTS = 20  # consecutive unreadable videos before a sample gives up


class UnreadableVideoWarning(RuntimeWarning):
    pass


class FlowMissingError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ClipSpec:
    """What a sample holds and how it is cut: shared by training and evaluation datasets."""

    frames: int = 32  # clip sampling: frames per clip
    stride: int = 1  # clip sampling: every k-th frame
    crop_size: int = 224
    short_side: int = 256
    policy: str = "loop"  # videos shorter than a clip: loop | pad (rev2net.data.video)
    segments: int = 0  # 0: clip sampling; K > 0: K segments, one anchor frame each (TSN/TSM)
    flow_pairs: int = 0  # flow input: the flow of this many consecutive pairs from each anchor (0: none)
    rgb: bool = True  # deliver the anchor frames (RGB input, reconstruction target)

    @classmethod
    def from_config(cls, cfg: DataConfig, **needs) -> "ClipSpec":
        """The clip of `cfg`, with what a model family needs (segments, flow_pairs, rgb)."""
        return cls(cfg.frames, cfg.frame_stride, cfg.crop_size, cfg.short_side, cfg.short_video_policy, **needs)

    @property
    def anchors(self) -> int:
        """Frames (RGB) per sample: the clip's frames, or one per segment."""
        return self.segments or self.frames

    @property
    def span(self) -> int:
        """Source frames a clip covers (clip sampling); segments cover the whole video."""
        return (self.frames - 1) * self.stride + 1

    def anchor_indices(self, length: int, rng: Optional[np.random.Generator] = None, *,
                       position: float = 0.5) -> np.ndarray:
        """Video frame indices of the anchors: a random clip start / a random place in each segment
        with `rng`, else the start at `position` of the room (clip) or `position` of each segment."""
        if not self.segments:
            room = max(length - self.span, 0)
            start = train_start(length, self.span, rng) if rng is not None else int(round(room * position))
            return clip_indices(start, self.frames, self.stride, length, self.policy)
        need = max(self.flow_pairs, 1)  # an anchor's flow stack must fit inside its segment where it can
        edges = np.linspace(0, length, self.segments + 1)
        lows, highs = np.floor(edges[:-1]).astype(int), np.maximum(np.floor(edges[1:]).astype(int) - need, 0)
        highs = np.maximum(highs, lows)
        if rng is not None:
            return np.minimum(lows + (rng.random(self.segments) * (highs - lows + 1)).astype(int), length - 1)
        return np.minimum(lows + np.round((highs - lows) * position).astype(int), length - 1)


class _Videos(Dataset):
    """Shared by every dataset: the video list, reading a sample, and remembering unreadable files."""

    def __init__(self, records: list[VideoRecord], spec: ClipSpec, *, flow_root: str | None = None,
                 flow_size: int | None = None, flow_input_root: str | None = None, device_augment: bool = False):
        if not records:
            raise ValueError("no videos to load (empty split after filtering)")
        if spec.flow_pairs and flow_input_root is None:
            raise ValueError("a flow input (ClipSpec.flow_pairs > 0) needs flow_input_root: the stored flow")
        self.records = list(records)
        self.spec = spec
        self.flow_root = flow_root  # flow targets (clip sampling): None = none
        self.flow_size = flow_size or spec.crop_size
        self.flow_input_root = flow_input_root
        self.device_augment = device_augment  # ship the uncut region (REGION, GEOMETRY) instead of FRAMES
        self._unreadable: set[str] = set()  # per process: files already reported
        self._grids: dict[str, tuple[int, int, int]] = {}  # per process: stored flow (h, w, pairs)

    def __len__(self) -> int:
        return len(self.records)

    def _report(self, record: VideoRecord, error: Exception) -> None:
        if record.path not in self._unreadable:
            self._unreadable.add(record.path)
            warnings.warn(f"skipping unreadable video {record.path}: {error}", UnreadableVideoWarning, stacklevel=3)

    def _read(self, record: VideoRecord, anchors_of, crop_of) -> dict[str, np.ndarray]:
        """The sample's arrays: anchors_of(length) -> anchor indices (one row per clip), crop_of(h, w) -> Crop."""
        spec = self.spec
        reader = open_video(record.path)
        length = len(reader)
        anchors = anchors_of(length)  # (clips, N)
        if spec.rgb:
            frames = read_frames(reader, anchors.reshape(-1), record.path)  # (clips * N, H, W, 3)
            height, width = frames.shape[1:3]
        else:  # the geometry of a flow-only sample still comes from the video's frames
            height, width = read_frames(reader, np.zeros(1, int), record.path).shape[1:3]
        crop = crop_of(height, width)
        out: dict[str, np.ndarray] = {}
        if spec.rgb and self.device_augment:  # (clips, N, side, side, 3) and (clips, 3)
            out[REGION] = crop_region(frames, crop).reshape(anchors.shape[0], anchors.shape[1], crop.side, crop.side, 3)
            out[GEOMETRY] = np.tile(np.array([crop.side, int(crop.flip), spec.crop_size], np.int64), (anchors.shape[0], 1))
        elif spec.rgb:
            out[FRAMES] = crop_frames(frames, crop, spec.crop_size).reshape(
                3, anchors.shape[0], anchors.shape[1], spec.crop_size, spec.crop_size).transpose(1, 0, 2, 3, 4)
        if spec.flow_pairs:
            stacks = [[[a + j] if a + j < length - 1 else [] for a in row for j in range(spec.flow_pairs)]
                      for row in anchors]  # per clip, per output field: the video pairs summed into it
            out[FLOW_INPUT] = np.stack([self._flow(self.flow_input_root, record, fields, crop, (height, width),
                                                   spec.crop_size) for fields in stacks])
        if self.flow_root is not None:
            targets = [[list(range(a, b)) if b - a == spec.stride else [] for a, b in zip(row[:-1], row[1:])]
                       for row in anchors]
            out[FLOW] = np.stack([self._flow(self.flow_root, record, fields, crop, (height, width), self.flow_size)
                                  for fields in targets])
        return out

    def _flow(self, root: str, record: VideoRecord, fields: list[list[int]], crop: Crop, frame_hw: tuple[int, int],
              size: int) -> np.ndarray:
        """float32 (2, len(fields), size, size): each field the sum of the listed video frame pairs'
        flow (zero where none is listed: across a loop's wrap, a padded repeat, the video's end),
        through `crop`, in pixels of the size x size grid."""
        flow_dir = flow_dir_of(root, record.key)
        if flow_dir not in self._grids:
            try:
                self._grids[flow_dir] = stored_grid(flow_dir)
            except (OSError, ValueError, KeyError) as error:
                raise UnreadableVideo(f"{flow_dir}: cannot read flow ({error})") from error
        stored_h, stored_w, pairs = self._grids[flow_dir]
        window = flow_window(crop, frame_hw, (stored_h, stored_w), size)
        out = np.zeros((2, len(fields), size, size), np.float32)
        for j, listed in enumerate(fields):
            for pair in listed:
                out[:, j] += crop_flow(read_pair(flow_dir, min(pair, pairs - 1), window.reduce), window, size, crop.flip)
        return out


class ClipDataset(_Videos):
    """Training clips: random temporal placement and crop, horizontal flip; frames, flow input and
    flow targets through the same window and geometry. Items are `(index, sample_seed)` pairs (a bare
    index uses seed = index). With `labelled=False` (a target domain's clips) a sample has no label.
    With `device_augment`, the frames are left uncut for the device (`region`, `geometry`; batch them
    with `collate_regions`)."""

    def __init__(self, records: list[VideoRecord], spec: ClipSpec, *, flow_root: str | None = None,
                 flow_size: int | None = None, flow_input_root: str | None = None, labelled: bool = True,
                 device_augment: bool = False):
        super().__init__(records, spec, flow_root=flow_root, flow_size=flow_size, flow_input_root=flow_input_root,
                         device_augment=device_augment)
        self.labelled = labelled

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, item)
        for attempt in range(MAX_REPLACEMENTS + 1):
            record = self.records[index]
            if record.path not in self._unreadable:
                try:
                    sample = self._load(record, np.random.default_rng([seed, attempt, 0]))
                    if self.labelled:
                        sample[LABEL] = record.label
                    sample.update({INDEX: index, SKIPPED: attempt})
                    return sample
                except UnreadableVideo as error:
                    self._report(record, error)
            index = int(np.random.default_rng([seed, attempt, 1]).integers(len(self.records)))
        raise RuntimeError(f"{MAX_REPLACEMENTS + 1} unreadable videos in a row while making one sample; "
                           "check the dataset with python -m rev2net.data.check")

    def _load(self, record: VideoRecord, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        spec = self.spec
        arrays = self._read(record, lambda length: spec.anchor_indices(length, rng)[None],
                            lambda h, w: random_crop(h, w, crop_size=spec.crop_size, short_side=spec.short_side,
                                                     rng=rng))
        # torch converts to float16 faster than numpy does
        return {key: torch.from_numpy(value[0]) if key in (FRAMES, REGION, GEOMETRY) else
                torch.from_numpy(value[0]).half() for key, value in arrays.items()}


def collate_regions(samples: list[dict]) -> dict:
    """default_collate, with the uncut regions of device-side augmentation padded (bottom, right)
    to the batch's largest side: videos of several heights give regions of several sides."""
    if not samples or REGION not in samples[0]:
        return default_collate(samples)
    largest = max(s[REGION].shape[1] for s in samples)
    padded = []
    for sample in samples:
        region = sample[REGION]
        if region.shape[1] != largest:
            grown = region.new_zeros((region.shape[0], largest, largest, 3))
            grown[:, :region.shape[1], :region.shape[2]] = region
            sample = {**sample, REGION: grown}
        padded.append(sample)
    return default_collate(padded)


class EvalDataset(_Videos):
    """Evaluation clips: `clips` evenly placed clips per video (clip sampling: evenly spaced starts;
    segments: evenly spaced places inside each segment), centre crop; frames (K, 3, N, H, W) and the
    flow input (K, 2, N * P, H, W), reordered by the frame-shuffle `protocol` (deterministic by
    `seed`, video and clip; a flow stack moves with its anchor frame)."""

    def __init__(self, records: list[VideoRecord], spec: ClipSpec, *, clips: int = 1, protocol: str = "none",
                 seed: int = 0, flow_input_root: str | None = None, cache_bytes: int = 0):
        super().__init__(records, spec, flow_input_root=flow_input_root)
        if protocol not in PROTOCOLS:
            raise ValueError(f"shuffle protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        self.clips = clips
        self.protocol = protocol
        self.seed = seed
        # Evaluation samples are the same every epoch: kept (per process) when all of them fit in
        # `cache_bytes`, so a validation pass after the first costs forwards only.
        per_sample = clips * spec.anchors * spec.crop_size ** 2 * ((3 if spec.rgb else 0) + 4 * spec.flow_pairs)
        self._cache: Optional[dict[int, dict]] = {} if per_sample * len(records) <= cache_bytes else None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        for skipped in range(MAX_REPLACEMENTS + 1):
            record = self.records[(index + skipped) % len(self.records)]
            if record.path not in self._unreadable:
                try:
                    sample = {key: torch.from_numpy(value) for key, value in
                              self._load(record, (index + skipped) % len(self.records)).items()}
                    if FLOW_INPUT in sample:
                        sample[FLOW_INPUT] = sample[FLOW_INPUT].half()
                    sample = {**sample, LABEL: record.label, INDEX: (index + skipped) % len(self.records),
                              SKIPPED: skipped}
                    if self._cache is not None:
                        self._cache[index] = sample
                    return sample
                except UnreadableVideo as error:
                    self._report(record, error)
        raise RuntimeError(f"{MAX_REPLACEMENTS + 1} unreadable videos in a row; "
                           "check the dataset with python -m rev2net.data.check")

    def _anchors(self, length: int) -> np.ndarray:
        spec = self.spec
        if not spec.segments:
            starts = eval_starts(length, spec.span, self.clips)
            return np.stack([clip_indices(s, spec.frames, spec.stride, length, spec.policy) for s in starts])
        return np.stack([spec.anchor_indices(length, position=(k + 0.5) / self.clips) for k in range(self.clips)])

    def _load(self, record: VideoRecord, index: int) -> dict[str, np.ndarray]:
        spec = self.spec
        arrays = self._read(record, self._anchors,
                            lambda h, w: centre_crop(h, w, crop_size=spec.crop_size, short_side=spec.short_side))
        if self.protocol != "none":
            orders = [shuffle_order(spec.anchors, self.protocol, np.random.default_rng([self.seed, index, k]))
                      for k in range(self.clips)]
            if FRAMES in arrays:
                arrays[FRAMES] = np.stack([clip[:, order] for clip, order in zip(arrays[FRAMES], orders)])
            if FLOW_INPUT in arrays:
                p = spec.flow_pairs
                arrays[FLOW_INPUT] = np.stack([clip.reshape(2, spec.anchors, p, *clip.shape[-2:])[:, order]
                                               .reshape(clip.shape) for clip, order in zip(arrays[FLOW_INPUT], orders)])
        return {key: np.ascontiguousarray(value) for key, value in arrays.items()}


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
    val: DataLoader  # the validation split's evaluation batches (K clips per video): selection, early stopping
    num_classes: int
    class_names: list[str]


def training_split(cfg: DataConfig) -> tuple[Split, list[VideoRecord], list[VideoRecord]]:
    """The split of `cfg` and its (train, validation) videos (rev2net.data.layouts.validation_split)."""
    split = _split(cfg, cfg.name, cfg.root)
    train, val = validation_split(split, cfg.val_fraction, cfg.val_seed)
    return split, train, val


def _flow_roots(cfg: DataConfig, spec: ClipSpec, train: list[VideoRecord],
                evaluated: list[VideoRecord]) -> tuple[Optional[str], Optional[str]]:
    """(flow-target root, flow-input root) for `spec`, checked to hold every video that reads it."""
    target_root = cfg.resolved_flow_root() if cfg.flow and not spec.segments else None
    input_root = cfg.resolved_flow_root() if spec.flow_pairs else None
    if target_root is not None:
        require_flow(train, target_root, dataset=cfg.name, root=cfg.root, algorithm=cfg.flow_algorithm)
    if input_root is not None:
        require_flow(train + evaluated, input_root, dataset=cfg.name, root=cfg.root, algorithm=cfg.flow_algorithm)
    return target_root, input_root


def build_loaders(cfg: DataConfig, *, seed: int, spec: Optional[ClipSpec] = None, device_is_cuda: bool = False,
                  rank: int = 0, num_replicas: int = 1) -> DataBundle:
    """The training and validation loaders of a trial (of its DDP rank `rank` of `num_replicas`),
    sampling as `spec` says (default: cfg's clip, RGB).

    Raises FlowMissingError (how many, and the extraction command) when the spec reads flow (targets
    with cfg.flow, or a flow input) that listed videos lack; LayoutError when the root or a split
    file is missing; ValueError when there is no validation split.
    """
    split, train, val = training_split(cfg)
    spec = spec or ClipSpec.from_config(cfg)
    flow_root, input_root = _flow_roots(cfg, spec, train, val)
    train_set = ClipDataset(train, spec, flow_root=flow_root, flow_size=cfg.flow_size, flow_input_root=input_root,
                            device_augment=cfg.augment_on == "device")
    sampler = EpochSampler(len(train_set), seed=seed, rank=rank, num_replicas=num_replicas)
    train_loader = _loader(train_set, cfg, batch_size=cfg.batch_size, sampler=sampler, device_is_cuda=device_is_cuda,
                           drop_last=len(sampler) >= cfg.batch_size, persistent=True)
    val_set = EvalDataset(val, spec, clips=cfg.eval_clips, flow_input_root=input_root,
                          cache_bytes=cfg.eval_cache_mb * 2**20)
    val_sampler = ShardSampler(len(val_set), rank=rank, num_replicas=num_replicas) if num_replicas > 1 else None
    val_loader = _loader(val_set, cfg, batch_size=cfg.eval_batch_size or cfg.batch_size, sampler=val_sampler,
                         device_is_cuda=device_is_cuda, drop_last=False, persistent=True)
    return DataBundle(train_loader, val_loader, len(split.class_names), list(split.class_names))


def build_eval_loader(cfg: DataConfig, *, spec: Optional[ClipSpec] = None, protocol: str = "none", seed: int = 0,
                      cross_dataset: bool = False, device_is_cuda: bool = False) -> DataLoader:
    """An evaluation loader over the split's TEST list (scored once, at a trial's end) under a
    frame-shuffle `protocol` (none | long_term | short_term | complete), deterministic by `seed`.
    With `cross_dataset`, the test list of cfg.eval_name at cfg.eval_root, relabelled through
    cfg.class_map. Its dataset's `records` name the videos (`index` in a batch points into them)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"shuffle protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    spec = spec or ClipSpec.from_config(cfg)
    name, root = (cfg.eval_name, cfg.eval_root) if cross_dataset else (cfg.name, cfg.root)
    if cross_dataset and name is None:
        raise ValueError("cross-dataset evaluation needs data.eval_name, data.eval_root and data.class_map")
    records = _split(cfg, name, root).test
    input_root = None
    if spec.flow_pairs:
        target_cfg = replace(cfg, name=name, root=root, flow_root=None) if cross_dataset else cfg
        input_root = target_cfg.resolved_flow_root()
        require_flow(records, input_root, dataset=name, root=root, algorithm=cfg.flow_algorithm)
    dataset = EvalDataset(records, spec, clips=cfg.eval_clips, protocol=protocol, seed=seed,
                          flow_input_root=input_root)
    return _loader(dataset, cfg, batch_size=cfg.eval_batch_size or cfg.batch_size, sampler=None,
                   device_is_cuda=device_is_cuda, drop_last=False, persistent=False)


def build_target_loader(cfg: DataConfig, *, seed: int, spec: Optional[ClipSpec] = None, flow_targets: bool = False,
                        batch_size: Optional[int] = None, device_is_cuda: bool = False, rank: int = 0,
                        num_replicas: int = 1) -> DataLoader:
    """Unlabelled training clips of the target domain (domain adaptation): the TRAINING list of
    cfg.eval_name at cfg.eval_root, through cfg.class_map, sampled like the source's clips (its own
    epoch order, from `seed`). Its samples carry no label at all: nothing can train on one."""
    if cfg.eval_name is None:
        raise ValueError("target-domain clips need data.eval_name, data.eval_root and data.class_map")
    spec = spec or ClipSpec.from_config(cfg)
    target = replace(cfg, name=cfg.eval_name, root=cfg.eval_root, flow_root=None, flow=flow_targets)
    records = _split(cfg, cfg.eval_name, cfg.eval_root).train
    flow_root, input_root = _flow_roots(target, spec, records, [])
    dataset = ClipDataset(records, spec, flow_root=flow_root, flow_size=cfg.flow_size, flow_input_root=input_root,
                          labelled=False, device_augment=cfg.augment_on == "device")
    sampler = EpochSampler(len(dataset), seed=seed + 1_000_003, rank=rank, num_replicas=num_replicas)
    batch_size = batch_size or cfg.batch_size
    return _loader(dataset, cfg, batch_size=batch_size, sampler=sampler, device_is_cuda=device_is_cuda,
                   drop_last=len(sampler) >= batch_size, persistent=True)


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

        ensure_synthetic(root, cfg.synthetic if root == cfg.root else cfg.eval_synthetic, progress=False)
    split, _ = exclude_videos(load_split(name, root, cfg.split), cfg.exclude, cfg.root)
    if cfg.class_map is not None:
        split = apply_class_map(split, load_class_map(cfg.class_map), name)
    return split


def _worker_init(worker_id: int) -> None:
    cv2.setNumThreads(1)  # each loader process is one core's worth of work
    torch.set_num_threads(1)


def _loader(dataset: Dataset, cfg: DataConfig, *, batch_size: int, sampler: Sampler | None, device_is_cuda: bool,
            drop_last: bool, persistent: bool) -> DataLoader:
    """Loader processes are started fresh ("forkserver"), never forked from the trial: a fork of a
    process whose OpenMP threads or CUDA context are running can hang in the child."""
    workers = cfg.num_workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      num_workers=workers, pin_memory=device_is_cuda, worker_init_fn=_worker_init if workers else None,
                      persistent_workers=persistent and workers > 0, collate_fn=collate_regions,
                      prefetch_factor=cfg.prefetch_factor if workers else None,
                      multiprocessing_context="forkserver" if workers else None)
