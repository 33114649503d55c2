"""The run's best (hpo.selection): the highest value, except that a final training within one standard error of it is
preferred (the search's highest value is the maximum of many noisy estimates; a final's is one fresh estimate of a
configuration trained longer)."""

from __future__ import annotations

import math

import pytest

from hpo.selection import Candidate, choose_best, of_record, standard_error


def test_the_standard_error_is_the_binomial_one_over_the_validation_examples():
    assert standard_error(0.9, 1000) == pytest.approx(math.sqrt(0.9 * 0.1 / 1000))  # ~0.0095
    assert standard_error(0.98, 800) == pytest.approx(0.00495, abs=1e-5)
    assert standard_error(0.9, None) == 0.0 and standard_error(0.9, 0) == 0.0  # unknown: no margin
    assert standard_error(1.2, 10) == 0.0  # clipped to [0, 1]


def test_without_finals_the_highest_value_is_the_best_and_the_earlier_on_ties():
    cands = [Candidate(0, 0.80, examples=1000), Candidate(1, 0.85, examples=1000), Candidate(2, 0.85, examples=1000)]
    assert choose_best(cands).number == 1
    assert choose_best([]) is None
    assert choose_best([Candidate(0, float("nan")), Candidate(1, 0.5)]).number == 1


@pytest.mark.parametrize("final_value, chosen", [
    (0.893, 12),  # above the search's best: the final
    (0.888, 12),  # 0.5 pp below, within one standard error (0.98 pp at 0.893 on 1,000): the final
    (0.8836, 12),  # just within
    (0.8830, 7),  # beyond one standard error: the search trial
    (0.85, 7),
])
def test_a_final_within_one_standard_error_of_the_highest_value_is_preferred(final_value, chosen):
    se = standard_error(0.893, 1000)
    assert 0.8830 < 0.893 - se < 0.8836  # the boundary the cases straddle
    cands = [Candidate(0, 0.887, examples=1000), Candidate(7, 0.893, examples=1000),
             Candidate(12, final_value, final=True, examples=1000)]
    assert choose_best(cands).number == chosen


def test_the_margin_needs_the_number_of_validation_examples():
    cands = [Candidate(7, 0.893), Candidate(12, 0.888, final=True)]  # examples unknown: the highest value
    assert choose_best(cands).number == 7
    assert choose_best([Candidate(7, 0.893), Candidate(12, 0.893, final=True)]).number == 12  # a tie: the final


def test_of_two_finals_the_better_one_is_the_best():
    cands = [Candidate(3, 0.90, examples=1000), Candidate(8, 0.897, final=True, examples=1000),
             Candidate(9, 0.899, final=True, examples=1000)]
    assert choose_best(cands).number == 9


def test_records_carry_what_the_selection_needs():
    rec = {"number": 4, "value": 0.7, "final_of": 2, "val_examples": 500}
    assert of_record(rec) == Candidate(4, 0.7, final=True, examples=500)
    assert of_record({"number": 1, "value": 0.6}) == Candidate(1, 0.6, final=False, examples=None)
