"""The rule that turns a coarse best value into the fine stage's values.

The paper (Yao et al. 2020, Sec. 4) searches "a fine grid of {0, 0.25, ..., 1}" after the coarse
one but does not say what the factors multiply. This module holds that choice as one function,
named in search_spaces/fine.yaml (`rule: module:function`), so a different rule is one line there.
A rule takes (best, coarse_values, factors) and returns the sorted fine values.
"""

from __future__ import annotations


def upper_neighbour(best: float, coarse_values: list[float], factors: list[float]) -> list[float]:
    """factors x (the coarse value just above `best`), plus `best` itself.

    The fine grid thus covers [0, upper] with the resolution of the factors, and the interval
    between the coarse best and its upper neighbour in particular. When `best` is the largest
    coarse value there is no neighbour above it, and the scale is `best` itself.

    >>> upper_neighbour(0.1, [0, 0.0001, 0.001, 0.1, 1, 10], [0, 0.25, 0.5, 0.75, 1])
    [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
    >>> upper_neighbour(0.0, [0, 0.0001, 0.001, 0.1, 1, 10], [0, 0.25, 0.5, 0.75, 1])
    [0.0, 2.5e-05, 5e-05, 7.5e-05, 0.0001]
    """
    above = sorted(v for v in coarse_values if v > best)
    scale = above[0] if above else best
    values = {float(round(f * scale, 12)) for f in factors} | {float(best)}
    return sorted(values)


def best_as_scale(best: float, coarse_values: list[float], factors: list[float]) -> list[float]:
    """factors x `best` (plus `best`): a narrower alternative that refines below the coarse best."""
    values = {float(round(f * best, 12)) for f in factors} | {float(best)}
    return sorted(values)
