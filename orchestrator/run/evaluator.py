"""The evaluator actor: test set resident on its device, a small checkpoint cache, batches in.

One long-lived actor per GPU share (or CPU slot): Ray does not reuse worker processes
for GPU tasks, so tasks would reload data and weights per call; an actor loads the data
once, keeps the last few networks (each under the test-time rule its batch asks for: an
effective-paths run is evaluated as ``workloads.train.inference_rules`` says), and runs batch after
batch through the engine.
A test set too large for memory (ImageNet) is streamed from disk instead, once per batch
of plans, so decoding is shared by every plan of the batch. A tasks batch scores one lm-evaluation-harness
task on its plans in one engine pass (``workloads.tasks``), its requests built once per (tokenizer, task) and
kept. A proxies batch is one run's intact forward, every proxy read off it (``workloads.surgery.proxy_scores``).
A unit that raises becomes an error row; the batch goes on.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass

import ray
import torch

from workloads.data import load_dataset
from workloads.models import NetConfig, load_checkpoint
from workloads.runtime import set_threads
from workloads.surgery import draw_batch, evaluate_plans_over, gate_statistics, gradient_norms, proxy_scores
from workloads.surgery.evaluate import default_precision
from workloads.train.inference_rules import apply_test_rule

from orchestrator import store
from orchestrator.run.data_cache import local_root
from orchestrator.experiment.document import Resources
from orchestrator.experiment.networks import language_model_config
from orchestrator.experiment.resolved import Data, Studies
from orchestrator.experiment.units import Batch, Unit, plan_for

# networks an evaluator keeps loaded, each (run, test-time rule) its own: an effective-paths run is evaluated under
# up to three rules (TEST_RULES), and batches reach an evaluator run after run, so four hold one run's networks and
# the last of the run before; each one kept holds device memory
NETWORKS_KEPT = 4


@dataclass(frozen=True)
class StartFailure:
    """What an evaluator's constructor raised on its node (data unreadable there, say), returned by every ``run``
    in place of rows: the driver then stops in one line and keeps the traceback in the errors table. Raised out
    of the constructor instead, it would reach the terminal as Ray's traceback per retry of every queued batch."""
    error: str       # 'SomeError: its first line'
    traceback: str

    @classmethod
    def of(cls, e: BaseException) -> "StartFailure":
        """The exception being handled."""
        lines = str(e).strip().splitlines()
        return cls(f"{type(e).__name__}: {lines[0] if lines else ''}"[:500], traceback.format_exc())


class Evaluator:
    def __init__(self, data: Data, studies: Studies):
        self.failure: StartFailure | None = None
        try:
            self._start(data, studies)
        except Exception as e:  # noqa: BLE001 - whatever a node's files raise, told once by run()
            self.failure = StartFailure.of(e)

    def _start(self, data: Data, studies: Studies) -> None:
        set_threads(studies.evaluators.threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.data_spec, self.test_examples = data, studies.test_examples
        self.datasets: dict[str, tuple] = {}
        self._use_data_of(None)
        self.calibration_examples = studies.calibration_examples
        self.calibration = self.calibration_images if studies.recalibrate_bn else None
        self.precision = default_precision(self.device) if studies.precision == "auto" else studies.precision
        self.exclude = studies.exclude_blocks
        self.metric = "next_token" if data.text else "classification"
        self.cache: OrderedDict[str, torch.nn.Module] = OrderedDict()   # the last NETWORKS_KEPT networks
        gradients = studies.study("gradients")
        self.gradient_batch_size = gradients.batch_size if gradients else 0
        proxies = studies.study("proxies")
        self.positions = proxies.positions if proxies and self.data_spec.text else "last"   # images: pooled anyway
        tasks = studies.study("tasks")
        self.tasks = tasks.tasks() if tasks else None
        self.task_requests: dict[tuple[str, str, str], list] = {}   # (tokenizer, model config, task) -> requests
        self.model_configs: dict[str, str] = {}   # language models: run id -> its config.json

    def _use_data_of(self, run_id: str | None) -> None:
        """The run's test set as self.data and self.test, loaded once: images are one dataset; a text is cut by
        each model's own tokenizer (unless the spec names one), so it is loaded once per tokenizer. Data a node
        cannot read raises in the constructor (the first run's) and is kept as the evaluator's failure later
        (another model's tokenizer): either way every later batch gets the StartFailure, not a reload."""
        config = self.data_spec.loader_config(run_id, local_root(self.data_spec.resolved_root))
        key = config.tokenizer or ""
        if key not in self.datasets:
            data = load_dataset(config)
            test = None
            if not data.streamed:  # resident: the test set moves to the device once
                chunk = next(data.test_chunks(self.test_examples))
                test = (chunk[0].to(self.device), chunk[1].to(self.device))
            self.datasets[key] = (data, test)
        self.data, self.test = self.datasets[key]

    def where(self) -> str:
        return f"{ray.util.get_node_ip_address()} {self.device} pid {os.getpid()}"

    @functools.cached_property
    def calibration_images(self) -> torch.Tensor:
        """The first training images, on the device: BatchNorm re-estimation (recalibrate_bn, rule recalibrated)."""
        count = min(self.calibration_examples, self.data.train_size())
        return self.data.train_examples(range(count))[0].to(self.device)

    def _network(self, batch: Batch, checkpoint: bytes | ray.ObjectRef):
        """The batch's network under its test-time rule, cached per (run, rule)."""
        key = f"{batch.run_id}|{batch.test_rule}"
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        blob = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
        net, saved = load_checkpoint(blob, f"checkpoint of {batch.run_id}")
        net.to(self.device)
        config = NetConfig.from_json(saved["net_config"])
        if config.arch == "hf":   # a language model: its config bounds the tokens a task's request may hold
            self.model_configs[batch.run_id] = config.hf_config
        if batch.test_rule:
            calibration = self.calibration_images if batch.test_rule == "recalibrated" else None
            net = apply_test_rule(net, batch.test_rule, batch.train_active, calibration).eval()
        self.cache[key] = net
        if len(self.cache) > NETWORKS_KEPT:
            self.cache.popitem(last=False)
        return net

    def run(self, batch: Batch, checkpoint) -> tuple[dict[str, list[dict]], list[dict]] | StartFailure:
        """(result rows by table, error rows) for one batch; the constructor's failure if it had one."""
        if self.failure is not None:
            return self.failure
        started = time.perf_counter()
        try:
            self._use_data_of(batch.run_id)
        except Exception as e:  # noqa: BLE001 - the node cannot read this run's data: no batch can run here
            self.failure = StartFailure.of(e)
            return self.failure
        try:
            net = self._network(batch, checkpoint)
        except Exception as e:  # a broken checkpoint fails every unit of the batch, not the actor
            return {}, [store.error_row(u, e, traceback.format_exc()) for u in batch.units]
        if batch.study == "tasks":
            return self._tasks(net, batch, started)
        work = {"gradients": self._gradients, "gates": self._gates, "proxies": self._proxies}.get(batch.study,
                                                                                                self._lesions)
        rows, errors = work(net, batch, started)
        return {batch.table: rows}, errors

    def _test_chunks(self):
        """The test set: resident, or streamed from disk in chunks."""
        return self.data.test_chunks(self.test_examples) if self.data.streamed else [self.test]

    def _plans(self, net, batch: Batch) -> tuple[list, list[Unit], list[dict]]:
        """(plans, their units, error rows of the units whose plan cannot be made)."""
        infos = net.block_infos()
        plans, units, errors = [], [], []
        for u in batch.units:
            try:
                plans.append(plan_for(u, infos, self.exclude))
                units.append(u)
            except Exception as e:
                errors.append(store.error_row(u, e, traceback.format_exc()))
        return plans, units, errors

    def _lesions(self, net, batch: Batch, started: float):
        plans, units, errors = self._plans(net, batch)
        if not plans:
            return [], errors
        results = evaluate_plans_over(net, plans, self._test_chunks(), precision=self.precision, device=self.device,
                                      recalibrate=self.calibration)
        seconds = (time.perf_counter() - started) / len(plans)
        rows = [store.lesion_row(u, p, r, test_rule=u.test_rule, precision=self.precision,
                                 bn_recalibrated=self.calibration is not None, seconds=seconds, metric=self.metric)
                for u, p, r in zip(units, plans, results)]
        return rows, errors

    def _gradients(self, net, batch: Batch, started: float):
        indices = draw_batch(self.data.train_size(), self.gradient_batch_size, batch.units[0].draw)
        images, labels = (t.to(self.device) for t in self.data.train_examples(indices))
        draws = [(u.k, u.draw) for u in batch.units]
        results = gradient_norms(net, images, labels, draws, device=self.device)
        seconds = (time.perf_counter() - started) / len(draws)
        rows = [store.gradient_row(u, r, seconds=seconds) for u, r in zip(batch.units, results)]
        return rows, []

    def _gates(self, net, batch: Batch, started: float):
        """One unit per run: every gated block's statistics, one row each (H)."""
        (unit,) = batch.units
        try:
            stats = gate_statistics(net, self._test_chunks(), device=self.device)
        except Exception as e:
            return [], [store.error_row(unit, e, traceback.format_exc())]
        seconds = (time.perf_counter() - started) / len(stats)  # each row its share: the rows sum to the unit's time
        return [store.gate_row(unit, s, seconds=seconds) for s in stats], []

    def _proxies(self, net, batch: Batch, started: float):
        """One unit per run: every unit's and span's proxy from one intact pass over the test set."""
        (unit,) = batch.units
        try:
            scores = proxy_scores(net, self._test_chunks(), positions=self.positions, device=self.device,
                                  precision=self.precision)
        except Exception as e:
            return [], [store.error_row(unit, e, traceback.format_exc())]
        return store.proxy_rows(unit, scores, seconds=time.perf_counter() - started), []

    def _requests(self, run_id: str, task: str) -> list:
        """The task's requests as the run's tokenizer cuts them for its model (``workloads.tasks.task_requests``,
        one per task the name holds), built once per (tokenizer, model config, task) and kept: every batch of the
        task reuses them."""
        from workloads.data.text import load_tokenizer
        from workloads.tasks import context_length, task_requests
        folder = self.data_spec.tokenizer_of(run_id)
        key = (folder, self.model_configs[run_id], task)
        if key not in self.task_requests:
            tokenizer = load_tokenizer(folder)
            length = context_length(language_model_config(self.model_configs[run_id]), tokenizer)
            self.task_requests[key] = task_requests(self._task_config(task), tokenizer, length)
        return self.task_requests[key]

    def _task_config(self, task: str):
        """The tasks study's settings for one of its tasks."""
        return dataclasses.replace(self.tasks, names=(task,))

    def _tasks(self, net, batch: Batch, started: float):
        """One task on the batch's plans in one engine pass: rows for task_samples and tasks, the unit's rows in
        both; a batch whose task cannot be scored is every unit's error row."""
        from workloads.tasks import score_tasks
        plans, units, errors = self._plans(net, batch)
        if not plans:
            return {}, errors
        scores, samples = [], []
        try:
            for requests in self._requests(batch.run_id, batch.task):
                results = score_tasks(net, plans, requests, self._task_config(batch.task), device=self.device,
                                      precision=self.precision)
                seconds = (time.perf_counter() - started) / len(plans)
                for u, p, r in zip(units, plans, results):
                    scores += store.task_rows(u, p, r, requests.task, precision=self.precision, seconds=seconds)
                    samples += store.task_sample_rows(u, p, r, requests.task)
        except Exception as e:
            return {}, errors + [store.error_row(u, e, traceback.format_exc()) for u in units]
        return {"task_samples": samples, "tasks": scores}, errors


def evaluator_actor(resources: Resources):
    """The actor class with its resources; restarted on death, its calls retried."""
    return ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu, max_restarts=-1, max_task_retries=2)(Evaluator)
