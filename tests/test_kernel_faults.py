"""Training survives oneDNN's faulty AVX2 kernel for strided 1x1 convolutions, with the same numbers.

PyTorch 2.14.1's ``jit_1x1:avx2`` weight gradient of a stride-2 1x1 convolution in channels_last corrupts the
heap. ``ONEDNN_MAX_CPU_ISA=AVX2`` makes any x86 CPU take that kernel, so the first test fails on an unremedied
trainer on every machine (within a few steps for narrow networks)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workloads.data import TensorDataset
from workloads.models import build_network, network_config, skeleton
from workloads.train.kernel_faults import SubsampledPointwiseConv2d, avoid_faulty_kernels
from workloads.train.loop import Trainer
from workloads.train.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
NARROW = (4, 8, 16)  # 4 -> 8 channels at a downsampling block: the kernel corrupts the heap within a few steps

# every way unravel's own networks get a strided 1x1 convolution, narrow
FAMILIES = {
    "option B": dict(option="B", widths=NARROW),
    "1x1 conv shortcut": dict(shortcut="conv", widths=NARROW),
    "exclusive gating": dict(shortcut="exclusive_gating", widths=NARROW),
    "shortcut gating": dict(shortcut="shortcut_gating", widths=NARROW),
    "pre-activation, option B": dict(option="B", unit="e", widths=NARROW),
    "bottleneck, option B": dict(depth=29, bottleneck=True, option="B", widths=(8, 16, 32)),
}

TRAIN_UNDER_AVX2 = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from orchestrator.experiment.spec import load_spec
    from workloads.data import load_dataset
    from workloads.models import network_config
    from workloads.train.loop import Trainer
    from workloads.train.recipe import TrainConfig
    from tests.test_kernel_faults import FAMILIES, has_strided_pointwise

    data = load_dataset("digits")
    nets = [(name, network_config("resnet20", in_channels=1, **kw), 40) for name, kw in FAMILIES.items()]
    spec = load_spec("experiments/identity-mappings-digits.yaml")
    seen = set()
    for trial in spec.training.trials:  # the IM digits spec's networks that have one, each once
        if trial.net_config not in seen and has_strided_pointwise(trial.net_config):
            seen.add(trial.net_config)
            nets.append((trial.run_id, trial.net_config, 8))
    for name, cfg, steps in nets:
        trainer = Trainer(cfg, TrainConfig(iterations=steps, seed=0), data)
        for _ in range(steps):
            trainer.step()
        print("trained", name, flush=True)
""")


def has_strided_pointwise(cfg) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
               for m in skeleton(cfg).modules())


@pytest.mark.slow
def test_every_network_with_a_strided_pointwise_convolution_trains_on_the_avx2_kernels():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", TRAIN_UNDER_AVX2], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"training died ({result.returncode}): {result.stderr[-500:]}"
    trained = [line.removeprefix("trained ") for line in result.stdout.splitlines()]
    assert trained[:len(FAMILIES)] == list(FAMILIES)
    assert len(trained) == len(FAMILIES) + 5  # the IM spec's 1x1 conv shortcut and its four gated networks


def _digits_like(n: int = 256, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 8, 8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return TensorDataset("digits", images, labels, images[:64], labels[:64], num_classes=10, augmentation="shift1")


def test_the_remedy_changes_only_strided_pointwise_convolutions_and_keeps_the_weights_names():
    for kw in FAMILIES.values():
        net = build_network(network_config("resnet20", in_channels=1, **kw))
        before = {k: v.clone() for k, v in net.state_dict().items()}
        strided = [m for m in net.modules() if type(m) is nn.Conv2d and m.stride != (1, 1)
                   and m.kernel_size == (1, 1)]
        assert avoid_faulty_kernels(net) == len(strided) > 0
        assert all(type(m) is SubsampledPointwiseConv2d for m in strided)
        after = net.state_dict()
        assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    plain = build_network(network_config("resnet20", in_channels=1))  # option A: nothing to change
    assert avoid_faulty_kernels(plain) == 0
    assert not any(isinstance(m, SubsampledPointwiseConv2d) for m in plain.modules())
    tv = skeleton(network_config("tv_resnet18"))  # torchvision's projections are covered too
    assert avoid_faulty_kernels(tv) == 3


@pytest.mark.parametrize("stride,size", [(2, 8), (2, 7), (3, 8)])
def test_a_subsampled_pointwise_convolution_is_the_strided_one_in_float64(stride, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 1, stride, bias=True).double()
    remedied = nn.Conv2d(4, 8, 1, stride, bias=True).double()
    remedied.load_state_dict(conv.state_dict())
    avoid_faulty_kernels(remedied)
    x = torch.randn(16, 4, size, size, dtype=torch.float64)
    grads = []
    for layer in (conv, remedied):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        (y.sin().sum()).backward()
        grads.append((y.detach(), xi.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


SOUND_STRIDED_KERNEL = (torch.backends.cpu.get_cpu_capability() == "AVX512"
                        and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("", "AVX512_CORE", "ALL"))


@pytest.mark.skipif(not SOUND_STRIDED_KERNEL, reason="oneDNN's strided kernel corrupts the heap on this CPU")
def test_training_with_the_remedy_is_bit_for_bit_the_strided_kernels_where_that_is_sound():
    """Steps of the real trainer against the same steps with oneDNN's strided kernel put back (on an AVX-512 CPU,
    where that kernel is sound): every weight equal to the bit."""
    cfg = network_config("resnet20", in_channels=1, option="B", widths=(8, 16, 32))
    runs = []
    for restore in (False, True):
        trainer = Trainer(cfg, TrainConfig(iterations=8, seed=0), _digits_like())
        if restore:
            for m in trainer.net.modules():
                if type(m) is SubsampledPointwiseConv2d:
                    m.__class__ = nn.Conv2d
        for _ in range(8):
            trainer.step()
        runs.append(trainer.net.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_the_remedy_keeps_the_strided_convolution_off_the_cpu():
    conv = nn.Conv2d(4, 8, 1, 2)
    avoid_faulty_kernels(conv)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, 2))
    if torch.cuda.is_available():  # a GPU runs the convolution as built
        conv, x = conv.cuda(), x.cuda()
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, 2))
