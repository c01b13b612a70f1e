"""search/fidelity/stats.py: rank correlations with bootstrap intervals, decision accuracy, the seed-noise floor."""

import math

import numpy as np
import pytest
import scipy.stats

from composer.errors import ConfigError
from search.fidelity.stats import correlation, decision_accuracy, noise_floor, ranks, spearman

R = 500  # resamples: enough for a stable interval, fast enough for the suite

# The textbook pair. Ranks equal the values, d = x - y = (-1, 1, -1, 1, 0), sum d^2 = 4:
#   rho = 1 - 6 * 4 / (5 * (25 - 1)) = 1 - 24/120 = 0.8.
# Of the 10 pairs only (1,2) and (3,4) are discordant: tau = (8 - 2) / 10 = 0.6 (no ties, so tau-b = tau-a).
X = [1, 2, 3, 4, 5]
Y = [2, 1, 4, 3, 5]
# A noisy but clearly positive relation on 12 points, no ties.
XS = [0.3, 1.1, 1.9, 2.2, 3.5, 3.9, 4.4, 5.8, 6.1, 7.0, 7.7, 9.2]
YS = [0.9, 0.4, 2.5, 1.7, 3.1, 4.8, 3.6, 5.2, 7.4, 6.3, 8.8, 8.1]


@pytest.mark.parametrize(("method", "expected"), [("spearman", 0.8), ("kendall", 0.6)])
def test_textbook_values_by_hand_and_by_scipy(method, expected):
    result = correlation(X, Y, method=method, n_resamples=R)
    assert result["value"] == pytest.approx(expected)
    scipy_fn = scipy.stats.spearmanr if method == "spearman" else scipy.stats.kendalltau
    assert result["value"] == pytest.approx(scipy_fn(X, Y).statistic)
    assert result["n"] == 5


def test_kendall_is_tau_b_with_ties():
    x, y = [1, 2, 2, 3, 4, 5], [1, 3, 2, 2, 5, 4]
    value = correlation(x, y, method="kendall", n_resamples=R)["value"]
    assert value == pytest.approx(scipy.stats.kendalltau(x, y, variant="b").statistic)
    assert value != pytest.approx(scipy.stats.kendalltau(x, y, variant="c").statistic)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_perfect_and_reversed_orderings_give_plus_minus_one(method, sign):
    x = list(range(10))
    y = [sign * v**2 for v in x]  # monotone, not linear: a rank statistic still says exactly +-1
    result = correlation(x, y, method=method, n_resamples=R)
    assert result["value"] == pytest.approx(sign)
    assert result["low"] == pytest.approx(sign)
    assert result["high"] == pytest.approx(sign)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_interval_equals_scipy_bootstrap_run_directly(method):
    scipy_fn = scipy.stats.spearmanr if method == "spearman" else scipy.stats.kendalltau

    def stat(a, b):
        value = scipy_fn(a, b).statistic
        return 0.0 if math.isnan(value) else value

    direct = scipy.stats.bootstrap(
        (np.asarray(XS), np.asarray(YS)), stat, paired=True, vectorized=False, n_resamples=R,
        confidence_level=0.9, method="percentile", random_state=np.random.default_rng(7),
    ).confidence_interval
    result = correlation(XS, YS, method=method, n_resamples=R, confidence=0.9, seed=7)
    assert (result["low"], result["high"]) == pytest.approx((direct.low, direct.high))
    assert result["low"] < result["value"] < result["high"]
    assert 0.0 < result["low"] and result["high"] <= 1.0


def test_a_wider_confidence_gives_a_wider_interval():
    narrow = correlation(XS, YS, method="spearman", n_resamples=R, confidence=0.5)
    wide = correlation(XS, YS, method="spearman", n_resamples=R, confidence=0.99)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


def test_seed_fixes_the_interval():
    first = correlation(XS, YS, method="spearman", n_resamples=R, seed=3)
    again = correlation(XS, YS, method="spearman", n_resamples=R, seed=3)
    other = correlation(XS, YS, method="spearman", n_resamples=R, seed=4)
    assert first == again
    assert first["value"] == other["value"]
    assert (first["low"], first["high"]) != (other["low"], other["high"])


@pytest.mark.parametrize("n", [2, 3])
def test_fewer_than_four_points_give_a_value_but_no_interval(n):
    result = correlation(X[:n], Y[:n], method="spearman", n_resamples=R)
    assert result["value"] == pytest.approx(scipy.stats.spearmanr(X[:n], Y[:n]).statistic)
    assert result["low"] is None and result["high"] is None and result["n"] == n


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_constant_input_is_undefined_not_nan(method):
    for x, y in [([2.0] * 6, XS[:6]), (XS[:6], [1.5] * 6)]:
        assert correlation(x, y, method=method, n_resamples=R) == {"value": None, "low": None, "high": None, "n": 6}


def test_the_point_spearman_is_scipys_and_none_where_undefined():
    ys = [x * x - 3 * x for x in XS]
    assert spearman(XS, ys) == pytest.approx(scipy.stats.spearmanr(XS, ys).statistic) and abs(spearman(XS, ys)) < 1
    assert spearman([2.0] * 6, XS[:6]) is None
    with pytest.raises(ConfigError, match="differ in length"):
        spearman(XS, XS[:-1])


def test_constant_resamples_count_zero_and_do_not_crash():
    # On 4 points 4 of the 256 equally likely resamples are one point repeated (constant): they count
    # 0.0, so with enough resamples the bootstrap distribution holds zeros below the ones.
    result = correlation([1, 2, 3, 4], [1, 2, 3, 4], method="spearman", n_resamples=2000, confidence=0.99)
    assert result["value"] == pytest.approx(1.0)
    assert result["low"] == pytest.approx(0.0) and result["high"] == pytest.approx(1.0)
    assert not any(math.isnan(v) for v in (result["low"], result["high"]))


def test_decision_accuracy_by_hand():
    assert decision_accuracy(X, Y) == pytest.approx(8 / 10)  # the two discordant pairs above
    assert decision_accuracy([1, 2, 3], [10, 20, 30]) == 1.0
    assert decision_accuracy([3, 2, 1], [10, 20, 30]) == 0.0
    # x ties (1, 2) which y orders: 0.5; pairs (1,3) and (2,3) agree: (0.5 + 1 + 1) / 3.
    assert decision_accuracy([1, 1, 2], [1, 2, 3]) == pytest.approx(2.5 / 3)
    # y ties (1, 2): skipped whatever x says; (1,3) agrees, (2,3) disagrees: 1 / 2.
    assert decision_accuracy([1, 5, 3], [1, 1, 2]) == pytest.approx(0.5)
    # A pair tied in both is tied in y, so skipped: only (1,3) and (2,3), both agreeing.
    assert decision_accuracy([1, 1, 2], [4, 4, 5]) == 1.0


def test_decision_accuracy_none_when_nothing_is_countable():
    assert decision_accuracy([1, 2, 3], [7, 7, 7]) is None
    assert decision_accuracy([1.0], [2.0]) is None
    assert decision_accuracy([], []) is None


# Three seeds of four patterns; D has only two seeds, fewer than the common three, so it is left out.
# Means: A 3.1, B 2.3, C 2.0, so the neighbour pairs are (A, B) and (B, C).
# (A, B): every seed puts A first -> no swap in any of the 3 seed pairs.
# (B, C): seed 0 puts C first (2.1 > 2.0), seeds 1 and 2 put B first -> seed pairs (0,1) and (0,2)
#   swap, (1,2) does not. Swap rate = 2 / (2 neighbour pairs * 3 seed pairs) = 1/3.
# Seed 0 orders A, C, B; seeds 1 and 2 order A, B, C. Spearman(0, 1) = 1 - 6*2/(3*8) = 0.5 (d = 0, 1, -1),
#   likewise (0, 2); (1, 2) = 1. Mean = 2/3. Decision accuracy (0,1) = (0,2) = 2/3, (1,2) = 1: mean 7/9.
SEEDS = {"A": [3.0, 3.2, 3.1], "B": [2.0, 2.5, 2.4], "C": [2.1, 1.9, 2.0], "D": [9.0, 9.0]}


def test_noise_floor_by_hand():
    floor = noise_floor(SEEDS)
    assert floor["n_patterns"] == 3 and floor["n_seeds"] == 3
    assert floor["neighbour_swap_rate"] == pytest.approx(1 / 3)
    assert floor["seed_spearman"] == pytest.approx(2 / 3)
    assert floor["seed_decision_accuracy"] == pytest.approx(7 / 9)
    # Population stds: A and C sqrt(0.02/3), B sqrt(0.14/3).
    assert floor["std"] == pytest.approx((2 * math.sqrt(0.02 / 3) + math.sqrt(0.14 / 3)) / 3)


def test_noise_floor_ties_count_half_and_extra_seeds_are_cut():
    # Seed 0 ties P and Q, seed 1 orders them: half a swap. R's third seed is beyond the common two.
    floor = noise_floor({"P": [1.0, 2.0], "Q": [1.0, 1.0], "R": [5.0, 6.0, -100.0]})
    assert floor["n_patterns"] == 3 and floor["n_seeds"] == 2
    # Ranking by mean: R (5.5), P (1.5), Q (1.0). (R, P) never swaps; (P, Q) counts 0.5: 0.5 / 2.
    assert floor["neighbour_swap_rate"] == pytest.approx(0.25)


def test_noise_floor_undefined_parts_are_none():
    one_seed = noise_floor({"A": [1.0], "B": [2.0]})
    assert one_seed["n_seeds"] == 1
    assert all(one_seed[k] is None for k in ("neighbour_swap_rate", "seed_spearman", "seed_decision_accuracy", "std"))
    one_pattern = noise_floor({"A": [1.0, 2.0]})
    assert one_pattern["n_patterns"] == 1 and one_pattern["std"] == pytest.approx(0.5)
    assert one_pattern["neighbour_swap_rate"] is None and one_pattern["seed_spearman"] is None
    assert noise_floor({})["n_patterns"] == 0


def test_ranks_best_first_ties_share_the_better_rank():
    result = ranks({"c": 1.0, "a": 3.0, "b": 3.0, "d": 0.5, "e": 1.0})
    assert result == {"a": 1, "b": 1, "c": 3, "e": 3, "d": 5}
    assert list(result) == ["a", "b", "c", "e", "d"]
    assert ranks({"e": 1.0, "d": 0.5, "c": 1.0, "b": 3.0, "a": 3.0}) == result


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: correlation([1, 2, 3], [1, 2], method="spearman"), "differ in length"),
        (lambda: correlation([1.0], [2.0], method="kendall"), "at least 2"),
        (lambda: correlation([1, float("nan"), 3], [1, 2, 3], method="spearman"), "x[1] is nan"),
        (lambda: correlation([1, 2, 3], [1, 2, float("inf")], method="spearman"), "y[2] is inf"),
        (lambda: correlation([1, 2, 3], [1, 2, 3], method="pearson"), "unknown correlation method 'pearson'"),
        (lambda: correlation([1, 2, 3, 4], [1, 2, 3, 4], method="spearman", confidence=95), "confidence"),
        (lambda: decision_accuracy([1, 2], [1, 2, 3]), "differ in length"),
        (lambda: decision_accuracy([1, float("nan")], [1, 2]), "x[1] is nan"),
        (lambda: noise_floor({"A": [1.0, float("nan")], "B": [1.0, 2.0]}), "seeds['A'][1] is nan"),
        (lambda: ranks({"A": float("nan")}), "score of 'A'"),
    ],
)
def test_bad_input_is_a_one_line_config_error(call, words):
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert words in message and "\n" not in message
