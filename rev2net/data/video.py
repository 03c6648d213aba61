"""Decoding clip windows with decord, and which frames a clip takes.

`read_frames` opens a video once and decodes only the frames asked for (decord seeks to the
keyframe before the first one and decodes forward), never the whole video.

Short videos (fewer frames than a clip spans) follow `short_video_policy`:
    loop  the clip wraps around to the start (frame indices modulo the length)
    pad   the last frame is repeated
The flow between two clip frames that are not consecutive in the video (the wrap of a loop, a
repeated frame) is unknown and is delivered as zero.
"""

from __future__ import annotations

import os

import decord
import numpy as np

decord.logging.set_level(decord.logging.QUIET)  # failures are reported by us, once per file

DECORD_BAD_WIDTHS = (48, 72)  # decord 0.6.0 fails on XVID frames this wide (also 16 and 24)


class UnreadableVideo(Exception):
    """The file is missing, empty, not a video, or fails to decode."""


def open_video(path: str) -> decord.VideoReader:
    if not os.path.isfile(path):
        raise UnreadableVideo(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UnreadableVideo(f"{path}: empty file")
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as error:  # decord raises RuntimeError / DECORDError on anything undecodable
        raise UnreadableVideo(f"{path}: cannot open ({str(error).splitlines()[0]})") from error
    if len(reader) < 1:
        raise UnreadableVideo(f"{path}: no frames")
    return reader


def read_frames(reader: decord.VideoReader, indices: np.ndarray, path: str = "") -> np.ndarray:
    """Frames at `indices` (any order, repeats allowed) as uint8 (N, H, W, 3) RGB."""
    unique, inverse = np.unique(indices, return_inverse=True)
    try:
        decoded = reader.get_batch(unique.tolist()).asnumpy()
    except Exception as error:
        raise UnreadableVideo(f"{path}: cannot decode frames {unique[0]}..{unique[-1]} "
                              f"({str(error).splitlines()[0]})") from error
    return decoded if len(unique) == len(indices) and (unique == indices).all() else decoded[inverse]


def iter_frames(reader: decord.VideoReader, path: str = "", chunk: int = 64):
    """Every frame of the video in order, as uint8 (H, W, 3) RGB, decoded `chunk` frames at a time."""
    for begin in range(0, len(reader), chunk):
        try:
            batch = reader.get_batch(list(range(begin, min(begin + chunk, len(reader))))).asnumpy()
        except Exception as error:
            raise UnreadableVideo(f"{path}: cannot decode frames from {begin} ({error})") from error
        yield from batch


def clip_indices(start: int, num_frames: int, stride: int, length: int, policy: str) -> np.ndarray:
    """Video frame indices of a clip of `num_frames` frames every `stride` from `start`."""
    indices = start + stride * np.arange(num_frames)
    if policy == "loop":
        return indices % length
    return np.minimum(indices, length - 1)  # pad: repeat the last frame


def train_start(length: int, span: int, rng: np.random.Generator) -> int:
    """Random temporal offset of a training clip spanning `span` frames."""
    return int(rng.integers(0, length - span + 1)) if length >= span else 0


def eval_starts(length: int, span: int, clips: int) -> list[int]:
    """Starts of `clips` evenly spaced clips: the centres of `clips` equal segments (1 clip: the centre)."""
    room = max(length - span, 0)
    return [int(round(room * (k + 0.5) / clips)) for k in range(clips)]
