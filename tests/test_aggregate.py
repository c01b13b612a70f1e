"""The aggregator: k-means top group, N_c clustering, best single; hand-worked examples."""

import itertools
import random

import pytest

from composer.errors import ConfigError, PatternError
from search.aggregate import Aggregation, aggregate, best_single, kmeans_1d, summarise, top_group

# Worked by hand (positions 0..3):
#   candidates  ****  ***-  *-*-  --**  --*-
#   N_0    pos0 *** vs -- -> '*'; pos1 ** vs --- -> '-'; pos2 all '*'; pos3 ** vs --- -> '-'   = *-*-
#   N_1    pos0 '*'; pos1 | prev '*': ****, ***-, *-*- -> '*' (2:1); pos2 | prev '*': ****, ***-
#          -> '*'; pos3 | prev '*': all five -> '-' (3:2)                                          = ***-
#   prefix pos0..2 as N_1 (pools ****, ***-); pos3 | '***': ****, ***- -> a 1:1 tie, broken by
#          character order ('*' < '-') without scores                                              = ****
CANDIDATES = ["****", "***-", "*-*-", "--**", "--*-"]


def test_n0_n1_prefix_differ_on_a_hand_worked_example():
    assert aggregate(CANDIDATES, c=0) == "*-*-"
    assert aggregate(CANDIDATES, c=1) == "***-"
    assert aggregate(CANDIDATES, c=None) == "****"
    assert aggregate(CANDIDATES) == aggregate(CANDIDATES, c=0)  # N_0 is the default
    assert aggregate(CANDIDATES, c=3) == aggregate(CANDIDATES, c=None)  # c >= n-1 is the whole prefix
    assert aggregate(CANDIDATES, c=2) == "****"  # pos3 | '**': ****, ***- -> the same tie


def test_ties_break_by_the_better_candidate_when_scores_are_given():
    # The prefix tie at position 3 is between **** and ***-: the better-scoring one decides.
    scores = {"****": 0.5, "***-": 0.9, "*-*-": 0.1, "--**": 0.1, "--*-": 0.1}
    assert aggregate(CANDIDATES, c=None, scores=scores) == "***-"
    assert aggregate(CANDIDATES, c=None, scores=scores, higher_is_better=False) == "****"
    # Equal scores: pattern order ('*' < '-' in ASCII), so **** wins; N_0 and N_1 have no tie.
    flat = dict.fromkeys(CANDIDATES, 1.0)
    assert aggregate(CANDIDATES, c=None, scores=flat) == "****"
    assert aggregate(CANDIDATES, c=0, scores=scores) == "*-*-"
    assert aggregate(CANDIDATES, c=1, scores=scores) == "***-"


def test_ties_without_scores_follow_character_order_and_ignore_input_order():
    assert aggregate(["*-", "-*"]) == "**"  # 1:1 at both positions -> '*' (sorts before '-')
    assert aggregate(["-*", "*-"]) == "**"
    assert aggregate(["M-", "*M"], c=0) == "*-"  # '*' before 'M', '-' before 'M'
    for perm in itertools.permutations(CANDIDATES):
        assert [aggregate(list(perm), c=c) for c in (0, 1, None)] == ["*-*-", "***-", "****"]


def test_n0_averages_candidates_around_the_papers_pattern():
    # None of the candidates is **----, each one layer away from it: the vote recovers it.
    around = ["***---", "**-*--", "-*----", "**--*-", "**---*"]
    assert "**----" not in around
    assert aggregate(around, c=0) == "**----"


def test_aggregate_errors():
    with pytest.raises(ConfigError, match="one length"):
        aggregate(["**--", "**-"])
    with pytest.raises(ConfigError, match="non-empty"):
        aggregate([])
    with pytest.raises(ConfigError, match="non-empty"):
        aggregate("**--")  # a bare string is not a list of patterns
    with pytest.raises(ConfigError, match="c must be"):
        aggregate(CANDIDATES, c=-1)
    with pytest.raises(PatternError, match="position 2"):
        aggregate(["**x-"])
    with pytest.raises(ConfigError, match="no score for candidate '--\\*-'"):
        aggregate(CANDIDATES, scores={p: 1.0 for p in CANDIDATES[:-1]})


# Five well-separated groups of scores; the best holds three candidates around **----.
SCORES = {
    "**----": 0.90, "*-*---": 0.905, "**--*-": 0.91,
    "-*----": 0.70, "---*--": 0.71,
    "*-----": 0.50, "--*---": 0.52,
    "-*-*--": 0.30, "***---": 0.31,
    "------": 0.10, "-----*": 0.12,
}


def test_top_group_keeps_the_obvious_best_cluster_sorted_best_first():
    assert top_group(SCORES) == ["**--*-", "*-*---", "**----"]
    losses = {p: 1 - s for p, s in SCORES.items()}
    assert top_group(losses, higher_is_better=False) == ["**--*-", "*-*---", "**----"]
    assert top_group(SCORES, seed=123) == top_group(SCORES)  # exact clustering: the seed changes nothing
    assert top_group(SCORES, k=2) == ["**--*-", "*-*---", "**----", "---*--", "-*----"]


def test_top_group_with_fewer_distinct_scores_than_k():
    assert top_group({"*-": 1.0, "-*": 1.0, "**": 2.0}) == ["**"]  # two distinct -> two clusters
    assert top_group({"-*": 1.0, "*-": 1.0}) == ["*-", "-*"]  # one distinct score: all kept, pattern order
    assert top_group({"*-": 3.0}) == ["*-"]
    # Equal scores never split across clusters, and tie in the output by pattern.
    assert top_group({"-*": 2.0, "*-": 2.0, "**": 1.0, "*M": 0.0}, k=5) == ["*-", "-*"]


def test_kmeans_1d_is_the_optimal_contiguous_partition():
    def sse(groups):
        return sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups)

    rng = random.Random(0)
    for _ in range(30):
        values = sorted(rng.choice([rng.random(), rng.randint(0, 3)]) for _ in range(rng.randint(1, 9)))
        k = rng.randint(1, 5)
        labels = kmeans_1d(values, k=k)
        distinct = sorted(set(values))
        kk = min(k, len(distinct))
        assert sorted(set(labels)) == list(range(kk))
        assert labels == sorted(labels)  # values are sorted, so labels (ordered by centroid) are too
        got = sse([[v for v, label in zip(values, labels) if label == j] for j in range(kk)])
        best = min(  # every way to cut the distinct values into kk contiguous runs
            sse(_split(values, distinct, cuts)) for cuts in itertools.combinations(range(1, len(distinct)), kk - 1)
        )
        assert got == pytest.approx(best, abs=1e-12)


def _split(values, distinct, cuts):
    bounds = (0, *cuts, len(distinct))
    return [[v for v in values if distinct[a] <= v <= distinct[b - 1]] for a, b in zip(bounds, bounds[1:])]


def test_top_group_errors():
    with pytest.raises(ConfigError, match="non-empty"):
        top_group({})
    with pytest.raises(ConfigError, match="'\\*-' is nan"):
        top_group({"*-": float("nan"), "-*": 1.0})
    with pytest.raises(ConfigError, match="k must be"):
        top_group(SCORES, k=0)
    with pytest.raises(PatternError):
        top_group({"*x": 1.0})


def test_best_single_and_summarise():
    assert best_single(SCORES) == "**--*-"
    assert best_single(SCORES, higher_is_better=False) == "------"
    assert best_single({"-*": 1.0, "*-": 1.0}) == "*-"  # tie: pattern order
    result = summarise(SCORES)
    assert isinstance(result, Aggregation)
    assert result.top_group == ("**--*-", "*-*---", "**----")
    # N_0: pos0 ** vs *, pos1 ** vs -, pos2 all '-', pos3 all '-', pos4 --- vs *, pos5 all '-'.
    assert result.n0 == "**----"
    # N_1: pos1 | '*': 2:1 '*'; pos2 | '*': **----, **--*- -> '-'; then | '-': all three, '-' each time
    # except pos4 (2:1 '-').
    assert result.n1 == "**----"
    # prefix: pos4 | '**--': **----, **--*- tie -> the better-scoring **--*- decides.
    assert result.prefix == "**--*-"
    assert result.best_single == "**--*-"
    assert result.by_method == {"N0": "**----", "N1": "**----", "prefix": "**--*-", "best_single": "**--*-"}
    with pytest.raises(AttributeError):
        result.n0 = "------"  # frozen
