"""report.md and report.html: what was run, each claim beside the paper's value, the figures.

Built from the tables alone; every number in it is computed here from them.
"""
from __future__ import annotations

import time
from pathlib import Path

import markdown
import numpy as np
import pandas as pd

from .claims import Claim, all_claims, residual_runs
from .effective_paths import t1_section
from .figures import all_figures
from .highway import h_section
from .identity_mappings import im_section
from .results import CRITICAL_RISE, Results

CAPTIONS = {
    "F3": "Error after deleting each single block; dotted lines: the intact networks; dashed: downsampling blocks.",
    "F5a": "Error against the number of randomly deleted blocks (mean and spread over draws).",
    "F5b": "Error against Kendall tau of randomly reordered networks.",
    "F6": "Path-length distribution, gradient magnitude per path length, and each length's share of the gradient.",
    "F7": "Fraction of paths of each length that survive deleting 1, 10 and 20 blocks (exact).",
    "H": "Mean gate g per block on the test set (band: 10th-90th percentile); solid: the paper's gate bias -6, "
         "dashed: bias 0; below 0.5 the shortcut weighs more.",
    "training": "Test (solid) and train (dotted) error per epoch.",
}
CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
       "font-size:90%;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}")


def _table(frame: pd.DataFrame) -> list[str]:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return lines


def _pct(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}%"


def header(results: Results) -> list[str]:
    return [f"# unravel report: {results.spec.get('name', results.out.name)}", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} from the Parquet tables in `{results.out}`; "
            "every number below is computed from them.", ""]


def what_was_run(results: Results) -> list[str]:
    lines = ["## What was run", ""]
    runs = results.runs
    if len(runs):
        view = pd.DataFrame({
            "run": runs["label"], "mode": runs["mode"], "seed": runs["seed"], "network": runs["network"],
            "blocks": runs["num_blocks"], "parameters": runs["parameters"].map("{:,}".format), "epochs": runs["epochs"],
            "test error": runs["test_error"].map(_pct), "training (s)": runs["train_seconds"].map("{:.0f}".format)})
        lines += [f"Dataset: **{results.dataset}**. Training: {len(runs)} runs, "
                  f"{runs['train_seconds'].sum():.0f} s of training in all.", ""] + _table(view) + [""]
    counts = [{"study": study, "units": len(g), "runs": g["run_id"].nunique(),
               "device time (s)": f"{g['seconds'].sum():.0f}"}
              for frame in (results.lesion, results.gradients) for study, g in frame.groupby("study")]
    if counts:
        lines += ["Studies:", ""] + _table(pd.DataFrame(counts)) + [""]
    if len(results.errors):
        lines += [f"**{results.errors['unit_key'].nunique()} units failed** (see the `errors` table).", ""]
    stale = {name: n for name, n in results.stale.items() if n}
    if stale:
        each = ", ".join(f"{name} {n:,}" for name, n in stale.items())
        lines += [f"{sum(stale.values()):,} rows from earlier settings of this experiment not used ({each}); they are "
                  f"kept in the tables until `unravel prune {results.out}` removes them.", ""]
    return lines


def claims_section(claims: list[Claim]) -> list[str]:
    return (["## The papers' claims, tested", ""]
            + _table(pd.DataFrame([{"claim": c.paper, "this experiment": c.result, "verdict": f"**{c.verdict}**"}
                                   for c in claims])) + [""]
            + ["Thresholds:", ""] + [f"- {c.key}: {c.rule}" for c in claims if c.rule] + [""]
            + ["One line per claim:", ""] + [f"- {c.line}" for c in claims] + [""])


def critical_blocks_section(results: Results) -> list[str]:
    f3_runs = set(results.study("single_deletion")["run_id"])
    lines = []
    for r in residual_runs(results, None):
        if r in f3_runs:
            blocks, costs = results.critical_blocks(r), results.single_deletion_rises(r)
            down = [b for b in results.structure(r).downsampling if b in costs]
            crit_cost = ", ".join(f"+{costs[b]:.0f}" for b in blocks) or "-"
            down_cost = ", ".join(f"+{costs[b]:.1f}" for b in down) or "-"
            lines.append(f"- {results.title(r)}: critical {[b + 1 for b in blocks] or 'none'} ({crit_cost} "
                         f"points); downsampling {[b + 1 for b in down]} ({down_cost} points)")
    if not lines:
        return []
    return ["## Critical blocks (found from the data)", "",
            f"A non-downsampling block whose deletion alone raises the error by more than {CRITICAL_RISE:g} "
            "points (1-based positions). CIFAR-10 shows no such block in the paper; on the bundled digits the "
            "first block (sometimes the first three) is critical. Figure F5a shows the random deletions both over "
            "the paper's pool and over the draws that avoid these blocks.", ""] + lines + [""]




def figures_section(figures: dict[str, str]) -> list[str]:
    lines = ["## Figures", ""]
    for key, path in figures.items():
        lines += [f"### {key}", "", f"![{key}](figures/{path})", "", CAPTIONS.get(key, ""),
                  f"(PDF: `figures/{path[:-4]}.pdf`)", ""]
    return lines


def write_report(out: str | Path) -> Path:
    """report.md and report.html in OUT, the sections in order (each function returns its Markdown lines)."""
    out = Path(out)
    results = Results.load(out)
    figures = all_figures(results, out / "figures")
    md = "\n".join(header(results) + what_was_run(results) + claims_section(all_claims(results))
                   + critical_blocks_section(results) + t1_section(results)
                   + im_section(results) + h_section(results) + figures_section(figures))
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(markdown_to_html(md))
    return out / "report.md"


def markdown_to_html(md: str) -> str:
    """One self-contained page (the images are beside it in figures/)."""
    body = markdown.markdown(md, extensions=["tables"], output_format="html")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>unravel report</title><style>{CSS}</style>"
            f"</head><body>{body}</body></html>")
