"""Orchestration overhead: the same study units in-process vs through Ray actors, one run.

Trains two small digits networks (not timed), then evaluates the same units twice: (1)
in-process, the evaluator class called directly, one batch after another, with all the
machine's threads; (2) through the orchestrator on a private local Ray (evaluator actors,
object-store checkpoints, ray.wait, Parquet writes). Prints both walls, units/s, and
``overhead=X`` = orchestrated wall / in-process wall. Target: <= 1.15 for a sweep of a few
minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.runtime import reexec_with_tuned_allocator  # noqa: E402

reexec_with_tuned_allocator()

import torch  # noqa: E402

from orchestrator import store  # noqa: E402
from benchmarks import local_ray_workspace  # noqa: E402
from orchestrator.run.evaluator import Evaluator  # noqa: E402
from orchestrator.experiment.spec import parse_spec  # noqa: E402
from orchestrator.run.sweep import pending_units, run_studies  # noqa: E402
from orchestrator.run.training import run_training  # noqa: E402
from orchestrator.experiment.units import batches  # noqa: E402


def spec(draws: int) -> dict:
    return {
        "name": "overhead", "data": {"dataset": "digits"},
        "training": {"iterations": 20, "recipe": {"eval_every": 20}, "resources": {"cpu": 1},
                     "runs": [{"network": "preact_resnet110", "label": "resnet110"},
                              {"network": "preact_resnet56", "label": "resnet56"}]},
        "studies": {"single_deletion": {}, "random_deletion": {"k_max": 20, "draws": draws},
                    "reorder": {"k_max": 27, "draws": draws}, "gradients": {"draws": draws, "batch_size": 128},
                    "evaluators": {"count": 2, "cpu": 1}},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a sweep of about a minute each way")
    p.add_argument("--draws", type=int, default=None, help="draws per k (default 10; quick 3)")
    args = p.parse_args(argv)
    draws = args.draws or (3 if args.quick else 10)
    experiment = parse_spec(spec(draws))
    with local_ray_workspace("unravel-overhead-") as work:
        run_training(experiment, work, progress=False)
        units, todo = pending_units(experiment, work)
        s = experiment.studies
        runs = store.read_table(work, "runs")
        blobs = {r: store.located(work, c).read_bytes() for r, c in zip(runs["run_id"], runs["checkpoint"])}

        evaluator = Evaluator(experiment.data, s)
        torch.set_num_threads(os.cpu_count())  # in process, one evaluator has every CPU
        start = time.perf_counter()
        n = 0
        for batch in batches(todo, s.plans_per_batch):
            rows, errors = evaluator.run(batch, blobs[batch.run_id])
            n += len(rows)
        inproc = time.perf_counter() - start

        outcome = run_studies(experiment, work, progress=False)
        orchestrated = outcome.seconds
        print(f"{len(units)} units ({', '.join(f'{k} {v}' for k, v in outcome.per_study.items())}) on "
              f"{os.cpu_count()} CPUs, 2 evaluators")
        print(f"in-process  : {inproc:7.1f} s  {n / inproc:7.1f} units/s")
        print(f"orchestrated: {orchestrated:7.1f} s  {outcome.computed / orchestrated:7.1f} units/s "
              f"(written to Parquet, {outcome.failed} failed)")
        print(f"overhead={orchestrated / inproc:.2f} units_per_s={outcome.computed / orchestrated:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
