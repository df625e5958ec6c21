"""`unravel`: the command line over specs, training, studies, results.

Exit codes: 0 done; 1 some trial or unit failed (the rest is written); 2 bad input
(the spec, a path, a missing dataset), with a one-line message and nothing written.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .spec import SpecError, load_spec

ADDRESS = click.option("--address", default=None, metavar="ADDR",
                       help="Ray cluster to attach to (default: $RAY_ADDRESS, else a private local Ray).")
OUT = click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                   help="Output folder (default: results/<spec name>).")


class BadInput(click.ClickException):
    exit_code = 2


def _load(spec_path: str):
    try:
        return load_spec(spec_path)
    except SpecError as e:
        raise BadInput(str(e)) from None


def _out(spec, out: Path | None) -> Path:
    return out if out is not None else Path("results") / spec.name


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="unravel")
def main() -> None:
    """Reproduce 'Residual Networks Behave Like Ensembles of Relatively Shallow Networks' and
    'Identity Mappings in Deep Residual Networks' as sweeps on a Ray cluster.

    Results land as Parquet tables under the output folder, readable by pandas, pyarrow and DuckDB.
    """


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@ADDRESS
@OUT
@click.option("--resume", is_flag=True, help="Continue an interrupted training sweep in OUT.")
def train(spec: str, address: str | None, out: Path | None, resume: bool) -> None:
    """Train every network of SPEC as Ray Tune trials; write the runs and epochs tables."""
    from .cluster import connect
    from .training import run_training
    experiment = _load(spec)
    out = _out(experiment, out)
    where = connect(address)
    n = len(experiment.training.trials)
    click.echo(f"training {n} trial{'s' * (n != 1)} of '{experiment.name}' on {where}; results in {out}")
    try:
        outcome = run_training(experiment, out, resume=resume)
    except FileExistsError as e:
        raise BadInput(str(e)) from None
    _print_runs(outcome.runs)
    click.echo(f"tables: {out / 'runs.parquet'}, {out / 'epochs.parquet'}  ({outcome.seconds:.0f} s)")
    if outcome.failed:
        for run_id, error in outcome.failed.items():
            click.echo(f"FAILED {run_id}: {error.splitlines()[-1] if error else 'unknown error'}", err=True)
        sys.exit(1)


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
