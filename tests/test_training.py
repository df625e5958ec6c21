import copy

import pytest
import torch

from workloads.data import load_dataset
from workloads.models import network_config
from workloads.train.loop import Trainer, load_network
from workloads.train.recipe import TrainConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def digits_net(name="preact_resnet20", **kw):
    return network_config(name, in_channels=1, num_classes=10, image_size=8, **kw)


def test_recipe_milestones_and_warmup():
    c = TrainConfig(iterations=64_000)
    assert c.lr_at(0, 110) == 0.01 and c.lr_at(399, 110) == 0.01 and c.lr_at(400, 110) == 0.1
    assert c.lr_at(0, 56) == 0.1  # no warm-up below 110 layers
    assert c.lr_at(31_999, 56) == 0.1 and c.lr_at(32_000, 56) == pytest.approx(0.01)
    assert c.lr_at(48_000, 56) == pytest.approx(0.001)
    short = TrainConfig(iterations=640)
    assert short.lr_at(3, 110) == 0.01 and short.lr_at(4, 110) == 0.1 and short.lr_at(320, 20) == pytest.approx(0.01)


@pytest.mark.parametrize("bad, message", [(dict(iterations=0), "iterations"), (dict(mode="sgdr"), "mode"),
                                          (dict(milestones=[1.5]), "milestones"), (dict(lr=-1), "lr")])
def test_bad_recipes(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


@pytest.mark.slow
def test_digits_reaches_well_below_chance(digits):
    trainer = Trainer(digits_net(), TrainConfig(iterations=150, seed=0), digits)
    history = trainer.run()
    assert history[-1]["test_error"] < 0.15  # chance is 0.90
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(m["images_per_s"] > 0 for m in history)


@pytest.mark.slow
def test_same_seed_same_weights_and_resume_is_seamless(digits):
    cfg = TrainConfig(iterations=24, seed=3, eval_every=8, mode="stochastic_depth")
    net = digits_net(stochastic_depth=True)
    whole = Trainer(net, cfg, digits)
    whole.run()
    again = Trainer(net, cfg, digits)
    first_part = []
    again.run(lambda m, t: first_part.append(copy.deepcopy(t.state_dict())) if m["epoch"] == 1 else None)
    for k, v in whole.net.state_dict().items():
        assert torch.equal(v, again.net.state_dict()[k]), k
    resumed = Trainer(net, cfg, digits)
    resumed.load_state_dict(first_part[0])
    assert resumed.iteration == 8
    resumed.run()
    for k, v in whole.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]


def test_final_checkpoint_loads_with_weights_only(digits, tmp_path):
    trainer = Trainer(digits_net("plain15", widths=(8, 16, 32)), TrainConfig(iterations=5, seed=0), digits)
    trainer.run()
    torch.save(trainer.final_checkpoint(), tmp_path / "model.pt")
    net, ckpt = load_network(str(tmp_path / "model.pt"))
    assert ckpt["dataset"] == "digits" and ckpt["iterations"] == 5
    with torch.no_grad():
        assert torch.allclose(net(digits.test_images[:4]), trainer.net.eval()(digits.test_images[:4]), atol=1e-6)


@pytest.mark.slow
def test_effective_paths_training_learns_through_random_subsets(digits):
    """m of n blocks per mini-batch: the subnetworks it trains classify well below chance.

    (At test time all blocks run; after so short a run on digits that network is still at
    chance, which the analysis reports rather than hides.)"""
    from workloads.train.modes import effective_paths_mask
    trainer = Trainer(digits_net("resnet20"), TrainConfig(iterations=150, mode="effective_paths", active_blocks=4),
                      digits)
    history = trainer.run()
    assert history[-1]["train_error"] < 0.5
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        trainer.net.eval()
        errors = [(trainer.net(digits.test_images, active=effective_paths_mask(9, 4, g)).argmax(1)
                   != digits.test_labels).float().mean().item() for _ in range(5)]
    assert sorted(errors)[2] < 0.5


@pytest.mark.slow
def test_effective_path_training_reports_its_error_under_the_scaled_rule(digits):
    """The runs table's test error of an effective-paths run is the network under the default test rule
    (each branch times m/n), not the unscaled network, which sits near chance."""
    from workloads.train.inference_rules import apply_test_rule
    trainer = Trainer(digits_net(widths=(4, 8, 8)), TrainConfig(iterations=30, seed=0, mode="effective_paths"), digits)
    trainer.run()
    scaled = apply_test_rule(trainer.net, "scaled", trainer.sampler.active).eval()
    with torch.no_grad():
        wrong = int((scaled(digits.test_images).argmax(1) != digits.test_labels).sum())
    error, _ = trainer.evaluate()
    assert trainer.sampler.active == 4 and error == pytest.approx(wrong / len(digits.test_labels))
    with torch.no_grad():
        unscaled = int((trainer.net.eval()(digits.test_images).argmax(1) != digits.test_labels).sum())
    assert unscaled != wrong  # the rule changed what was measured
