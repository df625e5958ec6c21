"""Local lm-eval tasks the tests write: a few documents in JSON files and the task YAMLs that read them, in the
words of ``language_cases``' word-level tokenizer. Nothing is downloaded.

- ``tiny_mmlu``: MMLU's shape, multiple choice among four one-token answers, one fewshot example;
- ``tiny_hellaswag``: HellaSwag's shape, multiple choice among multi-token endings (acc and acc_norm);
- ``tiny_lambada``: a loglikelihood task (a context and its one-word ending: perplexity and acc);
- ``tiny_wikitext``: a loglikelihood_rolling (perplexity) task, documents longer than a model's window.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from language_cases import WORDS


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _write_jsonl(path: Path, docs: list[dict]) -> str:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


def write_tasks(folder: Path, documents: int = 6, seed: int = 0) -> Path:
    """The four tasks' data and YAMLs under ``folder`` (an include_path); returns it."""
    rng = random.Random(seed)
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)

    def mmlu_doc():
        return {"question": _words(rng, 6), "choices": rng.sample(WORDS, 4), "answer": rng.randrange(4)}

    def hellaswag_doc():
        return {"ctx": _words(rng, 5), "endings": [_words(rng, rng.randint(2, 4)) for _ in range(4)],
                "label": rng.randrange(4)}

    files = {
        "mmlu_test": [mmlu_doc() for _ in range(documents)], "mmlu_dev": [mmlu_doc() for _ in range(3)],
        "hellaswag": [hellaswag_doc() for _ in range(documents)],
        "lambada": [{"text": _words(rng, rng.randint(4, 9))} for _ in range(documents)],
        "wikitext": [{"page": _words(rng, rng.randint(20, 90))} for _ in range(max(2, documents // 2))],
    }
    paths = {name: _write_jsonl(folder / "data" / f"{name}.jsonl", docs) for name, docs in files.items()}
    yamls = {
        "tiny_mmlu": f"""task: tiny_mmlu
dataset_path: json
dataset_kwargs:
  data_files: {{test: {paths['mmlu_test']}, dev: {paths['mmlu_dev']}}}
test_split: test
fewshot_split: dev
num_fewshot: 1
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
""",
        "tiny_hellaswag": f"""task: tiny_hellaswag
dataset_path: json
dataset_kwargs:
  data_files: {{validation: {paths['hellaswag']}}}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: endings
doc_to_target: label
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
""",
        "tiny_lambada": f"""task: tiny_lambada
dataset_path: json
dataset_kwargs:
  data_files: {{test: {paths['lambada']}}}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' ' + text.split(' ')[-1]}}}}"
metric_list:
  - {{metric: perplexity, aggregation: perplexity, higher_is_better: false}}
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
""",
        "tiny_wikitext": f"""task: tiny_wikitext
dataset_path: json
dataset_kwargs:
  data_files: {{test: {paths['wikitext']}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list:
  - {{metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
  - {{metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
  - {{metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}}
""",
    }
    for name, text in yamls.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder
