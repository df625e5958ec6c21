"""The proxies' verdicts and the units' shares on tables built here: a fake language run's lesion tables
(language_cases) with proxies rows whose ranking the test chooses, task tables beside them (task_table_cases), and
random deletions and permutations of units whose costs are additive and known, with and without one interaction."""
import itertools

import matplotlib
import numpy as np
import pytest

from figure_checks import assert_readable
from language_cases import write_language_tables
from task_table_cases import write_task_tables
from orchestrator import store
from orchestrator.analysis import drawing, proxy_figures
from orchestrator.analysis.claims import all_claims
from orchestrator.analysis.drawing import STYLE
from orchestrator.analysis.proxies import MISLEADS, NOT_RESOLVED, RANKS, comparisons
from orchestrator.analysis.proxy_claims import p1, proxy_section, shares_section
from orchestrator.analysis.report import write_report
from orchestrator.analysis.results import Results
from orchestrator.analysis.shares import banzhaf, shapley

LAYERS = 6                                   # 12 units: unit 2l is layer l's attention, 2l + 1 its MLP
COST = {u: 0.05 + 0.1 * u for u in range(2 * LAYERS)}   # nats each unit's deletion adds to the intact 3.0


def proxy_rows(run_id, values: dict[tuple[str, int, int], float]) -> list[dict]:
    return [{"unit_key": f"{run_id}-proxies", "proxy": proxy, "start": start, "length": length, "positions": "last",
             "value": value, "examples": 96, "seconds": 0.1} for (proxy, start, length), value in values.items()]


def lesion_row(run_id, study, k, draw, deleted, loss):
    """A next-token lesion row as the lesion study writes it (error follows loss, as in language_cases)."""
    return {"unit_key": f"{run_id}-{study}-{k}-{draw}", "k": k, "draw": draw, "deleted": sorted(deleted), "order": [],
            "kendall_tau": 1.0, "active_blocks": 0, "error": min(0.8 + (loss - 3.0) / 10, 1.0), "loss": loss,
            "examples": 96, "precision": "fp32", "bn_recalibrated": False, "seconds": 0.01, "test_rule": "",
            "metric": "next_token", "perplexity": float(np.exp(loss)), "kl_from_intact": None,
            "agreement_with_intact": None, "entropy": None}


def reversed_accuracy(plan, k, draw, deleted):
    """Task accuracy that falls least where loss rises most: the costliest unit by loss is the cheapest by task."""
    if plan == "single_deletion":
        return 0.8 - 0.025 * (2 * LAYERS - 1 - deleted[0])
    return 0.8 - 0.025 * (LAYERS - draw) if plan == "span_deletion" else 0.8


@pytest.fixture
def proxied(tmp_path):
    """Run "big" (12 units): block influence ranks as loss does, relative magnitude in reverse, cosine the reverse
    of block influence (a high cosine predicts a cheap deletion), angular distance as the spans cost; tasks whose
    accuracy ranks the units in reverse of loss. Run "few" (4 units): a cosine that is noise."""
    big, few = write_language_tables(tmp_path, {"big": LAYERS, "few": 2}, single=COST, spans=2)
    span_cost = {(s, n): sum(COST[u] for u in range(2 * s, 2 * (s + n))) for n in (1, 2) for s in range(LAYERS - n + 1)}
    values = {**{("block_influence", u, 1): c for u, c in COST.items()},
              **{("relative_magnitude", u, 1): -c for u, c in COST.items()},
              **{("cosine", u, 1): 1 - c for u, c in COST.items()},
              **{("angular_distance", s, n): c for (s, n), c in span_cost.items()}}
    store.write_part(tmp_path, "proxies", "proxies", big, f"p-{big}", proxy_rows(big, values))
    noise = {("cosine", u, 1): v for u, v in enumerate([0.3, 0.9, 0.1, 0.5])}   # rho 0 against the costs
    store.write_part(tmp_path, "proxies", "proxies", few, f"p-{few}", proxy_rows(few, noise))
    write_task_tables(tmp_path, big, {"toy_mc": reversed_accuracy})
    return Results.load(tmp_path), big, few


def _found(results, run, proxy, cost, scope="single units"):
    [c] = [c for c in comparisons(results) if (c.run_id, c.proxy, c.cost, c.scope) == (run, proxy, cost, scope)]
    return c


def test_each_verdict_of_a_proxy(proxied):
    results, big, few = proxied
    exact = _found(results, big, "block_influence", "loss rise")
    assert exact.spearman.estimate == pytest.approx(1.0) and exact.kendall.estimate == pytest.approx(1.0)
    assert exact.verdict == RANKS and exact.overlap == 1.0 and exact.regret == 0.0 and exact.top == 3
    assert _found(results, big, "cosine", "loss rise").verdict == RANKS   # read in reverse: high cosine, cheap
    reverse = _found(results, big, "relative_magnitude", "next-token error rise")
    assert reverse.spearman.estimate == pytest.approx(-1.0) and reverse.verdict == MISLEADS
    assert reverse.overlap == 0.0 and reverse.regret == pytest.approx(100 * (COST[11] - COST[0]) / 10)   # error points
    noise = _found(results, few, "cosine", "loss rise")
    assert noise.spearman.estimate == pytest.approx(0.0) and noise.verdict == NOT_RESOLVED
    for n in (1, 2):
        assert _found(results, big, "angular_distance", "loss rise", f"spans of {n} layer{'s' * (n > 1)}").verdict \
            == RANKS
    task = _found(results, big, "block_influence", "task acc drop: toy_mc")
    assert task.over == "documents" and task.spearman.estimate == pytest.approx(-1.0) and task.verdict == MISLEADS


def test_the_claim_and_section_say_what_decided(proxied):
    results, big, _ = proxied
    claim = p1(results)
    assert claim.verdict.startswith("partly reproduced: ranks as deletion does in")
    assert "documents for task accuracy" in claim.over and "no per-example costs" in claim.over
    text = "\n".join(proxy_section(results))
    assert "- big, pretrained, single units, block influence: next-token error rise rho 1.00" in text
    assert "loss rise rho 1.00 [95% CI 1.00, 1.00]: the proxy ranks deletions as deleting them does" in text
    assert "the proxy ranks deletions as deleting them does" in text and "the proxy misleads" in text
    assert "few, pretrained, single units, cosine: " in text and "not resolved on this data" in text
    assert "big, pretrained, single units: loss rise and toy_mc accuracy drop rank these deletions differently" in text


def _additive(out, interaction: float = 0.0, draws: int | None = None):
    """A 4-unit model (2 layers) whose deletion costs are COST's, plus ``interaction`` nats when units 0 and 1 are
    both deleted: every subset of 1-3 units as random deletions (or ``draws`` random ones of each size from 12
    units), and every permutation of the 4 units as the shares study."""
    layers = 2 if draws is None else LAYERS
    [run] = write_language_tables(out, {"toy": layers}, single=COST, spans=1)
    n = 2 * layers

    def loss(units):
        return 3.0 + sum(COST[u] for u in units) + (interaction if {0, 1} <= set(units) else 0.0)

    rng = np.random.default_rng(7)
    subsets = ([list(s) for k in range(1, n) for s in itertools.combinations(range(n), k)] if draws is None else
               [sorted(rng.choice(n, k, replace=False).tolist()) for k in range(1, 7) for _ in range(draws)])
    store.write_part(out, "lesion", "random_deletion", run, f"r-{run}",
                     [lesion_row(run, "random_deletion", len(s), j, s, loss(s)) for j, s in enumerate(subsets)])
    orders = list(itertools.permutations(range(n))) if draws is None else [rng.permutation(n) for _ in range(20)]
    store.write_part(out, "lesion", "shares", run, f"h-{run}",
                     [lesion_row(run, "shares", k, p, list(order[:k]), loss(order[:k]))
                      for p, order in enumerate(orders) for k in range(n + 1)])
    return Results.load(out), run


def test_shares_recover_additive_costs(tmp_path):
    results, run = _additive(tmp_path)
    for estimate in (banzhaf(results, run), shapley(results, run)):
        assert estimate.units.tolist() == [0, 1, 2, 3]
        assert estimate.values == pytest.approx([COST[u] for u in range(4)])
        for u, ci in zip(estimate.units, estimate.intervals()):
            assert ci.lo - 1e-12 <= COST[u] <= ci.hi + 1e-12
    top = shapley(results, run).concentration()   # the top 10% of 4 units: the costliest one
    assert top.estimate == pytest.approx(COST[3] / sum(COST[u] for u in range(4)))


def test_banzhaf_from_random_draws_covers_the_costs(tmp_path):
    results, run = _additive(tmp_path, draws=40)
    estimate = banzhaf(results, run)
    assert estimate.units.tolist() == list(range(12))
    covered = [ci.lo <= COST[u] <= ci.hi for u, ci in zip(estimate.units, estimate.intervals())]
    assert sum(covered) >= 11, covered   # 95% intervals: at most one of 12 may miss
    assert np.corrcoef(estimate.values, [COST[u] for u in range(12)])[0, 1] > 0.9


def test_shapley_splits_an_interaction_equally(tmp_path):
    results, run = _additive(tmp_path, interaction=0.6)
    value = dict(zip(shapley(results, run).units.tolist(), shapley(results, run).values))
    assert value[0] == pytest.approx(COST[0] + 0.3) and value[1] == pytest.approx(COST[1] + 0.3)
    assert value[2] == pytest.approx(COST[2]) and value[3] == pytest.approx(COST[3])
    assert "Shapley" in "\n".join(shares_section(results))


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn with Agg and kept, not written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    kept = {}

    def keep(fig, folder, name):
        drawing.finish(fig)
        FigureCanvasAgg(fig).draw()
        kept[name] = fig
        return f"{name}.png"

    monkeypatch.setattr(proxy_figures, "save", keep)
    return kept


def test_figures_are_drawn_and_readable(proxied, tmp_path, drawn):
    results, *_ = proxied
    with matplotlib.rc_context(STYLE):
        assert proxy_figures.angular_heatmap(results, tmp_path) == "proxies_angular_distance.png"
        assert proxy_figures.proxy_cost_figure(results, tmp_path) == "proxies_against_cost.png"
        shares, _ = _additive(tmp_path / "shares")
        assert proxy_figures.shares_figure(shares, tmp_path) == "shares.png"
    for name, fig in drawn.items():
        assert_readable(name, fig)
    legends = [t.get_text() for ax in drawn["proxies_against_cost"].axes if ax.get_legend()
               for t in ax.get_legend().get_texts()]
    assert "single units: rho +1.00\n95% CI [+1.00, +1.00]" in legends


def test_an_output_without_proxies_or_shares_says_not_run(tmp_path):
    write_language_tables(tmp_path, {"plain": 2})
    results = Results.load(tmp_path)
    [claim] = [c for c in all_claims(results) if c.key == "P1"]
    assert claim.verdict == "not run" and not proxy_section(results)
    assert "Not run: no random deletions" in "\n".join(shares_section(results))
    for draw in (proxy_figures.angular_heatmap, proxy_figures.proxy_cost_figure, proxy_figures.shares_figure):
        assert draw(results, tmp_path / "figures") is None


@pytest.mark.slow
def test_the_report_has_the_proxies_and_shares(proxied):
    results, *_ = proxied
    text = write_report(results.out).read_text()
    assert "## Is the cheap proxy right?" in text and "P1 one-forward proxies" in text
    assert "### proxies-angular" in text and "### proxies-cost" in text


def test_a_resnet_is_judged_on_error_and_its_blocks_share_the_damage(tmp_path):
    """Images: a ResNet-20's 9 blocks, each costing 1 + block error points, judged on error rise; random deletions
    of 1-4 blocks give each block's Banzhaf value in points."""
    from workloads.models import network_config
    cfg = network_config("resnet20", widths=(4, 8, 16), in_channels=1, num_classes=10, image_size=8)
    run = "res.s0"
    store.write_table(tmp_path, "runs", [{
        "run_id": run, "label": "res", "network": "resnet20", "variant": "{}", "mode": "normal", "seed": 0,
        "dataset": "digits", "iterations": 10, "epochs": 1, "test_error": 0.1, "test_loss": 0.3, "num_blocks": 9,
        "parameters": 1, "checkpoint": "-", "train_seconds": 1.0, "net_config": cfg.to_json(), "train_config": "{}"}])
    points = {b: 1.0 + b for b in range(9)}

    def row(study, k, draw, deleted):
        error = 0.05 + sum(points[b] for b in deleted) / 100
        return {**lesion_row(run, study, k, draw, deleted, 0.2 + error), "error": error, "metric": "classification",
                "perplexity": float("nan")}

    rng = np.random.default_rng(3)
    draws = [sorted(rng.choice(9, k, replace=False).tolist()) for k in range(1, 5) for _ in range(30)]
    store.write_part(tmp_path, "lesion", "intact", run, "i", [row("intact", 0, 0, [])])
    store.write_part(tmp_path, "lesion", "single_deletion", run, "s", [row("single_deletion", 1, b, [b]) for b in range(9)])
    store.write_part(tmp_path, "lesion", "random_deletion", run, "r",
                     [row("random_deletion", len(d), j, d) for j, d in enumerate(draws)])
    store.write_part(tmp_path, "proxies", "proxies", run, "p",
                     [{**r, "positions": "pooled"} for r in proxy_rows(run, {("block_influence", b, 1): 0.1 * b
                                                                             for b in range(9)})])
    results = Results.load(tmp_path)
    [claim] = [c for c in all_claims(results) if c.key == "P1"]
    assert claim.verdict == "reproduced" and "res (error rise): block influence on single units rho 1.00" in claim.result
    estimate = banzhaf(results, run)
    covered = [ci.lo <= points[b] <= ci.hi for b, ci in zip(estimate.units, estimate.intervals())]
    assert sum(covered) >= 8 and estimate.units.tolist() == list(range(9)), covered
    assert "### res" in "\n".join(shares_section(results))
