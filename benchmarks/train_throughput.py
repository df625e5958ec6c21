"""Training throughput: unravel's on-device loop vs a plain PyTorch loop with a DataLoader.

Same network, data, recipe and number of iterations, in one run. The naive loop is the
usual public one: a Dataset that augments each image in Python (pad-crop-flip with
torchvision transforms), a DataLoader with batch 128, NCHW, fp32. unravel keeps the
training set as one tensor on the device and augments whole batches there. Prints
images/s for both and ``speedup=X`` (unravel images/s / naive images/s) per setting.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.runtime import reexec_with_tuned_allocator  # noqa: E402

reexec_with_tuned_allocator()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from workloads.data import TensorDataset, load_dataset  # noqa: E402
from workloads.models import build_network, network_config  # noqa: E402
from workloads.train.loop import Trainer  # noqa: E402
from workloads.train.recipe import TrainConfig  # noqa: E402


class PerImage(Dataset):
    def __init__(self, images, labels, pad: int, flip: bool):
        self.images, self.labels = images, labels
        size = images.shape[-1]
        steps = [v2.RandomCrop(size, padding=pad)] if pad else []
        self.transform = v2.Compose(steps + ([v2.RandomHorizontalFlip()] if flip else []))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def naive_loop(cfg, data: TensorDataset, iterations: int, warmup: int, device) -> float:
    torch.manual_seed(0)
    net = build_network(cfg).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    pad, flip = {"cifar": (4, True), "shift1": (1, False)}[data.augmentation]
    loader = DataLoader(PerImage(data.train_images, data.train_labels, pad, flip), batch_size=128, shuffle=True,
                        drop_last=True)
    done, start, seen = 0, None, 0
    while done < iterations + warmup:
        for x, y in loader:
            if done == warmup:
                start = time.perf_counter()
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            seen += 128 if done > warmup else 0
            if done >= iterations + warmup:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def unravel_loop(cfg, data: TensorDataset, iterations: int, warmup: int, device) -> float:
    trainer = Trainer(cfg, TrainConfig(iterations=iterations + warmup, seed=0), data, device)
    for _ in range(warmup):
        trainer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iterations * 128 / (time.perf_counter() - start)


def cifar_shaped(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorDataset("cifar-shaped", x, y, x[:256], y[:256], 10, "cifar")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="runs in about two minutes on 2 CPU cores")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    iters = args.iterations or (10 if args.quick else 50)
    settings = [("preact_resnet110", "digits", load_dataset("digits")),
                ("plain15", "digits", load_dataset("digits")),
                ("resnet110", "CIFAR-shaped", cifar_shaped(2048))]
    print(f"device {device}, {torch.get_num_threads()} threads, batch 128, {iters} timed iterations after 3 warm-up")
    for name, label, data in settings:
        cfg = network_config(name, in_channels=data.in_channels, num_classes=10, image_size=data.image_size)
        naive = naive_loop(cfg, data, iters, 3, device)
        ours = unravel_loop(cfg, data, iters, 3, device)
        print(f"{name:18s} {label:13s} naive DataLoader {naive:8.0f} img/s   unravel {ours:8.0f} img/s   "
              f"speedup={ours / naive:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
