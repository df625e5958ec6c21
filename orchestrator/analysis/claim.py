"""A verdict on one of the papers' claims: what the paper says, what the data says, and what decided.

Every verdict carries the numbers and the 95% interval that decided it (``stats.py``: bootstrap
over draws, seeds or blocks), beside the paper's reference value (PAPERS.md), and says what that
interval is over (``Claim.over``): an interval over the blocks or draws of one trained network covers
how they vary in that network, not how training varies. A claim that compares two training
procedures (F8, T1, the Identity Mappings tables) is therefore decided over seeds, and with one seed
a side its verdict is "one seed: not resolved". Verdicts: "reproduced", "not reproduced",
"partly reproduced: ...", "not resolved on this data" (the interval is wider than the difference it
would decide), "one seed: not resolved", "cannot be computed: <why>" (too few values), and "not run"
(no data; the report names the spec that runs it).
"""
from __future__ import annotations

from dataclasses import dataclass

ONE_SEED = "one seed: not resolved"   # a comparison of trainings with fewer than 2 seeds on a side


@dataclass
class Claim:
    """A claim of a paper, what this experiment's data says of it, and the verdict with what decided it."""

    key: str
    paper: str        # what the paper says (PAPERS.md)
    result: str       # what the data says, in numbers, with the interval that decided
    verdict: str      # reproduced | not reproduced | partly reproduced: ... | not resolved on this data |
    #                   one seed: not resolved | cannot be computed: ... | not run
    rule: str         # the threshold that decided
    over: str = ""    # what the deciding interval is over (and so which variance it covers); "" when not run

    @property
    def line(self) -> str:
        return f"{self.paper}: {self.result}: {self.verdict}" + (f" (interval: {self.over})" if self.over else "")
