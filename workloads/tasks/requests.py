"""The requests lm-eval builds for a task, tokenised exactly as its HF model (``HFLM``) tokenises them.

The tokenisation is HFLM's own code, not a copy: a ``TemplateLM`` that borrows HFLM's ``tok_encode`` and prefix
token and keeps TemplateLM's ``loglikelihood`` (empty contexts, trailing spaces moved to the continuation, the
pair encoded whole then split), but hands back the encoded requests instead of running a model. Rolling
(perplexity) requests are cut into lm-eval's disjoint windows. Each request then becomes what HFLM's
``_loglikelihood_tokens`` feeds the model: the row (context + continuation)[-(max_length + 1):][:-1] and the
continuation scored at its last positions. Identical rows are kept once (a question's one-token choices share
their context's row, as HFLM's logits cache shares it), so ``tokens`` is what the engine computes per plan.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from workloads.surgery.likelihood import Continuation
from workloads.tasks.config import TaskConfig, TaskError
from workloads.tasks.loading import documents, load_tasks, quiet

# what simple_evaluate hands evaluate() and evaluate() hands build_all_requests, so the requests built here are
# the ones lm-eval builds when it scores
BUILD_OPTIONS = {"rank": 0, "world_size": 1, "cache_requests": False, "system_instruction": None,
                 "apply_chat_template": False, "fewshot_as_multiturn": True}


@dataclass(frozen=True)
class TaskRequests:
    """One task's requests as token rows for ``continuation_loglikelihoods``."""

    task: str
    documents: int
    requests: int                 # lm-eval's requests (a multiple-choice question is one per choice)
    tokens: int                   # input tokens the engine computes per plan (distinct rows)
    output_type: str
    num_fewshot: int
    rows: tuple[tuple[int, ...], ...] = field(repr=False)
    continuations: tuple[Continuation, ...] = field(repr=False)
    # (request type, lm-eval's args) -> its continuations (a rolling request: one per window, summed)
    answers: dict = field(repr=False, compare=False)
    lm_task: object = field(repr=False, compare=False)   # lm-eval's Task, for its filters and metrics


@functools.cache
def _encoder_class():
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class HFEncoding(TemplateLM):
        """HFLM's tokenisation of requests, without a model."""

        tok_encode = HFLM.tok_encode
        eot_token_id = HFLM.eot_token_id
        prefix_token_id = HFLM.prefix_token_id

        def __init__(self, tokenizer, max_length: int):
            super().__init__()
            self.tokenizer, self.max_length = tokenizer, max_length
            self.add_bos_token = self.custom_prefix_token_id = None   # HFLM's defaults
            self.backend = "causal"

        def _loglikelihood_tokens(self, requests, **kwargs):
            return [(context, continuation) for _, context, continuation in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return [[make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)] for (string,) in (r.args for r in requests)]

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise TaskError(f"task {requests[0].task_name}: generate_until is out of scope here")

    return HFEncoding


def build_instances(task, config: TaskConfig) -> list:
    """lm-eval's Instances of the task under ``config``, built as ``evaluate`` builds them (the fewshot sampler
    reseeded first, so every build draws the same examples)."""
    task.set_fewshot_seed(seed=config.fewshot_seed)
    with quiet():
        task.build_all_requests(limit=config.limit, **BUILD_OPTIONS)
    return task.instances


def task_requests(config: TaskConfig, tokenizer, max_length: int) -> list[TaskRequests]:
    """One TaskRequests per task the config names, tokenised by ``tokenizer`` for a model that reads at most
    ``max_length`` tokens (lm-eval's ``HFLM.max_length``: see ``context_length``)."""
    encoder = _encoder_class()(tokenizer, max_length)
    out = []
    for name, task in load_tasks(config).items():
        instances = build_instances(task, config)
        rows: dict[tuple[int, ...], int] = {}
        continuations: dict[Continuation, int] = {}
        answers: dict[tuple, tuple[int, ...]] = {}

        def scored(context: list[int], continuation: list[int]) -> int:
            if len(continuation) > max_length:
                raise TaskError(f"task {name}: a continuation of {len(continuation)} tokens is longer than the "
                                f"model's {max_length}")
            row = tuple((context + continuation)[-(max_length + 1):][:-1])
            c = Continuation(rows.setdefault(row, len(rows)), tuple(continuation))
            return continuations.setdefault(c, len(continuations))

        single = [i for i in instances if i.request_type == "loglikelihood"]
        for inst, (context, continuation) in zip(single, encoder.loglikelihood(single, disable_tqdm=True)):
            answers[("loglikelihood", inst.args)] = (scored(context, continuation),)
        rolling = [i for i in instances if i.request_type == "loglikelihood_rolling"]
        for inst, windows in zip(rolling, encoder.loglikelihood_rolling(rolling)):
            answers[("loglikelihood_rolling", inst.args)] = tuple(scored(c, w) for c, w in windows)
        out.append(TaskRequests(task=name, documents=documents(task, config.limit), requests=len(instances),
                                tokens=sum(len(r) for r in rows), output_type=task.OUTPUT_TYPE,
                                num_fewshot=int(task.get_config("num_fewshot") or 0), rows=tuple(rows),
                                continuations=tuple(continuations), answers=answers, lm_task=task))
    return out


def context_length(model_config, tokenizer) -> int:
    """The tokens a model reads, as HFLM resolves it (n_positions, max_position_embeddings or n_ctx of the
    config, else the tokenizer's model_max_length, else 2048)."""
    from lm_eval.models.utils import resolve_max_length
    return resolve_max_length(model_config, tokenizer)


def check_tokenizer(tokenizer, model_config, model_tokenizer=None) -> None:
    """TaskError unless ``tokenizer`` can be the model's: none of its ids beyond the model's vocabulary, and the
    same ids as the model folder's own tokenizer where it has one (``vocabulary_difference``)."""
    from workloads.data.text import vocabulary_difference
    size = len(tokenizer)
    if size > model_config.vocab_size:
        raise TaskError(f"the tokenizer is not the model's: it has {size} tokens, the model's vocabulary "
                        f"{model_config.vocab_size}")
    if model_tokenizer is not None:
        difference = vocabulary_difference(tokenizer, model_tokenizer)
        if difference:
            raise TaskError(f"the tokenizer is not the model's own: {difference}")
