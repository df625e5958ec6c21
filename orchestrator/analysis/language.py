"""What a language-model report measures, and which layer and sublayer each unit number is.

The lesion studies on a causal language model delete units, each a decoder layer's attention or MLP
sublayer, and score the next token of every position: the figures plot the next-token loss (mean
cross-entropy in nats; perplexity is its exponential), the verdicts read the next-token error (the share of
positions whose most likely token is wrong) in points, as they read test error for images. This section
says so, gives each model's intact values, and maps the unit numbers the claims and figures use to layers.
"""
from __future__ import annotations

import math

import pandas as pd

from orchestrator.analysis.prose import markdown_table
from orchestrator.analysis.results import SUBLAYER_KINDS, Results


def language_runs(results: Results) -> list[str]:
    """The runs whose lesions were scored on next tokens."""
    if "metric" not in results.lesion:
        return []
    scored = set(results.lesion.loc[results.lesion["metric"] == "next_token", "run_id"])
    return [r for r in results.runs["run_id"] if r in scored]


def _unit_rows(results: Results, run_id: str) -> list[dict]:
    """A row per unit: its layer and kind, and what deleting it alone costs where single deletions were run."""
    structure = results.structure(run_id)
    rows = results.study("single_deletion")
    rows = rows[rows["run_id"] == run_id]
    alone = {int(d[0]): (loss, error) for d, loss, error in zip(rows["deleted"], rows["loss"], rows["error"])}
    intact_loss, intact_error = results.intact_value(run_id), results.intact_error(run_id)
    table = []
    for b in range(structure.num_blocks):
        row = {"model": results.name(run_id), "unit": b + 1, "layer": structure.layer_of[b] + 1,
               "kind": SUBLAYER_KINDS.get(structure.kinds[b], structure.kinds[b]) if structure.kinds else "-"}
        if alone:
            loss, error = alone.get(b, (float("nan"), float("nan")))
            row["deleted alone: loss rise (nats)"] = f"{loss - intact_loss:+.3f}" if math.isfinite(loss) else "-"
            row["next-token error rise (points)"] = (f"{100 * (error - intact_error):+.1f}" if math.isfinite(error)
                                                     else "-")
        table.append(row)
    return table


def language_section(results: Results) -> list[str]:
    """The measures in words, each model's intact loss, perplexity and error, and its units' layers and kinds."""
    runs = language_runs(results)
    if not runs:
        return []
    intact = pd.DataFrame([{"model": results.name(r), "units": results.structure(r).num_blocks,
                            "layers": results.structure(r).num_layers,
                            "next-token loss (nats)": f"{results.intact_value(r):.3f}",
                            "perplexity": f"{math.exp(results.intact_value(r)):.2f}",
                            "next-token error": f"{100 * results.intact_error(r):.2f}%"} for r in runs])
    units = pd.DataFrame([row for r in runs for row in _unit_rows(results, r)])
    return (["## Language models: next-token loss, and what each unit is", "",
             "Each position of each test sequence is scored on its next token. **Next-token loss**: the mean "
             "cross-entropy over the predicted tokens, in nats, as the figures plot it; **perplexity** = exp(loss); "
             "**next-token error**: the share of predicted tokens whose most likely token is wrong, which the "
             "verdicts read in points, as they read test error for images. A unit is one sublayer of a decoder "
             "layer, its **attention** or its **MLP**, deleted with its residual connection kept; the claims and "
             "figures number units from 1, as the table below maps them to layers (1-based).", ""]
            + markdown_table(intact) + [""] + markdown_table(units) + [""])
