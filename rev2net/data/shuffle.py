"""Frame-shuffle evaluation protocols (Rev2Net paper, Tables 1 and 3).

Frames are grouped in consecutive blocks of 8 (the last block is shorter when the clip length is
not a multiple of 8):
    none        the clip as it is
    long_term   shuffle the blocks, keep the order inside each: short-term order survives
    short_term  shuffle inside each block, keep the block order: long-term order survives
    complete    shuffle all frames
Deterministic by seed. A drawn permutation that leaves the clip unchanged is redrawn (up to
100 times), so a shuffled clip is always disturbed when it can be.
"""

from __future__ import annotations

import numpy as np

PROTOCOLS = ("none", "long_term", "short_term", "complete")
BLOCK = 8


def shuffle_order(length: int, protocol: str, rng: np.random.Generator, block: int = BLOCK) -> np.ndarray:
    """Frame order (a permutation of range(length)) for `protocol`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"shuffle protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    identity = np.arange(length)
    if protocol == "none":
        return identity
    blocks = [identity[start:start + block] for start in range(0, length, block)]
    for _ in range(100):
        if protocol == "long_term":
            order = np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])
        elif protocol == "short_term":
            order = np.concatenate([rng.permutation(b) for b in blocks])
        else:
            order = rng.permutation(length)
        if not np.array_equal(order, identity):
            break
    return order
