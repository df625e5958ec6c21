"""Task accuracy's analysis on tables built here: a fake language run's lesion tables (language_cases) with tasks
and task_samples beside them (task_table_cases), whose per-document answers are chosen so each claim of P2-P4 holds,
fails or cannot be resolved; the paired tests, the figures and the report; and an output without them."""
import matplotlib
import numpy as np
import pytest

from figure_checks import assert_readable, legend_texts
from language_cases import write_language_tables
from task_table_cases import write_task_tables
from orchestrator.analysis import task_figures
from orchestrator.analysis.claims import all_claims
from orchestrator.analysis.drawing import STYLE
from orchestrator.analysis.figures import FIGURES
from orchestrator.analysis.report import what_was_run, write_report
from orchestrator.analysis.results import Results
from orchestrator.analysis.stats import holm, mcnemar_exact
from orchestrator.analysis.tasks import accuracy, paired_tests, task_section

LAYERS = 6          # 12 units: unit 2l is layer l's attention, 2l + 1 its MLP (0-based)


def holds(plan, k, draw, deleted):
    """Accuracy collapses between 3 and 4 random units; middle layers keep 94%; attention costs 1 document, MLP 12."""
    if plan == "intact":
        return 0.8
    if plan == "random_deletion":
        return (0.75 if k < 4 else 0.3) - 0.025 * (draw % 3)
    if plan == "single_deletion":
        return 0.775 if deleted[0] % 2 == 0 else 0.5
    return 0.3 if draw in (0, LAYERS - 1) else 0.75


def fails(plan, k, draw, deleted):
    """Accuracy falls 10 points per random unit; a middle layer keeps 38%; attention costs more than MLP."""
    if plan == "intact":
        return 0.8
    if plan == "random_deletion":
        return 0.775 - 0.1 * k + 0.025 * (draw % 3)
    if plan == "single_deletion":
        return 0.4 if deleted[0] % 2 == 0 else 0.75
    return 0.3


def unresolved(plan, k, draw, deleted):
    """Draws spread 36 points around a gentle fall; a middle layer keeps 72% of 32 documents; attention and MLP
    lose the same on average, on different documents."""
    if plan == "intact":
        return 0.8
    if plan == "random_deletion":
        return 0.8 - 0.02 * k + (-0.18, 0.18, -0.12, 0.12, -0.06, 0.06)[draw % 6]
    if plan == "single_deletion":
        return 0.7 if deleted[0] % 2 else 0.5 if deleted[0] % 4 == 0 else 0.9
    return 0.3 if draw in (0, LAYERS - 1) else 0.575


def _tables(out, score, **kw):
    [run] = write_language_tables(out, {"small": LAYERS}, spans=1, random_k=6)
    write_task_tables(out, run, {"toy_mc": score}, **kw)
    return Results.load(out)


@pytest.mark.parametrize("score, verdict", [(holds, "reproduced"), (fails, "not reproduced"),
                                            (unresolved, "not resolved on this data")])
def test_each_task_claim_is_decided_from_the_documents(tmp_path, score, verdict):
    claims = {c.key: c for c in all_claims(_tables(tmp_path, score))}
    for key in ("P2", "P3", "P4"):
        assert claims[key].verdict == verdict, (key, claims[key].line)
        assert claims[key].over.startswith(("bootstrap bands over the random draws", "paired bootstrap over the task's"))
    if score is holds:
        assert "accuracy largest step" in claims["P2"].result and "at k=4 (33% of the units; bands there" in claims["P2"].result
        assert "4 middle layer deletions keep 94% of the intact accuracy (4 at or above 72%, 0 below, over 40 " \
               "documents); first layer 37% [95% CI" in claims["P3"].result
        assert "most damaging: layer 1" in claims["P3"].result
        assert "an attention deletion loses 2.5 points, an MLP deletion 30.0" in claims["P4"].result


def test_paired_tests_name_the_deletions_that_hurt_with_holm(tmp_path):
    """McNemar's exact p on the discordant documents, Holm over the run's plans: 8 documents lost alone is
    significant among 54 plans, 1 is not; the report lists the first and counts the second."""
    results = _tables(tmp_path, holds)
    tests = paired_tests(results, results.runs["run_id"][0], "toy_mc")
    assert len(tests) == 12 + LAYERS + 36
    mlp = tests[(tests["plan"] == "single_deletion") & (tests["draw"] == 1)].iloc[0]
    assert (mlp["hurt"], mlp["helped"], mlp["documents"]) == (12, 0, 40)
    assert mlp["p"] == pytest.approx(mcnemar_exact(12, 0)) == pytest.approx(2 * 0.5 ** 12)
    assert mlp["p_holm"] == pytest.approx(holm(tests["p"])[mlp.name]) and mlp["outcome"] == "hurts"
    attention = tests[(tests["plan"] == "single_deletion") & (tests["draw"] == 0)].iloc[0]
    assert attention["outcome"] == "not resolved" and attention["hurt"] == 1
    section = "\n".join(task_section(results))
    assert section.startswith("## Task accuracy (lm-evaluation-harness)")
    assert "| small, pretrained | toy_mc | acc | none | 0.8000 | 0.0641 | 40 | 0 |" in section
    line = next(x for x in section.splitlines() if x.startswith("- small, pretrained, toy_mc"))
    assert line.startswith("- small, pretrained, toy_mc (54 plans over 40 documents): significantly hurt by 26 plans: "
                           "layer 1 (-50.0 points, adjusted p")
    assert "unit 2 (layer 1 MLP) (-30.0 points" in line and "unit 1 (layer 1 attention)" not in line
    assert "random deletions, draws per k that hurt it: k=4: 6 of 6, k=5: 6 of 6, k=6: 6 of 6" in line
    assert line.endswith("not resolved: 28 plans")
    assert "| tasks | 55 | 1 | 1 |" in "\n".join(what_was_run(results))   # a unit per plan and task, its seconds counted once


def test_a_perplexity_task_is_listed_not_plotted_as_accuracy(tmp_path):
    results = _tables(tmp_path, holds, perplexity_task="wikitext_like")
    assert set(accuracy(results)["task"]) == {"toy_mc"}
    assert set(accuracy(results)["metric"]) == {"acc"}
    section = "\n".join(task_section(results))
    assert "| small, pretrained | wikitext_like | word_perplexity | none | 20.0000 | - | 4 | 0 |" in section
    assert "- no accuracy (perplexity tasks, their metrics above): wikitext_like" in section


@pytest.fixture
def drawn(monkeypatch):
    """The task figures all_figures saves, drawn with Agg and kept, not written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from orchestrator.analysis import drawing
    made = {}

    def keep(fig, folder, name):
        drawing.finish(fig)
        FigureCanvasAgg(fig).draw()
        made[name] = fig
        return f"{name}.png"

    monkeypatch.setattr(task_figures, "save", keep)
    return made


def test_task_figures_are_drawn_and_readable(tmp_path, drawn):
    """Accuracy against the single unit (attention and MLP marked), against k with bands, and against loss; KL
    beside loss only where the lesion table has it (version 4 writes it: here added to the frame as it reads)."""
    results = _tables(tmp_path, holds)
    with matplotlib.rc_context(STYLE):   # as all_figures draws each of its FIGURES
        made = {key: FIGURES[key](results, tmp_path / "figures") for key in ("tasks-single", "tasks-random",
                                                                            "tasks-loss")}
    assert {made[k] for k in ("tasks-single", "tasks-random", "tasks-loss")} == {
        "tasks_single_deletion.png", "tasks_random_deletion.png", "tasks_against_loss.png"}
    single = drawn["tasks_single_deletion"]
    assert {"attention unit deleted", "MLP unit deletion"} & set(legend_texts(single)) == {"attention unit deleted"}
    assert single.axes[0].get_ylabel() == "accuracy (%, acc)" and single.axes[0].get_title() == "toy_mc"
    attention = [line for line in single.axes[0].get_lines() if line.get_marker() == "^"]
    assert list(attention[0].get_ydata()) == pytest.approx([77.5] * LAYERS)
    band = drawn["tasks_random_deletion"].axes[0].collections
    assert band, "the random deletions' 95% band"
    loss = drawn["tasks_against_loss"]
    assert [ax.get_xlabel() for ax in loss.axes] == ["next-token loss (nats)"]
    for name, fig in drawn.items():
        assert_readable(name, fig)
    results.lesion["kl_from_intact"] = None   # the column, null in parts written before it: no KL panel
    with matplotlib.rc_context(STYLE):
        task_figures.task_loss_figure(results, tmp_path / "figures")
    assert [ax.get_xlabel() for ax in drawn["tasks_against_loss"].axes] == ["next-token loss (nats)"]
    results.lesion["kl_from_intact"] = np.where(results.lesion["study"] == "intact", 0.0, results.lesion["loss"] - 3)
    with matplotlib.rc_context(STYLE):
        task_figures.task_loss_figure(results, tmp_path / "figures")
    assert [ax.get_xlabel() for ax in drawn["tasks_against_loss"].axes] == [
        "next-token loss (nats)", "KL(intact || plan), nats per token"]
    assert_readable("tasks_against_loss", drawn["tasks_against_loss"])


def test_without_a_tasks_study_the_claims_say_so_and_nothing_is_drawn(tmp_path, drawn):
    """A language run with lesion tables alone (no tasks study, no divergence columns): P2-P4 not run, no task
    section, no task figure."""
    write_language_tables(tmp_path, {"small": 2}, random_k=2)
    results = Results.load(tmp_path)
    claims = {c.key: c for c in all_claims(results)}
    for key in ("P2", "P3", "P4"):
        assert claims[key].verdict == "not run" and claims[key].result.startswith("no tasks study"), claims[key].line
    assert task_section(results) == []
    for draw in (task_figures.task_single_figure, task_figures.task_random_figure, task_figures.task_loss_figure):
        assert draw(results, tmp_path / "figures") is None
    assert not drawn


@pytest.mark.slow
def test_an_output_without_tasks_still_reports(tmp_path, drawn):
    """The whole report of that output: the claims left to the spec that runs them, no task figure listed as
    missing."""
    write_language_tables(tmp_path, {"small": 2}, random_k=2)
    text = write_report(tmp_path).read_text()
    assert "P2, P3, P4 to `experiments/llm-layer-deletion.yaml`" in text
    assert "## Task accuracy" not in text and "tasks-" not in text and not drawn


def test_the_paired_statistics():
    """Holm steps down (the smallest p times the family's size, ...), never below an earlier adjusted p; McNemar's
    exact p is the two-sided binomial of the discordant pairs; a ratio undefined in some resamples has no interval
    and says why."""
    from orchestrator.analysis.stats import paired_ratio_interval
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(1, 7) == pytest.approx(0.0703125)
    few = paired_ratio_interval(np.array([1.0, 1, 0, 0]), np.array([1.0, 0, 1, 0]))
    assert few.estimate == 1.0 and few.text(2) == "1.00 (no interval: the ratio is undefined in some resamples)"
    many = paired_ratio_interval(np.array([1.0, 1, 1, 0] * 10), np.array([1.0, 0, 1, 0] * 10))
    assert many.estimate == pytest.approx(2 / 3) and many.lo < 2 / 3 < many.hi
