"""A results folder is read alone: OUT/spec.json records the resolved experiment (every trial with its network
config, every study's runs, the data's paths, each network's blocks), so `unravel status`, `figures`, `prune`,
`compact` and `query` work with the spec's YAML, its data and its model folders moved away, as on a laptop the
results were copied to. A folder written by the previous version (tests/fixtures/old-digits, its spec.json
holding the document alone) is still read, rerun (nothing computed) and extended exactly once."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from language_cases import save_gpt2, save_word_tokenizer, write_corpus
from orchestrator import store
from orchestrator.cli import main
from orchestrator.experiment.spec import load_spec
from orchestrator.experiment.units import unit_groups
from orchestrator.store.recorded import recorded_experiment

FIXTURES = Path(__file__).parent / "fixtures"
OLD = FIXTURES / "old-digits"                  # written by `unravel run old-digits.yaml` at commit f470018
OLD_SPEC = FIXTURES / "old-digits.yaml"
OLD_UNITS = 14                                 # intact 1, single_deletion 9, random_deletion 4


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _units_done(out: Path) -> dict:
    status = _invoke("status", out, "--format", "json")
    assert status.exit_code == 0, status.output
    return json.loads(status.output)["units"]


def _read_alone(out: Path) -> None:
    """Every command that reads OUT, on an OUT whose spec, data and model folders are gone."""
    units = _units_done(out)
    assert units["units"] == units["done"] > 0 and units["left"] == 0
    table = _invoke("status", out, "--by-run")
    assert table.exit_code == 0 and "single_deletion" in table.output, table.output
    figures = _invoke("figures", out)
    assert figures.exit_code == 0, figures.output
    assert (out / "report.md").read_text().strip() and any((out / "figures").glob("*.png"))
    count = _invoke("query", out, "select count(*) as n from lesion", "--format", "json")
    assert count.exit_code == 0 and json.loads(count.output) == [{"n": units["done"]}], count.output
    pruned = _invoke("prune", out)
    assert pruned.exit_code == 0 and "nothing to remove" in pruned.output, pruned.output
    compacted = _invoke("compact", out)
    assert compacted.exit_code == 0, compacted.output
    assert _units_done(out) == units                       # compacted, every unit still done, once
    assert len(pd.read_parquet(out / "lesion")) == units["done"]


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_the_record_gives_back_the_experiment_and_what_its_unit_keys_are_made_of(path, shipped_cwd, tmp_path):
    spec = load_spec(path)
    store.save_spec(tmp_path, spec)
    back = recorded_experiment(tmp_path)
    assert back == spec and back.blocks == spec.blocks
    assert unit_groups(back) == unit_groups(spec)       # what every unit key is made of (veit2016's 881,390 units)


@pytest.mark.parametrize("change, message", [
    (lambda doc: doc["experiment"].update(version=99), "record version 99"),
    (lambda doc: doc["experiment"].pop("studies"), "the recorded experiment is damaged"),
])
def test_a_record_this_version_cannot_read_is_one_line(old_out, change, message):
    store.save_spec(old_out, load_spec(OLD_SPEC))
    doc = json.loads((old_out / "spec.json").read_text())
    change(doc)
    (old_out / "spec.json").write_text(json.dumps(doc))
    for command in ("status", "figures", "prune"):
        result = _invoke(command, old_out)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


# -- a language model: its folder, tokenizer and corpus moved away ------------------------------------

@pytest.fixture(scope="module")
def language_out(ray_session, tmp_path_factory):
    """A GPT-2 studied through `unravel run`, then the folder holding its model, tokenizer, corpus and spec
    renamed: OUT alone is left."""
    root = tmp_path_factory.mktemp("language")
    user = root / "user"
    user.mkdir()
    spec = {"name": "gpt2", "data": {"dataset": "text", "root": str(write_corpus(user / "corpus.txt", 12 * 9 + 3)),
                                     "sequence_length": 8},
            "models": [{"network": "hf_causal_lm", "label": "gpt2", "checkpoint": str(save_gpt2(user / "model"))}],
            "studies": {"single_deletion": {}, "span_deletion": {"max_length": 2}, "evaluators": {"count": 1, "cpu": 1},
                        "plans_per_batch": 8}}
    save_word_tokenizer(user / "model")        # the model's own tokenizer, in its folder
    (user / "gpt2.yaml").write_text(yaml.safe_dump(spec))
    out = root / "out"
    ran = _invoke("run", user / "gpt2.yaml", "--out", out)
    assert ran.exit_code == 0, ran.output
    user.rename(root / "moved")
    return out


@pytest.mark.slow
def test_a_language_model_experiment_is_read_without_its_folders(language_out):
    recorded = json.loads((language_out / "spec.json").read_text())["experiment"]
    assert recorded["data"]["tokenizers"] and not Path(recorded["models"][0]["checkpoint"]).exists()
    _read_alone(language_out)


# -- the digits demo, written by the previous version -------------------------------------------------

@pytest.fixture
def old_out(tmp_path):
    """A copy of the folder the previous version wrote (its spec.json: the document alone)."""
    out = tmp_path / "old-digits"
    shutil.copytree(OLD, out)
    assert "experiment" not in json.loads((out / "spec.json").read_text())
    return out


def test_a_folder_of_the_previous_version_is_read(old_out):
    assert _units_done(old_out) == {"units": OLD_UNITS, "done": OLD_UNITS, "failed": 0, "left": 0}
    divergence = ["kl_from_intact", "agreement_with_intact", "entropy"]  # lesion version 4: its parts are 3
    assert store.read_parts(old_out, "lesion")[divergence].isna().all().all()
    nulls = _invoke("query", old_out, "select count(*) as n from lesion where kl_from_intact is null "
                    "and agreement_with_intact is null and entropy is null", "--format", "json")
    assert nulls.exit_code == 0 and json.loads(nulls.output) == [{"n": OLD_UNITS}], nulls.output
    figures = _invoke("figures", old_out)
    assert figures.exit_code == 0, figures.output
    assert "single" in (old_out / "report.md").read_text().lower()


@pytest.fixture(scope="module")
def rerun_old(ray_session, tmp_path_factory):
    """The previous version's folder rerun with its spec: (OUT, the rerun's output); its spec then deleted."""
    root = tmp_path_factory.mktemp("rerun")
    out, spec = root / "old-digits", root / "old-digits.yaml"
    shutil.copytree(OLD, out)
    shutil.copy(OLD_SPEC, spec)
    again = _invoke("run", spec, "--out", out)
    assert again.exit_code == 0, again.output
    spec.unlink()
    return out, again.output


@pytest.mark.slow
def test_a_rerun_of_the_previous_version_computes_nothing_and_records_the_experiment(rerun_old):
    out, output = rerun_old
    assert f"{OLD_UNITS} already written, 0 computed" in output
    assert not (out / "tune" / "old-digits" / "attempt-2").exists()     # its trial finished: nothing trained
    recorded = json.loads((out / "spec.json").read_text())
    assert recorded["experiment"]["studies"]["studies"][0]["runs"] == [pd.read_parquet(out / "runs.parquet")
                                                                       ["run_id"].iloc[0]]


@pytest.mark.slow
def test_the_digits_demo_is_read_without_its_spec(rerun_old, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(rerun_old[0], out)
    _read_alone(out)


@pytest.mark.slow
def test_a_folder_of_the_previous_version_is_extended_exactly_once(old_out):
    spec = yaml.safe_load(OLD_SPEC.read_text())
    spec["studies"]["reorder"] = {"k_max": 1, "draws": 2}
    path = old_out.parent / "extended.yaml"
    path.write_text(yaml.safe_dump(spec))
    before = pd.read_parquet(old_out / "lesion")
    extended = _invoke("lesion", path, "--out", old_out)
    assert extended.exit_code == 0, extended.output
    assert f"{OLD_UNITS} already written, 2 computed" in extended.output
    after = pd.read_parquet(old_out / "lesion")
    assert after["unit_key"].is_unique and len(after) == len(before) + 2
    assert set(after["unit_key"]) - set(before["unit_key"]) == set(after[after["study"] == "reorder"]["unit_key"])
    assert _units_done(old_out) == {"units": OLD_UNITS + 2, "done": OLD_UNITS + 2, "failed": 0, "left": 0}
