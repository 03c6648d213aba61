"""A generated action dataset whose classes are defined by motion (the embedded default's data).

Each video shows textured objects moving over a textured background that pans slowly in a
random direction. The class is the objects' motion: direction, speed and trajectory shape
(`MOTIONS`), up to a left-right mirror, so that classes survive the horizontal flips of training;
textures, colours, sizes, start positions, phases, the mirror and the pan are random per video,
so a single frame says nothing about the class and the background says nothing either (it is
shared by all classes' videos of the same group). Videos are real XVID .avi files in the UCF101
layout, written with OpenCV and read by decord; the exact forward flow of every frame pair is
saved beside them. Everything is a function of the seed.

Two looks (`domain`, SyntheticConfig.domain), for cross-dataset experiments: "default" as above,
and "shifted": the same classes, class names, split structure and motion statistics with another
appearance (checkered triangles, rings, crosses and ellipses instead of smoothly textured discs and
squares; a dark, saturated mosaic of sharp-edged tiles instead of smooth, half-grey noise; sensor
noise; camera shake, a random global translation of every frame, which the exact flow includes),
drawn from random streams of its own. A model that reads the objects' look transfers badly from
one to the other, one that reads their motion transfers well.

On disk (ensure_synthetic):
    <root>/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt   UCF101 format
    <root>/<Class>/v_<Class>_gGG_cCC.avi        2 clips per group; split N tests groups g % 3 == N - 1
    <root>/flow_gt/<Class>/v_<Class>_gGG_cCC.npz  "flow": float32 (F-1, 2, H, W), x then y, pixels: the
                                                  exact flow from frame t to t+1; "objects": bool
                                                  (F-1, H, W), pixels of moving objects in frame t
    <root>/flow_tvl1/<Class>/v_<Class>_gGG_cCC/   extracted TV-L1 flow JPEGs (rev2net.data.flow layout)
    <root>/synthetic.json                        the marker, written last: parameters, timings, EPE
    <root>.lock (beside root)                    serialises concurrent ensure_synthetic calls

    python -m rev2net.data.synthetic --out DIR [--classes K --videos-per-class N --frames F --size S --seed X]
                                     [--domain default|shifted]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass

import cv2
import numpy as np
from filelock import FileLock
from tqdm import tqdm

from rev2net.data.config import SYNTHETIC_DOMAINS, SyntheticConfig
from rev2net.data.flow import DEFAULT_PRESET, count_pairs, dequantize, extract_flow, flow_dir_of, read_pair
from rev2net.data.layouts import all_videos
from rev2net.data.video import DECORD_BAD_WIDTHS

MARKER = "synthetic.json"
FORMAT_VERSION = 1
FPS = 25
OBJECTS = 3  # moving objects per video, all following the class motion
OBJECT_RADIUS = (0.10, 0.14)  # range, as a fraction of the frame's short side
BACKGROUND_CONTRAST = 0.4  # of the background texture, relative to the objects'
PAN_SPEED = 0.5  # background pan, at most this many pixels per frame at 80-pixel frames
# The shifted domain's look (lengths in pixels at 80-pixel frames, scaled with the frame size)
SHIFTED_OBJECT_RADIUS = (0.09, 0.13)  # range, as a fraction of the frame's short side
SHIFTED_CHECKER = (2.0, 4.0)  # range of the objects' checker cell
SHIFTED_TILE = 7.0  # background mosaic tile
SHIFTED_JITTER = 0.75  # camera shake: a global offset of each frame, uniform in [-J, J] on each axis
SHIFTED_NOISE = 3.0  # sensor noise: standard deviation in grey levels (0..255), independent per pixel and frame
DOMAIN_STREAMS = {"shifted": 2_000_029}  # appended to a domain's random-stream keys (the default's have none)


@dataclass(frozen=True)
class Motion:
    """A class: how the objects move. Every video is mirrored left-right at random, so that classes
    survive the horizontal flips of training (MoveSideways goes left or right, Circle either way)."""

    name: str  # class name (UCF-style CamelCase)
    kind: str  # linear | circle | swing
    angle: float = 0.0  # degrees, image axes (x right, y down): direction or swing axis
    speed: float = 1.5  # pixels per frame at 80-pixel frames (scaled with frame size)


MOTIONS = (
    Motion("MoveSideways", "linear", 0),
    Motion("MoveUp", "linear", 270),
    Motion("MoveDown", "linear", 90),
    Motion("MoveSidewaysFast", "linear", 0, speed=3.0),
    Motion("Circle", "circle", speed=2.5),
    Motion("SwingSideways", "swing", 0, speed=2.5),
    Motion("SwingUpDown", "swing", 90, speed=2.5),
    Motion("RiseDiagonally", "linear", 315),
    Motion("FallDiagonally", "linear", 45),
    Motion("MoveUpFast", "linear", 270, speed=3.0),
    Motion("MoveDownFast", "linear", 90, speed=3.0),
    Motion("Stay", "linear", speed=0.0),
)


# --- rendering -----------------------------------------------------------------------------------

def _texture(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth colour noise with detail at about `cell` pixels, float32 (H, W, 3) in 0..255."""
    coarse = rng.uniform(0, 255, (max(2, int(height / cell)) + 2, max(2, int(width / cell)) + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 255)


def _trajectory(motion: Motion, frames: int, scale: float, mirror: bool, rng: np.random.Generator) -> np.ndarray:
    """Offsets (F, 2) from the start position, pixels; `mirror` reverses the horizontal component."""
    t = np.arange(frames, dtype=np.float64)
    speed = motion.speed * scale * rng.uniform(0.8, 1.2)
    axis = np.array([math.cos(math.radians(motion.angle)), math.sin(math.radians(motion.angle))])
    if motion.kind == "linear":
        offsets = speed * t[:, None] * axis
    elif motion.kind == "circle":  # clockwise on screen, before mirroring
        radius = scale * rng.uniform(7, 9)
        phase = rng.uniform(0, 2 * math.pi)
        angle = phase + speed / radius * t
        offsets = radius * np.stack([np.cos(angle) - math.cos(phase), np.sin(angle) - math.sin(phase)], axis=1)
    else:  # swing: harmonic motion along the axis
        amplitude = scale * rng.uniform(8, 10)
        phase = rng.uniform(0, 2 * math.pi)
        offsets = (amplitude * (np.sin(phase + speed / amplitude * t) - math.sin(phase)))[:, None] * axis
    return offsets * np.array([-1.0 if mirror else 1.0, 1.0])


def _object_patch(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc or square: colour (S, S, 3) and alpha (S, S), centred at ((S-1)/2, (S-1)/2)."""
    side = int(math.ceil(2 * radius)) + 3
    colour = rng.uniform(40, 215, 3).astype(np.float32)
    patch = np.clip(colour + (_texture(rng, side, side, 3.0) - 127.5) * 0.8, 0, 255)
    c = (side - 1) / 2
    yy, xx = np.mgrid[:side, :side]
    if rng.random() < 0.5:
        alpha = ((xx - c) ** 2 + (yy - c) ** 2 <= radius**2)
    else:
        alpha = (np.abs(xx - c) <= radius * 0.9) & (np.abs(yy - c) <= radius * 0.9)
    return patch, alpha.astype(np.float32)


def _hue(h: float, s: float, v: float) -> np.ndarray:
    """RGB float32 (3,) in 0..255 of a colour given as HSV in 0..1."""
    hsv = np.uint8([[[round(h * 179), round(s * 255), round(v * 255)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _shifted_background(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """A dark mosaic of sharp-edged square tiles in one saturated hue, float32 (H, W, 3) in 0..255."""
    tile = SHIFTED_TILE * scale
    coarse = rng.uniform(0, 1, (int(height / tile) + 2, int(width / tile) + 2)).astype(np.float32)
    mosaic = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_NEAREST)  # (H, W) in 0..1
    tint = _hue(rng.uniform(0, 1), rng.uniform(0.7, 1.0), 1.0)
    return (0.08 + 0.32 * mosaic)[..., None] * tint  # 8-40 % of a bright, saturated colour


def _shifted_object_patch(rng: np.random.Generator, radius: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A checkered triangle, ring, cross or ellipse in a light pastel and near-white: colour (S, S, 3)
    and alpha (S, S), centred at ((S-1)/2, (S-1)/2)."""
    side = int(math.ceil(2 * radius)) + 3
    c = (side - 1) / 2
    yy, xx = np.mgrid[:side, :side]
    dx, dy = xx - c, yy - c
    cell = rng.uniform(*SHIFTED_CHECKER) * scale
    phase = rng.uniform(0, 2 * cell, 2)
    checker = (np.floor((xx + phase[0]) / cell) + np.floor((yy + phase[1]) / cell)) % 2 == 1
    light, white = _hue(rng.uniform(0, 1), rng.uniform(0.3, 0.6), 1.0), rng.uniform(225, 255, 3).astype(np.float32)
    patch = np.where(checker[..., None], light, white).astype(np.float32)
    shape = int(rng.integers(4))
    if shape == 0:  # triangle, apex up or down
        dy = dy if rng.random() < 0.5 else -dy
        alpha = (dy <= 0.6 * radius) & (np.abs(dx) <= 0.6 * (dy + radius))
    elif shape == 1:  # ring
        alpha = (dx**2 + dy**2 <= radius**2) & (dx**2 + dy**2 >= (0.55 * radius) ** 2)
    elif shape == 2:  # cross
        bar = 0.3 * radius
        alpha = ((np.abs(dx) <= bar) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= radius))
    else:  # ellipse, lying or standing
        a, b = (radius, 0.55 * radius) if rng.random() < 0.5 else (0.55 * radius, radius)
        alpha = (dx / a) ** 2 + (dy / b) ** 2 <= 1
    return patch, alpha.astype(np.float32)


def _check_domain(domain: str) -> None:
    if domain not in SYNTHETIC_DOMAINS:
        raise ValueError(f"data.synthetic.domain={domain!r} is not allowed: expected {' | '.join(SYNTHETIC_DOMAINS)}")


def render_video(motion: Motion, *, frames: int, height: int, width: int, rng: np.random.Generator,
                 background_rng: np.random.Generator,
                 domain: str = "default") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames uint8 (F, H, W, 3) RGB, their exact forward flow float32 (F-1, 2, H, W) and the
    moving objects' pixels bool (F-1, H, W) (the rest is background), in the look of `domain`."""
    _check_domain(domain)
    shifted = domain == "shifted"
    scale = min(height, width) / 80.0
    pan_speed, pan_angle = rng.uniform(0, PAN_SPEED) * scale, rng.uniform(0, 2 * math.pi)
    pan = np.array([math.cos(pan_angle), math.sin(pan_angle)]) * pan_speed
    jitter_max = SHIFTED_JITTER * scale if shifted else 0.0
    margin = int(math.ceil(pan_speed * frames + jitter_max)) + 2
    if shifted:
        background = _shifted_background(background_rng, height + 2 * margin, width + 2 * margin, scale)
    else:
        texture = _texture(background_rng, height + 2 * margin, width + 2 * margin, 5.0 * scale)
        # half grey
        background = 128 + BACKGROUND_CONTRAST * (0.5 * texture + 0.5 * texture.mean(2, keepdims=True) - 128)
    mirror = bool(rng.random() < 0.5)
    objects = []
    for _ in range(OBJECTS):
        radius = min(height, width) * rng.uniform(*(SHIFTED_OBJECT_RADIUS if shifted else OBJECT_RADIUS))
        patch, alpha = _shifted_object_patch(rng, radius, scale) if shifted else _object_patch(rng, radius)
        offsets = _trajectory(motion, frames, scale, mirror, rng)
        start = np.empty(2)
        for axis, size in ((0, width), (1, height)):  # keep the whole path inside the frame when it fits
            low, high = radius - offsets[:, axis].min(), size - radius - offsets[:, axis].max()
            start[axis] = rng.uniform(low, high) if low <= high else (low + high) / 2
        objects.append((patch, alpha, start + offsets))
    # camera shake: frame f shows the scene translated by jitter[f] (drawn last: the default draws none)
    jitter = rng.uniform(-jitter_max, jitter_max, (frames, 2)) if shifted else np.zeros((frames, 2))
    video = np.empty((frames, height, width, 3), np.uint8)
    flow = np.empty((max(frames - 1, 0), 2, height, width), np.float32)
    on_objects = np.zeros((max(frames - 1, 0), height, width), bool)
    inverse = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for f in range(frames):
        shift = margin - pan * f - jitter[f]  # frame pixel p shows background texel p + shift: content moves by +pan
        # (and by jitter[f + 1] - jitter[f] more: the camera's own motion)
        move = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
        frame = cv2.warpAffine(background, move, (width, height), flags=inverse, borderMode=cv2.BORDER_REFLECT)
        shake = jitter[f + 1] - jitter[f] if f < frames - 1 else 0.0
        if f < frames - 1:
            flow[f, 0], flow[f, 1] = pan + shake
        for patch, alpha, centres in objects:
            c = (patch.shape[0] - 1) / 2
            centre = centres[f] + jitter[f]
            move = np.float32([[1, 0, c - centre[0]], [0, 1, c - centre[1]]])
            a = cv2.warpAffine(alpha, move, (width, height), flags=inverse, borderValue=0)
            colour = cv2.warpAffine(patch, move, (width, height), flags=inverse, borderMode=cv2.BORDER_REPLICATE)
            frame = frame * (1 - a[..., None]) + colour * a[..., None]
            if f < frames - 1:
                inside = a > 0.5
                step = centres[f + 1] - centres[f] + shake
                flow[f, 0][inside], flow[f, 1][inside] = step
                on_objects[f] |= inside
        if shifted:
            frame = frame + rng.normal(0, SHIFTED_NOISE, frame.shape)
        video[f] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    return video, flow, on_objects


def write_video(path: str, frames: np.ndarray, fps: int = FPS) -> None:
    """Encode RGB uint8 (F, H, W, 3) frames as XVID in an .avi (H and W even)."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"XVID"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write XVID video {path} ({width}x{height})")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


# --- the dataset ---------------------------------------------------------------------------------

def video_plan(classes: int, videos_per_class: int, val_videos_per_class: int = 0,
               test_videos_per_class: int = 0) -> list[tuple[int, int, int, int, str]]:
    """(class index, video index, group, clip, subset) of every video: videos_per_class // 6 clips per
    group (at least 1; 2 for the default 12), so that each split has test groups. The first
    `videos_per_class` of a class form the rotating pool (subset "pool": split N tests its groups
    g % 3 == N - 1 and trains on the others); then `val_videos_per_class` validation videos and
    `test_videos_per_class` more test videos, each in groups of their own, the same for every split."""
    per_group = max(1, videos_per_class // 6)
    val_from = -(-videos_per_class // per_group) * per_group  # the next whole group
    test_from = val_from + -(-val_videos_per_class // per_group) * per_group

    def subset(v: int) -> str:
        return "pool" if v < videos_per_class else "val" if v < test_from else "test"

    indices = [*range(videos_per_class), *range(val_from, val_from + val_videos_per_class),
               *range(test_from, test_from + test_videos_per_class)]
    return [(c, v, v // per_group, v % per_group, subset(v)) for c in range(classes) for v in indices]


def generate_dataset(out: str, *, classes: int, videos_per_class: int, frames: int, height: int, width: int,
                     seed: int, domain: str = "default", val_videos_per_class: int = 0, test_videos_per_class: int = 0,
                     progress: bool = False) -> int:
    """Write videos, ground-truth flow and UCF101 split files under `out` (with a `vallist0N.txt`
    when there are validation videos); returns the video count. Every domain has the same classes,
    file names and splits; each draws from random streams of its own (the default's are those it
    always had)."""
    _check_domain(domain)
    stream = [DOMAIN_STREAMS[domain]] if domain in DOMAIN_STREAMS else []
    motions = MOTIONS[:classes]
    plan = video_plan(classes, videos_per_class, val_videos_per_class, test_videos_per_class)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "classInd.txt"), "w") as f:
        f.writelines(f"{c + 1} {m.name}\n" for c, m in enumerate(motions))
    kinds = ("train", "val", "test") if val_videos_per_class else ("train", "test")
    lists = {(kind, split): [] for kind in kinds for split in (1, 2, 3)}
    for c, v, group, clip, subset in tqdm(plan, desc="generate", unit="video", disable=not progress):
        name = motions[c].name
        rel = f"{name}/v_{name}_g{group + 1:02d}_c{clip + 1:02d}.avi"
        rng = np.random.default_rng([seed, c, v, *stream])
        background_rng = np.random.default_rng([seed, 1_000_003, group, *stream])
        video, flow, on_objects = render_video(motions[c], frames=frames, height=height, width=width, rng=rng,
                                               background_rng=background_rng, domain=domain)
        os.makedirs(os.path.join(out, name), exist_ok=True)
        write_video(os.path.join(out, rel), video)
        gt = os.path.join(out, "flow_gt", os.path.splitext(rel)[0] + ".npz")
        os.makedirs(os.path.dirname(gt), exist_ok=True)
        np.savez_compressed(gt, flow=flow, objects=on_objects)
        for split in (1, 2, 3):
            if subset == "val":
                lists["val", split].append(f"{rel} {c + 1}")
            elif subset == "test" or group % 3 == split - 1:
                lists["test", split].append(rel)
            else:
                lists["train", split].append(f"{rel} {c + 1}")
    for (kind, split), lines in lists.items():
        with open(os.path.join(out, f"{kind}list{split:02d}.txt"), "w") as f:
            f.writelines(line + "\n" for line in lines)
    return len(plan)


def ground_truth_flow(root: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow of a generated video, float32 (F-1, 2, H, W), and its object mask bool (F-1, H, W)."""
    with np.load(os.path.join(root, "flow_gt", key + ".npz")) as data:
        return data["flow"], data["objects"]


def flow_epe(root: str, flow_root: str | None = None, *, max_videos: int | None = None) -> dict[str, float]:
    """End-point error (pixels) of the stored flow against the ground truth, and of zero flow.

    Means over every pixel of every frame pair (`epe`, `zero_flow_epe`) and over the moving
    objects' pixels only (`object_epe`, `object_zero_flow_epe`). Flow stored on another grid is
    resized to the ground truth's, its vectors scaled with it.
    """
    flow_root = flow_root or os.path.join(root, "flow_tvl1")
    sums = dict.fromkeys(("epe", "zero_flow_epe", "object_epe", "object_zero_flow_epe"), 0.0)
    pixels = object_pixels = pairs = 0
    for record in all_videos("synthetic", root, subsets=("train",))[:max_videos]:  # the videos with flow
        gt, objects = ground_truth_flow(root, record.key)
        flow_dir = flow_dir_of(flow_root, record.key)
        height, width = gt.shape[2:]
        for pair in range(min(gt.shape[0], count_pairs(flow_dir))):
            stored = dequantize(read_pair(flow_dir, pair))
            if stored.shape[1:] != (height, width):
                sx, sy = width / stored.shape[2], height / stored.shape[1]
                stored = np.stack([cv2.resize(stored[0], (width, height)) * sx,
                                   cv2.resize(stored[1], (width, height)) * sy])
            error = np.sqrt(((stored - gt[pair]) ** 2).sum(0))
            magnitude = np.sqrt((gt[pair] ** 2).sum(0))
            sums["epe"] += float(error.sum())
            sums["zero_flow_epe"] += float(magnitude.sum())
            sums["object_epe"] += float(error[objects[pair]].sum())
            sums["object_zero_flow_epe"] += float(magnitude[objects[pair]].sum())
            pixels += error.size
            object_pixels += int(objects[pair].sum())
            pairs += 1
    result = {key: value / max(object_pixels if key.startswith("object") else pixels, 1) for key, value in sums.items()}
    return {**{key: round(value, 4) for key, value in result.items()}, "pairs": pairs}


def check_params(params: SyntheticConfig) -> None:
    """Refuse what SyntheticConfig cannot judge on its own: more classes than MOTIONS defines, a
    frame width decord cannot read. Raises ValueError naming the key (`data.synthetic.<key>=...`)."""
    if not 1 <= params.classes <= len(MOTIONS):
        raise ValueError(f"data.synthetic.classes={params.classes!r} is not allowed: expected an integer from 1 to "
                         f"{len(MOTIONS)} (the number of motion classes defined)")
    if params.size in DECORD_BAD_WIDTHS:
        raise ValueError(f"data.synthetic.size={params.size!r} is not allowed: expected an even integer >= 32 other "
                         f"than {DECORD_BAD_WIDTHS} (decord 0.6.0 cannot read XVID frames of those widths)")


def ensure_synthetic(root: str, params: SyntheticConfig | None = None, *, progress: bool = True,
                     workers: int | None = None) -> dict:
    """Make sure a complete generated dataset with TV-L1 flow exists at `root`; returns its marker.

    Idempotent and safe to call from several processes at once (a lock file beside `root`): the
    dataset is built in `<root>.partial` and renamed to `root` after the marker is written, so
    `root` either does not exist or is complete. A `root` holding another generated dataset, or
    anything else, is an error rather than overwritten; so are parameters that `check_params` refuses.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A worker of the flow extraction pool (start method "spawn") is re-running the caller's
        # script: without this check it would wait forever on the lock its parent holds.
        raise RuntimeError("ensure_synthetic was called while a worker process was starting; the calling script "
                           "needs `if __name__ == '__main__':` around its main code (multiprocessing 'spawn')")
    params = params or SyntheticConfig()
    check_params(params)
    root = os.path.abspath(os.path.expanduser(root))
    wanted = dataclasses.asdict(params)
    marker = _read_marker(root)
    if marker is None or marker.get("params") != wanted:  # not done (or mismatched: checked under the lock)
        os.makedirs(os.path.dirname(root), exist_ok=True)
        with FileLock(root + ".lock"):
            marker = _read_marker(root)
            if marker is None:
                marker = _build(root, params, progress=progress, workers=workers)
    if marker.get("params") != wanted:
        raise ValueError(f"data.root={root} holds a generated dataset with parameters {marker.get('params')}, "
                         f"not the requested {wanted}: use another data.root or delete that folder")
    return marker


def ensure_flow(root: str, params: SyntheticConfig | None = None, *, progress: bool = True,
                workers: int | None = None) -> int:
    """TV-L1 flow for every video of the generated dataset at `root`, evaluation videos included
    (a flow stream reads its input flow at evaluation too; the dataset is built with the training
    videos' only). Extracts what is missing (each video's folder appears only when complete), under
    the dataset's lock; returns how many videos it extracted."""
    marker = ensure_synthetic(root, params, progress=progress, workers=workers)
    root = os.path.abspath(os.path.expanduser(root))
    flow_root = os.path.join(root, "flow_tvl1")
    videos = [(r.path, flow_dir_of(flow_root, r.key)) for r in all_videos("synthetic", root)]
    if all(os.path.isdir(out) for _, out in videos):
        return 0
    with FileLock(root + ".lock"):
        summary = extract_flow(videos, algorithm="tvl1", preset=marker["flow"]["preset"], workers=workers,
                               progress=progress)
    if summary.failures:
        raise RuntimeError("flow extraction failed on generated videos:\n" + summary.report())
    return summary.done


def _read_marker(root: str) -> dict | None:
    path = os.path.join(root, MARKER)
    if not os.path.isfile(path):
        if os.path.isdir(root) and os.listdir(root):
            raise ValueError(f"data.root={root} exists and is not a generated dataset (no {MARKER}); "
                             "point data.root at a new folder for data.name=synthetic")
        return None
    with open(path) as f:
        marker = json.load(f)
    marker.get("params", {}).setdefault("domain", "default")  # written before there were domains
    for key in ("val_videos_per_class", "test_videos_per_class"):
        marker.get("params", {}).setdefault(key, 0)  # ... or evaluation videos of their own
    return marker


def _build(root: str, params: SyntheticConfig, *, progress: bool, workers: int | None) -> dict:
    partial = root + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    count = generate_dataset(partial, classes=params.classes, videos_per_class=params.videos_per_class,
                             frames=params.frames, height=params.size, width=params.size, seed=params.seed,
                             domain=params.domain, val_videos_per_class=params.val_videos_per_class,
                             test_videos_per_class=params.test_videos_per_class, progress=progress)
    generated = time.perf_counter()
    flow_root = os.path.join(partial, "flow_tvl1")
    trained_on = all_videos("synthetic", partial, subsets=("train",))  # evaluation videos never need flow
    summary = extract_flow([(r.path, flow_dir_of(flow_root, r.key)) for r in trained_on],
                           algorithm="tvl1", preset=DEFAULT_PRESET, workers=workers, progress=progress)
    if summary.failures:
        raise RuntimeError("flow extraction failed on generated videos:\n" + summary.report())
    extracted = time.perf_counter()
    marker = {"format": FORMAT_VERSION, "params": dataclasses.asdict(params), "videos": count,
              "flow": {"algorithm": "tvl1", "preset": DEFAULT_PRESET, "pairs": summary.units},
              "generate_s": round(generated - start, 2), "extract_s": round(extracted - generated, 2),
              "tvl1_vs_ground_truth": flow_epe(partial, flow_root)}
    tmp = os.path.join(partial, MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(marker, f, indent=2)
    os.replace(tmp, os.path.join(partial, MARKER))
    if os.path.isdir(root):
        os.rmdir(root)  # empty (checked by _read_marker)
    os.rename(partial, root)
    return marker


def main(argv: list[str] | None = None) -> int:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m rev2net.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--classes", type=int, default=defaults.classes)
    parser.add_argument("--videos-per-class", type=int, default=defaults.videos_per_class)
    parser.add_argument("--val-videos-per-class", type=int, default=defaults.val_videos_per_class,
                        help="validation videos per class, in groups of their own (vallist0N.txt; no flow)")
    parser.add_argument("--test-videos-per-class", type=int, default=defaults.test_videos_per_class,
                        help="more test videos per class, in groups of their own (no flow)")
    parser.add_argument("--frames", type=int, default=defaults.frames)
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--domain", default=defaults.domain,
                        help="default | shifted: the same motion classes with another look (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="flow extraction processes (default: every core)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        params = SyntheticConfig(args.classes, args.videos_per_class, frames=args.frames, size=args.size,
                                 seed=args.seed, domain=args.domain, val_videos_per_class=args.val_videos_per_class,
                                 test_videos_per_class=args.test_videos_per_class)
        check_params(params)
    except ValueError as error:
        parser.error(str(error))
    marker = ensure_synthetic(args.out, params, progress=not args.no_progress, workers=args.workers)
    epe = marker["tvl1_vs_ground_truth"]
    print(f"{marker['videos']} videos at {os.path.abspath(args.out)}: generated in {marker['generate_s']} s, "
          f"TV-L1 ({marker['flow']['preset']}) extracted in {marker['extract_s']} s")
    print(f"end-point error vs ground truth over {epe['pairs']} frame pairs: TV-L1 {epe['epe']:.3f} px, "
          f"zero flow {epe['zero_flow_epe']:.3f} px; on moving objects: TV-L1 {epe['object_epe']:.3f} px, "
          f"zero flow {epe['object_zero_flow_epe']:.3f} px")
    return 0


if __name__ == "__main__":
    from rev2net.data.synthetic import main as _main

    raise SystemExit(_main())
