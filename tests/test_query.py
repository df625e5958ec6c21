"""`unravel query OUT SQL`: every table a view (empty ones too), any OUT path, one-line errors for any
input, lists printed as lists, and SQL that sees OUT's tables and nothing else unless --allow-external."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from orchestrator import store
from orchestrator.cli import main

RUN = "res.normal.s0.x"


def _run_row(run_id: str) -> dict:
    return {"run_id": run_id, "label": "res", "network": "resnet20", "variant": "{}", "mode": "normal", "seed": 0,
            "dataset": "digits", "iterations": 10, "epochs": 1, "test_error": 0.01, "test_loss": 0.1,
            "num_blocks": 9, "parameters": 1, "checkpoint": "-", "train_seconds": 1.0, "net_config": "{}",
            "train_config": "{}"}


def _lesion(k: int, draw: int, deleted: list[int]) -> dict:
    return {"unit_key": f"{k}-{draw}", "k": k, "draw": draw, "deleted": deleted,
            "order": [b for b in range(9) if b not in deleted], "kendall_tau": 1.0, "active_blocks": 9 - len(deleted),
            "error": 0.1 * k, "loss": 1.0, "examples": 100, "precision": "fp32", "bn_recalibrated": False,
            "seconds": 0.01, "test_rule": "", "metric": "classification", "perplexity": float("nan"),
            "kl_from_intact": None, "agreement_with_intact": None, "entropy": None}


def clean_run(out):
    """A clean run's OUT: runs, epochs and lesion rows; no gradients, no errors, no training errors."""
    store.write_table(out, "runs", [_run_row(RUN)])
    store.write_table(out, "epochs", [{"run_id": RUN, "epoch": 1, "iteration": 10, "train_loss": 1.0,
                                       "train_error": 0.5, "test_error": 0.2, "test_loss": 1.0, "lr": 0.1,
                                       "images_per_s": 100.0, "seconds": 1.0}])
    store.write_part(out, "lesion", "single_deletion", RUN, "a", [_lesion(1, b, [b]) for b in range(9)])
    store.write_part(out, "lesion", "random_deletion", RUN, "b", [_lesion(2, 0, [1, 4]), _lesion(2, 1, [0, 8])])
    return out


def query(out, sql: str, *options: str):
    return CliRunner().invoke(main, ["query", str(out), sql, *options])


def one_line_error(result) -> str:
    """The refusal of bad input: exit 2, one line `Error: ...`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("name", ["run[1]", "it's [a-z]*?", "{a,b} \"q\" $HOME %s"])
def test_any_out_path_is_read_as_it_is(tmp_path, name):
    out = clean_run(tmp_path / name)
    store.write_errors(out, "e", [{"unit_key": "u", "run_id": RUN, "study": "reorder", "k": 1, "draw": 0,
                                   "error": "boom", "traceback": "", "time": 0.0}])
    for sql, expected in [("select count(*) as n from lesion", 11), ("select count(*) as n from runs", 1),
                          ("select count(*) as n from epochs", 1), ("select count(*) as n from errors", 1),
                          ("select count(distinct study) as n from lesion where run_id = 'res.normal.s0.x'", 2)]:
        result = query(out, sql, "--format", "json")
        assert result.exit_code == 0, (sql, result.output, result.exception)
        assert json.loads(result.output) == [{"n": expected}], sql


@pytest.mark.parametrize("sql", ["", "   \n\t", "\n-- only a comment", "/* a comment */ ;", ";"])
def test_no_statement_is_one_line_error(tmp_path, sql):
    assert "no SQL statement" in one_line_error(query(clean_run(tmp_path), sql))


@pytest.mark.parametrize("sql", ["select nope from runs", "selec 1", "select * from no_such_table",
                                 "select 1/0::int from runs where 'a'::int = 1", "select '\udcff'",
                                 "select 1; select nope", "select * from lesion where deleted = 'x'"])
def test_bad_sql_is_one_line_error(tmp_path, sql):
    assert one_line_error(query(clean_run(tmp_path), sql))


def test_out_without_tables_is_one_line_error(tmp_path):
    assert "no unravel tables" in one_line_error(query(tmp_path, "select 1"))


def test_every_table_is_a_view_with_its_schema_even_when_empty(tmp_path):
    out = clean_run(tmp_path)
    views = json.loads(query(out, "select table_name, table_type from information_schema.tables",
                             "--format", "json").output)
    assert {v["table_name"]: v["table_type"] for v in views} == {t: "VIEW" for t in store.TABLES}
    counts = query(out, "select (select count(*) from errors) as errors, (select count(*) from gradients) as "
                        "gradients, (select count(*) from training_errors) as training_errors", "--format", "json")
    assert json.loads(counts.output) == [{"errors": 0, "gradients": 0, "training_errors": 0}]
    for table in store.TABLES:
        schema = store.SCHEMAS.get(table) or store.PART_SCHEMAS[table]
        expected = [*schema.names] + (["study", "run_id"] if table in store.STUDY_TABLES else [])
        described = json.loads(query(out, f"select column_name, column_type from (describe {table})",
                                     "--format", "json").output)
        assert [d["column_name"] for d in described] == expected, table
        types = {d["column_name"]: d["column_type"] for d in described}
        if table == "gradients":  # empty here, and still typed as when it has rows
            assert types["chosen"] == "BIGINT[]" and types["study"] == "VARCHAR" and types["k"] == "BIGINT"
    store.write_part(out, "gradients", "gradients", RUN, "g", [{"unit_key": "g", "k": 1, "draw": 0, "chosen": [3],
                                                                "log10_norm": -1.0, "batch_size": 8, "seconds": 0.1}])
    full = json.loads(query(out, "select * from gradients", "--format", "json").output)
    assert full == [{"unit_key": "g", "k": 1, "draw": 0, "chosen": [3], "log10_norm": -1.0, "batch_size": 8,
                     "seconds": 0.1, "study": "gradients", "run_id": RUN}]


def test_list_columns_print_as_lists(tmp_path):
    out = clean_run(tmp_path)
    sql = "select draw, deleted from lesion where study = 'random_deletion' order by draw"
    csv = query(out, sql, "--format", "csv")
    assert csv.exit_code == 0, csv.output
    assert csv.output.splitlines() == ["draw,deleted", '0,"[1, 4]"', '1,"[0, 8]"']
    table = query(out, sql)
    assert "[1, 4]" in table.output and "[0, 8]" in table.output and "array" not in table.output
    js = query(out, sql, "--format", "json")
    assert json.loads(js.output) == [{"draw": 0, "deleted": [1, 4]}, {"draw": 1, "deleted": [0, 8]}]
    order = query(out, "select \"order\" from lesion where study = 'random_deletion' and draw = 0", "--format", "csv")
    assert order.output.splitlines()[1] == '"[0, 2, 3, 5, 6, 7, 8]"'
    nested = query(out, "select [1, null] as a, [[1, 2], [3]] as b, {'x': [1]} as c", "--format", "json")
    assert json.loads(nested.output) == [{"a": [1, None], "b": [[1, 2], [3]], "c": {"x": [1]}}]
    nested_csv = query(out, "select [1, null] as a, [[1, 2], [3]] as b", "--format", "csv")
    assert nested_csv.output.splitlines()[1] == '"[1, null]","[[1, 2], [3]]"'


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A clean run's OUT, and a home where DuckDB would install extensions (so nothing escapes the test)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return clean_run(tmp_path / "out"), home


def test_the_sql_reads_no_other_file(sandbox, tmp_path):
    out, _ = sandbox
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "other.parquet")
    for sql in ["select * from read_csv('/etc/passwd', sep = ':')", "select * from read_text('/etc/passwd')",
                f"select * from read_parquet('{tmp_path / 'other.parquet'}')", f"select * from '{tmp_path / 'other.parquet'}'",
                f"select * from read_parquet('{out / 'runs.parquet'}')", "select * from glob('/etc/*')"]:
        assert "--allow-external" in one_line_error(query(out, sql)), sql


def test_the_sql_writes_nothing(sandbox, tmp_path):
    out, home = sandbox
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for sql in [f"copy (select * from runs) to '{tmp_path / 'copy.csv'}'",
                f"copy runs to '{out / 'copy.parquet'}' (format parquet)",
                f"attach '{tmp_path / 'attached.duckdb'}' as other",
                f"export database '{tmp_path / 'exported'}'",
                "install httpfs", "load httpfs", "install json", "force install parquet",
                "set enable_external_access = true", "reset enable_external_access",
                "set lock_configuration = false", f"set allowed_directories = ['{tmp_path}']",
                "set autoinstall_known_extensions = true"]:
        one_line_error(query(out, sql))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not list(home.iterdir())


def test_allow_external_joins_other_files(sandbox, tmp_path):
    out, _ = sandbox
    other = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"run_id": [RUN], "note": ["baseline"]}), other)
    sql = f"select r.run_id, n.note from runs r join read_parquet('{other}') n using (run_id)"
    assert "--allow-external" in one_line_error(query(out, sql))
    result = query(out, sql, "--allow-external", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"run_id": RUN, "note": "baseline"}]


def test_help_documents_the_sandbox():
    result = CliRunner().invoke(main, ["query", "--help"])
    assert result.exit_code == 0 and "--allow-external" in result.output
    assert "only OUT's tables" in " ".join(result.output.split())
