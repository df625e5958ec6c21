"""The shape of every table of an experiment: explicit, versioned Arrow schemas, and the columns a table
gained since its first version (read as a stated value in files written before them)."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = "1"
# tables whose schema grew since version 1: lesion 2 added test_rule (how an effective-paths run was evaluated),
# lesion 3 metric and perplexity (language models: error and loss are next-token error and loss), lesion 4
# kl_from_intact, agreement_with_intact and entropy (language models against the intact model; null for images,
# and in parts written before, which no ADDED_COLUMNS value stands for: they were never measured)
TABLE_VERSIONS = {"lesion": "4"}
# the value a column added later reads as in parts written before it existed (null when not named here)
ADDED_COLUMNS: dict[str, dict[str, object]] = {
    "lesion": {"test_rule": "", "metric": "classification", "perplexity": float("nan")}}

SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema([
        ("run_id", pa.string()), ("label", pa.string()), ("network", pa.string()), ("variant", pa.string()),
        ("mode", pa.string()), ("seed", pa.int64()), ("dataset", pa.string()), ("iterations", pa.int64()),
        ("epochs", pa.int64()), ("test_error", pa.float64()), ("test_loss", pa.float64()),
        ("num_blocks", pa.int64()), ("parameters", pa.int64()), ("checkpoint", pa.string()),
        ("train_seconds", pa.float64()), ("net_config", pa.string()), ("train_config", pa.string()),
    ]),
    "epochs": pa.schema([
        ("run_id", pa.string()), ("epoch", pa.int64()), ("iteration", pa.int64()), ("train_loss", pa.float64()),
        ("train_error", pa.float64()), ("test_error", pa.float64()), ("test_loss", pa.float64()),
        ("lr", pa.float64()), ("images_per_s", pa.float64()), ("seconds", pa.float64()),
    ]),
    "training_errors": pa.schema([
        ("run_id", pa.string()), ("error", pa.string()),
    ]),
}


# Study results: one file per finished batch, hive-partitioned by study and run (layout.part_path), merged by
# compaction into compact-*.parquet; study and run_id live in the folder names, not in the files.
PART_SCHEMAS: dict[str, pa.Schema] = {
    "lesion": pa.schema([
        ("unit_key", pa.string()), ("k", pa.int64()), ("draw", pa.int64()), ("deleted", pa.list_(pa.int64())),
        ("order", pa.list_(pa.int64())), ("kendall_tau", pa.float64()), ("active_blocks", pa.int64()),
        ("error", pa.float64()), ("loss", pa.float64()), ("examples", pa.int64()), ("precision", pa.string()),
        ("bn_recalibrated", pa.bool_()), ("seconds", pa.float64()), ("test_rule", pa.string()),
        ("metric", pa.string()), ("perplexity", pa.float64()),
        # next_token only: means over the scored positions of KL(intact || plan) in nats, of the plan's argmax
        # equal to the intact model's, and of the entropy of the plan's next-token distribution in nats
        ("kl_from_intact", pa.float64()), ("agreement_with_intact", pa.float64()), ("entropy", pa.float64()),
    ]),
    "gradients": pa.schema([
        ("unit_key", pa.string()), ("k", pa.int64()), ("draw", pa.int64()), ("chosen", pa.list_(pa.int64())),
        ("log10_norm", pa.float64()), ("batch_size", pa.int64()), ("seconds", pa.float64()),
    ]),
    "gates": pa.schema([  # H: one row per gated block of a run (every row of a run shares its unit_key)
        ("unit_key", pa.string()), ("block", pa.int64()), ("stage", pa.int64()), ("changes_shape", pa.bool_()),
        ("gate_mean", pa.float64()), ("gate_std", pa.float64()), ("gate_p10", pa.float64()),
        ("gate_p90", pa.float64()), ("branch_weight", pa.float64()), ("shortcut_weight", pa.float64()),
        ("examples", pa.int64()), ("seconds", pa.float64()),
    ]),
    # lm-evaluation-harness scores: one row per (plan unit, task, metric, filter); the plan as the lesion table has it
    "tasks": pa.schema([
        ("unit_key", pa.string()), ("plan", pa.string()), ("k", pa.int64()), ("draw", pa.int64()),
        ("deleted", pa.list_(pa.int64())), ("order", pa.list_(pa.int64())), ("active_blocks", pa.int64()),
        ("task", pa.string()), ("metric", pa.string()), ("filter", pa.string()), ("value", pa.float64()),
        ("stderr", pa.float64()), ("documents", pa.int64()), ("num_fewshot", pa.int64()), ("precision", pa.string()),
        ("seconds", pa.float64()), ("test_rule", pa.string()),
    ]),
    # one row per (plan unit, task, document), for paired comparisons of plans; written before the unit's tasks rows
    "task_samples": pa.schema([
        ("unit_key", pa.string()), ("plan", pa.string()), ("k", pa.int64()), ("draw", pa.int64()),
        ("deleted", pa.list_(pa.int64())), ("task", pa.string()), ("doc_id", pa.int64()), ("correct", pa.bool_()),
        ("gold_loglikelihood", pa.float64()),
    ]),
    # one-forward importance scores of one run, one unit (its intact pass) of many rows: per residual unit (start the
    # unit, length 1) block_influence, relative_magnitude and cosine; per span of layers (start its first layer,
    # length its layers) angular_distance; positions: last | all (text), pooled (images)
    "proxies": pa.schema([
        ("unit_key", pa.string()), ("proxy", pa.string()), ("start", pa.int64()), ("length", pa.int64()),
        ("positions", pa.string()), ("value", pa.float64()), ("examples", pa.int64()), ("seconds", pa.float64()),
    ]),
    "errors": pa.schema([
        ("unit_key", pa.string()), ("run_id", pa.string()), ("study", pa.string()), ("k", pa.int64()),
        ("draw", pa.int64()), ("error", pa.string()), ("traceback", pa.string()), ("time", pa.float64()),
    ]),
}


# every table an experiment can have, as `unravel query` names its views
TABLES = (*SCHEMAS, *PART_SCHEMAS)
# the tables of study results, partitioned by study and run
STUDY_TABLES = tuple(t for t in PART_SCHEMAS if t != "errors")
# those whose unit keys are the resume index: a tasks unit is written once its tasks rows are (its task_samples
# part, written first, is the first half of its batch)
RESUME_TABLES = tuple(t for t in STUDY_TABLES if t != "task_samples")

_HIVE = pa.schema([("study", pa.string()), ("run_id", pa.string())])


def read_schema(table: str) -> pa.Schema:
    """A partitioned table's columns as read: its files' columns, then study and run_id from the folders."""
    return PART_SCHEMAS[table] if table == "errors" else pa.unify_schemas([PART_SCHEMAS[table], _HIVE])


def part_schema(table: str) -> pa.Schema:
    """A partitioned table's schema as written, its name and version in the footer."""
    version = TABLE_VERSIONS.get(table, SCHEMA_VERSION)
    return PART_SCHEMAS[table].with_metadata({"unravel.table": table, "unravel.schema_version": version})


def checked(schema: pa.Schema, rows: list[dict]) -> list[dict]:
    """``rows``, refused if one has a key its table lacks or lacks one it has (a bug, not a dropped column)."""
    for r in rows:
        if r.keys() != set(schema.names):
            extra, missing = sorted(r.keys() - set(schema.names)), sorted(set(schema.names) - r.keys())
            raise ValueError(f"a row that does not fit its table: extra {extra}, missing {missing}")
    return rows


def table_arrow(name: str, rows: list[dict] | pd.DataFrame) -> pa.Table:
    """A whole table's rows as Arrow data in its schema, its name and version in the footer."""
    schema = SCHEMAS[name].with_metadata({"unravel.table": name, "unravel.schema_version": SCHEMA_VERSION})
    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
    return pa.Table.from_pylist(checked(schema, rows), schema=schema)


def with_added_columns(table: str, data: pa.Table) -> pa.Table:
    """Rows of files written before a column existed read it as ADDED_COLUMNS says, not as null."""
    for name, value in ADDED_COLUMNS.get(table, {}).items():
        if name in data.column_names:
            data = data.set_column(data.column_names.index(name), name, pc.fill_null(data[name], value))
    return data


def part_arrow(table: str, rows: list[dict]) -> pa.Table:
    """A partitioned table's rows (one batch, or one failed attempt) as Arrow data in its schema."""
    schema = part_schema(table)
    return pa.Table.from_pylist(checked(schema, rows), schema=schema)
