"""CPU kernels that PyTorch gets wrong, and how training steers around them.

PyTorch 2.14.1 ships oneDNN 3.12, whose kernel ``jit_1x1:avx2`` computes the weight gradient of a stride-2
1x1 convolution in channels_last. On CPUs without AVX-512 (AMD Zen 2/3, many laptops and cloud instances;
on any x86 CPU under ``ONEDNN_MAX_CPU_ISA=AVX2``) that kernel corrupts the heap: training dies within tens
of steps with "corrupted double-linked list", SIGSEGV or SIGBUS. Every network with a strided 1x1
convolution is hit: option-B and 1x1-conv shortcuts, gated shortcuts at downsampling blocks, bottleneck
and torchvision ResNets with projections.

A 1x1 convolution reads only the pixels its stride lands on, so taking those pixels first and convolving
with stride 1 is the same sum of the same products: measured bit for bit equal to the strided kernel over
a whole training run (forward, both gradients, optimizer), and as fast (``benchmarks/strided_pointwise.py``).
oneDNN's stride-1 kernel is sound on both ISAs. The remedy applies on the CPU only; a GPU runs the
convolution as it is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution whose stride, on the CPU, is a subsample of its input: same parameters, same
    state_dict, same values as ``nn.Conv2d``."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.is_cpu:
            sh, sw = self.stride
            return F.conv2d(x[..., ::sh, ::sw], weight, bias, 1, 0, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def _strided_pointwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.stride != (1, 1)
            and module.padding == (0, 0) and module.padding_mode == "zeros")


def avoid_faulty_kernels(net: nn.Module) -> int:
    """Compute every strided 1x1 convolution of ``net`` as a subsample and a stride-1 convolution (in place:
    the modules keep their parameters, names and hooks). Returns how many were changed."""
    changed = 0
    for module in net.modules():
        if _strided_pointwise(module):
            module.__class__ = SubsampledPointwiseConv2d  # same attributes and state: only the forward differs
            changed += 1
    return changed
