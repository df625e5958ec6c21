"""The evaluator actor: test set resident on its device, a small checkpoint cache, batches in.

One long-lived actor per GPU share (or CPU slot): Ray does not reuse worker processes
for GPU tasks, so tasks would reload data and weights per call; an actor loads the data
once, keeps the last few networks, and runs batch after batch through the engine.
A test set too large for memory (ImageNet) is streamed from disk instead, once per batch
of plans, so decoding is shared by every plan of the batch. A unit that raises becomes an
error row; the batch goes on.
"""
from __future__ import annotations

import os
import time
import traceback
from collections import OrderedDict

import ray
import torch

from workloads.data import load_dataset
from workloads.models import load_checkpoint
from workloads.runtime import set_threads
from workloads.surgery import evaluate_plans_over, gradient_norms
from workloads.surgery.evaluate import default_precision

from .units import Batch, plan_for

STREAM_CHUNK = 256  # images decoded per step of a streamed test set


class Evaluator:
    def __init__(self, dataset: str, data_root: str, download: bool, test_examples: int | None, precision: str,
                 recalibrate_bn: bool, calibration_examples: int, exclude_blocks: tuple[int, ...], threads: int,
                 gradient_batch_size: int = 128, cache_size: int = 4, loader_options: dict | None = None):
        set_threads(max(1, threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.data = load_dataset(dataset, data_root, download, **(loader_options or {}))
        self.test_examples = test_examples
        if not self.data.streamed:  # resident: the test set moves to the device once
            chunk = next(self.data.test_chunks(test_examples))
            self.test = (chunk[0].to(self.device), chunk[1].to(self.device))
        calibration = min(calibration_examples, self.data.train_size()) if recalibrate_bn else 0
        self.calibration = self.data.train_examples(range(calibration))[0].to(self.device) if calibration else None
        self.precision = default_precision(self.device) if precision == "auto" else precision
        self.exclude = tuple(exclude_blocks)
        self.cache: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self.cache_size = cache_size
        self.gradient_batch_size = gradient_batch_size

    def where(self) -> str:
        return f"{ray.util.get_node_ip_address()} {self.device} pid {os.getpid()}"

    def _network(self, run_id: str, checkpoint: bytes | ray.ObjectRef):
        if run_id in self.cache:
            self.cache.move_to_end(run_id)
            return self.cache[run_id]
        blob = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
        net, _ = load_checkpoint(blob, f"checkpoint of {run_id}")
        net.to(self.device)
        self.cache[run_id] = net
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return net

    def run(self, batch: Batch, checkpoint) -> tuple[list[dict], list[dict]]:
        """(result rows, error rows) for one batch."""
        started = time.perf_counter()
        try:
            net = self._network(batch.run_id, checkpoint)
        except Exception as e:  # a broken checkpoint fails every unit of the batch, not the actor
            return [], [self._error(u, e) for u in batch.units]
        if batch.study == "gradients":
            return self._gradients(net, batch, started)
        return self._lesions(net, batch, started)

    def _error(self, unit, exc: BaseException) -> dict:
        return {"unit_key": unit.key, "run_id": unit.run_id, "study": unit.study, "k": unit.k, "draw": unit.draw,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:],
                "time": time.time()}

    def _lesions(self, net, batch: Batch, started: float):
        infos = net.block_infos()
        plans, units, errors = [], [], []
        for u in batch.units:
            try:
                plans.append(plan_for(u, infos, self.exclude))
                units.append(u)
            except Exception as e:
                errors.append(self._error(u, e))
        if not plans:
            return [], errors
        chunks = self.data.test_chunks(self.test_examples, STREAM_CHUNK) if self.data.streamed else [self.test]
        results = evaluate_plans_over(net, plans, chunks, precision=self.precision, device=self.device,
                                      recalibrate=self.calibration)
        seconds = (time.perf_counter() - started) / len(plans)
        rows = [{"unit_key": u.key, "run_id": u.run_id, "study": u.study, "k": u.k, "draw": u.draw,
                 "deleted": sorted(p.deleted), "order": list(p.order), "kendall_tau": p.kendall_tau,
                 "active_blocks": p.active_blocks, "error": r.error, "loss": r.loss, "examples": r.examples,
                 "precision": self.precision, "bn_recalibrated": self.calibration is not None, "seconds": seconds}
                for u, p, r in zip(units, plans, results)]
        return rows, errors

    def _gradients(self, net, batch: Batch, started: float):
        draw = batch.units[0].draw
        size = self.gradient_batch_size
        g = torch.Generator().manual_seed(1_000_003 + draw)  # the draw's own random training batch
        idx = torch.randperm(self.data.train_size(), generator=g)[:size]
        images, labels = (t.to(self.device) for t in self.data.train_examples(idx))
        draws = [(u.k, u.draw) for u in batch.units]
        results = gradient_norms(net, images, labels, draws, device=self.device)
        seconds = (time.perf_counter() - started) / len(draws)
        rows = [{"unit_key": u.key, "run_id": u.run_id, "study": "gradients", "k": r.k, "draw": u.draw,
                 "chosen": list(r.chosen), "log10_norm": r.log10_norm, "batch_size": r.batch_size,
                 "seconds": seconds} for u, r in zip(batch.units, results)]
        return rows, []


def evaluator_actor(cpu: float, gpu: float):
    """The actor class with its resources; restarted on death, its calls retried."""
    return ray.remote(num_cpus=cpu, num_gpus=gpu, max_restarts=-1, max_task_retries=2)(Evaluator)
