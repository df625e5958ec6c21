"""Hugging Face causal language models as residual units (hf.py), loaded from local folders
(hf_loading.py) and evaluated on a local text corpus (data/text.py): the adapter checks itself against the
model's own tensors; the engine equals one full forward per plan on next-token loss and error; gradients by
path length equal a float64 backward; every bad folder, tokenizer or corpus is refused in one line.

GPT-2 and the Llama layout (Llama, Mistral with a sliding window shorter than the sequences, Qwen2 with a
full-attention layer then sliding ones), 3 layers of width 32, random weights, a word-level tokenizer trained
here: nothing is downloaded.
"""
import copy
import json
import math
import random
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from language_cases import VOCAB, WORDS, save_word_tokenizer
from workloads.data import DataNotFound, load_dataset
from workloads.data.text import TextDataError, check_sequence_length, check_vocabulary, load_text_corpus
from workloads.models import BlockNetwork, CheckpointError
from workloads.models.adapters.hf import AdapterError, check_adapter, from_causal_lm
from workloads.models.adapters.hf_loading import config_json, load_causal_lm, max_sequence_length, model_from_config
from workloads.surgery import (delete_blocks, evaluate_plans, forward_plan, gradient_norms, intact,
                               naive_gradient_norm, random_deletion, random_swaps)
from workloads.surgery.evaluate import input_chunk_size

LENGTH = 12         # tokens per sequence
LAYERS = 3


def _configs() -> dict:
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config
    llama = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.2)
    return {"gpt2": GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=32,
                               initializer_range=0.2),
            "llama": LlamaConfig(**llama),
            "mistral": MistralConfig(**llama, sliding_window=4),
            "qwen2": Qwen2Config(**llama, use_sliding_window=True, sliding_window=4, max_window_layers=1)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return save_word_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(20 * (LENGTH + 1) + 5)))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved model folder (weights and config.json) per architecture, built once. The tokenizer stays in its
    own folder: AutoTokenizer in a folder whose config.json says qwen2 builds a Qwen2Tokenizer (byte-level BPE)
    from the files, whatever tokenizer they hold."""
    from transformers import AutoModelForCausalLM
    out = {}
    for name, config in _configs().items():
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(name)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="module", params=["gpt2", "llama", "mistral", "qwen2"])
def lm(request, folders, corpus, tokenizer_folder):
    """(model, its BlockNetwork, inputs [8, L], next tokens [8, L]) of one architecture, loaded from its folder."""
    model = load_causal_lm(folders[request.param])
    data = load_text_corpus(corpus, tokenizer_folder, LENGTH)
    check_sequence_length(model, LENGTH)
    check_vocabulary(model, data)
    return model, from_causal_lm(model), data.test_images[:8], data.test_labels[:8]


def test_two_units_per_layer_and_the_adapter_checks_itself(lm):
    model, net, ids, _ = lm
    infos = net.block_infos()
    assert [i.kind for i in infos] == ["attention", "mlp"] * LAYERS and [i.layer for i in infos] == [0, 0, 1, 1, 2, 2]
    assert all(i.identity_skip and i.deletable and not i.changes_shape for i in infos)
    check_adapter(model, net, ids)
    with torch.no_grad():
        logits = net(ids)
        assert logits.shape == (8, LENGTH, VOCAB) and torch.equal(logits, model(ids).logits)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_eager_attention_gets_the_causal_mask_sdpa_infers(folders, name):
    """Eager attention adds the mask the units pass (sdpa infers causality when there is none): a later token
    changes no earlier logit, and the units equal the eager model."""
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folders[name], local_files_only=True),
                                             attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    net = from_causal_lm(model)
    ids = torch.randint(0, VOCAB, (3, LENGTH), generator=torch.Generator().manual_seed(1))
    check_adapter(model, net, ids)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        a, b = net(ids), net(changed)
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.equal(a[:, 7:], b[:, 7:])


def test_a_unit_that_carries_the_wrong_tensor_is_refused_in_one_line(lm):
    model, _, ids, _ = lm
    net = from_causal_lm(model)
    net.blocks[3].parts = lambda x: (x, torch.zeros_like(x))  # an MLP unit that lost its branch
    with pytest.raises(AdapterError) as err:
        check_adapter(model, net, ids)
    assert "unit 3 (layer 1, mlp)" in str(err.value) and "\n" not in str(err.value)


def test_a_sliding_window_layer_given_a_full_causal_mask_is_refused(folders):
    """Mistral's window (4) is shorter than the sequences: a unit that ignored it would not be the model."""
    model = load_causal_lm(folders["mistral"])
    net = from_causal_lm(model)
    assert {b.mask_kind for b in net.blocks if b.kind == "attention"} == {"sliding_attention"}
    net.blocks[2].mask_kind = "full_attention"
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(2))
    with pytest.raises(AdapterError) as err:
        check_adapter(model, net, ids)
    assert _one_line(err).startswith("unit 2 (layer 1, attention): its branch is not model.layers.1.self_attn's output")


def test_other_architectures_are_refused_naming_the_class(folders):
    from transformers import AutoConfig, AutoModelForCausalLM, BertConfig, BertModel
    bert = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    with pytest.raises(AdapterError, match=r"^BertModel is not a causal language model this adapter knows"):
        from_causal_lm(bert)
    config = AutoConfig.from_pretrained(folders["gpt2"], local_files_only=True, add_cross_attention=True)
    with pytest.raises(AdapterError, match=r"^GPT2LMHeadModel with add_cross_attention"):
        from_causal_lm(AutoModelForCausalLM.from_config(config))
    llama = load_causal_lm(folders["llama"])
    llama.model.layers[1] = torch.nn.Identity()
    with pytest.raises(AdapterError, match=r"its layer 1 is a Identity, not LlamaDecoderLayer"):
        from_causal_lm(llama)


def _reference(net, plan, ids, labels) -> tuple[int, float]:
    """One full forward of the plan, scored by hand: correct next tokens and mean cross-entropy over every
    position."""
    with torch.no_grad():
        logits = forward_plan(net, plan, ids).flatten(0, 1)
    wanted = labels.flatten()
    return int((logits.argmax(1) == wanted).sum()), F.cross_entropy(logits, wanted).item()


def test_engine_equals_one_forward_per_plan(lm):
    _, net, ids, labels = lm
    net.eval()
    infos = net.block_infos()
    plans = [intact(infos)] + [delete_blocks(infos, [i]) for i in range(len(infos))]
    plans += [delete_blocks(infos, [2 * j, 2 * j + 1]) for j in range(LAYERS)]  # whole layers
    plans += [random_deletion(infos, k, s) for k in (2, 4) for s in range(2)]
    plans += [random_swaps(infos, k, s) for k in (1, 2) for s in range(2)]
    for p in plans:  # a reorder moves attention with attention, MLP with MLP
        assert [infos[b].kind for b in p.order] == [i.kind for i in infos]
    assert any(p.order != tuple(sorted(p.order)) for p in plans)
    got = evaluate_plans(net, plans, ids, labels, chunk_size=3)  # chunks of 3, 3 and 2 sequences
    positions = labels.numel()
    for plan, r in zip(plans, got, strict=True):
        correct, loss = _reference(net, plan, ids, labels)
        assert r.examples == positions and abs(r.correct - correct) <= 1, plan  # a near-tie may flip
        assert r.error == 1 - r.correct / positions
        assert r.loss == pytest.approx(loss, rel=1e-5, abs=1e-6), plan
    assert len({round(r.loss, 6) for r in got}) > len(plans) // 2  # the plans really differ


def test_gradients_by_path_length_equal_a_float64_backward(lm):
    _, net, ids, labels = lm
    ids, labels = ids[:4], labels[:4]
    net.eval()
    ref = copy.deepcopy(net).double().requires_grad_(False)
    n = net.num_blocks
    draws = [(k, s) for k in (0, 1, 3, n) for s in range(2)]
    for r in gradient_norms(net, ids, labels, draws):
        want = naive_gradient_norm(ref, ids, labels, r.chosen)
        assert r.log10_norm == pytest.approx(math.log10(want), abs=2e-5), (r.k, r.chosen)


def test_token_chunks_are_sized_by_their_activations_not_their_ids():
    """An int64 [512] sequence is 4 KiB, its activations 512 x 4096 floats: one sequence a chunk on a CPU."""
    from workloads.models.blocks import Block
    net = BlockNetwork(torch.nn.Embedding(4, 4096), [Block()], torch.nn.Identity())
    ids = torch.zeros(64, 512, dtype=torch.int64)
    assert input_chunk_size(net, torch.device("cpu"), ids) == 1
    assert input_chunk_size(net, torch.device("cpu"), torch.zeros(64, 3, 32, 32)) == 128  # images: as before


def test_config_json_rebuilds_the_model_and_the_meta_device_counts_units(lm):
    model, net, ids, _ = lm
    rebuilt = model_from_config(config_json(model))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, model(ids).logits)
    skeleton = model_from_config(config_json(model), meta=True)
    assert next(skeleton.parameters()).is_meta and from_causal_lm(skeleton).num_blocks == net.num_blocks
    assert max_sequence_length(model) == max_sequence_length(json.loads(config_json(model))) == 32


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_model_folders_are_refused_in_one_line(tmp_path, folders):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
    with pytest.raises(CheckpointError) as err:
        load_causal_lm(tmp_path / "absent")
    assert _one_line(err).endswith("absent: no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_causal_lm(empty)
    shutil.copy(folders["gpt2"] / "config.json", empty / "config.json")
    with pytest.raises(CheckpointError) as err:
        load_causal_lm(empty)
    assert _one_line(err) == f"{empty}: no weights (no *.safetensors or pytorch_model.bin beside config.json)"
    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(bert)
    with pytest.raises(AdapterError) as err:
        load_causal_lm(bert)
    assert _one_line(err).startswith(f"{bert}: model type 'bert' is not supported")
    for label, width, layers, problem in [("wide", 64, LAYERS, "of another shape, e.g. "),
                                          ("short", 32, LAYERS - 1, "missing, e.g. transformer.h.2."),
                                          ("deep", 32, LAYERS + 1, "unexpected, e.g. transformer.h.3.")]:
        other = tmp_path / label
        GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=width, n_layer=layers, n_head=4,
                                   n_positions=32)).save_pretrained(other)
        shutil.copy(folders["gpt2"] / "config.json", other / "config.json")
        with pytest.raises(CheckpointError) as err:
            load_causal_lm(other)
        assert f"{other}: its weights do not fit its config.json: " in _one_line(err) and problem in str(err.value)
    with pytest.raises(AdapterError, match="^model config: model type 'bert' is not supported"):
        model_from_config(json.dumps({"model_type": "bert"}))


def test_text_corpus_and_its_errors(tmp_path, folders, corpus, tokenizer_folder):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from workloads.data.text import load_tokenizer
    tokenizer = load_tokenizer(tokenizer_folder)
    data = load_dataset("text", corpus, tokenizer=tokenizer_folder, sequence_length=LENGTH)
    assert data.test_images.shape == (20, LENGTH) and data.test_images.dtype == torch.int64
    assert torch.equal(data.test_images[:, 1:], data.test_labels[:, :-1])  # labels: the next tokens
    # non-overlapping cuts of the running text, the remainder (5 tokens) dropped
    cut = torch.cat([data.test_images, data.test_labels[:, -1:]], dim=1).flatten().tolist()
    assert cut == tokenizer(corpus.read_text(), add_special_tokens=False)["input_ids"][:20 * (LENGTH + 1)]
    assert data.num_classes == len(WORDS) + 2 and data.train_size() == data.test_size() == 20
    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": ["w1 w2", None, "w3", "w4 w5 w6"]}), rows)
    joined = load_text_corpus(rows, tokenizer_folder, 6, column="body")
    words = tokenizer.convert_ids_to_tokens(torch.cat([joined.test_images[0], joined.test_labels[0, -1:]]).tolist())
    assert words == ["w1", "w2", "<eos>", "w3", "<eos>", "w4", "w5"]  # rows joined with EOS, the empty one skipped

    def refused(kind, call, text):
        with pytest.raises(kind) as err:
            call()
        assert text in _one_line(err), str(err.value)
    refused(DataNotFound, lambda: load_text_corpus(tmp_path / "absent.txt", tokenizer_folder, 8), "no such corpus file")
    refused(TextDataError, lambda: load_text_corpus(tmp_path / "corpus.csv", tokenizer_folder, 8), "a .txt or .parquet")
    refused(TextDataError, lambda: load_text_corpus(rows, tokenizer_folder, 4), "no column 'text' (columns: body)")
    refused(TextDataError, lambda: load_text_corpus(corpus, tmp_path, 8), "holds no tokenizer")
    short = tmp_path / "short.txt"
    short.write_text(" ".join(WORDS[:37]))
    refused(TextDataError, lambda: load_text_corpus(short, tokenizer_folder, 64),
            "has 37 tokens; one sequence needs 65")
    refused(TextDataError, lambda: load_dataset("text", corpus), "needs tokenizer")
    model = load_causal_lm(folders["gpt2"])
    refused(TextDataError, lambda: check_sequence_length(model, 33),
            "sequence_length 33 is beyond the model's maximum of 32 positions (gpt2)")
    check_sequence_length(model.config, 32)
    model.config.vocab_size = 50
    refused(TextDataError, lambda: check_vocabulary(model, data), "beyond the model's vocabulary of 50")


@pytest.mark.slow
def test_image_datasets_never_import_transformers():
    probe = ("import sys; from workloads.data import load_dataset; import workloads.models, workloads.surgery; "
             "load_dataset('digits'); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
