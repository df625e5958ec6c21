"""`unravel`: the command line over specs, training, studies, results.

Exit codes: 0 done; 1 some trial or unit failed (the rest is written); 2 bad input
(the spec, a path, a missing dataset), with a one-line message and nothing written; 130 or 143
stopped by SIGINT or SIGTERM (what was written is kept: see interrupts.py). The project's errors
become their line and code in one place (``Commands``); a command itself only says what it did.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import click

from orchestrator.run import interrupts  # standard library only

# every other import is inside the command that needs it: `unravel --help` starts in a blink, and `unravel query`
# without torch (which orchestrator.experiment.spec imports for its network registry) or Ray


class BadInput(click.ClickException):
    exit_code = 2


# The project's errors that mean bad input: one line, exit 2, nothing written. Named by module, not imported, so
# a command imports only what it uses; an error can only come from a module already imported.
BAD_INPUT = {
    "orchestrator.location": ("LocationError",),
    "orchestrator.store": ("CorruptResult", "NotAnExperiment", "OtherExperiment", "OutputBusy", "UnusableOutput"),
    "orchestrator.store.query": ("QueryError",),
    "orchestrator.experiment.messages": ("SpecError",),
    "orchestrator.run.cluster": ("ClusterUnreachable",),
    "orchestrator.planning.nodes": ("NodeError",),
    "orchestrator.planning.rates": ("RateError",),
    "orchestrator.run.sweep": ("RunNotTrained",),
    "workloads.models.errors": ("CheckpointError",),
    "workloads.tasks": ("TaskError",),
}
# failures, in one line with exit 1: what was written is kept, and rerunning continues
FAILURES = {
    "builtins": ("OSError",),
    "orchestrator.store": ("NoSpace",),
    "orchestrator.run.sweep": ("EvaluatorsCannotStart",),
}


def _raised(error: Exception, errors: dict[str, tuple[str, ...]]) -> bool:
    return any(isinstance(error, getattr(sys.modules[module], name))
               for module, names in errors.items() if module in sys.modules for name in names)


def one_line(error: Exception) -> click.ClickException | None:
    """The one line (and exit code) a project's error ends a command with; None for any other (a bug: its
    traceback is shown)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error)
    if _raised(error, BAD_INPUT):
        return BadInput(text)
    if _raised(error, FAILURES):
        return click.ClickException(text)
    return None


class Commands(click.Group):
    """unravel's commands, and the one place the project's errors become one line (``one_line``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            said = one_line(e)
            if said is None:
                raise
            raise said from None


class OutputPlace(click.ParamType):
    """OUT: a local folder, or a URI on object storage (s3://bucket/prefix, gs://..., any filesystem pyarrow
    or fsspec resolves). A URI's filesystem is reached once here, so an unknown scheme, a missing bucket,
    missing credentials or an unreachable endpoint is one line (exit 2) before anything starts; with
    ``experiment``, OUT must hold an experiment."""
    name = "folder|URI"

    def __init__(self, experiment: bool = False):
        self.experiment = experiment

    def convert(self, value, param, ctx):
        from orchestrator import store
        out = store.where(value)
        out.check_reachable()
        if self.experiment:
            return store.experiment_folder(out)
        if out.exists() and not out.is_dir():
            raise BadInput(f"{value}: not a folder")
        return out


ADDRESS = click.option("--address", default=None, metavar="ADDR",
                       help="Ray cluster to attach to (default: $RAY_ADDRESS, else a private local Ray).")
OUT = click.option("--out", type=OutputPlace(), default=None,
                   help="Output folder, or a URI on object storage: s3://bucket/prefix, gs://bucket/prefix "
                        "(default: $UNRAVEL_OUT/<spec name> if UNRAVEL_OUT is set, else results/<spec name>).")
EXPERIMENT = click.argument("out", type=OutputPlace(experiment=True))


def _load(spec_path: str, check_files: bool = True):
    """The validated spec; with ``check_files``, the data and checkpoints it names exist too (without,
    a language model whose folder is absent is left out: spec.absent_models)."""
    from orchestrator.experiment.spec import load_spec
    from orchestrator.run.preflight import check_inputs
    spec = load_spec(spec_path, model_folders=check_files)
    if check_files:
        check_inputs(spec)
    return spec


def _connect(spec, address: str | None, parts: tuple[str, ...] = ("training", "studies")) -> str:
    """Ray (local or the named cluster), then check that every trial and evaluator fits on a node:
    an error on the local Ray; a warning on a cluster, whose autoscaler may still add the node."""
    import ray

    from orchestrator.experiment.spec import SpecError
    from orchestrator.run.cluster import connect
    from orchestrator.run.preflight import check_resources
    where = connect(address)
    try:
        check_resources(spec, [n["Resources"] for n in ray.nodes() if n.get("Alive")], parts)
    except SpecError as e:
        if not (address or os.environ.get("RAY_ADDRESS")):
            raise
        click.echo(f"warning: {e}; Ray will wait until the cluster adds such a node", err=True)
    return where


def _import(spec, out) -> None:
    """Bring the spec's ``models:`` (users' checkpoints) into OUT's runs table."""
    if not spec.models:
        return
    from orchestrator.run.imported import import_models
    import_models(spec, out)
    click.echo(f"imported {len(spec.models)} model{'s' * (len(spec.models) != 1)}: "
               f"{', '.join(m.run_id for m in spec.models)}")


def _out(spec, out):
    """--out, else $UNRAVEL_OUT/<spec name> (cluster.yaml names the bucket there), else results/<spec name>."""
    if out is not None:
        return out
    from orchestrator.location import join
    base = os.environ.get("UNRAVEL_OUT")
    return OutputPlace().convert(join(base, spec.name) if base else os.path.join("results", spec.name), None, None)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="unravel")
def main() -> None:
    """Reproduce 'Residual Networks Behave Like Ensembles of Relatively Shallow Networks' and
    'Identity Mappings in Deep Residual Networks' as sweeps on a Ray cluster.

    Results land as Parquet tables under the output folder, readable by pandas, pyarrow and DuckDB.
    """


@contextmanager
def _experiment(experiment, out, address: str | None, parts: tuple[str, ...]):
    """OUT held for this experiment (``store.open_session``), then Ray connected: a second writer, another
    experiment's folder, or a corpus that changed since OUT's results were computed, is refused before Ray
    starts. The spec (and the data it reads) is recorded only once the cluster can run it, so bad input writes
    nothing."""
    from orchestrator import store
    from orchestrator.run import data_record
    with store.open_session(out, store.Identity(experiment.name, experiment.data.dataset)) as session:
        interrupts.writing(experiment, session.out)
        record = data_record.checked(experiment, session.out)   # a corpus or tokenizer changed since: refused here
        where = _connect(experiment, address, parts)
        session.record_spec(experiment)
        data_record.save(session.out, record)
        yield where


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@ADDRESS
@OUT
@click.option("--resume", is_flag=True, hidden=True)  # kept for scripts: training always continues OUT
@interrupts.stoppable("trials")
def train(spec: str, address: str | None, out, resume: bool) -> None:
    """Train SPEC's networks as Ray Tune trials; write the runs and epochs tables.

    Continues what OUT holds: finished trials are kept, interrupted ones continue from their last
    checkpoint, and trials the spec gained (seeds, runs, variants) are trained.
    """
    from orchestrator import store
    from orchestrator.run.training import run_training
    experiment = _load(spec)
    if not experiment.training.trials:
        raise BadInput(f"{spec}: has no training: section (its models: are imported by unravel lesion or run)")
    out = _out(experiment, out)
    with _experiment(experiment, out, address, ("training",)) as where:
        n = len(experiment.training.trials)
        click.echo(f"training {n} trial{'s' * (n != 1)} of '{experiment.name}' on {where}; results in {out}")
        outcome = run_training(experiment, out)
    _print_runs(outcome.runs)
    click.echo(f"tables: {store.table_path(out, 'runs')}, {store.table_path(out, 'epochs')}  ({outcome.seconds:.0f} s)")
    if outcome.failed:
        for run_id, error in outcome.failed.items():
            click.echo(f"FAILED {run_id}: {error.splitlines()[-1] if error else 'unknown error'}", err=True)
        sys.exit(1)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@ADDRESS
@OUT
@interrupts.stoppable("units")
def lesion(spec: str, address: str | None, out) -> None:
    """Run SPEC's studies (deletions of blocks, of spans of layers and of permutations' prefixes, reorderings,
    gradients, gates, proxies) on the trained runs in OUT, and on the networks its models: section imports from
    checkpoint files.

    Resumable: units already written are skipped, so rerunning after a crash or Ctrl-C
    computes only what is missing.
    """
    from orchestrator import store
    experiment = _load(spec)
    out = _out(experiment, out)
    runs = store.table_path(out, "runs")
    if experiment.training.trials and not runs.exists():
        raise BadInput(f"{runs} does not exist: train first (unravel train {spec} --out {out})")
    with _experiment(experiment, out, address, ("studies",)) as where:
        click.echo(f"studies of '{experiment.name}' on {where}; results in {out}")
        _import(experiment, out)
        code = _studies(experiment, out)
    sys.exit(code)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@ADDRESS
@OUT
@interrupts.stoppable("trials", "units")
def run(spec: str, address: str | None, out) -> None:
    """Train SPEC's networks (and import its models:), then run its studies: the whole
    experiment, resumable; rerun it after changing the spec to add what changed."""
    from orchestrator.run.training import run_training
    experiment = _load(spec)
    out = _out(experiment, out)
    failed = {}
    with _experiment(experiment, out, address, ("training", "studies")) as where:
        click.echo(f"experiment '{experiment.name}' on {where}; results in {out}")
        if experiment.training.trials:
            outcome = run_training(experiment, out)
            _print_runs(outcome.runs)
            failed = outcome.failed
            for run_id, error in failed.items():
                click.echo(f"FAILED {run_id}: {error.splitlines()[-1] if error else 'unknown error'}", err=True)
        _import(experiment, out)
        code = _studies(experiment, out)
        _report(out)
    sys.exit(1 if failed or code else 0)


def _report(out) -> None:
    from orchestrator import store
    from orchestrator.analysis.report import write_report
    write_report(out)
    report, html = store.report_paths(out)
    click.echo(f"report: {report} (and {html}); figures in {store.figures_folder(out)}")
    click.echo(f"query: unravel query {out} \"select study, count(*) from lesion group by study\"")


@main.command()
@EXPERIMENT
def figures(out) -> None:
    """Regenerate the figures and report.md / report.html of OUT from its tables."""
    _report(out)


def _studies(experiment, out) -> int:
    """Run the studies; 1 if any unit failed (the rest is written), else 0."""
    from orchestrator import store
    from orchestrator.run.sweep import run_studies
    outcome = run_studies(experiment, out)
    counts = ", ".join(f"{k} {v}" for k, v in outcome.per_study.items())
    click.echo(f"units: {outcome.total} ({counts}); {outcome.skipped} already written, {outcome.computed} computed, "
               f"{outcome.failed} failed, in {outcome.seconds:.0f} s")
    for name in store.PART_SCHEMAS:
        folder = store.table_folder(out, name)
        if folder.exists():
            click.echo(f"  {folder}")
    if outcome.failed:
        click.echo(f"{outcome.failed} units failed: see the errors table ({store.table_folder(out, 'errors')})",
                   err=True)
        return 1
    return 0


@main.command()
@EXPERIMENT
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--by-run", is_flag=True, help="The table per run and study, not per study (JSON has both).")
def status(out, fmt: str, by_run: bool) -> None:
    """Units done, failed and left per study, for the experiment whose results are in OUT.

    \b
    --format json prints one document, for scripts that watch a sweep:
      {"experiment": NAME, "out": OUT,
       "trials": {"trials", "finished", "failed", "left"},
       "units": {"units", "done", "failed", "left"},
       "studies": [{"study", "units", "done", "failed", "left"}, ...],
       "runs": [{"run_id", "study", "units", "done", "failed", "left"}, ...]}
    (each name stands for an integer). A unit is failed while its attempts are error rows and none is
    written. Trials count as finished once the training sweep has written them to the runs table
    (when unravel train or run finishes training), as failed when training_errors names them.
    """
    from orchestrator.store.current import status as study_status, status_document
    from orchestrator.store.recorded import recorded_experiment
    experiment = recorded_experiment(out, required=True)
    if fmt == "json":
        import json
        click.echo(json.dumps(status_document(experiment, out), indent=1))
        return
    rows = study_status(experiment, out, by_run=by_run)
    import pandas as pd
    click.echo(pd.DataFrame(rows).to_string(index=False) if rows else "no studies in this experiment")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--address", default=None, metavar="ADDR",
              help="Plan for the nodes of this Ray cluster, read without submitting anything (default: $RAY_ADDRESS, "
                   "else this machine's CPUs and GPUs).")
@click.option("--node", "nodes", multiple=True, metavar="cpu=N[,gpu=N][,count=N]",
              help="Plan for these nodes instead (repeatable), e.g. a cluster not started yet: --node "
                   "cpu=8,gpu=1,count=4.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--rates", "rates_file", type=click.Path(dir_okay=False), default=None,
              help="Rates from a JSON file: {\"train\": {KEY: iterations/s}, \"units\": {KEY: units/s}}, or the "
                   "output of unravel plan --format json (e.g. run on a node like the cluster's).")
@click.option("--train-rate", multiple=True, metavar="KEY=ITERATIONS_PER_S",
              help="Training iterations per second of one trial (repeatable). KEY: a run group "
                   "(resnet110.stochastic_depth), a label or a network; the most specific wins.")
@click.option("--unit-rate", multiple=True, metavar="KEY=UNITS_PER_S",
              help="Units per second of one evaluator (repeatable). KEY: a study (gradients), or GROUP:STUDY, "
                   "LABEL:STUDY, NETWORK:STUDY.")
@click.option("--calibrate/--no-calibrate", default=False, show_default=True,
              help="Measure the rates no figure gives on this machine (only for workers whose device it has).")
@click.option("--calibration-budget", type=float, default=60.0, show_default=True, metavar="SECONDS",
              help="With --calibrate: stop measuring after this long; what is left stays unknown.")
def plan(spec: str, address: str | None, nodes: tuple[str, ...], fmt: str, rates_file: str | None,
         train_rate: tuple[str, ...], unit_rate: tuple[str, ...], calibrate: bool, calibration_budget: float) -> None:
    """Dry run: SPEC's trials and units per study, the resources each worker asks, how many fit on the
    nodes at once, and an estimate of device time. Nothing is submitted and nothing is written; the
    files the spec names (data, checkpoints) are not needed. It answers in seconds.

    Device time comes from rates: given (--rates, --train-rate, --unit-rate), or with --calibrate
    measured by a short calibration of this code on this machine within --calibration-budget (a few
    training steps of each network at the spec's batch size on random data of its shape, the engine
    on a batch of plans, one gradient batch; on a GPU where the spec's workers ask for one, on the
    CPU with the workers' threads where they do not; workers asking for a GPU this machine lacks are
    not measured). Without a rate a time is unknown, and the plan says so. Wall time assumes the
    workers that fit run at once, each device as fast as the one the rates are of.

    \b
    --format json prints one document:
      {"experiment", "spec",
       "data": {"dataset", "channels", "image_size", "classes", "test_examples", "files_checked"},
       "nodes": {"source", "nodes": [{"cpu", "gpu"}, ...]},
       "training": {"trials", "resources": {"cpu", "gpu"}, "fit_at_once", "at_once",
                    "groups": [{"group", "network", "mode", "trials", "iterations",
                                "iterations_per_s", "rate", "device_hours"}, ...],
                    "device_hours", "wall_hours"},
       "studies": {"units", "batches", "evaluators": {"count", "cpu", "gpu"}, "fit_at_once", "at_once",
                   "per_study": [{"study", "runs", "units", "device_hours"}, ...],
                   "groups": [{"group", "study", "units", "units_per_s", "rate", "device_hours"}, ...],
                   "device_hours", "wall_hours", "units_unknown_for": [LABEL, ...],
                   "tasks": [{"run_id", "task", "plans", "requests", "tokens_per_plan", "tokens"}, ...]},
       "device_hours", "wall_hours",
       "estimate": {"method", "given", "measured",
                    "calibration": null or {"devices": [...], "seconds", "budget_seconds", "timed": [...],
                                            "not_measured": [...]}},
       "rates": {"train": {GROUP: iterations/s}, "units": {"GROUP:STUDY": units/s}}, "notes": [...]}
    "rate" is "given", "measured" or null; a time no rate gives is null, and so is a wall time where
    no node holds the worker. "units_unknown_for": language models whose folder is not here (their
    units, the studies' device time and the vocabulary, "classes", are null). "rates" holds the rates
    used: --rates reads it back. "tasks": per run and task of a tasks study, lm-eval's requests and the
    input tokens the engine computes per plan and in all (null where the model's tokenizer is not here).
    """
    import json
    import math

    from orchestrator.planning.nodes import cluster_nodes, local_nodes, parse_node
    from orchestrator.planning.plan import make_plan
    from orchestrator.planning.rates import GivenRates, check_names, parse_given_rates, read_given_rates
    from orchestrator.planning.table import render
    experiment = _load(spec, check_files=False)
    given = read_given_rates(rates_file) if rates_file else GivenRates()
    options = parse_given_rates(train_rate, unit_rate)
    check_names(experiment, options)
    given.update(options)
    if nodes and address:
        raise BadInput("--node and --address: give one (the nodes to plan for)")
    if not (math.isfinite(calibration_budget) and calibration_budget > 0):
        raise BadInput(f"--calibration-budget {calibration_budget:g}: must be a number of seconds above 0")
    address = address or (None if nodes else os.environ.get("RAY_ADDRESS"))
    if nodes:
        shapes, where = [n for text in nodes for n in parse_node(text)], "declared"
    elif address:
        shapes, where = cluster_nodes(address), f"the cluster at {address}"
    else:
        shapes, where = local_nodes(), "this machine"
    doc = make_plan(experiment, shapes, where, given, measure=calibrate, budget_s=calibration_budget,
                    log=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(doc, indent=1) if fmt == "json" else render(doc))


@main.command()
@EXPERIMENT
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--allow-external", is_flag=True,
              help="Let the SQL reach beyond OUT's tables: read other files (read_parquet, read_csv), COPY ... TO, "
                   "ATTACH, extensions. By default it sees only OUT's tables.")
def query(out, sql: str, fmt: str, allow_external: bool) -> None:
    """Run SQL (DuckDB) over the tables in OUT, one view each: runs, epochs, training_errors,
    lesion, gradients, gates, proxies, tasks, task_samples, errors (a table OUT has no rows of is an empty view).

    Example: unravel query results/digits "select run_id, k, avg(error) from lesion
    where study = 'random_deletion' group by all order by all"
    """
    from orchestrator.store.query import run
    click.echo(run(out, sql, fmt, allow_external=allow_external), nl=False)


@main.command()
@EXPERIMENT
def prune(out) -> None:
    """Remove from OUT's tables the rows of earlier settings: runs and units the current spec
    (OUT/spec.json) no longer asks for. Checkpoints and other files stay. Safe to interrupt and rerun."""
    from orchestrator import store
    from orchestrator.store.current import current_ids
    from orchestrator.store.recorded import recorded_experiment
    with store.open_session(out):
        runs, keys = current_ids(recorded_experiment(out, required=True))
        removed = store.prune(out, runs, keys)
    total = sum(removed.values())
    each = ", ".join(f"{name} {n:,}" for name, n in removed.items() if n)
    click.echo(f"removed {total:,} rows of earlier settings ({each})" if total else "nothing to remove: every row "
               "belongs to the current spec")


@main.command()
@EXPERIMENT
@click.option("--max-rows", type=click.IntRange(min=1), default=None, metavar="N",
              help="Split a folder's rows into files of at most N rows (default: one file per study and run).")
def compact(out, max_rows: int | None) -> None:
    """Merge the many small files of OUT's study tables (one per batch) into one file per study and
    run, so queries open tens of files, not thousands. Each row is kept exactly once even if killed at any
    point: rerun it to finish. Takes OUT's writer lock; units stay done (reruns compute nothing)."""
    from orchestrator import store
    from orchestrator.store.compaction import compact as merge
    with store.open_session(out):
        done = merge(out, max_rows, progress=True)
    if not done.folders:
        click.echo(f"nothing to compact: {done.files_after:,} files, {done.rows:,} rows")
        return
    click.echo(f"compacted {done.folders:,} folders: {done.files_before:,} files -> {done.files_after:,}, "
               f"{done.rows:,} rows, {done.seconds:.1f} s")


@main.command()
def schema() -> None:
    """Print the JSON schema of a spec, for editors that check YAML as it is typed.

    Example (VS Code's YAML extension): unravel schema > unravel.schema.json, then start the spec
    with the line  # yaml-language-server: $schema=unravel.schema.json
    """
    import json

    from orchestrator.experiment.document import json_schema
    click.echo(json.dumps(json_schema(), indent=1))


def _print_runs(runs) -> None:
    if runs.empty:
        click.echo("no finished runs")
        return
    view = runs[["run_id", "mode", "epochs", "test_error", "parameters", "train_seconds"]].copy()
    view["test_error"] = (100 * view["test_error"]).map("{:.2f}%".format)
    view["train_seconds"] = view["train_seconds"].map("{:.0f}".format)
    click.echo(view.to_string(index=False))


if __name__ == "__main__":
    main()
