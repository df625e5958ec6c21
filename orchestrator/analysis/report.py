"""report.md and report.html: what was run, each claim beside the paper's value, the figures.

Built from the tables alone; every number in it is computed here from them.
"""
from __future__ import annotations

import time

import markdown
import numpy as np
import pandas as pd

from orchestrator import store
from orchestrator.analysis.claim import ONE_SEED, Claim
from orchestrator.analysis.claims import all_claims, left_to_other_specs
from orchestrator.analysis.drawing import in_order
from orchestrator.analysis.effective_paths import t1_section
from orchestrator.analysis.figures import all_figures
from orchestrator.analysis.highway import h_section
from orchestrator.analysis.identity_mappings import im_section
from orchestrator.analysis.language import language_section
from orchestrator.analysis.prose import markdown_table, plural
from orchestrator.analysis.proxy_claims import proxy_section, shares_section
from orchestrator.analysis.results import CRITICAL_RISE, NEXT_TOKEN_LOSS, Results, variant_text
from orchestrator.analysis.spans import span_section
from orchestrator.analysis.tasks import task_section
from orchestrator.location import Location

CAPTIONS = {
    "F3": "Error after deleting each single block; dotted lines: the intact networks; the strip above marks each "
          "network's downsampling blocks; squares: critical blocks.",
    "F5a": "Error against the number of randomly deleted blocks: mean over the draws with its 95% bootstrap "
           "interval; dashed: the draws that spare the run's critical blocks.",
    "F5b": "Error against Kendall tau of randomly reordered networks: each draw, and the mean per tau bin with its "
           "95% bootstrap interval.",
    "F6": "Path-length distribution, gradient magnitude per path length (±1 std over draws), and each length's "
          "share of the gradient (shaded: the lengths carrying 90% of it).",
    "F7": "Fraction of paths of each length that survive deleting 1, 10 and 20 blocks (exact).",
    "H": "Mean gate g per block on the test set (band: 10th-90th percentile); solid: the paper's gate bias -6, "
         "dashed: bias 0; below 0.5 the shortcut weighs more.",
    "spans": "Error after deleting each span of consecutive layers, against the span's first layer: a panel per "
             "run (its seeds' mean), a line per span length (longer spans darker); dotted: the intact network; "
             "grey dashes: layers holding a downsampling block.",
    "tasks-single": "Task accuracy (lm-evaluation-harness's acc, or acc_norm where a task has no acc) after deleting "
                    "each single unit, a panel per task, a line per model; triangles: attention units, squares: MLP "
                    "units; dotted: the intact model.",
    "tasks-random": "Task accuracy against the number of randomly deleted units, a panel per task: the mean over the "
                    "draws with its 95% bootstrap interval; dotted: the intact model.",
    "tasks-loss": "Task accuracy against each plan's next-token loss (left) and, where the lesion table holds it, its "
                  "KL from the intact model in nats per token (right), a point per plan scored on both; the marker "
                  "says the plan's kind (star: the intact model). Accuracy that collapses while loss rises smoothly "
                  "shows as a cliff over a narrow range of loss.",
    "proxies-angular": "Gromov et al.'s angular distance d(start, n) / pi between the residual stream before a span "
                       "of n layers and after it, per run (last position of each text sequence, all positions, or "
                       "the pooled features of an image); a dark cell is a span the proxy calls cheap to delete.",
    "proxies-cost": "Each one-forward proxy against the real cost of the deletions it ranks, a row of panels per run: "
                    "single units for block influence, relative magnitude and cosine, spans of each length for "
                    "angular distance; the legend gives Spearman's rho with its 95% bootstrap interval over the "
                    "units or spans.",
    "shares": "Each run's units ranked by their share of the damage when deleted with others: Shapley values "
              "(permutation sampling) and Banzhaf values (random deletions), each with its 95% bootstrap interval.",
    "training": "Test (solid) and train (dotted) error per epoch; seeds of one run share its colour.",
}
# a language model's lesion figures plot next-token loss, its units are attention and MLP sublayers
LANGUAGE_CAPTIONS = {
    "F3": "Next-token loss (nats) after deleting each single unit (attention or MLP sublayer, numbered as the "
          "language-model section maps them to layers); dotted lines: the intact models; squares: critical units.",
    "F5a": "Next-token loss (nats) against the number of randomly deleted units: mean over the draws with its 95% "
           "bootstrap interval; dashed: the draws that spare the model's critical units.",
    "F5b": "Next-token loss (nats) against Kendall tau of randomly reordered units (attention among attention, MLP "
           "among MLP): each draw, and the mean per tau bin with its 95% bootstrap interval.",
    "spans": "Next-token loss (nats) after deleting each span of consecutive layers (both units of each), against "
             "the span's first layer: a panel per model, a line per span length (longer spans darker); dotted: the "
             "intact model.",
}


def captions(results: Results) -> dict[str, str]:
    """Each figure's caption, in the words of what it plots."""
    return {**CAPTIONS, **LANGUAGE_CAPTIONS} if results.measure is NEXT_TOKEN_LOSS else CAPTIONS
# figures of a study no shipped spec runs: a report without them does not list them as not drawn
OPTIONAL_FIGURES = ("spans", "tasks-single", "tasks-random", "tasks-loss", "proxies-angular", "proxies-cost", "shares")
CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
       "font-size:90%;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}")


def _seconds(x) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.0f}"


def _residual(results: Results) -> list[str]:
    return [r for r in results.runs["run_id"] if not results.structure(r).plain]


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
        runs = in_order(runs)
        view = pd.DataFrame({
            "run": runs["run_id"].map(results.name), "variant": runs["variant"].map(lambda v: variant_text(v) or "-"),
            "mode": runs["mode"].str.replace("_", " "), "seed": runs["seed"], "network": runs["network"],
            "blocks": runs["num_blocks"], "parameters": runs["parameters"].map("{:,}".format), "epochs": runs["epochs"],
            results.measure.error: runs["run_id"].map(lambda r: _pct(results.intact_error(r))), "training (s)": runs["train_seconds"].map(_seconds)})
        lines += [f"Dataset: **{results.dataset}**. Training: {plural(len(runs), 'run')}, "
                  f"{_seconds(runs['train_seconds'].sum())} s of training in all. {results.measure.error.capitalize()}: "
                  "the intact network on the study's test set where it was evaluated (effective-path runs under their "
                  "first test rule), else training's last evaluation.", ""] + markdown_table(view) + [""]
    counts = [{"study": study, "units": g["unit_key"].nunique(), "runs": g["run_id"].nunique(),
               "device time (s)": f"{g['seconds'].sum():.0f}"}
              for frame in (results.lesion, results.gradients, results.gates,
                            # a tasks unit's rows (one per metric) share its seconds: counted once
                            results.tasks.drop_duplicates("unit_key") if len(results.tasks) else results.tasks)
              for study, g in frame.groupby("study")]
    if counts:
        lines += ["Studies:", ""] + markdown_table(pd.DataFrame(counts)) + [""]
    if len(results.errors):
        lines += [f"**{plural(results.errors['unit_key'].nunique(), 'unit')} failed** (see the `errors` table).", ""]
    stale = {name: n for name, n in results.stale.items() if n}
    if stale:
        each = ", ".join(f"{name} {n:,}" for name, n in stale.items())
        lines += [f"{plural(sum(stale.values()), 'row')} from earlier settings of this experiment not used ({each}); they are "
                  f"kept in the tables until `unravel prune {results.out}` removes them.", ""]
    return lines


def claims_section(claims: list[Claim]) -> list[str]:
    elsewhere = left_to_other_specs(claims)
    by_spec: dict[str, list[str]] = {}
    for key, spec in elsewhere.items():
        by_spec.setdefault(spec, []).append(key)
    left = ["Left to other specs (no data here): " + "; ".join(f"{', '.join(keys)} to `{spec}`"
                                                            for spec, keys in by_spec.items()) + ".", ""] if by_spec else []
    return (["## The papers' claims, tested", ""] + left
            + markdown_table(pd.DataFrame([{"claim": c.paper, "this experiment": c.result, "verdict": f"**{c.verdict}**",
                                            "interval over": c.over or "-"} for c in claims])) + [""]
            + ["An interval over the blocks or draws of one trained network shows how they vary in that network, not "
               "how another training would differ: claims that compare training procedures are decided over seeds "
               f"(\"{ONE_SEED}\" with fewer than 2 a side).", ""]
            + ["Thresholds:", ""] + [f"- {c.key}: {c.rule}" for c in claims if c.rule] + [""]
            + ["One line per claim:", ""] + [f"- {c.line}" for c in claims] + [""])


def critical_blocks_section(results: Results) -> list[str]:
    f3_runs = set(results.study("single_deletion")["run_id"])
    lines, sublayers = [], False
    for r in _residual(results):
        if r in f3_runs:
            structure = results.structure(r)
            blocks, costs = results.critical_blocks(r), results.single_deletion_rises(r)
            down = [b for b in structure.downsampling if b in costs]
            noun = "unit" if structure.sublayers else "block"
            sublayers |= structure.sublayers
            crit = (f"critical {structure.units_text(blocks)} ({', '.join(f'{costs[b]:+.1f}' for b in blocks)} "
                    f"{results.measure.points})" if blocks else f"no critical {noun}")
            downs = (f"; downsampling {structure.units_text(down)} ({', '.join(f'{costs[b]:+.1f}' for b in down)} "
                     f"{results.measure.points})" if down else "" if structure.sublayers else "; no downsampling block")
            lines.append(f"- {results.title(r)}: {crit}{downs}")
    if not lines:
        return []
    noun = "units" if sublayers else "blocks"
    why = ("" if results.measure is NEXT_TOKEN_LOSS else " CIFAR-10 shows no such block in the paper; on the bundled "
           "digits the first block (sometimes the first three) is critical.")
    return [f"## Critical {noun} (found from the data)", "",
            f"A {'unit' if sublayers else 'non-downsampling block'} whose deletion alone raises the "
            f"{results.measure.error} by more than {CRITICAL_RISE:g} points (1-based positions).{why} Figure F5a "
            f"shows the random deletions both over the paper's pool and over the draws that avoid these {noun}.", ""
            ] + lines + [""]


def figures_section(figures: dict[str, str], words: dict[str, str] = CAPTIONS) -> list[str]:
    lines = ["## Figures", ""]
    for key, path in figures.items():
        lines += [f"### {key}", "", f"![{key}]({store.FIGURES}/{path})", "", words.get(key, ""),
                  f"(PDF: `{store.FIGURES}/{path[:-4]}.pdf`)", ""]
    missing = [key for key in CAPTIONS if key not in figures and key not in OPTIONAL_FIGURES]
    if missing:
        lines += [f"Not drawn, as the tables hold no data for them: {', '.join(missing)}.", ""]
    return lines


def write_report(out) -> Location:
    """report.md and report.html in OUT, the sections in order (each function returns its Markdown lines)."""
    out = store.where(out)
    results = Results.load(out)
    figures = all_figures(results, store.figures_folder(out))
    md = "\n".join(header(results) + what_was_run(results) + language_section(results)
                   + claims_section(all_claims(results)) + critical_blocks_section(results) + span_section(results)
                   + task_section(results) + proxy_section(results) + shares_section(results)
                   + t1_section(results) + im_section(results) + h_section(results)
                   + figures_section(figures, captions(results)))
    report, html = store.report_paths(out)
    store.write_file(report, md.encode())
    store.write_file(html, markdown_to_html(md).encode())
    return report


def markdown_to_html(md: str) -> str:
    """One self-contained page (the images are beside it in figures/)."""
    body = markdown.markdown(md, extensions=["tables"], output_format="html")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>unravel report</title><style>{CSS}</style>"
            f"</head><body>{body}</body></html>")
