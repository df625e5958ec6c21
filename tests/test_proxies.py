"""One-forward proxies against float64 references computed by hand: a Hugging Face model's own hidden states and
its modules' tensors (hooks) for GPT-2 and Llama, forward hooks on the blocks of a ResNet; and the permutation
prefixes behind Shapley values."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny
from language_cases import VOCAB
from workloads.models.adapters.hf import from_causal_lm
from workloads.surgery import (PlanError, deletion_pool, layer_spans, layer_units, permutation_prefix,
                               proxy_scores)

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 3


def _lm(name: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
    torch.manual_seed(0)
    config = (GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=LAYERS, n_head=2, n_positions=32, initializer_range=0.2,
                         bos_token_id=1, eos_token_id=1) if name == "gpt2" else
              LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=LAYERS,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                          initializer_range=0.2, bos_token_id=1, eos_token_id=1))
    model = AutoModelForCausalLM.from_config(config).eval()
    return model, from_causal_lm(model)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _hand_lm(model, ids: torch.Tensor, positions: str):
    """Per unit (cosine, relative magnitude) and per span the angular distance, from the model's hidden states
    (the residual stream entering each layer) and hooks on its layers and attention modules."""
    layers = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    attention = [getattr(layer, "attn", None) or layer.self_attn for layer in layers]
    added, last = [], []
    hooks = [a.register_forward_hook(lambda m, i, o: added.append(o[0] if isinstance(o, tuple) else o))
             for a in attention]
    hooks.append(layers[-1].register_forward_hook(lambda m, i, o: last.append(o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    for h in hooks:
        h.remove()
    # HF's last hidden state is after the final norm: the stream leaving the last layer is its output
    stream = list(hidden[:LAYERS]) + last
    pick = (lambda x: x[:, -1]) if positions == "last" else (lambda x: x.flatten(0, -2))
    units = []
    for j in range(LAYERS):
        middle = stream[j] + added[j]
        for x, y in ((stream[j], middle), (middle, stream[j + 1])):
            x, y = pick(x).double(), pick(y).double()
            units.append((_cos(x, y).mean().item(), ((y - x).norm(dim=-1) / y.norm(dim=-1)).mean().item()))
    angular = {(s, n): (torch.arccos(_cos(pick(stream[s]), pick(stream[s + n])).clamp(-1, 1)) / math.pi).mean().item()
               for n in range(1, LAYERS + 1) for s in range(LAYERS - n + 1)}
    return units, angular


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_language_model_proxies_equal_its_own_hidden_states(name, positions):
    model, net = _lm(name)
    ids = torch.randint(0, VOCAB, (6, 9), generator=torch.Generator().manual_seed(1))
    scores = proxy_scores(net, [(ids, ids)], positions=positions, device="cpu", precision="fp32")
    units, angular = _hand_lm(model, ids, positions)
    assert scores.positions == positions and scores.examples == (6 if positions == "last" else 54)
    assert scores.units == tuple(range(2 * LAYERS))
    assert scores.cosine == pytest.approx([c for c, _ in units], abs=1e-5)
    assert scores.block_influence == pytest.approx([1 - c for c, _ in units], abs=1e-5)
    assert scores.relative_magnitude == pytest.approx([r for _, r in units], rel=1e-4)
    # every span layer_spans enumerates, at every length: the span_deletion study's (start, length)
    assert sorted(scores.angular) == sorted(layer_spans(net.block_infos(), LAYERS)) == sorted(angular)
    assert scores.angular == pytest.approx(angular, abs=1e-5)
    assert all(0 < d < 1 for d in scores.angular.values())


def test_the_last_position_and_all_positions_differ_and_chunks_do_not_matter():
    _, net = _lm("llama")
    ids = torch.randint(0, VOCAB, (5, 8), generator=torch.Generator().manual_seed(2))
    whole = proxy_scores(net, [(ids, ids)], device="cpu")
    chunked = proxy_scores(net, [(ids[:2], ids[:2]), (ids[2:], ids[2:])], device="cpu", chunk_size=1)
    assert chunked.examples == whole.examples == 5
    assert chunked.block_influence == pytest.approx(whole.block_influence, abs=1e-6)
    assert chunked.angular == pytest.approx(whole.angular, abs=1e-6)
    every = proxy_scores(net, [(ids, ids)], positions="all", device="cpu")
    assert every.examples == 40 and every.block_influence != pytest.approx(whole.block_influence, abs=1e-3)


def _hand_images(net, images: torch.Tensor, pooled_dims: tuple[int, ...]):
    """Per block its (input, output) from forward hooks; the proxies from features averaged over ``pooled_dims`` in
    float64, a downsampling block compared with its shortcut, a span with its input carried through the shortcuts in
    it."""
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for b in net.blocks]
    with torch.no_grad():
        net(images)
        for h in hooks:
            h.remove()
        pool = lambda x: x.double().mean(dim=pooled_dims)  # noqa: E731
        units = []
        for block, (x, y) in zip(net.blocks, seen):
            reference, out = pool(block.skip(x)), pool(y)
            units.append((_cos(reference, out).mean().item(),
                          ((out - reference).norm(dim=-1) / out.norm(dim=-1)).mean().item()))
        angular = {}
        layers = layer_units(net.block_infos())
        for start, length in layer_spans(net.block_infos(), len(layers)):
            first, last = layers[start][0], layers[start + length - 1][-1]
            carried = seen[first][0]
            for b in range(first, last + 1):
                carried = net.blocks[b].skip(carried)
            angle = torch.arccos(_cos(pool(carried), pool(seen[last][1])).clamp(-1, 1)) / math.pi
            angular[(start, length)] = angle.mean().item()
    return units, angular


@pytest.mark.parametrize("name", ["resnet20", "tv_resnet18"])
def test_resnet_proxies_equal_forward_hooks_on_pooled_features(name):
    net = tiny(name).double()
    size = 32 if name.startswith("tv_") else 8
    images = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    infos = net.block_infos()
    assert any(not i.identity_skip for i in infos)  # a downsampling shortcut: spans cross it
    scores = proxy_scores(net, [(images[:4], None), (images[4:], None)], device="cpu", precision="fp32",
                          chunk_size=3)
    units, angular = _hand_images(net, images, (2, 3))
    assert scores.positions == "pooled" and scores.examples == 6
    assert scores.cosine == pytest.approx([c for c, _ in units], abs=1e-10)
    assert scores.relative_magnitude == pytest.approx([r for _, r in units], abs=1e-10)
    assert scores.block_influence == pytest.approx([1 - c for c, _ in units], abs=1e-10)
    assert scores.angular == pytest.approx(angular, abs=1e-10) and len(angular) == len(infos) * (len(infos) + 1) // 2


def test_a_vision_transformer_pools_its_tokens():
    """A transformer's stream keeps its channels last ([N, tokens, C]): its features are the mean over tokens."""
    net = tiny("tv_VisionTransformer", image_size=32, arch_options=dict(image_size=32, patch_size=8, num_layers=2,
                                                                         num_heads=2, hidden_dim=16, mlp_dim=32))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    scores = proxy_scores(net, [(images, None)], device="cpu", precision="fp32")
    units, angular = _hand_images(net, images, (1,))
    assert scores.block_influence == pytest.approx([1 - c for c, _ in units], abs=1e-5)
    assert scores.relative_magnitude == pytest.approx([r for _, r in units], rel=1e-4)
    assert scores.angular == pytest.approx(angular, abs=1e-5) and len(angular) == 3


def test_the_whole_study_is_one_forward_per_chunk():
    """Cost: every unit runs once per chunk, whatever the number of scores (a span of every start and length)."""
    net = tiny("resnet20")
    calls = [0] * net.num_blocks
    for b, block in enumerate(net.blocks):
        block.register_forward_hook(lambda m, i, o, b=b: calls.__setitem__(b, calls[b] + 1))
    images = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    scores = proxy_scores(net, [(images, None)], device="cpu", chunk_size=4)
    assert len(scores.angular) == 45 and calls == [3] * net.num_blocks


def test_bad_positions_and_an_empty_test_set_are_refused_in_one_line():
    net = tiny("resnet20")
    with pytest.raises(ValueError, match="positions must be one of last, all, got 'first'"):
        proxy_scores(net, [], positions="first", device="cpu")
    with pytest.raises(ValueError, match="the test set is empty"):
        proxy_scores(net, [], device="cpu")


def test_permutation_prefixes_are_nested_and_end_with_the_whole_pool():
    infos = tiny("resnet20").block_infos()
    exclude = [0, 4]
    pool = deletion_pool(infos, exclude)
    for draw in range(3):
        plans = [permutation_prefix(infos, k, draw, exclude) for k in range(len(pool) + 1)]
        assert plans == [permutation_prefix(infos, k, draw, exclude) for k in range(len(pool) + 1)]  # seeded
        assert [len(p.deleted) for p in plans] == list(range(len(pool) + 1))
        assert all(a.deleted < b.deleted for a, b in zip(plans, plans[1:]))
        assert plans[-1].deleted == frozenset(pool) and not plans[-1].deleted & set(exclude)
    orders = {tuple(sorted(b.deleted - a.deleted)[0] for a, b in zip(plans, plans[1:]))
              for plans in ([permutation_prefix(infos, k, d) for k in range(len(infos) + 1)] for d in range(5))}
    assert len(orders) == 5  # each draw is another permutation
    with pytest.raises(PlanError, match="cannot delete the first k=8 blocks of a permutation: 7 are deletable"):
        permutation_prefix(infos[:7], 8, 0)


def test_a_layer_that_cannot_be_deleted_has_no_score_and_splits_the_spans():
    net = tiny("plain15")
    infos = net.block_infos()
    scores = proxy_scores(net, [(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5)), None)],
                          device="cpu")
    fixed = [i.index for i in infos if not i.deletable]
    assert fixed and scores.units == tuple(deletion_pool(infos))
    assert all(math.isnan(scores.block_influence[b]) for b in fixed)
    assert all(0 < scores.block_influence[b] < 2 for b in scores.units)
    assert sorted(scores.angular) == sorted(layer_spans(infos, len(infos)))
