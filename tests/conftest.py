"""Shared fixtures (tiny networks with non-trivial BatchNorm statistics, tiny data, the session's Ray and its
trained sweep) and the suite's rules: a test that starts Ray is marked slow; a sweep tests share runs once."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from registry_cases import single_thread
from workloads.models import build_network


# object storage in tests is a local S3-compatible server (``s3_server``): fake credentials, set before any
# Ray starts so its workers inherit them, and no instance-metadata lookup (no traffic beyond loopback)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")
# the tests start Rays of their own: never attach to a cluster the shell names (cluster.connect reads this)
os.environ.pop("RAY_ADDRESS", None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test that starts Ray is marked slow (`make test-fast` leaves those out): one that is not fails, in its
    setup (a fixture) or its body, naming the mark."""
    if item.get_closest_marker("slow"):
        yield
        return
    import ray
    started = ray.init

    def refused(*args, **kwargs):
        pytest.fail(f"{item.nodeid} starts Ray: mark it @pytest.mark.slow", pytrace=False)
    ray.init = refused
    try:
        yield
    finally:
        ray.init = started


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a free port), for the session: its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A new bucket on the local S3 server; returns a function naming a URI in it, with the endpoint in
    its query as a user would write it."""
    import uuid

    import pyarrow.fs as pafs
    name = f"t-{uuid.uuid4().hex[:12]}"
    endpoint = s3_server.removeprefix("http://")
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(name)

    def uri(prefix: str = "exp", bucket_name: str = name) -> str:
        return f"s3://{bucket_name}/{prefix}?endpoint_override={endpoint}&scheme=http"
    return uri


def randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so eval mode is a real test."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return net.eval()


def tiny(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    overrides.setdefault("in_channels", 3)
    overrides.setdefault("num_classes", 10)
    return randomise_bn(build_network(name, **overrides), seed)


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test (registry_cases.single_thread says why): the modules of
    tiny-network tests ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with single_thread():
        yield


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 3, 16, 16, generator=g), torch.randint(0, 10, (40,), generator=g)


@pytest.fixture(scope="session")
def ray_session():
    """One private local Ray for the whole test session (never one per test), started as a command starts
    it: its GCS address, for the tests that attach commands to it as to a cluster."""
    import ray

    from orchestrator.run.cluster import connect
    # one declared GPU: GPU evaluators are scheduled as on a cluster, then run on the CPU
    connect(num_cpus=2, num_gpus=1, dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def write_fake_cifar(root, n_train_per_batch: int = 6, n_test: int = 10, seed: int = 0, classes: int = 10):
    """A few images in CIFAR-10's real on-disk format (pickled batches in cifar-10-batches-py).

    Returns the md5 table the real loader checks, for tests to point torchvision at.
    """
    import hashlib
    import pickle
    from pathlib import Path

    import numpy as np
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(name, n):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(i % classes) for i in range(n)]
        with open(folder / name, "wb") as f:
            # str keys, as CIFAR's Python-2 pickles read with encoding="latin1"
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f, protocol=2)
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    train = [batch(f"data_batch_{i}", n_train_per_batch) for i in range(1, 6)]
    test = [batch("test_batch", n_test)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 10,
                     "num_vis": 3072}, f, protocol=2)
    meta_md5 = hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()
    return train, test, meta_md5


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A CIFAR-10 folder torchvision's real CIFAR10 class reads (its checksums point at our files)."""
    import torchvision
    train, test, meta_md5 = write_fake_cifar(tmp_path)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", train)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", test)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta", {**torchvision.datasets.CIFAR10.meta, "md5": meta_md5})
    return tmp_path


def write_image_folder(root, classes: int = 4, val_per_class: int = 3, train_per_class: int = 2, size: int = 40,
                       seed: int = 0):
    """An ImageNet-style tree (root/val/<class>/*.JPEG, root/train/...) of small random JPEGs."""
    from pathlib import Path

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, per_class in (("val", val_per_class), ("train", train_per_class)):
        for c in range(classes):
            folder = Path(root) / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return Path(root)


@pytest.fixture(scope="session")
def trained(ray_session, tmp_path_factory):
    """The sweep tests' two runs (sweep_cases.BASE), trained once for the whole session."""
    from orchestrator.experiment.spec import parse_spec
    from orchestrator.run.training import run_training
    from sweep_cases import BASE
    out = tmp_path_factory.mktemp("trained")
    outcome = run_training(parse_spec(BASE), out, progress=False)
    assert not outcome.failed
    return out


@pytest.fixture
def out(trained, tmp_path):
    """A fresh results folder holding the trained runs."""
    import shutil
    dst = tmp_path / "out"
    shutil.copytree(trained, dst)
    return dst


@pytest.fixture
def shipped_cwd(tmp_path, monkeypatch):
    """A working folder in which the shipped specs' language-model folders exist as far as parsing a spec reads
    them (config.json: the model's layers), so every experiments/*.yaml parses; the weights are not needed."""
    from pathlib import Path

    import yaml

    from language_cases import write_llama_config
    for path in sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml")):
        for model in yaml.safe_load(path.read_text()).get("models") or []:
            if model.get("network") == "hf_causal_lm":
                write_llama_config(tmp_path / model["checkpoint"])
    monkeypatch.chdir(tmp_path)
    return tmp_path
