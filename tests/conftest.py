"""Shared fixtures. Data: one tiny generated dataset (real XVID videos, TV-L1 flow, exact flow),
made once per session; tests that damage data work on a copy."""

from __future__ import annotations

import shutil

import pytest

from rev2net.data.config import SyntheticConfig

# 3 motion classes x 3 videos (one per group: split 1 trains on 2, tests on 1) of 12 frames, 64 px
TINY_SYNTHETIC = SyntheticConfig(classes=3, videos_per_class=3, frames=12, size=64, seed=0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """A complete generated dataset with TV-L1 flow; read-only for tests (copy it to modify)."""
    from rev2net.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic"
    ensure_synthetic(str(root), TINY_SYNTHETIC, progress=False, workers=1)
    return str(root)


@pytest.fixture
def synthetic_params() -> SyntheticConfig:
    """The parameters `synthetic_root` was generated with."""
    return TINY_SYNTHETIC


@pytest.fixture
def synthetic_copy(synthetic_root, tmp_path) -> str:
    """A private copy of the tiny generated dataset, for tests that break it."""
    return str(shutil.copytree(synthetic_root, tmp_path / "synthetic"))
