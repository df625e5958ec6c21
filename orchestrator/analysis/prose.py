"""How the report writes what it computed: a count with its noun, a table in Markdown."""
from __future__ import annotations

import pandas as pd


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 block``, ``2 blocks``."""
    return f"{count:,} {noun if count == 1 else many or noun + 's'}"


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """The frame's columns and rows as Markdown table lines (a ``|`` or newline in a cell kept inside it)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return lines
