"""rev2net/data/video.py: clip windows, short-video policies, decoding only what is asked for."""

from __future__ import annotations

import numpy as np
import pytest

from rev2net.data.layouts import all_videos
from rev2net.data.video import UnreadableVideo, clip_indices, eval_starts, open_video, read_frames, train_start


def test_clip_windows_and_short_video_policies():
    assert clip_indices(3, 4, 1, 100, "loop").tolist() == [3, 4, 5, 6]
    assert clip_indices(3, 4, 2, 100, "loop").tolist() == [3, 5, 7, 9]
    assert clip_indices(0, 6, 1, 4, "loop").tolist() == [0, 1, 2, 3, 0, 1], "loop wraps to the start"
    assert clip_indices(0, 6, 1, 4, "pad").tolist() == [0, 1, 2, 3, 3, 3], "pad repeats the last frame"
    rng = np.random.default_rng(0)
    starts = {train_start(20, 16, rng) for _ in range(200)}
    assert starts == set(range(5)), "every offset whose clip fits"
    assert train_start(10, 16, rng) == 0
    assert eval_starts(116, 17, 1) == [50] and eval_starts(116, 17, 3) == [16, 50, 82]
    assert eval_starts(10, 17, 2) == [0, 0]


def test_read_frames_returns_exactly_the_requested_frames(synthetic_root):
    path = all_videos("synthetic", synthetic_root)[0].path
    reader = open_video(path)
    everything = reader.get_batch(list(range(len(reader)))).asnumpy()
    assert everything.shape == (12, 64, 64, 3) and everything.dtype == np.uint8
    indices = np.array([5, 6, 7, 0, 0, 11])
    np.testing.assert_array_equal(read_frames(open_video(path), indices, path), everything[indices])


@pytest.mark.parametrize("content", [b"", b"plain text, not a video\n" * 20, None])
def test_unreadable_files_raise_one_error_type(tmp_path, content):
    path = tmp_path / "bad.avi"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UnreadableVideo, match=str(path)):
        open_video(str(path))
