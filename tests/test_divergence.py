"""Divergence from the intact model on text (workloads/surgery/divergence.py): every plan's mean KL(intact || plan),
top-1 agreement and entropy equal a float64 reference computed from full logits; the intact plan's KL is 0 and its
agreement 1 exactly; slices, chunks and waiting leaves change no number; the head never makes more logits at once
than its budget; images get none of them.

GPT-2 and a Llama of 3 layers, width 32, random weights large enough (initializer_range 0.2) that the plans'
distributions differ.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny
from language_cases import VOCAB
from workloads.models.adapters.hf import from_causal_lm
from workloads.surgery import (delete_blocks, delete_span, evaluate_plans, evaluate_plans_over, forward_plan, intact,
                               random_deletion, random_swaps)

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTH, LAYERS = 12, 3


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    """(BlockNetwork, token ids [8, LENGTH], next tokens [8, LENGTH], plans) of one architecture."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    if request.param == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=32,
                                           initializer_range=0.2))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=32, initializer_range=0.2))
    net = from_causal_lm(model.eval())
    infos = net.block_infos()
    plans = [intact(infos)] + [delete_blocks(infos, [i]) for i in range(len(infos))]
    plans += [delete_span(infos, 1, 2), random_deletion(infos, 3, 0), random_swaps(infos, 1, 0)]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (8, LENGTH), generator=g)
    return net, ids, torch.randint(0, VOCAB, (8, LENGTH), generator=g), plans


def _reference(net, plans, ids) -> list[tuple[float, float, float]]:
    """(mean KL(intact || plan), agreement, mean entropy) of every plan from its full logits in float64."""
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        log_p = F.log_softmax(forward_plan(net64, plans[0], ids).flatten(0, 1), 1)
        out = []
        for plan in plans:
            log_q = F.log_softmax(forward_plan(net64, plan, ids).flatten(0, 1), 1)
            kl = (log_p.exp() * (log_p - log_q)).sum(1).mean().item()
            agreement = (log_q.argmax(1) == log_p.argmax(1)).double().mean().item()
            out.append((kl, agreement, -(log_q.exp() * log_q).sum(1).mean().item()))
    return out


def test_kl_agreement_and_entropy_equal_a_float64_reference(lm):
    net, ids, labels, plans = lm
    assert plans[0].deleted == frozenset()
    # chunks of 3, 3 and 2 sequences (36 positions x 32 wide), slices of 25 positions, leaves waiting two at a time
    got = evaluate_plans(net, plans, ids, labels, chunk_size=3, logit_budget=25 * VOCAB)
    want = _reference(net, plans, ids)
    positions = labels.numel()
    assert got[0].kl == 0.0 and got[0].agreement == 1.0  # the intact leaf is the reference's own computation
    for plan, r, (kl, agreement, entropy) in zip(plans, got, want, strict=True):
        assert r.kl == pytest.approx(kl, rel=1e-5, abs=1e-6), plan
        assert abs(r.agreement - agreement) <= 1 / positions + 1e-12, plan  # a near-tie may flip
        assert r.entropy == pytest.approx(entropy, rel=1e-5), plan
    assert min(r.kl for r in got[1:]) > 1e-3 and min(r.agreement for r in got[1:]) < 1  # the plans really differ


def test_slices_chunks_and_waiting_leaves_change_no_number(lm):
    net, ids, labels, plans = lm
    whole = evaluate_plans(net, plans, ids, labels, chunk_size=8, logit_budget=8 * LENGTH * VOCAB)  # one slice
    runs = [evaluate_plans(net, plans, ids, labels, chunk_size=3, logit_budget=VOCAB),  # one position a slice
            evaluate_plans(net, plans, ids, labels, chunk_size=8, logit_budget=7 * VOCAB),
            evaluate_plans(net, plans, ids, labels, chunk_size=2, logit_budget=30 * VOCAB),  # 3 leaves a flush
            evaluate_plans_over(net, plans, [(ids[:5], labels[:5]), (ids[5:], labels[5:])])]
    for got in runs:
        for a, b in zip(whole, got, strict=True):
            assert (a.correct, a.examples) == (b.correct, b.examples)
            for name in ("loss", "kl", "agreement", "entropy"):
                assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-6, abs=1e-9), name


def test_the_head_never_makes_more_logits_than_its_budget(lm):
    net, ids, labels, plans = lm
    largest = [0]
    hook = net.head.register_forward_hook(lambda module, args, out: largest.__setitem__(0, max(largest[0], out.numel())))
    try:
        evaluate_plans(net, plans, ids, labels, chunk_size=8, logit_budget=10 * VOCAB)
    finally:
        hook.remove()
    assert largest[0] == 10 * VOCAB  # 96 positions of the chunk, 10 at a time


def test_without_divergence_the_loss_is_the_same_and_nothing_else_is_measured(lm):
    net, ids, labels, plans = lm
    plain = evaluate_plans(net, plans, ids, labels, chunk_size=3, divergence=False)
    full = evaluate_plans(net, plans, ids, labels, chunk_size=3)
    assert [(r.loss, r.correct) for r in plain] == [(r.loss, r.correct) for r in full]
    assert all(r.kl is None and r.agreement is None and r.entropy is None for r in plain)


def test_images_get_no_divergence(images):
    net = tiny("resnet20")
    infos = net.block_infos()
    results = evaluate_plans(net, [intact(infos), delete_blocks(infos, [2])], *images)
    assert all(r.kl is None and r.agreement is None and r.entropy is None for r in results)
    over = evaluate_plans_over(net, [intact(infos)], [images])
    assert over[0].kl is None and over[0].loss == pytest.approx(results[0].loss)
