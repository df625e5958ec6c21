"""lm-evaluation-harness tasks found, checked and loaded offline, before any model is.

Every dataset is read from local files: ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set before
``datasets`` or ``lm_eval`` is imported, and a task whose dataset would come from a hub is refused in one line
before anything loads, as are an unknown name, a ``generate_until`` task (out of scope) and a YAML of the user's
folder that does not parse (lm-eval's own index skips it silently, so the task would only be "unknown").

lm-eval's TaskManager indexes its few thousand bundled YAMLs when it is built (about 13 s on 2 CPU cores, measured
here); when every name is found in the user's ``include_path`` the bundled ones are never indexed.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from workloads.tasks.config import TaskConfig, TaskError

SCORED = ("loglikelihood", "multiple_choice", "loglikelihood_rolling")
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")   # datasets' builders that read data_files
ADVICE = "point it at local files (dataset_path: json with dataset_kwargs: {data_files: ...}, or a local folder)"


@dataclass(frozen=True)
class TaskSummary:
    name: str
    output_type: str
    documents: int    # documents scored (after limit)


def offline() -> None:
    """No dataset, tokenizer or model from a hub: set before ``datasets`` is imported, and in its config if it
    already was. lm-eval's logging is kept to warnings and above, and datasets' progress bars off."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
        sys.modules["datasets"].config.HF_DATASETS_OFFLINE = True
    for name in ("lm_eval", "datasets", "fsspec"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import datasets
    datasets.disable_progress_bars()


@contextlib.contextmanager
def quiet():
    """lm-eval's progress bars and prints (a bar per task per plan otherwise) kept off the console; its
    warnings still go through logging, and errors still raise."""
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        yield


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_include_path(include_path: str) -> None:
    """Every YAML under the folder parses (its ``!function`` tags left unresolved, as lm-eval indexes them)."""
    folder = Path(include_path)
    if not folder.is_dir():
        raise TaskError(f"include_path {include_path}: no such folder")
    from lm_eval.tasks._yaml_loader import load_yaml
    for path in sorted(folder.glob("**/*.yaml")):
        try:
            load_yaml(path, resolve_func=False, recursive=True)
        except Exception as e:  # noqa: BLE001 - yaml and lm-eval raise anything; the message names the file
            raise TaskError(f"task YAML {path} does not parse: {_first_line(e)}") from None


@functools.cache
def _manager(include_path: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=include_path, include_defaults=defaults)


def task_manager(config: TaskConfig):
    """lm-eval's TaskManager for these names: the user's folder alone when it holds every name, else with
    lm-eval's bundled tasks (one of each per process)."""
    offline()
    if config.include_path is not None:
        check_include_path(config.include_path)
        own = _manager(str(Path(config.include_path).resolve()), False)
        if all(name in own.task_index for name in config.names):
            return own
    return _manager(str(Path(config.include_path).resolve()) if config.include_path else None, True)


def _data_files(kwargs: dict) -> list[str]:
    files = (kwargs or {}).get("data_files")
    if files is None:
        return []
    if isinstance(files, dict):
        files = list(files.values())
    files = files if isinstance(files, list) else [files]
    return [str(f) for group in files for f in (group if isinstance(group, list) else [group])]


def _check_task_config(name: str, cfg: dict) -> str:
    """The task's output type, or TaskError when it generates text or reads its data from a hub."""
    output_type = cfg.get("output_type", "generate_until")
    if output_type not in SCORED:
        raise TaskError(f"task {name}: output_type {output_type} is out of scope here (scored: {', '.join(SCORED)})")
    if cfg.get("custom_dataset") is not None:
        return output_type
    path = cfg.get("dataset_path")
    if path in LOCAL_BUILDERS:
        files = _data_files(cfg.get("dataset_kwargs"))
        if not files:
            raise TaskError(f"task {name}: dataset_path {path} without dataset_kwargs.data_files; {ADVICE}")
        missing = [f for f in files if not glob.glob(f)]
        if missing:
            raise TaskError(f"task {name}: data file {missing[0]} not found (relative paths are read from "
                            f"{Path.cwd()})")
        return output_type
    if path is None:
        raise TaskError(f"task {name}: names no dataset_path (nor custom_dataset); {ADVICE}")
    if Path(path).is_dir():
        return output_type
    raise TaskError(f"task {name}: its dataset {path!r} would come from the Hugging Face hub; {ADVICE}")


def _leaf_configs(manager, name: str, seen: frozenset = frozenset()) -> list[tuple[str, dict]]:
    """(task name, config) of every task a task, group or tag name stands for."""
    from lm_eval.tasks._index import Kind
    entry = manager.task_index.get(name)
    if entry is None:
        raise TaskError(f"task {name}: unknown (not one of lm-eval's tasks, groups or tags, nor in include_path)")
    if name in seen:
        raise TaskError(f"task {name}: its group includes itself")
    if entry.kind == Kind.TAG:
        return [leaf for task in sorted(entry.tags) for leaf in _leaf_configs(manager, task, seen | {name})]
    if entry.kind == Kind.GROUP:
        leaves = []
        for child in entry.cfg.get("task", []):
            if isinstance(child, dict):
                leaves.append((str(child.get("task", name)), child))
            else:
                leaves += _leaf_configs(manager, child, seen | {name})
        return leaves
    return [(name, entry.cfg or {})]


def check_names(config: TaskConfig, manager) -> list[tuple[str, str]]:
    """(task, output type) of every task the names stand for, each refused in one line when it cannot be
    scored here."""
    return [(leaf, _check_task_config(leaf, cfg)) for name in config.names
            for leaf, cfg in _leaf_configs(manager, name)]


def load_tasks(config: TaskConfig) -> dict:
    """lm-eval's {task name: Task} for the config, with num_fewshot and the fewshot seed set as
    ``simple_evaluate`` sets them; nothing reaches a hub."""
    manager = task_manager(config)
    check_names(config, manager)
    try:
        with quiet():
            loaded = manager.load(list(config.names))
    except Exception as e:  # noqa: BLE001 - a task's own code raises anything; one line naming the tasks
        raise TaskError(f"task {', '.join(config.names)}: lm-eval could not load it: {_first_line(e)}") from None
    for task in loaded["tasks"].values():
        # as simple_evaluate: a task whose YAML sets 0 keeps it; no number anywhere means 0
        if config.num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=config.num_fewshot)
        elif config.num_fewshot is None and task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=config.fewshot_seed)
    return loaded["tasks"]


def documents(task, limit: int | None) -> int:
    """Documents lm-eval scores of a task under ``limit``."""
    return len(task.eval_docs) if limit is None else min(limit, len(task.eval_docs))


def check_tasks(config: TaskConfig) -> list[TaskSummary]:
    """Each task the config names, loaded from local files, with its output type and documents; TaskError (one
    line) for a task that cannot be scored here. No model is needed: the driver runs it before Ray starts."""
    tasks = load_tasks(config)
    return [TaskSummary(name, task.OUTPUT_TYPE, documents(task, config.limit)) for name, task in tasks.items()]
