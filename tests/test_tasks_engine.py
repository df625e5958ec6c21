"""lm-evaluation-harness tasks scored by the plan-trie engine, checked against lm-eval's own HF model.

For tiny GPT-2 and Llama models trained a little here, every plan's loglikelihood of every request equals what
lm-eval's ``HFLM`` returns for the model with those layers taken out of its ModuleList (single sublayers zeroed
by forward hooks), and the task scores are lm-eval's ``simple_evaluate`` scores of that model. Tasks of MMLU's
shape (one-token answers), HellaSwag's (multi-token endings), a loglikelihood task and a perplexity task are
local JSON files (task_cases). Plus the refusals, each one line.
"""
from __future__ import annotations

import copy

import pytest
import torch

from language_cases import VOCAB, WORDS, save_word_tokenizer
from registry_cases import single_thread
from task_cases import write_tasks
from workloads.data.text import load_tokenizer
from workloads.models.adapters.hf import from_causal_lm
from workloads.surgery import (Continuation, continuation_loglikelihoods, delete_blocks, delete_span, forward_plan,
                               intact, random_deletion, random_swaps)
from workloads.tasks import (TaskConfig, TaskError, check_tasks, check_tokenizer, context_length, score_tasks,
                             task_requests)

pytestmark = pytest.mark.usefixtures("one_thread")
TASKS = ("tiny_mmlu", "tiny_hellaswag", "tiny_lambada", "tiny_wikitext")
LAYERS = 3


def _train(model, tokenizer, steps: int = 30, seed: int = 0):
    """A few dozen AdamW steps of next-token prediction on random text: weights a model has learned something
    with (not its initialisation), in about a second."""
    import random
    rng = random.Random(seed)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(rng.choice(WORDS)) for _ in range(8 * 33)]).view(8, 33)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _models():
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
    torch.manual_seed(0)
    return {"gpt2": AutoModelForCausalLM.from_config(GPT2Config(
                vocab_size=VOCAB, n_embd=16, n_layer=LAYERS, n_head=2, n_positions=40, initializer_range=0.2,
                bos_token_id=1, eos_token_id=1)),
            "llama": AutoModelForCausalLM.from_config(LlamaConfig(
                vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=LAYERS,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=40))}


@pytest.fixture(scope="session")
def task_world(tmp_path_factory):
    """The tokenizer, the task folder and both trained models, built once."""
    root = tmp_path_factory.mktemp("tasks")
    tokenizer = load_tokenizer(save_word_tokenizer(root / "tokenizer"))
    folder = write_tasks(root / "tasks")
    with single_thread():
        models = {name: _train(model, tokenizer) for name, model in _models().items()}
    return tokenizer, folder, models


def _plans(infos):
    """Intact, every single unit, a span of whole layers, two random deletions."""
    return ([intact(infos)] + [delete_blocks(infos, [u]) for u in range(len(infos))]
            + [delete_span(infos, 1, 2), random_deletion(infos, 2, 0), random_deletion(infos, 3, 1)])


def _lesioned(model, deleted: frozenset[int]):
    """The field's way: a copy of the model with whole deleted layers taken out of its ModuleList, and a single
    deleted sublayer's output zeroed by a forward hook."""
    model = copy.deepcopy(model)
    body, layers = (model.transformer, "h") if hasattr(model, "transformer") else (model.model, "layers")
    kept = []
    for j, layer in enumerate(getattr(body, layers)):
        attention, mlp = 2 * j in deleted, 2 * j + 1 in deleted
        if attention and mlp:
            continue
        if attention:
            (layer.attn if hasattr(layer, "attn") else layer.self_attn).register_forward_hook(
                lambda module, args, out: (torch.zeros_like(out[0]),) + tuple(out[1:]))
        if mlp:
            layer.mlp.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
        kept.append(layer)
    setattr(body, layers, torch.nn.ModuleList(kept))
    return model


def _hflm(model, tokenizer):
    from lm_eval.models.huggingface import HFLM
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def scored(request, task_world):
    """Per model: its plans, the requests of every task and the engine's scores of every plan."""
    tokenizer, folder, models = task_world
    model = models[request.param]
    config = TaskConfig(names=TASKS, include_path=str(folder), bootstrap_iters=0)
    net = from_causal_lm(model)
    plans = _plans(net.block_infos())
    requests = task_requests(config, tokenizer, context_length(model.config, tokenizer))
    scores = {r.task: score_tasks(net, plans, r, config, device="cpu") for r in requests}
    return model, tokenizer, config, plans, requests, scores


@pytest.mark.slow
def test_every_request_of_every_plan_equals_lm_evals_hf_model(scored):
    from workloads.tasks.requests import build_instances
    model, tokenizer, config, plans, requests, _ = scored
    net = from_causal_lm(model)
    for plan in plans:
        lm = _hflm(_lesioned(model, plan.deleted), tokenizer)
        for r in requests:
            ours = continuation_loglikelihoods(net, [plan], r.rows, r.continuations, device="cpu")
            instances = build_instances(r.lm_task, config)
            kind = instances[0].request_type
            theirs = getattr(lm, kind)(instances, disable_tqdm=True)
            for inst, answer in zip(instances, theirs):
                conts = r.answers[(kind, inst.args)]
                loglikelihood = sum(float(ours.loglikelihood[0, c]) for c in conts)
                expected = answer if kind == "loglikelihood_rolling" else answer[0]
                assert loglikelihood == pytest.approx(expected, abs=1e-4), (sorted(plan.deleted), r.task)
                if kind == "loglikelihood":
                    assert bool(ours.greedy[0, conts[0]]) == answer[1]


@pytest.mark.slow
def test_every_plans_task_scores_are_simple_evaluates(scored):
    """Accuracies equal; perplexities (exponentials of float32 sums) to a relative 1e-6."""
    from lm_eval.evaluator import simple_evaluate

    from workloads.tasks.loading import task_manager
    model, tokenizer, config, plans, requests, scores = scored
    for p in (0, 1, len(plans) - 3, len(plans) - 1):   # intact, a single unit, the span, a random deletion
        lm = _hflm(_lesioned(model, plans[p].deleted), tokenizer)
        results = simple_evaluate(model=lm, tasks=list(TASKS), task_manager=task_manager(config),
                                  bootstrap_iters=0, log_samples=True)
        for r in requests:
            expected = {k: v for k, v in results["results"][r.task].items() if "," in k and "_stderr," not in k}
            ours = scores[r.task][p]
            assert {f"{m.metric},{m.filter}": m.value for m in ours.metrics} == pytest.approx(expected, rel=1e-6)
            assert [s.doc_id for s in ours.samples] == sorted(s["doc_id"] for s in results["samples"][r.task])
            assert ours.documents == r.documents and ours.num_fewshot == (1 if r.task == "tiny_mmlu" else 0)


@pytest.mark.slow
def test_samples_carry_the_gold_choice_and_whether_it_won(scored):
    _, _, _, plans, requests, scores = scored
    by_task = {r.task: r for r in requests}
    for task in ("tiny_mmlu", "tiny_hellaswag"):
        for plan_scores in scores[task]:
            acc = next(m.value for m in plan_scores.metrics if m.metric == "acc")
            assert sum(s.correct for s in plan_scores.samples) / len(plan_scores.samples) == pytest.approx(acc)
            assert len(plan_scores.samples) == by_task[task].documents
            assert all(s.gold_loglikelihood < 0 for s in plan_scores.samples)
    for plan_scores in scores["tiny_wikitext"]:
        assert all(s.correct is None and s.gold_loglikelihood < 0 for s in plan_scores.samples)
        word_perplexity = next(m.value for m in plan_scores.metrics if m.metric == "word_perplexity")
        assert word_perplexity > 1
    intact_stderr = next(m.stderr for m in scores["tiny_mmlu"][0].metrics if m.metric == "acc")
    assert intact_stderr is None   # bootstrap_iters=0: lm-eval computes none


def test_one_token_choices_share_their_contexts_row(task_world):
    tokenizer, folder, _ = task_world
    config = TaskConfig(names=("tiny_mmlu", "tiny_hellaswag"), include_path=str(folder))
    mmlu, hellaswag = task_requests(config, tokenizer, 40)
    assert (mmlu.requests, len(mmlu.rows)) == (4 * mmlu.documents, mmlu.documents)   # four choices, one row
    assert all(len(c.tokens) == 1 for c in mmlu.continuations)
    assert len(hellaswag.rows) > hellaswag.documents   # multi-token endings: a row each
    assert mmlu.tokens == sum(len(r) for r in mmlu.rows)


def test_the_engine_equals_one_forward_per_plan_with_padding_and_reorders(task_world):
    """Rows of different lengths padded in one chunk, reorders and duplicate plans: each continuation's
    loglikelihood is the plain forward's of its own unpadded row, read at the row's last positions."""
    _, _, models = task_world
    rows = [[5, 9, 11, 30, 2, 7], [40, 3], [8, 8, 8, 21]]
    continuations = [Continuation(0, (2, 7)), Continuation(0, (7,)), Continuation(1, (3,)), Continuation(2, (8, 21))]
    for model in models.values():
        net = from_causal_lm(model)
        infos = net.block_infos()
        plans = [intact(infos), random_swaps(infos, 1, 0), delete_blocks(infos, [1]), intact(infos)]
        got = continuation_loglikelihoods(net, plans, rows, continuations, chunk_tokens=12, device="cpu")
        for p, plan in enumerate(plans):
            for c, cont in enumerate(continuations):
                row = torch.tensor([rows[cont.row]])
                with torch.inference_mode():
                    logp = torch.log_softmax(forward_plan(net, plan, row)[0].double(), -1)
                scored = list(zip(range(len(rows[cont.row]) - len(cont.tokens), len(rows[cont.row])), cont.tokens))
                expected = sum(float(logp[i, token]) for i, token in scored)
                assert float(got.loglikelihood[p, c]) == pytest.approx(expected, abs=1e-5)
                greedy = all(int(logp[i].argmax()) == token for i, token in scored)
                assert bool(got.greedy[p, c]) == greedy
        assert torch.equal(got.loglikelihood[0], got.loglikelihood[3])


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _yaml(folder, name: str, body: str):
    (folder / f"{name}.yaml").write_text(f"task: {name}\n{body}")


def test_tasks_that_cannot_be_scored_here_are_refused_in_one_line(tmp_path, capsys):
    folder = write_tasks(tmp_path / "tasks", documents=2)
    data = folder / "data" / "lambada.jsonl"
    _yaml(folder, "from_hub", "dataset_path: cais/mmlu\noutput_type: multiple_choice\n")
    _yaml(folder, "generates", f"dataset_path: json\ndataset_kwargs: {{data_files: {{test: {data}}}}}\n"
                               f"test_split: test\noutput_type: generate_until\ndoc_to_text: x\n")
    _yaml(folder, "no_files", "dataset_path: json\noutput_type: loglikelihood\n")
    _yaml(folder, "missing_file", f"dataset_path: json\ndataset_kwargs: {{data_files: {tmp_path}/none.json}}\n"
                                  f"output_type: loglikelihood\n")
    cases = {"from_hub": "would come from the Hugging Face hub", "generates": "generate_until is out of scope",
             "no_files": "without dataset_kwargs.data_files", "missing_file": "none.json not found"}
    for name, words in cases.items():
        with pytest.raises(TaskError) as e:
            check_tasks(TaskConfig(names=(name,), include_path=str(folder)))
        assert words in _one_line(e) and name in str(e.value)
    (folder / "broken.yaml").write_text("task: broken\ndoc_to_text: [unclosed\n")
    with pytest.raises(TaskError) as e:
        check_tasks(TaskConfig(names=("tiny_lambada",), include_path=str(folder)))
    assert "broken.yaml does not parse" in _one_line(e)
    assert "Traceback" not in capsys.readouterr().err


def test_tasks_are_read_offline(tmp_path):
    import os

    import datasets
    check_tasks(TaskConfig(names=("tiny_lambada",), include_path=str(write_tasks(tmp_path / "tasks", 2))))
    assert os.environ["HF_DATASETS_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] == "1"
    assert datasets.config.HF_HUB_OFFLINE


@pytest.mark.slow   # lm-eval indexes its bundled tasks: about 13 s
def test_bundled_and_unknown_names_are_refused(tmp_path):
    folder = write_tasks(tmp_path / "tasks", documents=2)
    with pytest.raises(TaskError) as e:   # not in the user's folder: lm-eval's bundled tasks are indexed
        check_tasks(TaskConfig(names=("tiny_lambada", "hellaswag"), include_path=str(folder)))
    assert "hellaswag" in _one_line(e) and "Rowan/hellaswag" in str(e.value)
    with pytest.raises(TaskError) as e:
        check_tasks(TaskConfig(names=("mmlu",), include_path=str(folder)))   # a group: its first task reads the hub
    assert "would come from the Hugging Face hub" in _one_line(e)
    with pytest.raises(TaskError) as e:
        check_tasks(TaskConfig(names=("no_such_task",), include_path=str(folder)))
    assert "task no_such_task: unknown" in _one_line(e)


def test_a_tokenizer_that_is_not_the_models_is_refused(tmp_path, task_world):
    tokenizer, _, models = task_world
    other = load_tokenizer(save_word_tokenizer(tmp_path / "other", reversed_ids=True))
    check_tokenizer(tokenizer, models["gpt2"].config, tokenizer)
    with pytest.raises(TaskError) as e:
        check_tokenizer(other, models["gpt2"].config, tokenizer)
    assert "not the model's own" in _one_line(e)
    small = copy.deepcopy(models["gpt2"].config)
    small.vocab_size = 50
    with pytest.raises(TaskError) as e:
        check_tokenizer(tokenizer, small)
    assert f"{len(tokenizer)} tokens" in _one_line(e)


def test_check_tasks_counts_documents_under_the_limit(tmp_path):
    folder = write_tasks(tmp_path / "tasks", documents=6)
    summaries = check_tasks(TaskConfig(names=TASKS, include_path=str(folder), limit=4))
    assert [(s.name, s.output_type, s.documents) for s in summaries] == [
        ("tiny_mmlu", "multiple_choice", 4), ("tiny_hellaswag", "multiple_choice", 4),
        ("tiny_lambada", "loglikelihood", 4), ("tiny_wikitext", "loglikelihood_rolling", 3)]


@pytest.mark.slow   # a fresh interpreter
def test_importing_the_tasks_package_loads_no_lm_eval():
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[1])
    code = ("import sys, workloads.tasks, workloads.surgery; "
            "print(sorted(m for m in ('lm_eval', 'datasets', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": root}, timeout=300)
    assert out.stdout.strip() == "[]"
