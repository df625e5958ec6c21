"""An experiment on object storage (a local S3-compatible server: moto's, on 127.0.0.1) behaves as one in a
local folder: the store's parts, listing, resume index, compaction killed at each step, prune and writer
lock, run against both; then the real CLI with `--out s3://...`: a sweep with Tune's state on the bucket,
a driver SIGKILLed mid-sweep and rerun, a second writer refused, query/status/figures from the URI, and
bad URIs refused in one line with nothing written."""
import io
import json
import os
import signal
import time

import pyarrow.fs as pafs
import pytest
import torch
from click.testing import CliRunner

from orchestrator.store import compaction
from orchestrator import store
from orchestrator.cli import main
from orchestrator.location import Location
from orchestrator.experiment.spec import parse_spec
from orchestrator.experiment.units import expand
from compaction_cases import SPEC, Killed, kill_at, snapshot, write_sweep
from processes import cli
from sweep_cases import BASE, write_spec


@pytest.fixture(params=["folder", "s3"])
def place(request, tmp_path):
    """OUT as a local folder, or as a URI on the local S3 server."""
    if request.param == "folder":
        return tmp_path / "out"
    return store.where(request.getfixturevalue("bucket")("out"))


def objects(uri: str) -> list[str]:
    """Every object below a URI, relative to it."""
    where = Location.of(uri)
    return sorted(where.relative(i.path) for i in where.files())


def test_parts_are_listed_read_and_resumed_alike(place, request):
    write_sweep(place)
    before = snapshot(place)
    assert all(r["done"] == r["units"] for r in before[2])
    assert {u.key for u in expand(SPEC)} <= before[1]
    folder = store.where(place)  # one kind of object wherever OUT lives
    assert isinstance(folder, Location) and folder.local == (request.node.callspec.params["place"] == "folder")
    assert len(before[0]["lesion"]) == len([u for u in expand(SPEC) if u.study != "gradients"])


@pytest.mark.parametrize("point", ["compact_staged", "compact_swapped"])
@pytest.mark.slow
def test_compaction_killed_at_each_step_then_rerun(place, monkeypatch, point):
    write_sweep(place)
    before = snapshot(place)
    kill_at(monkeypatch, point, 2)
    with pytest.raises(Killed):
        compaction.compact(place)
    assert snapshot(place) == before  # every row once, in the state the kill left
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["compact", str(place)])
    assert result.exit_code == 0, result.output
    assert snapshot(place) == before and not compaction.pending(place)
    partitions = [f.partition for t in store.STUDY_TABLES for f in store.data_files(place, t)]
    assert len(partitions) == len(set(partitions))  # one file per study and run


@pytest.mark.slow
def test_an_incomplete_set_of_compacted_files_is_never_read_and_is_removed(bucket, monkeypatch):
    """Compaction into several files (--max-rows) killed after the first: its rows are not read, the parts are."""
    place = store.where(bucket())
    write_sweep(place)
    before = snapshot(place)
    kill_at(monkeypatch, "kill_before_rename", 2)  # the second compacted file's PUT never happens
    with pytest.raises(Killed):
        compaction.compact(place, max_rows=2)
    monkeypatch.undo()
    assert snapshot(place) == before
    assert any(n.endswith(".parquet") and "compact-" in n for n in objects(bucket()))
    compaction.settle(place)
    assert snapshot(place) == before and not any("compact-" in n for n in objects(bucket()))
    compaction.compact(place)
    assert snapshot(place) == before and not compaction.pending(place)


def test_prune_rewrites_and_deletes_parts_alike(place):
    write_sweep(place)
    keep = {u.key for u in expand(SPEC) if u.study == "single_deletion"}
    removed = store.prune(place, {t.run_id for t in SPEC.training.trials}, keep)
    assert removed["lesion"] > 0 and set(store.done_keys(place)) == keep


def test_a_second_writer_is_refused_and_a_dead_writers_lease_is_taken_over(place):
    with store.writer_lock(place):
        with pytest.raises(store.OutputBusy, match="being written by another unravel process"):
            with store.writer_lock(place):
                pass
    with store.writer_lock(place):  # released: taken again
        pass
    if not store.where(place).local:
        lock = store.where(place) / store.LOCK_FILE
        gone = {"pid": 2 ** 22 + 7, "host": os.uname().nodename, "token": "x", "expires": time.time() + 600}
        lock.write_bytes(json.dumps(gone).encode())  # a driver of this machine, SIGKILLed: its pid is gone
        with store.writer_lock(place):
            pass
        elsewhere = {**gone, "host": "another-node"}
        lock.write_bytes(json.dumps(elsewhere).encode())  # alive as far as this machine can tell
        with pytest.raises(store.OutputBusy, match="another-node"):
            with store.writer_lock(place):
                pass
        lock.write_bytes(json.dumps({**elsewhere, "expires": time.time() - 1}).encode())  # lapsed
        with store.writer_lock(place):
            pass
        assert not lock.exists()


# -- the CLI, on the bucket -----------------------------------------------------------------------------

RAW = {**BASE, "training": {**BASE["training"], "iterations": 20},   # small: a sweep long enough to be killed in
       "studies": {"test_examples": 60, "single_deletion": {}, "random_deletion": {"k_max": 2, "draws": 2},
                   "gradients": {"draws": 1, "batch_size": 8}, "plans_per_batch": 1, "evaluators": {"count": 1, "cpu": 1}}}
TOTAL = len(expand(parse_spec(RAW)))
LESION = len([u for u in expand(parse_spec(RAW)) if u.study != "gradients"])   # rows of the lesion table


def unit_keys(uri: str) -> list[str]:
    return store.read_parts(uri, "lesion")["unit_key"].tolist() + store.read_parts(uri, "gradients")["unit_key"].tolist()


@pytest.mark.slow
def test_a_sweep_to_s3_killed_rerun_then_read_from_the_uri(bucket, ray_session, tmp_path, monkeypatch):
    """`unravel run --out s3://...`: the driver SIGKILLed in training (one trial finished, the other held in
    its second epoch) and rerun: the finished trial is kept and the other continues from its checkpoint on the
    bucket (the training-resume test of every OUT: the code that finds checkpoints is the same for a folder); SIGKILLed again mid-sweep and rerun: every unit exactly once; rerun again: nothing computed; then
    status, query, figures and compact from the URI, and pyarrow and DuckDB reading it; nothing on local disk."""
    monkeypatch.chdir(tmp_path)  # the default results/ would land here: nothing may
    spec, uri = write_spec(tmp_path, RAW), bucket("sweeps/first")

    def checkpoints(label: str, name: str) -> list[str]:
        """The objects ``name`` in the checkpoints of the trial labelled ``label`` (its params.json says which)."""
        names = objects(uri)
        trials = {n.rsplit("/", 1)[0] for n in names if n.startswith("tune/") and n.endswith("/params.json")}
        ours = [t for t in trials
                if json.loads((Location.of(uri) / t / "params.json").read_text())["run"]["trial"]["label"] == label]
        return sorted(n for n in names for t in ours if n.startswith(f"{t}/checkpoint_") and n.endswith(f"/{name}"))

    proc = cli("run", str(spec), "--out", uri, "--address", ray_session, env={"UNRAVEL_FAULTS": "hold_in_epoch.res=2"})
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (checkpoints("plain", "model.pt")
                                                                  and checkpoints("res", "state.pt")):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(1.2)  # Tune saves its experiment state every second
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    plain_model = (Location.of(uri) / checkpoints("plain", "model.pt")[-1]).read_bytes()
    killed = torch.load(io.BytesIO((Location.of(uri) / checkpoints("res", "state.pt")[-1]).read_bytes()),
                        weights_only=True)
    assert not checkpoints("res", "model.pt") and not store.read_table(uri, "runs").shape[0]

    proc = cli("run", str(spec), "--out", uri, "--address", ray_session)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and len(store.data_files(uri, "lesion")) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    written = unit_keys(uri)
    assert 0 < len(written) == len(set(written)) < TOTAL
    assert store.LOCK_FILE in objects(uri)  # the killed driver's lease: its pid is gone, so it is taken over

    result = CliRunner().invoke(main, ["run", str(spec), "--out", uri, "--address", ray_session])
    assert result.exit_code == 0, result.output
    assert f"{len(written)} already written, {TOTAL - len(written)} computed, 0 failed" in result.output
    assert len(unit_keys(uri)) == len(set(unit_keys(uri))) == TOTAL
    names = objects(uri)
    for expected in ("spec.json", "runs.parquet", "epochs.parquet", "report.md", "report.html",
                     "figures/f3_single_deletion.png", "figures/f5a_random_deletion.pdf"):
        assert expected in names, names
    assert any(n.startswith("tune/studies/attempt-") and n.endswith("/model.pt") for n in names)
    assert store.LOCK_FILE not in names
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]  # nothing of the experiment on local disk
    runs = store.read_table(uri, "runs").set_index("label")
    assert len(runs) == 2 and all(c.startswith("tune/") for c in runs["checkpoint"])  # relative, as in a folder
    assert (Location.of(uri) / runs.loc["plain", "checkpoint"]).read_bytes() == plain_model  # not retrained
    resumed = torch.load(io.BytesIO((Location.of(uri) / runs.loc["res", "checkpoint"]).read_bytes()),
                         weights_only=True)
    assert [m["epoch"] for m in resumed["history"]] == [1, 2]
    # continued from the checkpoint, not trained again from scratch: the first epoch (with its timings) is
    # the one measured before the kill
    assert resumed["history"][0] == killed["history"][0]
    assert runs.loc["res", "checkpoint"].split("/")[2] != "attempt-1"  # finished by the rerun's attempt

    again = CliRunner().invoke(main, ["run", str(spec), "--out", uri, "--address", ray_session])
    assert again.exit_code == 0 and f"{TOTAL} already written, 0 computed" in again.output, again.output

    status = CliRunner().invoke(main, ["status", uri, "--format", "json"])
    assert status.exit_code == 0, status.output
    doc = json.loads(status.output)
    assert doc["units"]["done"] == TOTAL and doc["trials"]["finished"] == 2
    query = CliRunner().invoke(main, ["query", uri, "select count(*) as n from lesion", "--format", "json"])
    assert query.exit_code == 0 and json.loads(query.output) == [{"n": LESION}], query.output
    report = Location.of(uri) / "report.md"
    report.delete()
    figures = CliRunner().invoke(main, ["figures", uri])
    assert figures.exit_code == 0 and report.exists(), figures.output
    compacted = CliRunner().invoke(main, ["compact", uri])
    assert compacted.exit_code == 0 and "compacted" in compacted.output, compacted.output
    assert len(unit_keys(uri)) == len(set(unit_keys(uri))) == TOTAL

    # pyarrow and DuckDB read the results from the URI as users would
    import duckdb
    import pyarrow.dataset as ds
    fs, path = pafs.FileSystem.from_uri(uri)
    lesion = ds.dataset(f"{path}/lesion", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert lesion.num_rows == LESION
    assert duckdb.sql("select count(*) from lesion").fetchall() == [(LESION,)]


def test_a_second_writer_of_the_same_uri_is_refused_in_one_line(bucket, tmp_path):
    uri = bucket()
    write_sweep(store.where(uri))
    with store.writer_lock(uri):
        result = CliRunner().invoke(main, ["prune", uri])
    assert result.exit_code == 2 and "is being written by another unravel process" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command, case", [("run", "scheme"), ("run", "bucket"), ("run", "endpoint"),
                                           ("status", "bucket"), ("query", "scheme")])
def test_a_bad_uri_is_one_line_exit_2_and_nothing_written(case, command, bucket, s3_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, BASE)
    uri = {"scheme": "nosuchscheme://bucket/exp",
           "bucket": bucket("exp", bucket_name="no-such-bucket-here"),
           "endpoint": "s3://b/exp?endpoint_override=127.0.0.1:9&scheme=http"}[case]
    args = {"run": ["run", str(spec), "--out", uri], "status": ["status", uri], "query": ["query", uri, "select 1"]}[command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and uri.split("?")[0] in lines[0], result.output
    expected = {"scheme": "unknown scheme", "bucket": "does not exist", "endpoint": "127.0.0.1:9"}[case]
    assert expected in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]
    assert objects(bucket("")) == []  # the test's own bucket: untouched


def test_a_data_root_on_s3_is_copied_once_per_node_and_again_when_it_changes(fake_cifar, bucket, tmp_path,
                                                                            monkeypatch):
    from orchestrator.run import data_cache
    from orchestrator.run.preflight import check_inputs
    from workloads.data import load_dataset
    monkeypatch.setenv("UNRAVEL_CACHE", str(tmp_path / "cache"))
    root = bucket("cifar10")
    s3, prefix = pafs.FileSystem.from_uri(root)
    pafs.copy_files(str(fake_cifar / "cifar-10-batches-py"), f"{prefix}/cifar-10-batches-py", destination_filesystem=s3)
    check_inputs(parse_spec({**BASE, "data": {"dataset": "cifar10", "root": root}}))  # the preflight sees it
    local = data_cache.local_root(root)
    assert local.startswith(str(tmp_path / "cache")) and load_dataset("cifar10", local).test_size() == 10
    stamp = os.stat(os.path.join(local, "cifar-10-batches-py", "test_batch")).st_mtime_ns
    assert data_cache.local_root(root) == local  # the node's copy, not copied again
    assert os.stat(os.path.join(local, "cifar-10-batches-py", "test_batch")).st_mtime_ns == stamp
    (Location.of(root) / "cifar-10-batches-py" / "readme.html").write_bytes(b"changed")
    assert os.path.exists(os.path.join(data_cache.local_root(root), "cifar-10-batches-py", "readme.html"))
    with pytest.raises(Exception, match="data.root: nothing under"):
        check_inputs(parse_spec({**BASE, "data": {"dataset": "cifar10", "root": bucket("elsewhere")}}))


@pytest.mark.slow
def test_a_multi_node_sweep_losing_a_node_writes_only_to_the_bucket_exactly_once(bucket, tmp_path):
    """Nodes with their own temporary folders, a driver in an empty folder, a node running an evaluator lost
    mid-sweep: after `unravel run` to the bucket, every unit is there exactly once, the trials' checkpoints
    too (Tune on the workers wrote them there), and on local disk nothing of it but Ray's caches."""
    import subprocess
    import sys
    from pathlib import Path
    small = {**BASE, "training": {**BASE["training"], "iterations": 10},
             "studies": {"test_examples": 60, "single_deletion": {}, "random_deletion": {"k_max": 9, "draws": 1},
                         "plans_per_batch": 2, "evaluators": {"count": 2, "cpu": 1}}}
    spec, uri = write_spec(tmp_path, small), bucket("multinode")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "UNRAVEL_CACHE": str(tmp_path / "cache")}  # HOME stays: Ray keeps its cluster token in ~/.ray
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "multinode_s3.py"), str(spec), uri,
                             str(tmp_path)], env=env, capture_output=True, text=True, timeout=900,
                            start_new_session=True)
    # the driver's exit code and the node taken away (the script's own: Ray's test cluster has been seen to
    # abort in its teardown, after the sweep)
    said = result.stdout + result.stderr[:3000]
    assert "code=0 removed=1" in result.stdout, f"script exit {result.returncode}: {said[-4000:]}"
    total = len(expand(parse_spec(small)))
    assert f"0 already written, {total} computed, 0 failed" in result.stdout
    assert len(unit_keys(uri)) == len(set(unit_keys(uri))) == total
    names = objects(uri)
    assert {"spec.json", "runs.parquet", "report.md"} <= set(names)
    assert sum(n.startswith("tune/") and n.endswith("/model.pt") for n in names) == 2
    assert not list((tmp_path / "driver").iterdir())  # the driver's working folder: empty
    # under the test's folder (the driver's working folder, the data cache; Ray's temporary folders are elsewhere)
    ours = ("runs.parquet", "epochs.parquet", "spec.json", "report.md", "model.pt", "state.pt", ".unravel.lock")
    left = [p for p in tmp_path.rglob("*") if p.is_file()
            and (p.name in ours or p.name.startswith(("part-", "compact-")))]
    assert not left, left


@pytest.mark.slow
def test_prune_after_compaction_on_s3_keeps_every_other_row_of_a_compacted_set(bucket):
    """A compacted file emptied by prune stays (empty): deleting it would leave its set incomplete and hide the
    rows of the set's other files."""
    place = store.where(bucket())
    write_sweep(place)
    compaction.compact(place, max_rows=2)
    files = [f for f in store.data_files(place, "lesion") if dict(f.partition)["study"] == "single_deletion"]
    first = store.read_parquet(files[0].path, columns=["unit_key"]).column(0).to_pylist()
    assert len(files) > 2 and len(first) == 2  # a set of several files; the first one's rows all go
    keep = store.done_keys(place) - set(first)
    store.prune(place, {t.run_id for t in SPEC.training.trials}, keep)
    assert store.done_keys(place) == keep


@pytest.fixture
def strict_s3_server(tmp_path):
    """A second local S3 server (moto's, in its own process) that checks every request's credentials."""
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline, "the S3 server did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


@pytest.mark.slow
@pytest.mark.parametrize("credentials", ["missing", "unknown"])
def test_credentials_the_store_refuses_are_one_line_exit_2_and_nothing_written(credentials, strict_s3_server,
                                                                              tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if credentials == "missing":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws either
    spec = write_spec(tmp_path, BASE)
    uri = f"s3://experiments/exp?endpoint_override={strict_s3_server}&scheme=http"
    result = CliRunner().invoke(main, ["run", str(spec), "--out", uri])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0], result.output
    # unsigned requests: real S3 answers 403 (the hint), this server 500, said as it is
    assert "check the credentials" in lines[0] or credentials == "missing", lines[0]
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]


def test_imported_checkpoints_are_converted_into_out_alike(place, tmp_path):
    """`models:` checkpoints converted into OUT (imported/<run>/model.pt beside source.json), once; a changed
    source is refused; the runs table names the copy relative to OUT."""
    from orchestrator.run.imported import import_models
    from orchestrator.experiment.spec import SpecError
    from workloads.models import build_network
    source = tmp_path / "net.pt"
    small = {"network": "preact_resnet20", "label": "mine", "overrides": {"widths": [4, 8, 16]}}

    def net(seed: int):
        torch.manual_seed(seed)
        return build_network("preact_resnet20", widths=[4, 8, 16], in_channels=1, num_classes=10)

    torch.save(net(0).state_dict(), source)
    experiment = parse_spec({"name": "mine", "data": {"dataset": "digits"},
                             "models": [{**small, "checkpoint": str(source)}], "studies": {"single_deletion": {}}})
    runs = import_models(experiment, place)
    copy = store.located(place, runs["checkpoint"].iloc[0])
    assert runs["checkpoint"].iloc[0] == f"imported/{experiment.models[0].run_id}/model.pt" and copy.exists()
    first = copy.read_bytes()
    import_models(experiment, place)  # unchanged: not converted again
    assert copy.read_bytes() == first
    torch.save(net(1).state_dict(), source)  # new weights, same path
    with pytest.raises(SpecError, match="changed since it was imported"):
        import_models(experiment, place)
