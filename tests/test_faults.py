"""Faults injected for real (SIGKILLs, a full disk, a trial that raises, damaged files); after each,
rerunning the same command completes the sweep with every unit exactly once."""
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from orchestrator import store
from orchestrator.cli import main
from orchestrator.experiment.spec import parse_spec
from orchestrator.run.sweep import run_studies
from orchestrator.experiment.units import expand
from processes import cli, finish
from sweep_cases import BASE, assert_exactly_once, table_keys, with_studies, write_spec

pytestmark = pytest.mark.slow  # every test here starts Ray or a process

HERE = Path(__file__).parent


def evaluator_pids(busy: bool) -> list[int]:
    """Ray names its worker processes after the actor method they run (``ray::Evaluator.run``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::Evaluator.run" if busy else "ray::Evaluator"):
            pids.append(int(entry.name))
    return pids


def test_a_worker_sigkilled_mid_batch_is_restarted_and_its_batch_redone(out):
    spec = parse_spec(with_studies(random_deletion={"k_max": 9, "draws": 20}, plans_per_batch=3,
                                   evaluators={"count": 2, "cpu": 1}))
    total = len(expand(spec))
    result = {}
    sweep = threading.Thread(target=lambda: result.update(outcome=run_studies(spec, out, progress=False)))
    sweep.start()
    killed = []
    deadline = time.time() + 120
    while not killed and sweep.is_alive() and time.time() < deadline:
        for pid in evaluator_pids(busy=True):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            break
        time.sleep(0.01)
    sweep.join(timeout=600)
    assert killed, "no evaluator was caught in the middle of a batch"
    outcome = result["outcome"]
    assert outcome.failed == 0 and outcome.computed == total
    assert_exactly_once(out, total)


def test_driver_killed_between_writing_a_part_and_renaming_it(out, ray_session, tmp_path):
    raw = with_studies(plans_per_batch=4, evaluators={"count": 1, "cpu": 1})
    total = len(expand(parse_spec(raw)))
    args = ["lesion", str(write_spec(tmp_path, raw)), "--out", str(out), "--address", ray_session]
    code, err = finish(cli(*args, env={"UNRAVEL_FAULTS": "kill_before_rename=4"}))
    assert code == -signal.SIGKILL, err[-2000:]
    assert len(list(out.rglob(".part-*.tmp"))) == 1  # spec.json, two parts, then the third part: written, fsynced, never renamed
    assert len(list(out.rglob("part-*.parquet"))) == 2
    code, err = finish(cli(*args))
    assert code == 0, err[-2000:]
    assert_exactly_once(out, total)


def test_driver_killed_at_three_random_points_then_rerun_is_exactly_once(out, ray_session, tmp_path):
    raw = with_studies(random_deletion={"k_max": 9, "draws": 40}, plans_per_batch=2,
                       evaluators={"count": 2, "cpu": 1})
    total = len(expand(parse_spec(raw)))
    args = ["lesion", str(write_spec(tmp_path, raw)), "--out", str(out), "--address", ray_session]
    rng = random.Random(2016)
    kills, seen, rounds = 0, [], 0
    while kills < 3 and rounds < 6:  # a round whose sweep ends before its kill point does not count
        rounds += 1
        # a random point: during start-up (no new part yet), or after 1 to 12 more parts plus a
        # fraction of a batch (mid-batch, mid-write, between batches)
        parts = len(list(out.rglob("part-*.parquet")))
        more = rng.choice([0, 0, *range(1, 13)])
        proc = cli(*args)
        deadline = time.time() + 120
        if more == 0:
            time.sleep(rng.uniform(0.5, 5.0))
        while more and proc.poll() is None and time.time() < deadline and \
                len(list(out.rglob("part-*.parquet"))) < parts + more:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if (out / "lesion").exists():
            keys = table_keys(out)  # every part readable, nothing twice, at every point
            assert len(keys) == len(set(keys))
            seen.append(len(keys))
    partial = [n for n in seen if 0 < n < total]
    assert kills == 3 and len(set(partial)) >= 2, (kills, seen)  # most kills landed mid-sweep
    code, err = finish(cli(*args), timeout=600)
    assert code == 0, err[-2000:]
    assert_exactly_once(out, total)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root, as on the CI machine); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_the_sweep_cleanly_and_a_rerun_completes(trained, small_disk, tmp_path):
    out = small_disk / "out"
    out.mkdir()
    shutil.copy(trained / "epochs.parquet", out / "epochs.parquet")
    runs = store.read_table(trained, "runs")  # the checkpoints stay where training wrote them (absolute paths)
    runs["checkpoint"] = [str(trained / c) for c in runs["checkpoint"]]
    store.write_table(out, "runs", runs)
    raw = with_studies(random_deletion={"k_max": 9, "draws": 10}, plans_per_batch=2)
    total = len(expand(parse_spec(raw)))
    filler = small_disk / "filler"
    stat = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 48 * 1024))  # leave room for a few parts
    spec = write_spec(tmp_path, raw)
    full = CliRunner().invoke(main, ["lesion", str(spec), "--out", str(out)])
    assert full.exit_code == 1, full.output
    assert "no space left on the device" in full.output and "Traceback" not in full.output
    written = table_keys(out)
    assert 0 < len(written) < total and len(written) == len(set(written))
    assert not list(out.rglob(".*.tmp"))
    filler.unlink()
    rerun = CliRunner().invoke(main, ["lesion", str(spec), "--out", str(out)])
    assert rerun.exit_code == 0, rerun.output
    assert f"{len(written)} already written" in rerun.output
    assert_exactly_once(out, total)


TRAIN = {
    "name": "faulty",
    "data": {"dataset": "digits"},
    "training": {"iterations": 60, "max_failures": 0, "recipe": {"eval_every": 10}, "resources": {"cpu": 1},
                 "runs": [{"network": "preact_resnet20", "label": "res", "overrides": {"widths": [4, 8, 16]}}]},
}


def test_a_trial_raising_in_its_third_epoch_is_recorded_then_resumed(ray_session, tmp_path):
    out = tmp_path / "out"
    args = ["train", str(write_spec(tmp_path, TRAIN)), "--out", str(out), "--address", ray_session]
    code, err = finish(cli(*args, env={"UNRAVEL_FAULTS": "raise_in_epoch=3"}))
    assert code == 1 and "FAILED res" in err, err[-2000:]
    errors = pd.read_parquet(out / "training_errors.parquet")
    assert errors["error"].str.contains("InjectedFault").all() and len(errors) == 1
    assert pd.read_parquet(out / "runs.parquet").empty
    code, err = finish(cli(*args, "--resume"))
    assert code == 0, err[-2000:]
    runs = pd.read_parquet(out / "runs.parquet")
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(runs) == 1 and runs["epochs"].iloc[0] == 6
    assert epochs["epoch"].tolist() == [1, 2, 3, 4, 5, 6]  # each epoch once, none lost to the failure
    assert pd.read_parquet(out / "training_errors.parquet").empty


def test_damaged_result_files_are_named_never_read_as_data(out, tmp_path):
    spec = write_spec(tmp_path, BASE)
    first = CliRunner().invoke(main, ["lesion", str(spec), "--out", str(out)])
    assert first.exit_code == 0, first.output
    total = len(table_keys(out))
    victim = sorted((out / "lesion").rglob("part-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # half a Parquet file
    for command in (["lesion", str(spec), "--out", str(out)], ["status", str(out)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert str(victim) in result.output and "unreadable result file" in result.output
    victim.unlink()  # what the message says to do
    redo = CliRunner().invoke(main, ["lesion", str(spec), "--out", str(out)])
    assert redo.exit_code == 0, redo.output
    assert_exactly_once(out, total)
    runs = out / "runs.parquet"
    runs.write_bytes(runs.read_bytes()[:100])
    result = CliRunner().invoke(main, ["lesion", str(spec), "--out", str(out)])
    assert result.exit_code == 2 and f"{runs}: unreadable table" in result.output, result.output
    assert pq.read_table(next((out / "lesion").rglob("part-*.parquet"))).num_rows > 0  # results untouched


def test_an_evaluator_that_cannot_start_on_its_node_is_one_line_with_its_traceback_kept(bucket, tmp_path):
    """Data on object storage that the preflight finds (the folder is there) and each node copies: a damaged file
    in it is met only by the evaluators' constructors, on their nodes. One line on the terminal, exit 1, none
    of Ray's tracebacks per retry and per queued batch; the traceback is kept in the errors table."""
    import pyarrow.fs as pafs
    import torch

    from conftest import write_fake_cifar
    from workloads.models import build_network
    write_fake_cifar(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])          # cut short, as a failed upload leaves it
    root = bucket("cifar10")
    s3, prefix = pafs.FileSystem.from_uri(root)
    pafs.copy_files(str(tmp_path / "data" / "cifar-10-batches-py"), f"{prefix}/cifar-10-batches-py",
                    destination_filesystem=s3)
    torch.manual_seed(0)
    small = {"network": "preact_resnet20", "label": "mine", "overrides": {"widths": [4, 8, 16]}}
    torch.save(build_network("preact_resnet20", widths=[4, 8, 16], num_classes=10).state_dict(), tmp_path / "net.pt")
    spec = write_spec(tmp_path, {"name": "node-data", "data": {"dataset": "cifar10", "root": root},
                                 "models": [{**small, "checkpoint": str(tmp_path / "net.pt")}],
                                 "studies": {"test_examples": 10, "single_deletion": {}, "plans_per_batch": 2,
                                             "evaluators": {"count": 2, "cpu": 1}}})
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "lesion", str(spec), "--out", str(out)],
                          env={**os.environ, "PYTHONPATH": str(HERE.parent), "UNRAVEL_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said[-4000:]
    told = [line for line in said.splitlines() if "CIFAR-10" in line or "cannot start" in line]
    assert len(told) == 1 and told[0].startswith("Error: the evaluators cannot start: DataNotFound: CIFAR-10 not "
                                                 "found in "), said[-4000:]
    assert f"its traceback is in the errors table, {out / 'errors'}" in told[0]
    assert "Traceback" not in said and "(raylet)" not in said and "retries" not in said, said[-4000:]
    errors = pd.read_parquet(out / "errors")
    assert len(errors) in (1, 2) and errors["error"].str.startswith("DataNotFound: CIFAR-10 not found").all()
    assert errors["traceback"].str.contains("Traceback").all() and errors["traceback"].str.contains("load_cifar").all()
    assert not (out / "lesion").exists()
