"""Ctrl-C and SIGTERM sent for real to `unravel run`: it stops with 130 or 143, one line on stderr says
what was kept, no traceback, no interrupted trial recorded as failed, none of the Ray processes it
started left running (on a cluster, only its own work stops); rerunning the same command continues, and
completes with every unit exactly once.

One experiment is interrupted three times (in training, then twice in its studies: attached to a cluster,
then on its own private Ray) and then finished: each test continues from where the module's experiment
is, so each also works on its own."""
import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import ray
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.experiment.spec import parse_spec
from orchestrator.experiment.units import expand
from processes import cli
from sweep_cases import assert_exactly_once, table_keys, write_spec

pytestmark = pytest.mark.slow  # every test here starts Ray or a process

SPEC = {
    "name": "interrupted",
    "data": {"dataset": "digits"},
    "training": {
        "iterations": 20, "recipe": {"eval_every": 10}, "resources": {"cpu": 1},
        "runs": [{"network": "preact_resnet20", "label": "fast", "overrides": {"widths": [4, 8, 16]}},
                 {"network": "preact_resnet20", "label": "held", "overrides": {"widths": [4, 8, 16]}}],
    },
    "studies": {  # many one-plan batches: a sweep long enough to be interrupted between its parts
        "test_examples": 60, "single_deletion": {}, "random_deletion": {"k_max": 4, "draws": 10},
        "plans_per_batch": 1, "evaluators": {"count": 1, "cpu": 1},
    },
}
TRIALS = {t.label: t.run_id for t in parse_spec(SPEC).training.trials}
TOTAL = len(expand(parse_spec(SPEC)))
PARTS = "lesion/*/*/part-*.parquet"


class Command:
    """`unravel run SPEC --out OUT` in its own process group, on its own private Ray unless ``address``
    names a cluster. As a context manager: whatever happens, nothing it started outlives the test."""

    def __init__(self, spec: Path, out: Path, address: str | None = None, faults: str = ""):
        self.out = out
        # the mark every process of this command's work carries in its environment: on its private Ray,
        # that Ray's temporary folder (short: Ray's socket paths); on a cluster, a fault point that no code
        # has, which reaches the job's workers as every UNRAVEL_FAULTS does
        self.ray_tmp = None if address else tempfile.mkdtemp(prefix="unravel-sig-", dir="/tmp")
        env = {"UNRAVEL_FAULTS": ",".join(f for f in (faults, f"mark.{uuid.uuid4().hex}=0") if f)}
        self.mark = f"UNRAVEL_FAULTS={env['UNRAVEL_FAULTS']}".encode()
        if self.ray_tmp:
            env["RAY_TMPDIR"] = self.ray_tmp
            self.mark = f"RAY_TMPDIR={self.ray_tmp}".encode()
        self.proc = cli("run", str(spec), "--out", str(out), *(["--address", address] if address else []), env=env)

    def ray_processes(self) -> list[int]:
        """The processes of this command's Ray work (its own Ray's, or its job's workers), not itself."""
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int(entry.name) != self.proc.pid and \
                        self.mark in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def wait_until(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"ended ({self.proc.returncode}) before {what}: {self.proc.stderr.read()[-3000:]}")
            assert time.time() < deadline, f"not {what} within {timeout} s"
            time.sleep(0.05)

    def wait_for_parts(self, more_than: int) -> None:
        self.wait_until(lambda: len(list(self.out.glob(PARTS))) > more_than, f"more than {more_than} parts")

    def signal(self, signum: int, group: bool = True) -> None:
        assert self.ray_processes(), "no Ray process of this command is running"
        (os.killpg if group else os.kill)(self.proc.pid, signum)

    def end(self) -> tuple[int, str, str]:
        """Exit code, stderr, stdout; and no process of its Ray work left (after a few seconds' grace)."""
        out, err = self.proc.communicate(timeout=120)
        deadline = time.time() + 5
        while self.ray_processes() and time.time() < deadline:
            time.sleep(0.1)
        assert not self.ray_processes(), f"Ray processes left running: {self.ray_processes()}"
        return self.proc.returncode, err, out

    def __enter__(self) -> "Command":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
        for pid in self.ray_processes():
            os.kill(pid, signal.SIGKILL)
        if self.ray_tmp:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


def assert_stopped_cleanly(result: tuple[int, str, str], signum: int) -> re.Match:
    code, err, out = result
    assert code == 128 + signum, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1, err[-3000:]
    said = re.fullmatch(rf"interrupted by {signal.Signals(signum).name}: (\d+) of 2 trials finished, "
                        rf"(\d+) of {TOTAL} units written; rerun the same command to continue", lines[0])
    assert said, lines[0]
    for noise in ("Traceback", "Tuner.restore", "FAILED", "Aborted", "Stop signal received", "(raylet)"):
        assert noise not in err + out, err[-3000:]
    return said


def finished_in_tune(out: Path, run_id: str) -> bool:
    """Whether Tune's driver has taken in the trial's last result (its result.json log says done)."""
    for log in out.glob("tune/**/result.json"):
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line being written
                continue
            if row.get("run_id") == run_id and row.get("done") is True:
                return True
    return False


@pytest.fixture(scope="session")  # session: made once per xdist worker
def experiment(tmp_path_factory):
    """The experiment's folder after `unravel run` got two Ctrl-C during training: the first once the
    trial 'fast' had finished and 'held' was held in its second epoch, the second while stopping."""
    tmp = tmp_path_factory.mktemp("interrupts")
    spec, out = write_spec(tmp, SPEC), tmp / "out"
    with Command(spec, out, faults="hold_in_epoch.held=2") as run:
        run.wait_until(lambda: finished_in_tune(out, TRIALS["fast"]), "fast finished")  # held sleeps meanwhile
        run.signal(signal.SIGINT)  # to the process group, as a terminal's Ctrl-C is
        time.sleep(1)
        run.signal(signal.SIGINT)  # again, while Tune stops the held trial
        return spec, out, run.end()


def test_double_ctrl_c_during_training_keeps_finished_trials_and_records_no_failure(experiment):
    spec, out, result = experiment
    said = assert_stopped_cleanly(result, signal.SIGINT)
    assert said.groups() == ("1", "0")
    assert pd.read_parquet(out / "runs.parquet")["run_id"].tolist() == [TRIALS["fast"]]
    errors = out / "training_errors.parquet"
    assert not errors.exists() or pd.read_parquet(errors).empty
    assert list(out.glob("tune/**/checkpoint_*/state.pt")), "the trials' checkpoints were not kept"


def test_ctrl_c_during_the_studies_of_run_on_a_cluster_stops_only_this_driver(experiment, ray_session):
    spec, out, _ = experiment
    before = len(table_keys(out))
    with Command(spec, out, address=ray_session) as run:
        run.wait_for_parts(more_than=before)
        run.signal(signal.SIGINT)
        said = assert_stopped_cleanly(run.end(), signal.SIGINT)
    written = table_keys(out)
    assert said.group(1) == "2" and before < int(said.group(2)) == len(written) < TOTAL
    assert len(written) == len(set(written))
    assert set(pd.read_parquet(out / "runs.parquet")["run_id"]) == set(TRIALS.values())
    assert ray.get(ray.remote(lambda: "alive").remote(), timeout=60) == "alive"  # the cluster itself runs on


def test_sigterm_to_the_process_group_during_the_studies_then_the_rerun_completes_exactly_once(experiment,
                                                                                               ray_session):
    spec, out, _ = experiment
    before = len(table_keys(out))
    with Command(spec, out) as run:
        run.wait_for_parts(more_than=before)
        run.signal(signal.SIGTERM)  # to every process of the group, the private Ray's too, as `timeout` and Slurm do
        said = assert_stopped_cleanly(run.end(), signal.SIGTERM)
    written = len(table_keys(out))
    assert said.group(1) == "2" and before < int(said.group(2)) == written < TOTAL

    rerun = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--address", ray_session])
    assert rerun.exit_code == 0, rerun.output
    assert f"{written} already written, {TOTAL - written} computed, 0 failed" in rerun.output
    assert_exactly_once(out, TOTAL)
    assert set(pd.read_parquet(out / "runs.parquet")["run_id"]) == set(TRIALS.values())
    assert pd.read_parquet(out / "training_errors.parquet").empty
