"""A Hugging Face folder that asks to run its own Python code (an ``auto_map`` in tokenizer_config.json or
config.json naming a class of a .py file beside it, what ``trust_remote_code`` would import) is refused in one
line before Ray starts, wherever the folder is named (data.tokenizer, a model's folder, the model's folder as
its default tokenizer), and again where an evaluator loads it. The folder's code would write a marker file on
import; the CLI is fed "y" on stdin, the answer transformers' own prompt would take: the marker never appears,
the prompt never shows, OUT is never made."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from language_cases import save_gpt2, save_word_tokenizer, write_corpus
from orchestrator.cli import main
from orchestrator.experiment.spec import SpecError, parse_spec
from workloads.data import load_dataset
from workloads.data.text import TextDataError, load_tokenizer
from workloads.models import CheckpointError
from workloads.models.adapters.hf_loading import load_causal_lm, model_from_config, read_config

HERE = Path(__file__).parent


def _marker_code(folder: Path, marker: Path) -> None:
    """marker_code.py: writes ``marker`` when imported, and holds the classes the auto_maps name."""
    (folder / "marker_code.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('the folder ran its own code')\n"
        "from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast\n"
        "class MarkerTokenizer(PreTrainedTokenizerFast):\n    pass\n"
        "class MarkerConfig(GPT2Config):\n    pass\n"
        "class MarkerModel(GPT2LMHeadModel):\n    config_class = MarkerConfig\n")


def _edit(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def gpt2(folder: Path) -> Path:
    """A tiny GPT-2 whose special tokens are in its vocabulary (transformers warns otherwise)."""
    save_gpt2(folder)
    _edit(folder / "config.json", bos_token_id=1, eos_token_id=1)
    return folder


def custom_tokenizer(folder: Path, marker: Path) -> Path:
    """A word-level tokenizer whose tokenizer_config.json asks for a class of its own code."""
    save_word_tokenizer(folder)
    _marker_code(folder, marker)
    _edit(folder / "tokenizer_config.json", tokenizer_class="MarkerTokenizer",
          auto_map={"AutoTokenizer": [None, "marker_code.MarkerTokenizer"]})
    return folder


def custom_model(folder: Path, marker: Path) -> Path:
    """A GPT-2 folder whose config.json asks for classes of its own code."""
    gpt2(folder)
    _marker_code(folder, marker)
    _edit(folder / "config.json", auto_map={"AutoConfig": "marker_code.MarkerConfig",
                                            "AutoModelForCausalLM": "marker_code.MarkerModel"})
    return folder


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """(model folder, tokenizer folder, corpus) that load."""
    root = tmp_path_factory.mktemp("clean")
    return gpt2(root / "model"), save_word_tokenizer(root / "tokenizer"), write_corpus(root / "corpus.txt", 120)


def _spec(model: Path, tokenizer: Path | None, corpus: Path) -> dict:
    data = {"dataset": "text", "root": str(corpus), "sequence_length": 8,
            **({"tokenizer": str(tokenizer)} if tokenizer else {})}
    return {"name": "custom-code", "data": data,
            "models": [{"network": "hf_causal_lm", "label": "gpt2", "checkpoint": str(model)}],
            "studies": {"single_deletion": {}, "evaluators": {"count": 1, "cpu": 1}}}


def _folders(case: str, tmp_path: Path, clean, marker: Path) -> tuple[dict, Path, str]:
    """(spec, the folder with code, the file with the auto_map, the field the error names) of each case."""
    model, tokenizer, corpus = clean
    if case == "data.tokenizer":
        folder = custom_tokenizer(tmp_path / "tokenizer", marker)
        return _spec(model, folder, corpus), folder / "tokenizer_config.json", "data.tokenizer: "
    if case == "model config.json":
        folder = custom_model(tmp_path / "model", marker)
        return _spec(folder, tokenizer, corpus), folder / "config.json", "models[0].checkpoint: "
    folder = gpt2(tmp_path / "model")   # the model's folder holds the tokenizer, the default one
    custom_tokenizer(folder, marker)
    return _spec(folder, None, corpus), folder / "tokenizer_config.json", "models[0].checkpoint: "


def _lesion(spec: Path, out: Path, in_a_process: bool) -> tuple[int, str]:
    """`unravel lesion SPEC --out OUT` answered "y" on stdin: in a process of its own (a real terminal's
    stdin) or in this one (click's runner, cheaper); its exit code and what it printed."""
    if in_a_process:
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "lesion", str(spec), "--out", str(out)],
                              input="y\ny\n", capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        return done.returncode, (done.stdout + done.stderr).strip()
    result = CliRunner().invoke(main, ["lesion", str(spec), "--out", str(out)], input="y\ny\n")
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize("case,in_a_process", [pytest.param("data.tokenizer", True, marks=pytest.mark.slow),
                                               ("model config.json", False),
                                               ("tokenizer in the model's folder", False)])
def test_a_folder_with_its_own_code_is_refused_in_one_line_before_ray(case, in_a_process, clean, tmp_path):
    marker = tmp_path / "marker"
    spec, declared, field = _folders(case, tmp_path, clean, marker)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    code, output = _lesion(path, out, in_a_process)
    assert code == 2, output
    assert len(output.splitlines()) == 1, output                 # no prompt, no traceback, no Ray start
    assert output.startswith(f"Error: {field}{declared} has an auto_map (") and "own Python code" in output
    assert "marker_code." in output and "Do you wish" not in output
    assert not marker.exists() and not out.exists()


def test_the_loaders_refuse_it_wherever_they_are_called(clean, tmp_path):
    """Called directly, as an evaluator calls them: a folder given code after the preflight is still refused."""
    model, tokenizer, corpus = clean
    marker = tmp_path / "marker"
    folder = custom_tokenizer(tmp_path / "tokenizer", marker)
    with pytest.raises(TextDataError, match=r"tokenizer_config\.json has an auto_map \(AutoTokenizer -> "
                                            r"marker_code\.MarkerTokenizer\): the folder asks to run its own"):
        load_tokenizer(folder)
    with pytest.raises(TextDataError, match="auto_map"):   # the evaluators' path: the corpus with its tokenizer
        load_dataset("text", corpus, tokenizer=folder, sequence_length=8)
    custom = custom_model(tmp_path / "model", marker)
    for load in (read_config, load_causal_lm):
        with pytest.raises(CheckpointError, match=r"config\.json has an auto_map \(AutoConfig -> marker_code\."):
            load(custom)
    config = json.loads((custom / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model config: has an auto_map"):   # a checkpoint's config
        model_from_config(json.dumps(config))
    assert not marker.exists()
    # without the auto_map the same folders load (the check refuses the code, not the folder)
    config.pop("auto_map")
    (custom / "config.json").write_text(json.dumps(config))
    assert load_causal_lm(custom).config.model_type == "gpt2"


def test_the_spec_refuses_a_model_folder_with_code_even_for_a_plan(clean, tmp_path):
    """Parsing reads the model's config.json (a plan needs nothing else): the auto_map is refused there too."""
    _, tokenizer, corpus = clean
    folder = custom_model(tmp_path / "model", tmp_path / "marker")
    with pytest.raises(SpecError, match=r"^models\[0\]\.checkpoint: .*config\.json has an auto_map"):
        parse_spec(_spec(folder, tokenizer, corpus))
    assert not (tmp_path / "marker").exists()
