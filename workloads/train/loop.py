"""The training loop: the whole training set on the device, batches drawn by index.

Seeded and reproducible: the network's initialisation comes from ``seed``, and every
random choice afterwards (batch order, augmentation, which blocks run) from one
generator whose state is part of the checkpoint, so a resumed run continues the same
sequence. Reports once per ``eval_every`` iterations (default: one epoch).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F

from workloads.data import TensorDataset, augment
from workloads.models import NetConfig, build_network, load_checkpoint
from workloads.train.kernel_faults import avoid_faulty_kernels
from workloads.train.modes import BlockSampler
from workloads.train.recipe import TrainConfig

Report = Callable[[dict, "Trainer"], None]


def network_depth(cfg: NetConfig) -> int:
    return cfg.depth if cfg.arch == "resnet" else 0


class Trainer:
    def __init__(self, net_config: NetConfig, config: TrainConfig, data: TensorDataset,
                 device: torch.device | str = "cpu"):
        self.net_config, self.config = net_config, config
        self.device = torch.device(device)
        self.data = data.to(self.device)
        torch.manual_seed(config.seed)
        self.net = build_network(net_config).to(self.device)
        avoid_faulty_kernels(self.net)  # strided 1x1 convolutions corrupt the heap on AVX2 CPUs otherwise
        self.channels_last = True  # faster on CPU too (oneDNN), 1.4x on digits
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, nesterov=config.nesterov)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.sampler = BlockSampler(self.net, config.mode, self.generator, config.active_blocks)
        self.iteration = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0
        n = len(self.data.train_labels)
        self.steps_per_epoch = max(1, n // config.batch_size)
        self.eval_every = config.eval_every or self.steps_per_epoch
        self._order = torch.empty(0, dtype=torch.long, device=self.device)

    # -- checkpointing --------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration, "generator": self.generator.get_state(),
                "order": self._order.cpu(), "history": list(self.history), "train_seconds": self.train_seconds,
                "net_config": self.net_config.to_json(), "train_config": self.config.to_json()}

    def load_state_dict(self, state: dict) -> None:
        if state["net_config"] != self.net_config.to_json():
            raise ValueError("checkpoint was written for another network config")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.generator.set_state(state["generator"])
        self._order = state["order"].to(self.device)
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])

    # -- the loop ---------------------------------------------------------------------
    def _batch_indices(self) -> torch.Tensor:
        b = self.config.batch_size
        if len(self._order) < b:  # a fresh permutation per epoch; a partial tail is dropped
            n = len(self.data.train_labels)
            self._order = torch.randperm(n, generator=self.generator, device=self.device)
            if n < b:
                self._order = self._order.repeat(math.ceil(b / n))
        idx, self._order = self._order[:b], self._order[b:]
        return idx

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        lr = self.config.lr_at(self.iteration, network_depth(self.net_config))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        idx = self._batch_indices()
        x = augment(self.data.train_images[idx], self.data.augmentation, self.generator)
        y = self.data.train_labels[idx]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.net.train()
        with self._autocast():
            logits = self.net(x, active=self.sampler())
            loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        return loss.detach(), (logits.argmax(1) != y).sum()

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 batch: int = 512) -> tuple[float, float]:
        """(error, mean loss) of the intact network, BN in eval mode; a network trained on effective paths
        under the default test rule ("scaled": each branch times m/n, ``workloads.train.inference_rules``), since
        unscaled it sits near chance and the runs table would say so of every such run."""
        images = self.data.test_images if images is None else images
        labels = self.data.test_labels if labels is None else labels
        self.net.eval()
        net = self.net
        if self.config.mode == "effective_paths":
            from workloads.train.inference_rules import apply_test_rule
            net = apply_test_rule(self.net, "scaled", self.sampler.active)
        loss = torch.zeros((), device=self.device, dtype=torch.float64)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        with self._autocast():
            for s in range(0, len(labels), batch):
                x = images[s:s + batch]
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = net(x).float()
                loss += F.cross_entropy(logits, labels[s:s + batch], reduction="sum").double()
                wrong += (logits.argmax(1) != labels[s:s + batch]).sum()
        return float(wrong) / len(labels), float(loss) / len(labels)

    def run(self, report: Report | None = None) -> list[dict]:
        """Train until ``config.iterations``, calling ``report(metrics, self)`` after each period."""
        while self.iteration < self.config.iterations:
            start = time.perf_counter()
            losses, wrong, seen = [], torch.zeros((), dtype=torch.long, device=self.device), 0
            period_end = min(self.config.iterations, (self.iteration // self.eval_every + 1) * self.eval_every)
            lr = self.config.lr_at(self.iteration, network_depth(self.net_config))
            while self.iteration < period_end:
                loss, w = self.step()
                losses.append(loss)
                wrong += w
                seen += self.config.batch_size
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            self.train_seconds += seconds
            test_error, test_loss = self.evaluate()
            metrics = {"epoch": len(self.history) + 1, "iteration": self.iteration,
                       "train_loss": float(torch.stack(losses).mean()), "train_error": float(wrong) / seen,
                       "test_error": test_error, "test_loss": test_loss, "lr": lr,
                       "images_per_s": seen / seconds, "seconds": seconds}
            self.history.append(metrics)
            if report is not None:
                report(metrics, self)
        return self.history

    def final_checkpoint(self) -> dict:
        """What a trained run leaves behind: weights, configs, and how it did."""
        error, loss = self.evaluate()
        return {"state_dict": self.net.state_dict(), "net_config": self.net_config.to_json(),
                "train_config": self.config.to_json(), "dataset": self.data.name, "test_error": error,
                "test_loss": loss, "iterations": self.iteration, "train_seconds": self.train_seconds,
                "history": list(self.history)}


def load_network(path: str, map_location: str | torch.device = "cpu"):
    """(network, checkpoint) from a final checkpoint, read with weights_only=True."""
    net, ckpt = load_checkpoint(path)
    return net.to(map_location).eval(), ckpt
