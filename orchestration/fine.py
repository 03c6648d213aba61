"""The rules that turn a coarse best value into the fine stage's values.

The paper (Yao et al. 2020, Sec. 4) searches "a coarse grid of {0, 0.0001, 0.001, 0.1, 1, 10}",
then "a fine grid of {0, 0.25, ..., 1}", and reports alpha = 0.01, which lies between two coarse
values (0.001 and 0.1); it does not say what the fine factors multiply. A rule is one function,
named in search_spaces/fine.yaml (`rule: module:function`), taking (best, coarse_values, factors)
and returning the sorted fine values; a different rule is one line there.

    log_bracket      (the default) both sides of the best on a log scale, up to its coarse neighbours,
                     0 kept: from a coarse best of 0.1 or 0.001 it proposes 0.01, the paper's alpha
    upper_neighbour  the paper's factors {0, 0.25, ..., 1} x the coarse value just above the best
                     (this project's first rule: it only looks upwards, so it never reaches 0.01
                     from 0.1 or 0.001)
    best_as_scale    the factors x the best: refines below it only

Values are rounded to 6 significant digits, so that they read well as MLflow params and run names.
"""

from __future__ import annotations

import math

DEFAULT_RULE = "orchestration.fine:log_bracket"  # when search_spaces/fine.yaml names none
DEFAULT_FACTORS = (0.0, 0.5, 1.0)  # log_bracket's: each neighbour, the log midpoint, the best


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def log_bracket(best: float, coarse_values: list[float], factors: list[float]) -> list[float]:
    """Values between the best's lower and upper coarse neighbours, spaced on a log scale, plus 0.

    Each factor f in [0, 1] is a position on the log scale from a neighbour (f = 0) to the best
    (f = 1), on both sides: lower * (best / lower)^f and upper * (best / upper)^f; the neighbours,
    the best and 0 (the term switched off) are always in. A neighbour the coarse grid lacks (the
    best is its smallest or largest positive value) is the other one mirrored on the log scale,
    best^2 / other, so the fine stage looks past the grid's edge by one coarse step; with a single
    positive coarse value that step is a factor of 10. A best of 0 has no log position: its fine
    values are 0 and the lower side of the smallest positive coarse value (mirrored as above).
    Factors outside [0, 1] reach beyond the neighbours.

    >>> coarse = [0, 0.0001, 0.001, 0.1, 1, 10]
    >>> log_bracket(0.1, coarse, [0, 0.5, 1])
    [0.0, 0.001, 0.01, 0.1, 0.316228, 1.0]
    >>> log_bracket(0.001, coarse, [0, 0.5, 1])
    [0.0, 0.0001, 0.000316228, 0.001, 0.01, 0.1]
    >>> log_bracket(10, coarse, [0, 0.5, 1])
    [0.0, 1.0, 3.16228, 10.0, 31.6228, 100.0]
    >>> log_bracket(0, coarse, [0, 0.5, 1])
    [0.0, 1e-05, 3.16228e-05, 0.0001]
    >>> log_bracket(0.1, coarse, [0, 0.25, 0.5, 0.75, 1])
    [0.0, 0.001, 0.00316228, 0.01, 0.0316228, 0.1, 0.177828, 0.316228, 0.562341, 1.0]
    """
    positive = sorted({float(v) for v in coarse_values if v > 0} | ({float(best)} if best > 0 else set()))
    if not positive:
        return [0.0]
    if best <= 0:  # the lower side of the smallest positive value
        centre, below, above = positive[0], [], positive[1:2]
    else:
        centre = float(best)
        below, above = [v for v in positive if v < centre][-1:], [v for v in positive if v > centre][:1]
    if not below and not above:
        below, above = [centre / 10], [centre * 10]
    lower = below[0] if below else centre ** 2 / above[0]
    upper = above[0] if above else centre ** 2 / below[0]
    sides = [lower] if best <= 0 else [lower, upper]
    values = {0.0, _round(centre)}
    for neighbour in sides:
        for f in factors:
            values.add(_round(10 ** (math.log10(neighbour) + f * (math.log10(centre) - math.log10(neighbour)))))
    return sorted(values)


def upper_neighbour(best: float, coarse_values: list[float], factors: list[float]) -> list[float]:
    """factors x (the coarse value just above `best`), plus `best` itself.

    The fine grid thus covers [0, upper] with the resolution of the factors, and the interval
    between the coarse best and its upper neighbour in particular. When `best` is the largest
    coarse value there is no neighbour above it, and the scale is `best` itself. With the paper's
    factors {0, 0.25, ..., 1} (`factors: [0, 0.25, 0.5, 0.75, 1]` in search_spaces/fine.yaml).

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
    """factors x `best` (plus `best`): a narrower alternative that refines below the coarse best.

    >>> best_as_scale(1, [0, 0.0001, 0.001, 0.1, 1, 10], [0, 0.25, 0.5, 0.75, 1])
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    values = {float(round(f * best, 12)) for f in factors} | {float(best)}
    return sorted(values)
