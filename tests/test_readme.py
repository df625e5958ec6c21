"""The README, run (Ray's doc_code in spirit): documentation that runs cannot rot.

- ```python blocks run in order in one namespace;
- ```bash blocks: every `unravel` line runs through the real CLI (click's CliRunner);
- ```yaml blocks validate as specs, and so does every experiments/*.yaml;
- the `make demo` spec (experiments/digits.yaml) runs end to end, made tiny, and its results folder is the
  `results/digits` the README's Python and bash blocks read.

Where the README names big work or the reader's own data, SUBSTITUTIONS and PROVIDED make it tiny. Each
checks that what it replaces still occurs in the README, so the tables cannot drift from it silently.
"""
from __future__ import annotations

import ast
import copy
import io
import re
import shlex
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch
import yaml
from click.testing import CliRunner

from orchestrator import store
from orchestrator.cli import main
from orchestrator.experiment.spec import load_spec
from registry_cases import rule, single_thread

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

# README text -> its tiny replacement, in the Python and bash blocks ({results}: the demo's results folder)
SUBSTITUTIONS = [
    ("results/digits", "{results}"),                       # what `make demo` writes: the tiny demo's folder
    ("for seed in range(100)]", "for seed in range(2)]"),  # F5a / F5b: 100 draws per k
    ("for seed in range(10)])", "for seed in range(2)])"),  # F6b: 10 draws per path length
    ("layer_spans(infos, max_length=4)", "layer_spans(infos, max_length=1)"),  # spans: the single deletions again
    ("s3://YOUR-BUCKET/unravel/digits", "{s3_results}"),   # the demo's folder copied to the local S3 server
]
# names the README's Python leaves to the reader (their data, their checkpoint), made here
PROVIDED = ("path", "test_images", "test_labels", "batch_images", "batch_labels")

# bash lines that are not `unravel`: they need make's virtualenv, a cluster, or minutes of benchmarking or
# training (the second digits spec: its file is validated by test_experiment_specs_validate)
ALLOWED_SKIPS = ("make ", "ray ", ".venv/bin/python benchmarks/", ".venv/bin/unravel run experiments/")
# an ALL-CAPS word in a command is a placeholder of the synopsis; DIR and COMMAND are filled in below,
# a line with any other (SPEC.yaml, ADDR, "SQL") is a synopsis and is not run
PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b")

# the tiny demo: the digits spec's runs, modes and studies as they are; only sizes shrink
DEMO_ITERATIONS = 20
DEMO_DRAWS = 1
DEMO_TEST_EXAMPLES = 64
DEMO_GRADIENT_BATCH = 16


def fenced_blocks(language: str) -> list[str]:
    """The bodies of the README's ```<language> blocks, in order."""
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```[ \t]*$", README, re.M | re.S)
            if m.group(1) == language]


def substituted(text: str, results: Path, s3_results: str = "") -> str:
    for original, tiny in SUBSTITUTIONS:
        text = text.replace(original, tiny.format(results=results, s3_results=s3_results))
    return text


def test_substitutions_and_provided_names_still_match_the_readme():
    code = "\n".join(fenced_blocks("python") + fenced_blocks("bash"))
    for original, _ in SUBSTITUTIONS:
        assert original in code, f"SUBSTITUTIONS: {original!r} is no longer in the README's code blocks"
    python = "\n".join(fenced_blocks("python"))
    assigned = {n.id for n in ast.walk(ast.parse(python)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for name in PROVIDED:
        assert re.search(rf"\b{name}\b", python), f"PROVIDED: the README's Python no longer uses {name!r}"
        assert name not in assigned, f"PROVIDED: the README now defines {name!r} itself"


# -- the demo: `make demo`'s spec, tiny, through `unravel run` -------------------------------------------

def demo_spec_path() -> Path:
    """The spec `make demo` runs, read from the Makefile."""
    recipe = re.search(r"^demo:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    return ROOT / re.search(r"unravel run (\S+)", recipe).group(1)


def shrink(raw: dict) -> dict:
    """The spec with the same runs, modes and studies, and tiny sizes: iterations, draws and permutations, test
    examples, widths (each network's tiny rule, tests/registry_cases.py)."""
    spec = copy.deepcopy(raw)
    spec["training"]["iterations"] = DEMO_ITERATIONS
    for run in spec["training"]["runs"]:
        run.setdefault("overrides", {})["widths"] = list(rule(run["network"]).widths)
    studies = spec["studies"]
    for settings in studies.values():
        if isinstance(settings, dict) and "draws" in settings:
            settings["draws"] = DEMO_DRAWS
        if isinstance(settings, dict) and "permutations" in settings:
            settings["permutations"] = DEMO_DRAWS
    studies["test_examples"] = DEMO_TEST_EXAMPLES
    if "gradients" in studies:
        studies["gradients"]["batch_size"] = DEMO_GRADIENT_BATCH
    return spec


@pytest.fixture(scope="session")  # session: made once per xdist worker
def demo(ray_session, tmp_path_factory):
    """(results folder, the tiny spec, the CLI's output) of `unravel run` on the tiny demo spec."""
    raw = yaml.safe_load(demo_spec_path().read_text())
    tiny = shrink(raw)
    folder = tmp_path_factory.mktemp("readme")
    spec = folder / demo_spec_path().name
    spec.write_text(yaml.safe_dump(tiny))
    out = folder / "results" / raw["name"]
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, load_spec(spec), result.output


@pytest.mark.slow
def test_the_demo_spec_runs_end_to_end(demo):
    out, spec, output = demo
    original = load_spec(demo_spec_path())
    # the same experiment, smaller: every run, mode and study of the spec
    assert [(t.label, t.mode) for t in spec.runs] == [(t.label, t.mode) for t in original.runs]
    assert [s.study for s in spec.studies.studies] == [s.study for s in original.studies.studies]
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs["run_id"]) == sorted(t.run_id for t in spec.runs)
    assert (runs["epochs"] >= 1).all() and runs["test_error"].between(0, 1).all()
    lesion = pd.read_parquet(out / "lesion")
    own = {name: pd.read_parquet(out / name) for name in ("gradients", "proxies")}   # studies with their own table
    for study in spec.studies.studies:
        table = own.get(study.study, lesion)
        done = table[table["study"] == study.study]
        assert sorted(done["run_id"].astype(str).unique()) == sorted(study.runs), study.study
    assert not (out / "errors").exists()
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert list((out / "figures").glob("*.png")) and list((out / "figures").glob("*.pdf"))
    assert "0 failed" in output


@pytest.mark.slow
def test_the_demo_report_is_computed_from_its_tables(demo):
    """The report's numbers are the tables' numbers (the demo run's report, written by `unravel run`)."""
    out, _, output = demo
    assert "report:" in output
    text = (out / "report.md").read_text()
    runs = pd.read_parquet(out / "runs.parquet")
    lesion = pd.read_parquet(out / "lesion")
    intact = lesion[lesion["study"] == "intact"].set_index("run_id")["error"]
    for row in runs.itertuples():  # the intact network on the studies' test set, else training's last evaluation
        assert f"{100 * intact.get(row.run_id, row.test_error):.2f}%" in text
    singles = lesion[lesion["study"] == "single_deletion"]
    plain_median = singles[singles["run_id"].astype(str).str.startswith("plain")]["error"].median()
    assert f"median error {100 * plain_median:.1f}%" in text
    assert f"| single_deletion | {len(singles)} |" in text
    for key in ("F3", "F5a", "F5b", "F6", "F7", "training"):
        assert f"### {key}" in text
    # the README's words: one seed a side cannot decide F8, and every verdict says what its interval is over
    f8 = next(line for line in text.splitlines() if line.startswith("- F8 "))
    assert ": one seed: not resolved (interval: over the 54 blocks of one trained network a side" in f8, f8
    assert all("(interval: " in line for line in text.split("One line per claim:")[1].split("\n## ")[0].splitlines()
               if line.startswith("- ") and not line.endswith(": not run"))


# -- the README's Python ---------------------------------------------------------------------------------

def run_block(code: str, namespace: dict, name: str):
    """exec one block; returns the value of its last line when that is an expression (a DuckDB
    relation is lazy: fetched here, so its query really runs)."""
    tree = ast.parse(code, name)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, name, "exec"), namespace)  # noqa: S102 - the README's own code
    value = eval(compile(last, name, "eval"), namespace) if last is not None else None  # noqa: S307
    return value.df() if hasattr(value, "df") else value


def provided(tmp_path: Path) -> dict:
    import torchvision
    g = torch.Generator().manual_seed(0)
    checkpoint = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), checkpoint)  # as the README says to save one
    names = {"path": str(checkpoint),
             "test_images": torch.randn(16, 3, 8, 8, generator=g), "test_labels": torch.randint(0, 10, (16,), generator=g),
             "batch_images": torch.randn(4, 3, 8, 8, generator=g), "batch_labels": torch.randint(0, 10, (4,), generator=g)}
    assert set(names) == set(PROVIDED)
    return names


@pytest.mark.slow
def test_python_blocks_run_in_order(demo, tmp_path, bucket):
    out, spec, _ = demo
    namespace = provided(tmp_path)
    s3_results = bucket("unravel/digits")
    s3, prefix = pafs.FileSystem.from_uri(s3_results)
    pafs.copy_files(str(out), prefix, destination_filesystem=s3)  # the demo's folder, as if run with --out s3://...
    with single_thread():  # the surgery block's ResNet-110 on 8x8 images: tiny ops (registry_cases.single_thread)
        values = [run_block(substituted(code, out, s3_results), namespace, f"README python block {i}")
                  for i, code in enumerate(fenced_blocks("python"))]
    assert len(values) >= 4
    # results: the demo's tables, read the README's three ways
    assert sorted(namespace["runs"]["run_id"]) == sorted(t.run_id for t in spec.runs)
    assert {"study", "run_id", "k", "error"} <= set(namespace["lesion"].columns)
    by_k = next(v for v in values if isinstance(v, pd.DataFrame))  # the DuckDB query's rows
    assert list(by_k.columns[:2]) == ["run_id", "k"]
    random_deletion = spec.studies.study("random_deletion")
    assert len(by_k) == len(random_deletion.runs) * random_deletion.k_max
    # the networks, the torchvision import, the surgery
    assert namespace["model"].fc.out_features == 1000 and namespace["infos"][0].stage == 0
    assert len(namespace["results"]) == len(namespace["plans"]) == 54 + 20 * 2 + 27 * 2 + 54   # spans: one layer
    assert all(r.examples == 16 for r in namespace["results"])
    assert len(namespace["grads"]) == 54 * 2
    assert namespace["on_s3"].count_rows() == len(namespace["lesion"])
    assert len(namespace["gates"]) == 54 and all(g.examples == 16 and g.branch_weight == 1.0 for g in namespace["gates"])


# -- the README's bash -----------------------------------------------------------------------------------

def bash_commands(text: str) -> list[list[str]]:
    """The commands of a bash block: comments dropped, quoted strings and backslash continuations
    spanning lines joined, optional [arguments] of a synopsis dropped, 'a, b' split in two."""
    commands, pending = [], ""
    for line in text.splitlines():
        pending += line + "\n"
        try:
            words = shlex.split(pending.replace("\\\n", " "), comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if pending.rstrip().endswith("\\"):
            continue
        pending = ""
        if not words:
            continue
        line_text = shlex.join(words)
        line_text = re.sub(r"\s*'?\[[^\]]*\]'?", "", line_text)
        for part in re.split(r",\s+(?=unravel )", line_text):
            commands.append(shlex.split(part.rstrip(",")))
    assert not pending.strip(), f"unterminated command in a README bash block: {pending!r}"
    return commands


@pytest.mark.slow
def test_bash_blocks_unravel_lines_run_through_the_cli(demo):
    out, spec, _ = demo
    commands = [c for block in fenced_blocks("bash") for c in bash_commands(substituted(block, out))]
    ran, skipped = [], []
    fill = {"DIR": [str(out)], "COMMAND": sorted(main.commands)}
    for words in commands:
        if words[0] != "unravel":
            assert shlex.join(words).startswith(ALLOWED_SKIPS), f"a README command this test cannot run: {words}"
            skipped.append(words)
            continue
        holes = {h for w in words for h in PLACEHOLDER.findall(w)}
        if holes - set(fill):
            skipped.append(words)  # a synopsis line: SPEC.yaml, ADDR, "SQL" stand for the reader's own
            continue
        variants = [words[1:]]
        for hole in holes:
            variants = [[w.replace(hole, value) for w in v] for v in variants for value in fill[hole]]
        for args in variants:
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, (args, result.output)
            ran.append((args, result.output))
    run_args = [" ".join(a) for a, _ in ran]
    assert "--help" in run_args and all(f"{c} --help" in run_args for c in main.commands)
    assert f"status {out}" in run_args and f"figures {out}" in run_args
    # the synopsis compacts the demo's folder before the Results block queries it
    assert run_args.index(f"compact {out}") < max(i for i, (a, _) in enumerate(ran) if a[0] == "query")
    rows = sum(len(store.read_parts(out, table)) for table in store.PART_SCHEMAS)
    assert f" {rows:,} rows" in next(o for a, o in ran if a[0] == "compact")
    query = next(o for a, o in ran if a[0] == "query" and "--help" not in a)
    table = pd.read_csv(io.StringIO(query))
    assert list(table.columns) == ["run_id", "k", "error"]
    random_deletion = spec.studies.study("random_deletion")
    assert len(table) == len(random_deletion.runs) * random_deletion.k_max and table["error"].between(0, 1).all()
    status = pd.read_csv(io.StringIO(next(o for a, o in ran if a[0] == "status" and "--help" not in a)), sep=r"\s+")
    assert set(status["study"]) == {"intact"} | {s.study for s in spec.studies.studies}
    assert (status["done"] == status["units"]).all() and not status[["failed", "left"]].any().any()
    assert {w[0] for w in skipped} == {"make", "ray", ".venv/bin/python", ".venv/bin/unravel", "unravel"}


# -- YAML: the README's and experiments/ -----------------------------------------------------------------

def test_yaml_blocks_are_valid_specs(tmp_path, shipped_cwd):
    blocks = fenced_blocks("yaml")
    assert len(blocks) >= 2
    for i, text in enumerate(blocks):
        raw = yaml.safe_load(text)
        assert isinstance(raw, dict) and {"name", "training", "models", "studies"} & set(raw), text
        path = tmp_path / f"block{i}.yaml"
        path.write_text(text if "name" in raw else f"name: readme-block-{i}\n{text}")  # a fragment: named here
        spec = load_spec(path)  # types and bounds; files are checked only when a command runs
        assert spec.runs


README_TASK_DOCUMENTS = "/data/tasks/tiny_choice.jsonl"   # where the README's task reads its documents


def test_the_readme_task_is_read_by_lm_eval_offline(tmp_path):
    from workloads.tasks import TaskConfig, TaskSummary, check_tasks
    (task,) = [b for b in fenced_blocks("text") if b.startswith("task: tiny_choice")]
    (documents,) = [b for b in fenced_blocks("text") if b.startswith('{"question"')]
    assert README_TASK_DOCUMENTS in task
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "tiny_choice.jsonl").write_text(documents)
    (folder / "tiny_choice.yaml").write_text(task.replace(README_TASK_DOCUMENTS, str(folder / "tiny_choice.jsonl")))
    assert check_tasks(TaskConfig(names=("tiny_choice",), include_path=str(folder))) == [
        TaskSummary("tiny_choice", "multiple_choice", 3)]


def test_files_the_readme_names_exist():
    named = set(re.findall(r"`([\w.-]+\.yaml)`", README))
    assert "digits.yaml" in named
    for name in named:  # the cluster config at the top, specs in experiments/
        assert (ROOT / name).exists() or (ROOT / "experiments" / name).exists(), name


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_experiment_specs_validate(path, shipped_cwd):
    assert load_spec(path).runs
