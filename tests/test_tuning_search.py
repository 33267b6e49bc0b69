"""The bisection over the fallback count: budget and result on every monotone outcome."""

import math

import pytest

from optimum_int8.tuning import FallbackCountSearch, evaluation_budget


def run(search: FallbackCountSearch, passes) -> list[int]:
    evaluated = []
    while (count := search.next_count()) is not None:
        evaluated.append(count)
        search.report(count, passes(count))
    return evaluated


@pytest.mark.parametrize("num_modules", [1, 2, 3, 7, 14, 193, 211])
def test_finds_the_smallest_passing_count_within_one_plus_log2_evaluations(num_modules):
    for needed in range(num_modules + 1):
        search = FallbackCountSearch(num_modules)
        evaluated = run(search, lambda count: count >= needed)
        assert search.result == (needed if needed < num_modules else None)
        assert len(evaluated) <= 1 + math.ceil(math.log2(num_modules))
        assert len(evaluated) <= evaluation_budget(num_modules) - 2  # room left for the bf16 confirmation
        assert evaluated[0] == 0 and len(set(evaluated)) == len(evaluated)


def test_all_int8_passing_costs_one_evaluation():
    search = FallbackCountSearch(193)
    assert run(search, lambda count: True) == [0] and search.result == 0


def test_non_monotone_outcomes_still_end_on_an_evaluated_pass():
    search = FallbackCountSearch(64)
    evaluated = run(search, lambda count: count in (32, 40))
    assert search.result in (32, 40) and search.outcomes[search.result]
    assert len(evaluated) <= 1 + math.ceil(math.log2(64))


def test_budget_and_reporting_errors():
    assert evaluation_budget(193) == 8 + 3 and evaluation_budget(1) == 3
    search = FallbackCountSearch(4)
    search.report(0, False)
    with pytest.raises(ValueError, match="already evaluated"):
        search.report(0, True)
    with pytest.raises(ValueError, match="at least one"):
        FallbackCountSearch(0)
