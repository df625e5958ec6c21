"""Networks a researcher brings, through the real CLI: a torchvision Vision Transformer on an image folder and a
Hugging Face GPT-2 on a text file, each imported from the user's files, checked by its adapter, studied
(single units, spans of whole layers, random deletions, reorders within a kind) and written exactly once, a
rerun computing nothing; and the ways such input can be wrong, each one line with exit 2 and nothing written."""
import json
import math
import shutil

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import write_image_folder
from language_cases import save_gpt2, save_word_tokenizer, write_corpus
from orchestrator.cli import main

VIT = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
STUDIES = {"single_deletion": {}, "span_deletion": {"max_length": 2}, "random_deletion": {"k_max": 2, "draws": 2},
           "reorder": {"k_max": 1, "draws": 2}, "evaluators": {"count": 1, "cpu": 1}, "plans_per_batch": 8}


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _rows(out, study):
    lesion = pd.read_parquet(out / "lesion")
    return lesion[lesion["study"] == study]


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    import torchvision
    root = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(num_classes=3, **VIT)
    with torch.no_grad():  # torchvision zero-initialises the classifier: give it weights, so plans differ
        model.heads.head.weight.normal_(0, 0.5)
    torch.save(model.state_dict(), root / "vit.pt")
    return write_image_folder(root / "images", classes=3, val_per_class=4, size=36), root / "vit.pt"


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2")
    return (save_gpt2(root / "model"), save_word_tokenizer(root / "tokenizer"),
            write_corpus(root / "corpus.txt", words=12 * 9 + 3))


def vit_spec(images, checkpoint, **data) -> dict:
    return {"name": "vit", "data": {"dataset": "imagenet", "root": str(images), "image_size": 32, "resize": 32,
                                    "num_classes": 3, **data},
            "models": [{"network": "tv_VisionTransformer", "label": "vit", "checkpoint": str(checkpoint),
                        "overrides": {"arch_options": VIT}}],
            "studies": {"test_examples": 12, **STUDIES}}


def gpt2_spec(model, tokenizer, corpus, **data) -> dict:
    return {"name": "gpt2", "data": {"dataset": "text", "root": str(corpus), "tokenizer": str(tokenizer),
                                     "sequence_length": 8, **data},
            "models": [{"network": "hf_causal_lm", "label": "gpt2", "checkpoint": str(model)}],
            "studies": STUDIES}


def _run_twice(spec: dict, folder):
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = folder / "out"
    first = _invoke("run", path, "--out", out)
    assert first.exit_code == 0, first.output
    lesion = pd.read_parquet(out / "lesion")
    assert lesion["unit_key"].is_unique
    again = _invoke("run", path, "--out", out)
    assert again.exit_code == 0 and " 0 computed" in again.output, again.output
    assert len(pd.read_parquet(out / "lesion")) == len(lesion)   # exactly once
    return out, lesion


@pytest.mark.slow
def test_a_torchvision_vit_on_an_image_folder(ray_session, vit_files, tmp_path):
    images, checkpoint = vit_files
    out, lesion = _run_twice(vit_spec(images, checkpoint), tmp_path)
    runs = pd.read_parquet(out / "runs.parquet")
    assert runs["num_blocks"].tolist() == [4]                        # 2 layers x (attention, mlp)
    assert sorted(_rows(out, "single_deletion")["draw"]) == [0, 1, 2, 3]
    spans = _rows(out, "span_deletion")
    assert sorted(zip(spans["k"], spans["draw"])) == [(1, 0), (1, 1), (2, 0)]   # (layers, first layer)
    assert sorted(spans[spans["k"] == 2]["deleted"].iloc[0]) == [0, 1, 2, 3]      # both units of both layers
    for order in _rows(out, "reorder")["order"]:                      # attention moves only among attention
        assert [b % 2 for b in order] == [0, 1, 0, 1]
    assert set(lesion["metric"]) == {"classification"} and lesion["perplexity"].isna().all()
    assert lesion[["kl_from_intact", "agreement_with_intact", "entropy"]].isna().all().all()   # text only
    assert (out / "figures" / "span_deletion.png").exists() and "Span deletion" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_gpt2_on_a_text_file(ray_session, gpt2_files, tmp_path):
    model, tokenizer, corpus = gpt2_files
    out, lesion = _run_twice(gpt2_spec(model, tokenizer, corpus), tmp_path)
    assert set(lesion["metric"]) == {"next_token"}
    assert (lesion["examples"] == 12 * 8).all()                       # 12 sequences of 8 predicted tokens
    assert (lesion["perplexity"] - lesion["loss"].map(math.exp)).abs().max() < 1e-6
    intact = _rows(out, "intact").iloc[0]
    # the intact row is the model itself: its own loss on the same sequences
    from transformers import AutoModelForCausalLM

    from workloads.data.text import load_text_corpus
    data = load_text_corpus(corpus, tokenizer, 8)
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(model, local_files_only=True).eval()(data.test_images).logits
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data.test_labels.flatten()).item()
    assert intact["loss"] == pytest.approx(want, rel=1e-4)
    assert intact["kl_from_intact"] == 0 and intact["agreement_with_intact"] == 1  # every plan against the model
    lesioned = lesion[lesion["study"] != "intact"]
    assert (lesioned["kl_from_intact"] > 0).all() and lesioned["agreement_with_intact"].between(0, 1).all()
    assert (lesion["entropy"] > 0).all()
    assert sorted(_rows(out, "span_deletion")["k"]) == [1, 1, 2]
    report = (out / "report.md").read_text()
    assert "gpt2" in report and (out / "figures" / "f3_single_deletion.png").exists()


def _short_corpus(spec, folder):
    (folder / "short.txt").write_text("w1 w2 w3")                     # shorter than one sequence
    spec["data"]["root"] = str(folder / "short.txt")


def _integer_column(spec, folder):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": [3, 1, 4], "body": ["w1 w2", "w3", "w4"]}), folder / "ids.parquet")
    spec["data"]["root"] = str(folder / "ids.parquet")


def _truncated_weights(spec, folder):
    """A download cut short: the folder is whole but for the second half of its model.safetensors."""
    shutil.copytree(spec["models"][0]["checkpoint"], folder / "cut")
    weights = folder / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    spec["models"][0]["checkpoint"] = str(folder / "cut")


def _missing_shard(spec, folder):
    shutil.copytree(spec["models"][0]["checkpoint"], folder / "sharded")
    (folder / "sharded" / "model.safetensors").rename(folder / "sharded" / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors",
                                            "transformer.wte.weight": "model-00001-of-00002.safetensors"}}
    (folder / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index))
    spec["models"][0]["checkpoint"] = str(folder / "sharded")


def _small_vocabulary(spec, folder):
    """A model of 50 tokens given the word tokenizer's 82: the ids past 49 have no embedding."""
    spec["models"][0]["checkpoint"] = str(save_gpt2(folder / "small", vocab=50))


@pytest.mark.parametrize("change, message", [
    (_small_vocabulary, "data.tokenizer: the corpus holds token id 81, beyond the model's vocabulary of 50"),
    (lambda s, f: s["data"].update(sequence_length=64), "data.sequence_length: 64 is beyond the 32 positions"),
    (_short_corpus, "data.root: "),
    (_integer_column, "data.column: "),
    (_truncated_weights, "model.safetensors: damaged or truncated ("),
    (_missing_shard, "names 1 missing shard(s), e.g. model-00002-of-00002.safetensors"),
    (lambda s, f: s["data"].update(tokenizer=str(f)), "data.tokenizer: "),
    (lambda s, f: s["models"][0].update(checkpoint=str(f)), "models[0].checkpoint: "),
    (lambda s, f: s["models"][0].update(network="tv_resnet18"), "models[0].network: tv_resnet18 reads images"),
])
def test_bad_language_model_input_is_one_line(gpt2_files, tmp_path, change, message, monkeypatch):
    """Each is found before Ray starts (a damaged checkpoint too: its files are read, not loaded)."""
    import orchestrator.run.cluster

    def no_ray(*args, **kwargs):
        raise AssertionError("the spec was accepted and the CLI went on to connect to Ray")
    monkeypatch.setattr(orchestrator.run.cluster, "connect", no_ray)
    spec = gpt2_spec(*gpt2_files)
    change(spec, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = _invoke("run", path, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_model_that_is_not_residual_or_does_not_fit_is_one_line(ray_session, vit_files, tmp_path):
    images, checkpoint = vit_files
    cases = [({"network": "timm", "overrides": {"timm_arch": "vgg11"}}, "VGG is not a residual network"),
             ({"overrides": {"arch_options": {**VIT, "num_layers": 3}}}, "its weights are not those of"),
             ({"network": "tv_convnext_tiny", "overrides": {}}, "its weights are not those of")]
    for entry, message in cases:
        spec = vit_spec(images, checkpoint)
        spec["models"][0].update(entry)
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(spec))
        result = _invoke("run", path, "--out", tmp_path / "out")
        assert result.exit_code == 2, result.output
        error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(error) == 1 and message in error[0], result.output   # at parse, or at import (Ray started)
        assert not (tmp_path / "out").exists()


def test_plan_of_a_language_model_spec_counts_its_units_and_sequences(gpt2_files, tmp_path):
    path = tmp_path / "gpt2.yaml"
    path.write_text(yaml.safe_dump({**gpt2_spec(*gpt2_files), "studies": {**STUDIES, "test_examples": 6}}))
    result = _invoke("plan", path)
    assert result.exit_code == 0, result.output
    assert "data: text, sequences of 8 tokens, a vocabulary of 96; 6 test sequences per unit" in result.output
    span = next(line for line in result.output.splitlines() if line.strip().startswith("span_deletion"))
    assert span.split()[1:3] == ["1", "3"]                            # one run: spans (1, 0), (1, 1), (2, 0)


@pytest.fixture(scope="module")
def two_gpt2_folders(tmp_path_factory):
    """Two GPT-2s, each saved with its own tokenizer: the same words under other ids."""
    root = tmp_path_factory.mktemp("two")
    first, second = save_gpt2(root / "first", seed=0), save_gpt2(root / "second", seed=1)
    save_word_tokenizer(first)
    save_word_tokenizer(second, reversed_ids=True)
    return first, second, write_corpus(root / "corpus.txt", words=12 * 9 + 3)


def _two_models(first, second, corpus, **data) -> dict:
    return {"name": "two", "data": {"dataset": "text", "root": str(corpus), "sequence_length": 8, **data},
            "models": [{"network": "hf_causal_lm", "label": "first", "checkpoint": str(first)},
                       {"network": "hf_causal_lm", "label": "second", "checkpoint": str(second)}],
            "studies": {"single_deletion": {}, "evaluators": {"count": 1, "cpu": 1}}}


def _own_loss(folder, corpus) -> float:
    """The model's mean next-token loss on the text as its own tokenizer cuts it."""
    from transformers import AutoModelForCausalLM

    from workloads.data.text import load_text_corpus
    data = load_text_corpus(corpus, folder, 8)
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()(data.test_images).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), data.test_labels.flatten()).item()


@pytest.mark.slow
def test_each_language_model_reads_the_text_with_its_own_tokenizer(ray_session, two_gpt2_folders, tmp_path):
    first, second, corpus = two_gpt2_folders
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(_two_models(first, second, corpus)))
    result = _invoke("lesion", path, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    intact = _rows(tmp_path / "out", "intact")
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet").set_index("run_id")["label"]
    losses = {runs[r]: loss for r, loss in zip(intact["run_id"], intact["loss"])}
    assert losses["first"] == pytest.approx(_own_loss(first, corpus), rel=1e-4)
    assert losses["second"] == pytest.approx(_own_loss(second, corpus), rel=1e-4)


def test_a_named_tokenizer_of_another_vocabulary_is_refused_before_ray(two_gpt2_folders, tmp_path, monkeypatch):
    import orchestrator.run.cluster

    def no_ray(*args, **kwargs):
        raise AssertionError("the spec was accepted and the CLI went on to connect to Ray")
    monkeypatch.setattr(orchestrator.run.cluster, "connect", no_ray)
    first, second, corpus = two_gpt2_folders
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump(_two_models(first, second, corpus, tokenizer=str(first))))
    result = _invoke("lesion", path, "--out", tmp_path / "out")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: data.tokenizer: {first} does not have the vocabulary of models[1]'s own "
                                    f"tokenizer ({second}): 82 tokens against 82; 'w0' is id 2 against 81"), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_changed_corpus_or_tokenizer_is_refused_rather_than_mixed(ray_session, gpt2_files, tmp_path, monkeypatch):
    """Rows of the old text and of the new one never share a table: a rerun after the corpus (or the tokenizer)
    changed under the same path is one line before Ray starts; with the old file back, the rerun goes on."""
    import orchestrator.run.cluster
    model, tokenizer, corpus = gpt2_files
    shutil.copytree(tokenizer, tmp_path / "tokenizer")
    shutil.copy(corpus, tmp_path / "corpus.txt")
    spec = gpt2_spec(model, tmp_path / "tokenizer", tmp_path / "corpus.txt")
    spec["studies"] = {"random_deletion": {"k_max": 2, "draws": 1}, "evaluators": {"count": 1, "cpu": 1}}
    path, out = tmp_path / "gpt2.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(spec))
    first = _invoke("lesion", path, "--out", out)
    assert first.exit_code == 0, first.output
    written = pd.read_parquet(out / "lesion")

    spec["studies"]["random_deletion"]["draws"] = 2   # more draws, asked of a changed text
    path.write_text(yaml.safe_dump(spec))
    connect = orchestrator.run.cluster.connect

    def no_ray(*args, **kwargs):
        raise AssertionError("a changed corpus got as far as connecting to Ray")
    monkeypatch.setattr(orchestrator.run.cluster, "connect", no_ray)
    original = (tmp_path / "corpus.txt").read_text()
    write_corpus(tmp_path / "corpus.txt", words=12 * 9 + 3, seed=1)
    changed = _invoke("lesion", path, "--out", out)
    assert changed.exit_code == 2 and len(changed.output.strip().splitlines()) == 1, changed.output
    assert changed.output.startswith(f"Error: data.root: {tmp_path / 'corpus.txt'} changed since the results in "
                                     f"{out} were computed from it (its content: sha256 "), changed.output
    (tmp_path / "corpus.txt").write_text(original)
    shutil.rmtree(tmp_path / "tokenizer")
    save_word_tokenizer(tmp_path / "tokenizer", reversed_ids=True)
    changed = _invoke("lesion", path, "--out", out)
    assert changed.exit_code == 2 and changed.output.startswith(
        f"Error: data.tokenizer: {tmp_path / 'tokenizer'} changed since the results in {out}"), changed.output
    pd.testing.assert_frame_equal(pd.read_parquet(out / "lesion"), written)   # nothing added

    shutil.rmtree(tmp_path / "tokenizer")
    shutil.copytree(tokenizer, tmp_path / "tokenizer")
    monkeypatch.setattr(orchestrator.run.cluster, "connect", connect)
    again = _invoke("lesion", path, "--out", out)
    assert again.exit_code == 0 and " 2 computed" in again.output, again.output   # the second draw of k = 1, 2
