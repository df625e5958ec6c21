"""Networks trained elsewhere (torchvision checkpoints) lesioned on an ImageNet-style folder."""
import io
import shutil

import pandas as pd
import pytest
import torch
import torchvision
import yaml
from click.testing import CliRunner

from conftest import tiny, write_image_folder
from orchestrator.cli import main
from workloads.data import load_dataset
from workloads.models import (CheckpointError, load_checkpoint, network_config, network_from_weights, read_weights,
                              state_dict_of)
from workloads.surgery import deletion_pool, evaluate_plans, evaluate_plans_over, intact, random_deletion


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imagenet"), classes=4, val_per_class=3, train_per_class=2)


def tv_model(seed: int = 0, classes: int = 4):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=classes).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so eval mode is a real test
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def saved(obj, path):
    torch.save(obj, path)
    return path


def test_image_folder_streams_a_fixed_random_sample_with_the_evaluation_transform(folder):
    data = load_dataset("imagenet", folder, image_size=32)
    assert data.streamed and data.num_classes == 4 and data.test_size() == 12 and data.train_size() == 8
    chunks = list(data.test_chunks(5, 2))
    assert [len(y) for _, y in chunks] == [2, 2, 1]
    assert chunks[0][0].shape == (2, 3, 32, 32)
    assert data.test_indices(5) == data.test_indices(5) != list(range(5))  # a sample, not the first classes
    labels = torch.cat([y for _, y in chunks])
    assert labels.tolist() == [data.test.targets[i] for i in data.test_indices(5)]
    x, y = data.train_examples([7, 0])
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 0]


def test_streamed_evaluation_equals_one_resident_pass(folder):
    data = load_dataset("imagenet", folder, image_size=32)
    net = tiny("preact_resnet20", widths=[4, 8, 16], num_classes=4)
    infos = net.block_infos()
    plans = [intact(infos)] + [random_deletion(infos, k, d) for k in (1, 3) for d in range(3)]
    images, labels = (torch.cat(t) for t in zip(*data.test_chunks(None, 12)))
    resident = evaluate_plans(net, plans, images, labels, device="cpu")
    streamed = evaluate_plans_over(net, plans, data.test_chunks(None, 5), device="cpu")
    for a, b in zip(resident, streamed):
        assert a.correct == b.correct and a.examples == b.examples == 12
        assert b.loss == pytest.approx(a.loss, rel=1e-5)


@pytest.mark.parametrize("wrap", ["plain", "nested", "data_parallel", "torchvision_reference_script"])
def test_a_users_torchvision_state_dict_gives_the_same_outputs(wrap, tmp_path):
    import argparse
    model = tv_model()
    weights = model.state_dict()
    obj = {"plain": weights, "nested": {"epoch": 90, "state_dict": weights},
           "data_parallel": {"model": {f"module.{k}": v for k, v in weights.items()}},
           # what torchvision's references/classification/train.py saves
           "torchvision_reference_script": {"model": weights, "optimizer": {"state": {}, "param_groups": []},
                                            "epoch": 89, "args": argparse.Namespace(lr=0.5, model="resnet18")},
           }[wrap]
    path = saved(obj, tmp_path / "ckpt.pth")
    net = network_from_weights(network_config("tv_resnet18", num_classes=4), state_dict_of(read_weights(path)))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))


@pytest.mark.parametrize("case, message", [
    ("pickled_model", "refused, it holds pickled Python objects such as torchvision.models.resnet.ResNet"),
    ("truncated", "not a readable PyTorch checkpoint, truncated or corrupt"),
    ("not_a_checkpoint", "not a readable PyTorch checkpoint"),
    ("other_shape", "fc.weight has shape [10, 512] in the checkpoint, [4, 512] in the network"),
    ("other_network", "not those of tv_resnet34 with 4 classes"),
    ("no_tensors", "holds no tensors"),
])
def test_bad_checkpoints_are_refused_with_one_line_naming_the_file(case, message, tmp_path):
    path = tmp_path / "ckpt.pth"
    network = "tv_resnet18"
    if case == "pickled_model":
        saved(tv_model(), path)
    elif case == "truncated":
        buf = io.BytesIO()
        torch.save(tv_model().state_dict(), buf)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif case == "not_a_checkpoint":
        path.write_text("name: not weights\n")
    elif case == "other_shape":
        saved(tv_model(classes=10).state_dict(), path)
    elif case == "other_network":
        saved(tv_model().state_dict(), path)
        network = "tv_resnet34"
    else:
        saved({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(CheckpointError) as err:
        network_from_weights(network_config(network, num_classes=4), state_dict_of(read_weights(path), str(path)),
                             str(path))
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text


def spec_for(folder, checkpoint, **studies) -> dict:
    return {"name": "tv", "data": {"dataset": "imagenet", "root": str(folder), "image_size": 32, "num_classes": 4},
            "models": [{"network": "tv_resnet18", "label": "r18", "checkpoint": str(checkpoint)}],
            "studies": {"test_examples": 8, "single_deletion": {}, "random_deletion": {"k_max": 2, "draws": 2},
                        "gradients": {"draws": 1, "batch_size": 4}, "evaluators": {"count": 1, "cpu": 1},
                        "plans_per_batch": 4, **studies}}


@pytest.mark.slow
def test_torchvision_checkpoint_lesioned_on_an_image_folder_through_the_cli(ray_session, folder, tmp_path):
    model = tv_model()
    checkpoint = saved(model.state_dict(), tmp_path / "r18.pth")
    path = tmp_path / "tv.yaml"
    path.write_text(yaml.safe_dump(spec_for(folder, checkpoint)))
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["lesion", str(path), "--out", str(out)])
    assert first.exit_code == 0, first.output
    runs = pd.read_parquet(out / "runs.parquet")
    assert runs["mode"].tolist() == ["pretrained"] and runs["num_blocks"].tolist() == [8]
    lesion = pd.read_parquet(out / "lesion")
    net = network_from_weights(network_config("tv_resnet18", num_classes=4), model.state_dict())
    blocks = deletion_pool(net.block_infos())
    assert sorted(lesion[lesion["study"] == "single_deletion"]["draw"]) == sorted(blocks)
    assert (lesion["study"] == "random_deletion").sum() == 4 and lesion["unit_key"].is_unique
    assert len(pd.read_parquet(out / "gradients")) == 8  # one draw, k = 1..8
    # the intact row is the torchvision model itself on the same fixed sample
    data = load_dataset("imagenet", folder, image_size=32)
    with torch.no_grad():
        wrong = sum(int((model(x).argmax(1) != y).sum()) for x, y in data.test_chunks(8, 8))
    row = lesion[lesion["study"] == "intact"].iloc[0]
    assert row["examples"] == 8 and row["error"] == pytest.approx(wrong / 8)
    rerun = CliRunner().invoke(main, ["lesion", str(path), "--out", str(out)])
    assert rerun.exit_code == 0 and " 0 computed" in rerun.output, rerun.output
    report = CliRunner().invoke(main, ["figures", str(out)])  # a report of imported runs, no training
    assert report.exit_code == 0, report.output
    text = (out / "report.md").read_text()
    assert "| r18, pretrained | - | pretrained |" in text and "no single-deletion results" not in text
    assert len(pd.read_parquet(out / "lesion")) == len(lesion)
    # a damaged converted copy is converted again from the unchanged source; nothing is recomputed
    imported = out / runs["checkpoint"].iloc[0]
    imported.write_bytes(imported.read_bytes()[:1000])
    repaired = CliRunner().invoke(main, ["lesion", str(path), "--out", str(out)])
    assert repaired.exit_code == 0 and " 0 computed" in repaired.output, repaired.output
    assert torch.equal(load_checkpoint(str(imported))[0].state_dict()["blocks.0.block.conv1.weight"],
                       model.state_dict()["layer1.0.conv1.weight"])
    # new weights under the same path are refused, not mixed with the results of the old ones
    saved(tv_model(seed=1).state_dict(), checkpoint)
    changed = CliRunner().invoke(main, ["lesion", str(path), "--out", str(out)])
    assert changed.exit_code == 2 and "models[0].checkpoint" in changed.output and "changed since" in changed.output
    # ...even when the imported copy and its record are gone: the results would be of unknown weights
    shutil.rmtree(imported.parent)
    gone = CliRunner().invoke(main, ["lesion", str(path), "--out", str(out)])
    assert gone.exit_code == 2 and "not the weights they came from" in gone.output, gone.output


@pytest.mark.parametrize("change, message", [
    (lambda s, f, c: s["data"].update(root=str(f / "nowhere")), "data.root: no ImageNet-style folder"),
    (lambda s, f, c: s["data"].update(num_classes=10), "data.num_classes: is 10, but"),
    (lambda s, f, c: s["models"][0].update(checkpoint=str(c) + ".missing"), "models[0].checkpoint: no such file"),
    (lambda s, f, c: s["models"][0].update(network="tv_resnet34"), "models[0].checkpoint:"),
    (lambda s, f, c: s["studies"].update(recalibrate_bn=True), "studies.recalibrate_bn: is not supported"),
    (lambda s, f, c: s.update(training={"iterations": 10, "runs": [{"network": "tv_resnet18"}]}),
     "training: dataset imagenet is evaluated from disk"),
    (lambda s, f, c: s["data"].update(resize=16), "data.resize: must be at least"),
    (lambda s, f, c: s["studies"]["evaluators"].update(gpu=2, cpu=0), "studies.evaluators.gpu: asks for 0 CPU and 2 GPU"),
])
@pytest.mark.slow
def test_imagenet_spec_mistakes_are_one_line_exit_2_and_nothing_written(change, message, ray_session, folder,
                                                                        tmp_path):
    checkpoint = saved(tv_model().state_dict(), tmp_path / "r18.pth")
    spec = spec_for(folder, checkpoint)
    change(spec, folder, checkpoint)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["lesion", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1], result.output
    assert not (tmp_path / "out").exists()


def test_an_empty_class_folder_is_named_before_anything_starts(folder, tmp_path):
    root = tmp_path / "imagenet"
    shutil.copytree(folder, root)
    (root / "val" / "n99999999").mkdir()
    (root / "train" / "n99999999").mkdir()
    checkpoint = saved(tv_model(classes=5).state_dict(), tmp_path / "r18.pth")
    spec = spec_for(root, checkpoint)
    spec["data"]["num_classes"] = 5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["lesion", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"data.root: {root / 'val' / 'n99999999'} holds no image" in result.output
    assert not (tmp_path / "out").exists()
