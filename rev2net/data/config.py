"""The data pipeline's configuration: one plain dataclass, usable as a Hydra structured config.

Field types are limited to what OmegaConf structured configs accept (int, float, bool, str,
Optional, nested dataclasses); every field has a default, and `__post_init__` rejects bad values
with the dotted key (`data.<field>`), the value and what is allowed, so that a sweep fails before
its first trial rather than at trial 700.

This module imports nothing of the package, so that every other module can import it. It owns the
vocabulary of its own keys (DATASETS, SPLITS, FLOW_ALGORITHMS, SHORT_VIDEO_POLICIES), which the
pipeline imports from here; a check that needs another module's knowledge lives in that module
(`rev2net.data.synthetic.check_params`: the number of motions, the frame widths decord cannot read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

DATASETS = ("ucf101", "hmdb51", "kinetics400", "generic", "synthetic")  # data.name, data.eval_name
SYNTHETIC_DOMAINS = ("default", "shifted")  # data.synthetic.domain: looks of the generated dataset
SHORT_VIDEO_POLICIES = ("loop", "pad")  # data.short_video_policy
MOTIONNET_SOURCE = "motionnet:"  # data.flow_source=motionnet:/path/ckpt.pt
FLOW_ALGORITHMS = ("tvl1", "farneback")  # data.flow_algorithm
AUGMENT_ON = ("cpu", "device")  # data.augment_on: where training clips are cropped, resized, flipped, normalised
SPLITS = {"ucf101": 3, "hmdb51": 3, "kinetics400": 1, "generic": 3, "synthetic": 3}  # data.split: 1..SPLITS[name]


@dataclass
class SyntheticConfig:
    """Parameters of the generated dataset (`rev2net.data.synthetic`); the single home of its defaults.

    The default is 8 motion classes x 16 videos of 24 frames at 80x80. `__post_init__` checks each
    field on its own; `rev2net.data.synthetic.check_params` adds what only that module knows.
    """

    classes: int = 8  # motion classes, the first K of rev2net.data.synthetic.MOTIONS (K <= len(MOTIONS))
    videos_per_class: int = 16  # split by group as in UCF101: 2 clips per group, 1/3 of groups test
    val_videos_per_class: int = 0  # validation videos in groups of their own (vallist0N.txt; never need flow)
    test_videos_per_class: int = 0  # more test videos, in groups of their own, added to every split's test list
    frames: int = 24  # frames per video: a 16-frame clip with 8 frames of temporal jitter
    size: int = 80  # frame height = width, pixels (even, >= 32, not in rev2net.data.video.DECORD_BAD_WIDTHS)
    seed: int = 0  # everything (textures, trajectories, splits) is a function of the seed
    domain: str = "default"  # default | shifted: the same motion classes with another look (a cross-dataset target)

    def __post_init__(self) -> None:
        _check(self.classes >= 1, "data.synthetic.classes", self.classes,
               "an integer >= 1 (and at most the number of motion classes defined)")
        _check(self.videos_per_class >= 3, "data.synthetic.videos_per_class", self.videos_per_class,
               "an integer >= 3 (each of the 3 splits needs a train and a test group)")
        _check(self.val_videos_per_class >= 0 and self.test_videos_per_class >= 0, "data.synthetic.val_videos_per_class",
               (self.val_videos_per_class, self.test_videos_per_class),
               "integers >= 0 (data.synthetic.val_videos_per_class, data.synthetic.test_videos_per_class)")
        _check(self.frames >= 2, "data.synthetic.frames", self.frames, "an integer >= 2")
        _check(self.size >= 32 and self.size % 2 == 0, "data.synthetic.size", self.size, "an even integer >= 32")
        _check(self.domain in SYNTHETIC_DOMAINS, "data.synthetic.domain", self.domain, " | ".join(SYNTHETIC_DOMAINS))


@dataclass
class DataConfig:
    """What a trial reads and how its clips are cut (`cfg.data`).

    Defaults are the paper's (32 consecutive frames, 224 crops from a 256 short side). Frames
    leave the loader as uint8 and become float in [-1, 1] on the device, in
    `rev2net.batch.to_device`.
    """

    name: str = "synthetic"  # ucf101 | hmdb51 | kinetics400 | generic | synthetic
    root: str = "data/synthetic"  # dataset folder (layouts: rev2net/data/layouts.py)
    split: int = 1  # official split 1..3 (kinetics400: 1 = train / validate)
    frames: int = 32  # clip length T
    frame_stride: int = 1  # take every k-th frame; the clip spans (frames - 1) * stride + 1 frames
    crop_size: int = 224  # square crop side H = W after resizing
    short_side: int = 256  # the short side is resized to this before cropping (>= crop_size)
    flow: bool = True  # deliver TV-L1 flow targets with training clips
    flow_root: Optional[str] = None  # None: <root>/flow_<flow_algorithm>
    flow_algorithm: str = "tvl1"  # tvl1 | farneback: which extraction the default flow_root holds
    flow_downsample: int = 1  # flow targets are (crop_size / k)^2: set k to the decoder's stride
    flow_source: str = "tvl1"  # Rev2Net's flow targets: tvl1 (the pre-computed flow at flow_root, of
                               # data.flow_algorithm) | motionnet:/path/ckpt.pt (a frozen MotionNet on the
                               # training clip, in the step: no flow files)
    eval_clips: int = 1  # evenly spaced clips per video at evaluation; scores are averaged
    batch_size: int = 8  # clips per training batch; videos per evaluation batch
    eval_batch_size: Optional[int] = None  # None: batch_size
    eval_cache_mb: int = 256  # validation clips are kept in memory (per loader process) when they all fit in this
    num_workers: int = 2  # loader processes (persistent); 0 loads in the main process
    prefetch_factor: int = 2  # batches each worker prepares ahead
    augment_on: str = "cpu"  # training clips' crop, resize, flip: cpu (in the loader processes) | device (the
                             # loader ships the uncut square region as uint8 and the trial's device resizes and
                             # flips it, rev2net.data.transforms.DeviceCrop); flow and evaluation clips stay in the loader
    short_video_policy: str = "loop"  # videos shorter than a clip: loop (wrap around) | pad (repeat last)
    val_fraction: float = 0.1  # share of each class's training groups held out for validation (selection, ASHA),
                               # when the layout has no validation list of its own; the test list is scored once
    val_seed: int = 0  # which groups are held out (the same for every trial of a sweep)
    class_map: Optional[str] = None  # cross-dataset class mapping: a file or a shipped name (ucf101_hmdb51_12);
                                     # none between two datasets of one layout with the same classes (e.g. two
                                     # generated domains)
    max_broken_fraction: float = 0.0  # share of a split's listed videos that may be broken (missing, unreadable,
                                      # cut short, without flow): the sweep leaves them out of every trial's
                                      # lists (data.exclude) and names them; more refuses the start. 0: none
    exclude: list[str] = field(default_factory=list)  # video files left out of every list (absolute, or relative to
                                                      # data.root); the driver adds the broken videos it tolerates
    eval_name: Optional[str] = None  # cross-dataset target dataset (evaluated on its test list)
    eval_root: Optional[str] = None  # its folder
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # used when name == synthetic
    eval_synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(domain="shifted"))  # eval_name == synthetic

    def __post_init__(self) -> None:
        if isinstance(self.synthetic, dict):  # built from plain keys (e.g. a resolved OmegaConf dict)
            self.synthetic = SyntheticConfig(**self.synthetic)
        if isinstance(self.eval_synthetic, dict):
            self.eval_synthetic = SyntheticConfig(**self.eval_synthetic)
        _check(self.name in DATASETS, "data.name", self.name, " | ".join(DATASETS))
        _check(bool(self.root), "data.root", self.root, "a dataset folder")
        n_splits = SPLITS[self.name]
        _check(1 <= self.split <= n_splits, "data.split", self.split,
               f"1..{n_splits} for {self.name}")
        _check(self.frames >= 2, "data.frames", self.frames, "an integer >= 2 (flow needs a frame pair)")
        _check(self.frame_stride >= 1, "data.frame_stride", self.frame_stride, "an integer >= 1")
        _check(self.crop_size >= 8, "data.crop_size", self.crop_size, "an integer >= 8")
        _check(self.short_side >= self.crop_size, "data.short_side", self.short_side,
               f"an integer >= data.crop_size ({self.crop_size})")
        _check(self.flow_algorithm in FLOW_ALGORITHMS, "data.flow_algorithm", self.flow_algorithm,
               " | ".join(FLOW_ALGORITHMS))
        _check(self.flow_source == "tvl1" or (self.flow_source.startswith(MOTIONNET_SOURCE)
                                               and os.path.isfile(self.flow_source[len(MOTIONNET_SOURCE):])),
               "data.flow_source", self.flow_source, "tvl1, or motionnet:/path/to/an/existing/checkpoint.pt "
               "(python -m rev2net.motionnet_pretrain pretrains one)")
        _check(self.flow_downsample >= 1 and self.crop_size % self.flow_downsample == 0,
               "data.flow_downsample", self.flow_downsample,
               f"a positive divisor of data.crop_size ({self.crop_size})")
        _check(self.eval_clips >= 1, "data.eval_clips", self.eval_clips, "an integer >= 1")
        _check(self.batch_size >= 1, "data.batch_size", self.batch_size, "an integer >= 1")
        _check(self.eval_cache_mb >= 0, "data.eval_cache_mb", self.eval_cache_mb, "an integer >= 0 (0: no cache)")
        _check(self.eval_batch_size is None or self.eval_batch_size >= 1, "data.eval_batch_size",
               self.eval_batch_size, "null or an integer >= 1")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        _check(self.prefetch_factor >= 1, "data.prefetch_factor", self.prefetch_factor, "an integer >= 1")
        _check(self.augment_on in AUGMENT_ON, "data.augment_on", self.augment_on, " | ".join(AUGMENT_ON))
        _check(self.short_video_policy in SHORT_VIDEO_POLICIES, "data.short_video_policy",
               self.short_video_policy, " | ".join(SHORT_VIDEO_POLICIES))
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", self.val_fraction,
               "a number in [0, 1)")
        _check(0.0 <= self.max_broken_fraction < 1.0, "data.max_broken_fraction", self.max_broken_fraction,
               "a number in [0, 1) (e.g. 0.01: up to 1% of a split's videos may be broken and are left out)")
        if self.eval_name is not None:
            _check(self.eval_name in DATASETS, "data.eval_name", self.eval_name,
                   "null or " + " | ".join(DATASETS))
            _check(self.class_map is not None or self.eval_name == self.name, "data.class_map", self.class_map,
                   "a class mapping (e.g. ucf101_hmdb51_12) whenever data.eval_name is another dataset: "
                   "the two datasets need a shared label space")
            _check(bool(self.eval_root), "data.eval_root", self.eval_root,
                   "the target dataset's folder whenever data.eval_name is set")
            _check(1 <= self.split <= SPLITS[self.eval_name], "data.split", self.split,
                   f"1..{SPLITS[self.eval_name]}: it also picks data.eval_name's ({self.eval_name}) split")

    @property
    def clip_span(self) -> int:
        """Source frames one clip covers."""
        return (self.frames - 1) * self.frame_stride + 1

    @property
    def flow_size(self) -> int:
        """Side of the square flow target grid."""
        return self.crop_size // self.flow_downsample

    @property
    def stored_flow_targets(self) -> bool:
        """Flow targets are read from the extracted flow (not computed by a MotionNet in the step)."""
        return self.flow and self.flow_source == "tvl1"

    def resolved_flow_root(self) -> str:
        return self.flow_root or os.path.join(self.root, f"flow_{self.flow_algorithm}")


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is not allowed: expected {allowed}")
