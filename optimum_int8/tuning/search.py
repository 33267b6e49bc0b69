"""The search over how many of the most sensitive modules to keep in float.

Modules are ranked once by sensitivity; candidate ``k`` keeps the top ``k`` in float. ``k = 0`` (all
int8) is tried first, since it often passes. After that the smallest passing ``k`` is found by
bisection of ``(highest failing k, lowest passing k]``, where ``k = n`` (every module in float, i.e.
the fp32 model itself) is known to pass without evaluating it. That is at most
``1 + ceil(log2(n))`` evaluations, against ``n`` for a walk that adds one module per trial.
"""

import math


def evaluation_budget(num_modules: int) -> int:
    """Full evaluations (fp32 baseline not counted) the tuner may spend: ceil(log2(#modules)) + 3."""
    return math.ceil(math.log2(max(num_modules, 1))) + 3


class FallbackCountSearch:
    """Proposes the next fallback count and takes its outcome; ``result`` is the smallest passing count seen."""

    def __init__(self, num_modules: int):
        if num_modules < 1:
            raise ValueError("the search needs at least one candidate module")
        self.num_modules = num_modules
        self.highest_failing = -1
        self.lowest_passing = num_modules  # known without evaluation: nothing quantized
        self.outcomes: dict[int, bool] = {}

    def next_count(self) -> int | None:
        """The next count to evaluate, or None when the search is done."""
        if 0 not in self.outcomes:
            return 0
        if self.lowest_passing - self.highest_failing <= 1:
            return None
        return (self.highest_failing + self.lowest_passing) // 2

    def report(self, count: int, passed: bool) -> None:
        if count in self.outcomes:
            raise ValueError(f"count {count} was already evaluated")
        self.outcomes[count] = passed
        if passed:
            self.lowest_passing = min(self.lowest_passing, count)
        else:
            self.highest_failing = max(self.highest_failing, count)

    @property
    def result(self) -> int | None:
        """The smallest evaluated count that passed, or None if none did."""
        passed = [count for count, ok in self.outcomes.items() if ok]
        return min(passed) if passed else None
