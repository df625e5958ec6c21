"""torchvision's Vision Transformer as residual units at sublayer granularity (vit.py): the adapter
checks itself against the model's own tensors, a span of layers deletes both units of each, the engine equals one
full forward per plan (deleting attention or MLP sublayers, whole layers, spans of layers, reordering units of a
kind), and gradients by path length equal a float64 backward with the other branches detached. A tiny ViT with
random weights: nothing downloaded."""
import copy
import math

import pytest
import torch

from registry_cases import assert_engine_equals_forward
from workloads.models.adapters.vit import AdapterError, check_adapter, from_torchvision_vit
from workloads.surgery import (delete_blocks, delete_span, gradient_norms, intact,
                               layer_spans, layer_units, naive_gradient_norm, random_deletion, random_swaps)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(seed: int = 0, layers: int = 3):
    import torchvision
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=layers, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=10)
    with torch.no_grad():  # torchvision zero-initialises the classifier: give it weights, so errors differ
        model.heads.head.weight.normal_(0, 0.5)
        model.class_token.normal_(0, 0.5)
    return model.eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(24, 3, 16, 16, generator=g), torch.randint(0, 10, (24,), generator=g)


def test_two_units_per_layer_of_their_kind_and_the_adapter_checks_itself(batch):
    model = tiny_vit()
    net = from_torchvision_vit(model).eval()
    infos = net.block_infos()
    assert [i.kind for i in infos] == ["attention", "mlp"] * 3
    assert all(i.identity_skip and i.deletable and not i.changes_shape for i in infos)
    check_adapter(model, net, batch[0])
    with torch.no_grad():
        assert torch.equal(net(batch[0]), model(batch[0]))


def test_a_span_of_layers_deletes_the_attention_and_the_mlp_of_each():
    infos = from_torchvision_vit(tiny_vit()).block_infos()
    assert layer_units(infos) == [[0, 1], [2, 3], [4, 5]]
    assert layer_spans(infos, 2) == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2)]
    assert delete_span(infos, 1, 1).deleted == {2, 3}
    assert delete_span(infos, 1, 2).deleted == {2, 3, 4, 5}


def test_an_adapter_that_carries_the_wrong_tensor_is_refused_in_one_line(batch):
    model = tiny_vit()
    net = from_torchvision_vit(model)
    net.blocks[3].parts = lambda x: (x, torch.zeros_like(x))  # a unit that lost its branch
    with pytest.raises(AdapterError) as err:
        check_adapter(model, net, batch[0])
    assert "unit 3 (layer 1, mlp)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AdapterError, match="expected a torchvision VisionTransformer"):
        from_torchvision_vit(torch.nn.Linear(2, 2))


def test_engine_equals_one_forward_per_plan(batch):
    x, y = batch
    net = from_torchvision_vit(tiny_vit()).eval()
    infos = net.block_infos()
    plans = [intact(infos)] + [delete_blocks(infos, [i]) for i in range(len(infos))]
    plans += [delete_blocks(infos, [2 * j, 2 * j + 1]) for j in range(3)]  # whole layers
    plans += [delete_span(infos, start, n) for start, n in layer_spans(infos, 3) if n > 1]  # spans of whole layers
    plans += [random_deletion(infos, k, s) for k in (2, 4) for s in range(3)]
    plans += [random_swaps(infos, k, s) for k in (1, 2) for s in range(3)]
    for p in plans:  # a reorder moves attention with attention, MLP with MLP
        assert [infos[b].kind for b in p.order] == [i.kind for i in infos]
    assert any(p.order != tuple(sorted(p.order)) for p in plans)
    got = assert_engine_equals_forward(net, plans, x, y)
    assert len({round(r.loss, 6) for r in got}) > 3  # the plans really differ


def test_gradients_by_path_length_equal_a_float64_backward(batch):
    x, y = batch[0][:8], batch[1][:8]
    net = from_torchvision_vit(tiny_vit()).eval()
    ref = copy.deepcopy(net).double().requires_grad_(False)
    n = net.num_blocks
    draws = [(k, s) for k in (0, 1, n // 2, n) for s in range(2)]
    for r in gradient_norms(net, x, y, draws):
        want = naive_gradient_norm(ref, x.double(), y, r.chosen)
        assert r.log10_norm == pytest.approx(math.log10(want), abs=2e-5), (r.k, r.chosen)
