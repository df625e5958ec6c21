"""The proxies and shares studies on the orchestrator's side: their spec sections and refusals, their units (a
proxies unit per run, keys hashing its settings; a shares unit per prefix of each seeded permutation), the other
studies' keys unchanged, batches, the proxies table and its resume index, what `unravel plan` counts, the evaluator's
proxies pass on a language model, and one sweep of both through the real CLI on digits."""
from __future__ import annotations

import copy
import io
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from language_cases import write_corpus, write_llama_config
from orchestrator import store
from orchestrator.cli import main
from orchestrator.experiment.spec import SpecError, parse_spec
from orchestrator.experiment.units import batch_count, batches, expand, plan_for, unit_groups
from orchestrator.planning.plan import Node, make_plan
from orchestrator.planning.rates import GivenRates
from orchestrator.store import query
from orchestrator.store.current import status

BLOCKS = 9   # resnet20's residual blocks, one layer each

SPEC = {"name": "proxies", "data": {"dataset": "digits"},
        "training": {"iterations": 4, "resources": {"cpu": 1},
                     "runs": [{"network": "resnet20", "label": "res", "overrides": {"widths": [4, 8, 16]}},
                              {"network": "plain15", "label": "plain", "overrides": {"widths": [4, 8, 16]}}]},
        "studies": {"test_examples": 40, "single_deletion": {}, "proxies": {}, "shares": {"permutations": 3},
                    "evaluators": {"count": 1, "cpu": 1}}}


def with_studies(**studies) -> dict:
    raw = copy.deepcopy(SPEC)
    raw["studies"].update(studies)
    return raw


def text_spec(folder, **proxies) -> dict:
    """A text spec of one Llama-layout model (its config.json: what a spec reads) of three layers."""
    model = folder / "llama"
    if not (model / "config.json").exists():
        write_llama_config(model, layers=3)
    data = {"dataset": "text", "root": str(folder / "corpus.txt"), "sequence_length": 8}
    return {"name": "llm-proxies", "data": data,
            "models": [{"network": "hf_causal_lm", "label": "llama", "checkpoint": str(model)}],
            "studies": {"proxies": proxies, "shares": {"permutations": 2}}}


# -- the spec -----------------------------------------------------------------------------------------

def test_proxies_read_pooled_images_and_the_last_or_every_position_of_a_text(tmp_path):
    spec = parse_spec(SPEC)
    res, _ = (t.run_id for t in spec.runs)
    proxies, shares = spec.studies.study("proxies"), spec.studies.study("shares")
    assert (proxies.runs, proxies.positions) == ((res,), "pooled")      # residual runs by default, pooled features
    assert (shares.runs, shares.permutations) == ((res,), 3)
    assert parse_spec(with_studies(shares={})).studies.study("shares").permutations == 20   # the default
    assert parse_spec(text_spec(tmp_path)).studies.study("proxies").positions == "last"    # Gromov et al.
    assert parse_spec(text_spec(tmp_path, positions="all")).studies.study("proxies").positions == "all"
    recorded = parse_spec(text_spec(tmp_path, positions="all"))
    again = type(recorded).from_record(json.loads(json.dumps(recorded.record())), recorded.raw)
    assert again.studies == recorded.studies                             # OUT/spec.json keeps both settings


@pytest.mark.parametrize("studies, message", [
    ({"proxies": {"positions": "all"}}, "studies.proxies.positions: applies only to dataset text"),
    ({"proxies": {"positions": "first"}}, "studies.proxies.positions: must be last or all"),
    ({"proxies": {"runs": ["plain"]}}, "studies.proxies.runs: run 'plain' is a plain network"),
    ({"proxies": {"draws": 3}}, "studies.proxies.draws: unknown key"),
    ({"shares": {"permutations": 0}}, "studies.shares.permutations: must be between 1"),
    ({"shares": {"k_max": 3}}, "studies.shares.k_max: unknown key"),
    ({"shares": {"runs": ["nope"]}}, "studies.shares.runs[0]: no training run is labelled 'nope'"),
    ({"shares": {"runs": ["res"]}, "exclude_blocks": list(range(BLOCKS - 1))},
     "studies.shares.runs: run 'res' has 1 deletable block outside studies.exclude_blocks"),
])
def test_proxies_and_shares_spec_errors_name_the_field(studies, message):
    with pytest.raises(SpecError) as e:
        parse_spec(with_studies(**studies))
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


# -- units and batches --------------------------------------------------------------------------------

def test_a_proxies_unit_per_run_keyed_by_what_changes_its_scores(tmp_path):
    units = expand(parse_spec(SPEC))
    proxies = [u for u in units if u.study == "proxies"]
    assert [(u.k, u.draw) for u in proxies] == [(0, 0)]
    key = proxies[0].key

    def proxy_key(raw) -> str:
        return next(u.key for u in expand(parse_spec(raw)) if u.study == "proxies")
    assert proxy_key(with_studies(exclude_blocks=[0, 1])) == key       # the pools play no part in an intact pass
    assert proxy_key(with_studies(recalibrate_bn=True)) == key
    assert proxy_key(with_studies(test_examples=30)) != key
    assert proxy_key(with_studies(precision="bf16")) != key
    last, every = proxy_key(text_spec(tmp_path)), proxy_key(text_spec(tmp_path, positions="all"))
    assert last != every


def test_shares_units_are_every_prefix_of_each_permutation_of_the_pool():
    spec = parse_spec(SPEC)
    shares = [u for u in expand(spec) if u.study == "shares"]
    assert [(u.k, u.draw) for u in shares] == [(k, p) for p in range(3) for k in range(BLOCKS + 1)]
    assert len({u.key for u in shares}) == len(shares)
    excluded = [u for u in expand(parse_spec(with_studies(exclude_blocks=[0, 4]))) if u.study == "shares"]
    assert max(u.k for u in excluded) == BLOCKS - 2                     # the pool less the excluded blocks
    assert not {u.key for u in excluded} & {u.key for u in shares}      # another pool: other results
    more = [u for u in expand(parse_spec(with_studies(shares={"permutations": 5}))) if u.study == "shares"]
    assert {u.key for u in shares} < {u.key for u in more}              # more permutations compute only the new


def test_the_new_studies_leave_every_other_units_key_as_it_was():
    without = copy.deepcopy(SPEC)
    del without["studies"]["proxies"], without["studies"]["shares"]
    old = [u.key for u in expand(parse_spec(without))]
    new = [u.key for u in expand(parse_spec(SPEC)) if u.study not in ("proxies", "shares")]
    assert new == old
    only_proxies = with_studies()
    del only_proxies["studies"]["single_deletion"], only_proxies["studies"]["shares"]
    assert {u.study for u in expand(parse_spec(only_proxies))} == {"proxies"}   # no intact lesion unit of its own


def test_proxies_batches_write_their_own_table_and_shares_batches_the_lesion_table():
    spec = parse_spec(SPEC)
    work = batches(expand(spec), 4)
    (proxies,) = [b for b in work if b.study == "proxies"]
    assert (len(proxies.units), proxies.table, proxies.tables) == (1, "proxies", ("proxies",))
    shares = [b for b in work if b.study == "shares"]
    assert all(b.table == "lesion" and len(b.units) <= 4 for b in shares)
    assert sum(len(b.units) for b in shares) == 3 * (BLOCKS + 1)
    assert batch_count(unit_groups(spec), 4) == len(work)


# -- the proxies table --------------------------------------------------------------------------------

def scores_of(blocks: int, layers: int, positions: str = "pooled", examples: int = 40) -> SimpleNamespace:
    """Scores as ``workloads.surgery.ProxyScores`` carries them: per-unit lists indexed by block (NaN where a unit
    cannot be deleted: none here), the deletable units, and the angular distance of every span (start, length)."""
    cosine = [0.5 + 0.05 * b for b in range(blocks)]
    return SimpleNamespace(units=tuple(range(blocks)), block_influence=[1 - c for c in cosine],
                           relative_magnitude=[0.1 * b for b in range(blocks)],
                           cosine=cosine, angular={(s, n): 0.01 * (s + n) for n in range(1, layers + 1)
                                                   for s in range(layers - n + 1)},
                           examples=examples, positions=positions)


def test_proxy_rows_are_one_per_unit_and_proxy_and_one_per_span_and_say_the_unit_is_written(tmp_path):
    spec = parse_spec(SPEC)
    (batch,) = [b for b in batches(expand(spec), 64) if b.study == "proxies"]
    (unit,) = batch.units
    rows = store.proxy_rows(unit, scores_of(BLOCKS, BLOCKS), seconds=2.0)
    spans = BLOCKS * (BLOCKS + 1) // 2
    assert len(rows) == 3 * BLOCKS + spans
    assert sum(r["seconds"] for r in rows) == pytest.approx(2.0)       # each row its share of the one pass
    out = tmp_path / "out"
    store.write_part(out, "proxies", "proxies", batch.run_id, batch.key, rows)
    assert unit.key in store.done_keys(out)
    table = store.read_parts(out, "proxies")
    assert set(table["study"]) == {"proxies"} and set(table["run_id"]) == {batch.run_id}
    per_unit = table[table["proxy"] != "angular_distance"]
    assert (per_unit["length"] == 1).all() and sorted(set(per_unit["start"])) == list(range(BLOCKS))
    answer = query.run(out, "select proxy, count(*) as n, min(length) as shortest, max(length) as longest from proxies "
                            "group by proxy order by proxy", "csv")
    assert answer.splitlines()[1:] == ["angular_distance,45,1,9", "block_influence,9,1,1", "cosine,9,1,1",
                                       "relative_magnitude,9,1,1"]
    bi = query.run(out, "select max(abs(a.value + b.value - 1)) < 1e-12 from proxies a join proxies b using (start) "
                        "where a.proxy = 'cosine' and b.proxy = 'block_influence'", "csv")
    assert bi.splitlines()[1] == "True"
    counts = {r["study"]: r for r in status(spec, out)}
    assert (counts["proxies"]["units"], counts["proxies"]["done"]) == (1, 1)


def test_a_proxy_row_missing_a_column_is_refused(tmp_path):
    spec = parse_spec(SPEC)
    unit = next(u for u in expand(spec) if u.study == "proxies")
    row = store.proxy_rows(unit, scores_of(2, 2), seconds=1.0)[0]
    with pytest.raises(ValueError, match="missing \\['examples'\\]"):
        store.write_part(tmp_path / "out", "proxies", "proxies", unit.run_id, "b",
                         [{k: v for k, v in row.items() if k != "examples"}])


# -- unravel plan -------------------------------------------------------------------------------------

def test_the_plan_counts_a_proxies_unit_per_run_and_every_prefix_of_the_permutations():
    plan = make_plan(parse_spec(SPEC), [Node(2, 0)], "test", GivenRates(), measure=False)
    rows = {r["study"]: r for r in plan["studies"]["per_study"]}
    assert (rows["proxies"]["runs"], rows["proxies"]["units"]) == (1, 1)
    assert (rows["shares"]["runs"], rows["shares"]["units"]) == (1, 3 * (BLOCKS + 1))
    assert any(n.startswith("proxies: one intact forward over the test set per run (1 run)") for n in plan["notes"])


# -- against workloads.surgery: shares' plans, the evaluator's proxies pass ----------------------------

def test_a_shares_permutation_deletes_nested_prefixes_of_the_pool_less_the_excluded():
    spec = parse_spec(with_studies(exclude_blocks=[0]))
    infos = spec.blocks_of(spec.runs[0])
    for p in range(3):
        chain = [plan_for(u, infos, (0,)).deleted
                 for u in expand(spec) if u.study == "shares" and u.draw == p]
        assert chain[0] == set() and chain[-1] == set(range(1, BLOCKS))
        assert all(len(b - a) == 1 and a < b for a, b in zip(chain, chain[1:]))
    first = [plan_for(u, infos, (0,)).deleted for u in expand(spec) if u.study == "shares" and u.k == 1]
    assert len({min(d) for d in first}) > 1                              # seeded by the permutation, not one order


@pytest.mark.slow   # a Llama and its tokenizer
@pytest.mark.parametrize("positions", ["last", "all"])
def test_the_evaluator_reads_a_language_models_proxies_over_the_positions_the_spec_names(tmp_path, positions):
    import torch

    from orchestrator.run.evaluator import Evaluator
    from test_tasks_study import save_llama
    from workloads.models.adapters import adapt
    from workloads.models.adapters.hf_loading import load_causal_lm
    from workloads.models.checkpoint import checkpoint_of
    model = save_llama(tmp_path / "llama", layers=3)
    write_corpus(tmp_path / "corpus.txt", words=200)
    spec = parse_spec(text_spec(tmp_path, positions=positions))
    original = load_causal_lm(model)
    blob = io.BytesIO()
    torch.save(checkpoint_of(spec.runs[0].net_config, adapt(original), original), blob)
    (batch,) = [b for b in batches(expand(spec), 64) if b.study == "proxies"]
    evaluator = Evaluator(spec.data, spec.studies)
    tables, errors = evaluator.run(batch, blob.getvalue())
    assert not errors and list(tables) == ["proxies"]
    rows = pd.DataFrame(tables["proxies"])
    assert set(rows["positions"]) == {positions} and set(rows["unit_key"]) == {batch.units[0].key}
    assert (rows[rows["proxy"] != "angular_distance"].groupby("proxy").size() == 6).all()   # 3 layers, 2 units each
    spans = rows[rows["proxy"] == "angular_distance"]
    assert sorted(zip(spans["start"], spans["length"])) == sorted((s, n) for n in (1, 2, 3) for s in range(4 - n))
    assert spans["value"].between(0, 1).all()
    sequences = len(evaluator.test[0])   # averaged over each sequence's last position, or over all 8 of them
    assert set(rows["examples"]) == {sequences * (8 if positions == "all" else 1)}


# -- one sweep through the CLI ------------------------------------------------------------------------

@pytest.mark.slow
def test_proxies_and_shares_through_the_cli_each_unit_once_read_by_unravel_query(out, tmp_path):
    """The session's trained runs (sweep_cases.BASE: a 9-block pre-activation ResNet and the plain net): proxies,
    two permutations' prefixes, single deletions and spans of the ResNet; the proxies read through `unravel query`."""
    from sweep_cases import BASE
    raw = {**BASE, "studies": {"test_examples": 40, "evaluators": {"count": 1, "cpu": 1}, "plans_per_batch": 8,
                               "proxies": {}, "shares": {"permutations": 2}, "single_deletion": {"runs": ["res"]},
                               "span_deletion": {"max_length": 2}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    first = runner.invoke(main, ["lesion", str(path), "--out", str(out)])
    assert first.exit_code == 0, first.output
    units = 1 + BLOCKS + (BLOCKS + BLOCKS - 1) + 1 + 2 * (BLOCKS + 1)
    assert (f"units: {units} (intact 1, single_deletion {BLOCKS}, span_deletion {2 * BLOCKS - 1}, proxies 1, "
            f"shares {2 * (BLOCKS + 1)}); 0 already written, {units} computed, 0 failed") in first.output
    again = runner.invoke(main, ["lesion", str(path), "--out", str(out)])
    assert again.exit_code == 0 and f"{units} already written, 0 computed" in again.output, again.output

    def sql(text: str) -> list[str]:
        answer = runner.invoke(main, ["query", str(out), text, "--format", "csv"])
        assert answer.exit_code == 0, answer.output
        return answer.output.splitlines()[1:]
    assert sql("select proxy, count(*), count(distinct unit_key), min(positions), max(examples) from proxies "
               "group by proxy order by proxy") == ["angular_distance,45,1,pooled,40", "block_influence,9,1,pooled,40",
                                                    "cosine,9,1,pooled,40", "relative_magnitude,9,1,pooled,40"]
    assert sql("select bool_and(abs(a.value + b.value - 1) < 1e-6) from proxies a join proxies b using (start) "
               "where a.proxy = 'cosine' and b.proxy = 'block_influence'") == ["True"]
    assert sql("select bool_and(value between 0 and 1) from proxies where proxy = 'angular_distance'") == ["True"]
    assert sql("select bool_and(value >= 0) from proxies where proxy = 'relative_magnitude'") == ["True"]
    shares = store.read_parts(out, "lesion").query("study == 'shares'")
    for _, chain in shares.sort_values("k").groupby("draw"):
        deleted = [set(d) for d in chain["deleted"]]
        assert deleted[0] == set() and deleted[-1] == set(range(BLOCKS))
        assert all(a < b and len(b - a) == 1 for a, b in zip(deleted, deleted[1:]))
    intact = store.read_parts(out, "lesion").query("study == 'intact'")["error"].iloc[0]
    assert shares[shares["k"] == 0]["error"].tolist() == pytest.approx([intact] * 2)   # the empty prefix: intact
    document = json.loads(runner.invoke(main, ["status", str(out), "--format", "json"]).output)
    assert {"study": "proxies", "units": 1, "done": 1, "failed": 0, "left": 0} in document["studies"]
    figures = runner.invoke(main, ["figures", str(out)])
    assert figures.exit_code == 0, figures.output
