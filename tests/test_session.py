"""The session a command opens on OUT (`store.open_session`), in a local folder and on object storage alike:
the writer lock held for its length, a killed writer's leftovers removed, another experiment's OUT refused,
a folder it made removed again when it fails early, a full disk said in one line naming OUT. Then the CLI's
one mapping from the project's errors to one line (exit 2 for bad input, 1 for a failure). No Ray."""
import errno
import json

import click
import pytest
from click.testing import CliRunner

from orchestrator import cli, store
from orchestrator.cli import main
from orchestrator.store import layout
from compaction_cases import SPEC, write_sweep

MINE = store.Identity(SPEC.name, SPEC.data.dataset)   # "studies" on digits


@pytest.fixture(params=["folder", "s3"])
def place(request, tmp_path):
    """OUT, not made yet: a local folder, or a URI on the local S3 server."""
    if request.param == "folder":
        return store.where(tmp_path / "out")
    return store.where(request.getfixturevalue("bucket")("out"))


def names(out) -> set[str]:
    return {out.relative(i.path) for i in out.files()}


def test_the_writer_lock_is_held_for_the_whole_session(place):
    with store.open_session(place, MINE) as session:
        assert session.out == place
        with pytest.raises(store.OutputBusy, match="being written by another unravel process"):
            with store.open_session(place, MINE):
                pass
    with store.open_session(place, MINE):  # closed: taken again
        pass


def test_a_command_that_fails_early_leaves_no_folder_it_made(place):
    with pytest.raises(ValueError, match="a checkpoint that does not fit"):
        with store.open_session(place, MINE) as session:
            session.record_spec(SPEC)
            raise ValueError("a checkpoint that does not fit")
    assert names(place) == set() and not (place.local and place.exists())


def test_a_failure_in_an_existing_out_keeps_what_it_holds(place):
    store.save_spec(place, SPEC)
    with pytest.raises(ValueError):
        with store.open_session(place, MINE):
            raise ValueError("bad input found late")
    assert names(place) - {layout.LOCK_FILE} == {layout.SPEC_FILE} and store.read_spec(place) == SPEC.raw


def test_a_fresh_folder_keeps_what_was_written_before_a_failure(place):
    with pytest.raises(ValueError):
        with store.open_session(place, MINE) as session:
            session.record_spec(SPEC)
            store.write_table(place, "runs", [])
            raise ValueError("a unit failed to start")
    assert names(place) >= {layout.SPEC_FILE, "runs.parquet"} and layout.LOCK_FILE not in names(place)


@pytest.mark.parametrize("other, said", [(store.Identity("theirs", "digits"), "holds experiment 'studies', not 'theirs'"),
                                         (store.Identity("studies", "cifar10"), "holds experiment 'studies' on digits")])
def test_an_out_of_another_experiment_is_refused(place, other, said):
    store.save_spec(place, SPEC)
    with pytest.raises(store.OtherExperiment, match=said):
        with store.open_session(place, other):
            pytest.fail("the session opened")
    with store.open_session(place, MINE):  # the same experiment: its spec may have evolved
        pass


def test_a_killed_writers_leftovers_are_removed_on_opening(tmp_path):
    out = tmp_path / "out"
    write_sweep(out)
    folder = next((out / "lesion").glob("study=*/run_id=*"))
    leftovers = [folder / ".part-x.parquet.0123.tmp", out / ".runs.parquet.4567.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    before = store.done_keys(out)
    with store.open_session(out):
        assert not any(path.exists() for path in leftovers)
    assert store.done_keys(out) == before


def test_a_full_disk_is_one_error_naming_out_and_keeps_what_was_written(tmp_path):
    out = store.where(tmp_path / "out")
    store.write_table(out, "runs", [])
    with pytest.raises(store.NoSpace, match=f"no space left on the device of {out}"):
        with store.open_session(out) as session:
            session.record_spec(SPEC)
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "lesion"))
    assert store.read_spec(out) == SPEC.raw


def test_an_out_that_cannot_be_made_is_bad_input(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(store.UnusableOutput, match="file"):
        with store.open_session(tmp_path / "file" / "out"):
            pass


# -- the CLI's one mapping ------------------------------------------------------------------------------

def test_every_error_the_mapping_names_is_an_exception_of_the_project():
    import importlib
    for errors in (cli.BAD_INPUT, cli.FAILURES):
        for module, classes in errors.items():
            for name in classes:
                assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)


@pytest.mark.parametrize("error, code", [
    ("orchestrator.experiment.spec:SpecError", 2), ("orchestrator.store:OutputBusy", 2),
    ("orchestrator.store:CorruptResult", 2), ("orchestrator.location:LocationError", 2),
    ("orchestrator.run.cluster:ClusterUnreachable", 2), ("workloads.models.checkpoint:CheckpointError", 2),
    ("orchestrator.store:NoSpace", 1), ("orchestrator.run.sweep:EvaluatorsCannotStart", 1)])
def test_a_project_error_in_any_command_is_one_line(error, code):
    import importlib
    module, name = error.split(":")
    kind = getattr(importlib.import_module(module), name)

    @click.group(cls=cli.Commands)
    def unravel():
        pass

    @unravel.command()
    def fails():
        raise kind("what went wrong, said once")

    result = CliRunner().invoke(unravel, ["fails"])
    assert result.exit_code == code and result.output == "Error: what went wrong, said once\n", result.output


def test_an_os_error_names_its_file_and_a_bug_keeps_its_traceback():
    @click.group(cls=cli.Commands)
    def unravel():
        pass

    @unravel.command()
    def denied():
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/runs.parquet")

    @unravel.command()
    def bug():
        raise KeyError("a bug")

    result = CliRunner().invoke(unravel, ["denied"])
    assert result.exit_code == 1 and result.output == "Error: /somewhere/runs.parquet: Permission denied\n"
    result = CliRunner().invoke(unravel, ["bug"])
    assert isinstance(result.exception, KeyError)


def test_a_spec_json_this_version_cannot_read_is_one_line_in_every_command_that_reads_it(tmp_path):
    out = tmp_path / "out"
    write_sweep(out)
    # written by hand: this version never writes a spec it cannot read
    store.write_file(layout.spec_path(out), json.dumps({"spec": {"name": "x", "data": {"dataset": "no-such-dataset"}}}).encode())
    for command in ("status", "prune"):
        result = CliRunner().invoke(main, [command, str(out)])
        assert result.exit_code == 2 and "not a spec this version of unravel reads" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_every_command_reading_an_experiment_refuses_a_folder_without_one_alike(tmp_path):
    said = set()
    for command in (["status"], ["figures"], ["prune"], ["compact"], ["query", "select 1"]):
        result = CliRunner().invoke(main, [command[0], str(tmp_path), *command[1:]])
        assert result.exit_code == 2, result.output
        said.add(result.output)
    assert said == {f"Error: {tmp_path}: holds no unravel experiment (no unravel tables or spec: runs.parquet, "
                    f"lesion/, spec.json, ...); OUT must be the folder of an unravel experiment\n"}
    assert not list(tmp_path.iterdir())
