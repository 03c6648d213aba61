"""rev2net/data/shuffle.py: each frame-shuffle protocol keeps exactly what it should."""

from __future__ import annotations

import numpy as np
import pytest

from rev2net.data.shuffle import PROTOCOLS, shuffle_order


def _blocks(order: np.ndarray, size: int = 8) -> list[list[int]]:
    return [order[i:i + size].tolist() for i in range(0, len(order), size)]


@pytest.mark.parametrize("length", [32, 20])
@pytest.mark.parametrize("seed", range(5))
def test_each_protocol_keeps_what_it_should(length, seed):
    identity = list(range(length))
    blocks = _blocks(np.arange(length))
    assert shuffle_order(length, "none", np.random.default_rng(seed)).tolist() == identity

    long_term = shuffle_order(length, "long_term", np.random.default_rng(seed))
    assert long_term.tolist() != identity
    # whole blocks, inside order kept: the output is the blocks concatenated in another order
    pieces, position = [], 0
    while position < length:
        block = next(b for b in blocks if b[0] == long_term[position])
        assert long_term[position:position + len(block)].tolist() == block, "order inside a block kept"
        pieces.append(block)
        position += len(block)
    assert sorted(pieces) == sorted(blocks) and pieces != blocks, "blocks rearranged"

    short_term = shuffle_order(length, "short_term", np.random.default_rng(seed))
    assert short_term.tolist() != identity
    for original, shuffled in zip(blocks, _blocks(short_term)):
        assert sorted(shuffled) == original, "each block keeps its frames and its place"

    complete = shuffle_order(length, "complete", np.random.default_rng(seed))
    assert sorted(complete.tolist()) == identity and complete.tolist() != identity


def test_complete_shuffle_breaks_blocks_too():
    broken = 0
    for seed in range(20):
        order = shuffle_order(32, "complete", np.random.default_rng(seed))
        broken += any(sorted(b) != list(range(8 * i, 8 * i + 8)) for i, b in enumerate(_blocks(order)))
    assert broken == 20


def test_deterministic_by_seed():
    for protocol in PROTOCOLS:
        a = shuffle_order(32, protocol, np.random.default_rng([7, 1]))
        b = shuffle_order(32, protocol, np.random.default_rng([7, 1]))
        assert a.tolist() == b.tolist()
    assert (shuffle_order(32, "complete", np.random.default_rng(1)).tolist()
            != shuffle_order(32, "complete", np.random.default_rng(2)).tolist())


def test_unknown_protocol_is_named():
    with pytest.raises(ValueError, match="'reverse' is not one of none, long_term, short_term, complete"):
        shuffle_order(32, "reverse", np.random.default_rng(0))
