"""Every figure of the report, drawn under the kit's style: Veit et al.'s, the highway view's, span deletion's,
task accuracy's, the proxies', the shares' and the training curves, each where the tables hold data for it."""
from __future__ import annotations

from pathlib import Path

import matplotlib

from orchestrator.analysis.drawing import STYLE
from orchestrator.analysis.highway import h_figure
from orchestrator.analysis.proxy_figures import angular_heatmap, proxy_cost_figure, shares_figure
from orchestrator.analysis.results import Results
from orchestrator.analysis.spans import span_figure
from orchestrator.analysis.task_figures import task_loss_figure, task_random_figure, task_single_figure
from orchestrator.analysis.veit_figures import f3, f5a, f5b, f6, f7, training_curves

FIGURES = {"F3": f3, "F5a": f5a, "F5b": f5b, "F6": f6, "F7": f7, "H": h_figure, "spans": span_figure,
           "tasks-single": task_single_figure, "tasks-random": task_random_figure, "tasks-loss": task_loss_figure,
           "proxies-angular": angular_heatmap, "proxies-cost": proxy_cost_figure, "shares": shares_figure,
           "training": training_curves}   # key -> the function drawing it, in the report's order


def all_figures(results: Results, folder: Path) -> dict[str, str]:
    """Each figure's PNG name by key, for the figures the tables have data for."""
    made = {}
    with matplotlib.rc_context(STYLE):  # figures read the style when drawn and saved
        for name, draw in FIGURES.items():
            path = draw(results, folder)
            if path:
                made[name] = path
    return made
