"""The aggregator: merge the best proxy candidates into one architecture (Composer, §3).

1. `top_group`: 1-D k-means (5 clusters) on the candidates' scores; keep the best cluster.
2. `aggregate`: N_c clustering. Layer i is the most common primitive at position i among the kept
   candidates whose previous c layers equal the layers already chosen. N_0 is a per-layer majority
   vote (the paper's best: it averages out proxy noise), N_1 conditions on the previous layer, and
   c = i−1 (`c=None`) on the whole prefix.
3. `best_single`: the single best candidate, the baseline the aggregate is compared against.

Everything is deterministic: k-means is solved exactly in 1-D (no initialisation, no restarts),
and every tie has a documented rule. Imports no torch.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from composer.errors import ConfigError
from composer.pattern import parse_pattern

DEFAULT_CLUSTERS = 5  # the paper's k


def _check_scores(scores: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(scores, Mapping) or not scores:
        raise ConfigError("scores must be a non-empty mapping of pattern -> score")
    out = {}
    for pattern, score in scores.items():
        parse_pattern(pattern)
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise ConfigError(f"the score of {pattern!r} is {score!r}: scores must be finite numbers (drop diverged trials)")
        out[pattern] = float(score)
    return out


def _ranked(scores: Mapping[str, float], *, higher_is_better: bool) -> list[str]:
    """Patterns best first; equal scores in pattern order (the deterministic tie-break everywhere)."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted(scores, key=lambda p: (sign * scores[p], p))


def kmeans_1d(values: Sequence[float], *, k: int) -> list[int]:
    """Cluster labels of 1-D `values` by k-means; labels are ordered by centroid (0 lowest).

    Exact, not Lloyd's: in 1-D the optimal clusters are contiguous runs of the sorted values, so a
    dynamic programme over split points finds the global optimum of the within-cluster sum of
    squares (the idea of Ckmeans.1d.dp, Wang & Song 2011). Lloyd's iterations from quantiles were
    tried first and stalled in local optima that kept a single candidate as the "top group".
    Deterministic with no seed: equal values always share a cluster (the programme runs on the
    distinct values, weighted by multiplicity), and equal costs take the earliest split.
    Uses min(k, number of distinct values) clusters."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if not len(values):
        raise ConfigError("k-means needs at least one value")
    counts = Counter(float(v) for v in values)
    distinct = np.array(sorted(counts))
    weights = np.array([counts[v] for v in distinct], dtype=float)
    m = len(distinct)
    k = min(k, m)
    x = distinct - np.average(distinct, weights=weights)  # centred: less cancellation in S2 - S1²/W
    w_cum = np.concatenate([[0.0], np.cumsum(weights)])
    s1 = np.concatenate([[0.0], np.cumsum(weights * x)])
    s2 = np.concatenate([[0.0], np.cumsum(weights * x * x)])

    def sse(first: np.ndarray, last: int | np.ndarray) -> np.ndarray:  # cost of clusters first..last (inclusive)
        w = w_cum[last + 1] - w_cum[first]
        t = s1[last + 1] - s1[first]
        return np.maximum(s2[last + 1] - s2[first] - t * t / w, 0.0)

    # cost[j, b]: best SSE of values 0..b in j+1 clusters; start[j, b]: first index of the last one.
    cost = np.full((k, m), np.inf)
    start = np.zeros((k, m), dtype=int)
    cost[0] = sse(np.zeros(m, dtype=int), np.arange(m))
    for j in range(1, k):
        for b in range(j, m):
            firsts = np.arange(j, b + 1)  # the last cluster is firsts..b; clusters before need j values
            total = cost[j - 1, firsts - 1] + sse(firsts, b)
            best = int(np.argmin(total))  # first minimum: the earliest split on equal cost
            cost[j, b], start[j, b] = total[best], firsts[best]
    label_of = np.empty(m, dtype=int)
    last = m - 1
    for j in range(k - 1, -1, -1):
        first = start[j, last] if j else 0
        label_of[first : last + 1] = j
        last = first - 1
    index = {v: i for i, v in enumerate(distinct.tolist())}
    return [int(label_of[index[float(v)]]) for v in values]


def top_group(
    scores: Mapping[str, float], *, k: int = DEFAULT_CLUSTERS, higher_is_better: bool = True, seed: int = 0
) -> list[str]:
    """The best cluster of a 1-D k-means on the scores, best first (ties: pattern order).

    With fewer distinct scores than k, uses that many clusters (so one distinct score keeps all).
    `seed` does not change the result: the clustering is exact and needs no random
    initialisation; it is accepted so callers can pass a search's seed uniformly."""
    del seed
    scores = _check_scores(scores)
    patterns = list(scores)
    labels = kmeans_1d([scores[p] for p in patterns], k=k)
    best = max(labels) if higher_is_better else min(labels)
    kept = {p: scores[p] for p, label in zip(patterns, labels) if label == best}
    return _ranked(kept, higher_is_better=higher_is_better)


def best_single(scores: Mapping[str, float], *, higher_is_better: bool = True) -> str:
    """The best-scoring pattern; equal scores: the first in pattern order."""
    return _ranked(_check_scores(scores), higher_is_better=higher_is_better)[0]


def aggregate(
    patterns: Sequence[str],
    *,
    c: int | None = 0,
    scores: Mapping[str, float] | None = None,
    higher_is_better: bool = True,
) -> str:
    """N_c clustering of equal-length patterns into one.

    Layer i is the most common letter at position i among the candidates whose layers i−c..i−1
    equal the layers already chosen (c=0: all candidates, a majority vote; c=None: the whole
    prefix, c = i−1). Near the start the context is what exists (min(c, i) layers).

    Empty context: if no candidate shared the chosen context, the context would be shortened one
    layer at a time, dropping the farthest layer, until some candidate matches (the empty context
    matches all). By construction it does not happen: the letter chosen at i−1 was voted by a
    candidate that matched the context before it, so that candidate matches the context at i.

    Ties between letters: with `scores`, the letter of the best-scoring tied candidate in the
    conditioning set wins (equal scores: pattern order); without, the letter that sorts first
    (character order, `*` < `-` < `M`, the order patterns sort in; not the registry's, which
    follows module file names). Duplicated patterns count once per occurrence."""
    if isinstance(patterns, str) or not isinstance(patterns, Sequence) or not patterns:
        raise ConfigError("aggregate needs a non-empty sequence of patterns")
    patterns = [parse_pattern(p) for p in patterns]
    n = len(patterns[0])
    for p in patterns:
        if len(p) != n:
            raise ConfigError(
                f"aggregate needs patterns of one length: {patterns[0]!r} has {n} layers, {p!r} has {len(p)}"
            )
    if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 0):
        raise ConfigError(f"c must be a non-negative integer or None (the whole prefix), got {c!r}")
    rank: dict[str, int] | None = None
    if scores is not None:
        checked = _check_scores(scores)
        missing = [p for p in patterns if p not in checked]
        if missing:
            raise ConfigError(f"scores has no score for candidate {missing[0]!r}")
        rank = {p: r for r, p in enumerate(_ranked(checked, higher_is_better=higher_is_better))}

    chosen = ""
    for i in range(n):
        context = i if c is None else min(c, i)
        while True:  # the empty context (context == 0) matches every candidate, so this ends
            pool = [p for p in patterns if p[i - context : i] == chosen[i - context : i]]
            if pool:
                break
            context -= 1
        votes = Counter(p[i] for p in pool)
        top = max(votes.values())
        tied = {letter for letter, v in votes.items() if v == top}
        if len(tied) == 1:
            chosen += tied.pop()
        elif rank is not None:
            chosen += min((p for p in pool if p[i] in tied), key=lambda p: rank[p])[i]
        else:
            chosen += min(tied)
    return chosen


METHODS = {"N0": 0, "N1": 1, "prefix": None}  # name -> c of aggregate()


@dataclass(frozen=True, kw_only=True)
class Aggregation:
    """What the aggregator made of one search's scores."""

    top_group: tuple[str, ...]  # the kept cluster, best first
    n0: str  # N_0: per-layer majority vote (the paper's choice)
    n1: str  # N_1: conditioned on the previous layer
    prefix: str  # N_{i-1}: conditioned on the whole prefix
    best_single: str  # the best candidate alone, for comparison
    k: int
    higher_is_better: bool

    @property
    def by_method(self) -> dict[str, str]:
        return {"N0": self.n0, "N1": self.n1, "prefix": self.prefix, "best_single": self.best_single}


def summarise(
    scores: Mapping[str, float], *, k: int = DEFAULT_CLUSTERS, higher_is_better: bool = True
) -> Aggregation:
    """Top group, its N_0 / N_1 / prefix aggregates (ties broken by score) and the best single.

    The candidates must have one length (the patterns of one search)."""
    group = top_group(scores, k=k, higher_is_better=higher_is_better)
    kept = {p: scores[p] for p in group}
    merged = {
        name: aggregate(group, c=c, scores=kept, higher_is_better=higher_is_better) for name, c in METHODS.items()
    }
    return Aggregation(
        top_group=tuple(group),
        n0=merged["N0"],
        n1=merged["N1"],
        prefix=merged["prefix"],
        best_single=best_single(scores, higher_is_better=higher_is_better),
        k=k,
        higher_is_better=higher_is_better,
    )


__all__ = ["Aggregation", "METHODS", "aggregate", "best_single", "kmeans_1d", "summarise", "top_group"]
