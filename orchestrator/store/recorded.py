"""The experiment OUT's results belong to, read back from its spec.json: what status, prune, the figures and
the report count and keep, without the spec's YAML, its data or its model folders."""
from __future__ import annotations

from orchestrator.experiment.messages import SpecError
from orchestrator.experiment.resolved import ExperimentSpec
from orchestrator.experiment.spec import parse_spec
from orchestrator.store.layout import NotAnExperiment, spec_path
from orchestrator.store.spec_file import read_spec_file


def recorded_experiment(out, required: bool = False) -> ExperimentSpec | None:
    """The experiment whose results OUT holds, as its spec.json records it (None if OUT holds none; with
    ``required``, NotAnExperiment); SpecError naming the file if it cannot be read. A spec.json of an earlier
    unravel holds the document alone: it is resolved again, which reads the model folders it names, until the
    next train, lesion or run records it."""
    recorded = read_spec_file(out)
    name = spec_path(out)
    if recorded is None:
        if required:
            raise NotAnExperiment(f"{name} does not exist: OUT must be the folder of an unravel experiment")
        return None
    try:
        if "experiment" in recorded:
            return ExperimentSpec.from_record(recorded["experiment"], recorded["spec"], recorded.get("path", ""))
        return parse_spec(recorded["spec"], recorded.get("path", ""))
    except SpecError as e:
        if "experiment" in recorded:
            raise SpecError(f"{name}: not a spec this version of unravel reads: {e}") from None
        raise SpecError(f"{name}: not a spec this version of unravel reads (written by an earlier unravel, and "
                        f"resolving it again failed: {e}); rerun unravel lesion or run with its spec to record the "
                        f"experiment in it") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise SpecError(f"{name}: the recorded experiment is damaged ({type(e).__name__}: {e}); rerun unravel "
                        f"lesion or run with its spec to write it again") from None
