"""The output folder of an experiment, OUT: every file in it is named, shaped and written here, and every
command that writes it holds it through one session.

OUT is one kind of object wherever it lives: a ``location.Location`` (``where``), a local folder or a place on
object storage; object storage differs only where it must (each file is one PUT, the lock is a lease, and
compaction declares what a compacted file absorbs instead of renaming folders). The modules, bottom up:

- ``schemas``: the tables' Arrow schemas and their versions; ``rows``: the one constructor of each table's rows;
- ``layout``: every file name of OUT (tables, partitions, spec, imported checkpoints, Tune, report, figures);
- ``files``: one file read or written whole, and an unreadable file named, never read as data;
- ``listing``: the files of a partitioned table, the one listing every reader and writer goes through;
- ``tables``: tables read and written, the resume index, prune; ``spec_file``: spec.json;
- ``compaction``: `unravel compact`; ``lock``: one writer at a time; ``session``: a command's hold on OUT;
- ``current`` (which rows the spec asks for) and ``query`` (DuckDB views) read through the above.

``from orchestrator import store`` gives the names below: the store's public surface.
"""
from orchestrator.store.files import CorruptResult, read_metadata, read_parquet, write_file
from orchestrator.store.layout import (DATA_RECORD, FIGURES, LOCK_FILE, SPEC_FILE, NotAnExperiment, data_record_path,
                                       experiment_folder, figures_folder, imported_checkpoint, imported_source, located,
                                       part_path, relative, report_paths, table_folder, table_path, tune_dir, where)
from orchestrator.store.listing import data_files, dataset
from orchestrator.store.lock import OutputBusy, writer_lock
from orchestrator.store.rows import (epoch_rows, error_row, gate_row, gradient_row, lesion_row, proxy_rows, run_row,
                                     task_rows, task_sample_rows)
from orchestrator.store.schemas import (ADDED_COLUMNS, PART_SCHEMAS, RESUME_TABLES, SCHEMAS, STUDY_TABLES, TABLES,
                                        read_schema)
from orchestrator.store.session import Identity, NoSpace, OtherExperiment, UnusableOutput, open_session
from orchestrator.store.spec_file import read_spec, read_spec_file, save_spec
from orchestrator.store.tables import (done_keys, has_results, prune, read_parts, read_table, replace_rows,
                                       replace_runs, write_errors, write_part, write_table)
