"""Does the driver stay flat as a sweep grows? 1k, 10k and 100k small units on the local Ray.

Trains one tiny digits network (not timed), then runs a random-deletion study of 1,000,
10,000 and 100,000 units on it, each into a fresh output folder, through the orchestrator
(expand, resume index, evaluator actors, ray.wait, one Parquet file per batch). Each unit is
small (a 9-block network on 64 test images), so the driver's bookkeeping, the resume index
and the Parquet writer are what is measured. Then the 100k sweep is rerun: every unit is
already written, and the rerun must only read the index and skip them. Last, that folder is compacted
(``unravel compact``'s procedure: one file per study and run) and one aggregate is queried through
``unravel query``'s views before and after, and the rerun repeated on the compacted folder.

Prints per size: wall, units/s over the wall, steady units/s (between the first and the
last part written, i.e. without actor start-up) and the driver's own time per batch; then ``ratio=`` steady units/s at the
largest size over the smallest (target >= 0.8) and ``skip_s=`` the rerun's wall (target < 10 s
at 100k); then files before and after compaction, ``compact_s=``, ``query_s=`` before -> after (best of
3) and the rerun's wall on the compacted folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.runtime import reexec_with_tuned_allocator  # noqa: E402

reexec_with_tuned_allocator()

import pyarrow.parquet as pq  # noqa: E402

from benchmarks import local_ray_workspace  # noqa: E402
from orchestrator import query  # noqa: E402
from orchestrator.compaction import compact  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from orchestrator.sweep import run_studies  # noqa: E402
from orchestrator.training import run_training  # noqa: E402

K_MAX = 8
AGGREGATE = "select study, avg(error) from lesion group by study"


def spec(units: int) -> dict:
    return {
        "name": "scale", "data": {"dataset": "digits"},
        "training": {"iterations": 10, "recipe": {"eval_every": 10}, "resources": {"cpu": 1},
                     "runs": [{"network": "preact_resnet20", "label": "tiny", "overrides": {"widths": [2, 4, 4]}}]},
        "studies": {"test_examples": 64, "random_deletion": {"k_max": K_MAX, "draws": max(1, units // K_MAX)},
                    "evaluators": {"count": 2, "cpu": 1}, "plans_per_batch": 64, "max_in_flight": 4},
    }


def steady_rate(out: Path) -> float:
    """Units per second between the first and the last part written (actor start-up excluded)."""
    parts = sorted((p.stat().st_mtime, p) for p in (out / "lesion").rglob("part-*.parquet"))
    if len(parts) < 3:
        return float("nan")
    units = sum(pq.read_metadata(p).num_rows for _, p in parts[1:])
    return units / max(parts[-1][0] - parts[0][0], 1e-9)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated unit counts")
    p.add_argument("--quick", action="store_true", help="1k and 10k only")
    args = p.parse_args(argv)
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    with local_ray_workspace("unravel-scale-") as work:
        trained = work / "trained"
        run_training(parse_spec(spec(sizes[0])), trained, progress=False)
        rows, last = [], None
        for size in sizes:
            runs = []
            for repeat in range(3 if size < 50_000 else 1):  # small sweeps are short: take the median of 3
                out = work / f"out-{size}-{repeat}"
                out.mkdir()
                for name in ("runs.parquet", "epochs.parquet"):
                    shutil.copy(trained / name, out / name)
                (out / "tune").symlink_to(trained / "tune")  # the checkpoint, at the path runs stores relative to OUT
                experiment = parse_spec(spec(size))
                outcome = run_studies(experiment, out, progress=False)
                assert outcome.failed == 0 and outcome.computed == outcome.total, outcome
                runs.append((steady_rate(out), outcome))
                last = (experiment, out)
            steady, outcome = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            rows.append((outcome.total, outcome.seconds, outcome.computed / outcome.seconds, steady))
            print(f"{outcome.total:>7} units  wall {outcome.seconds:7.1f} s  {rows[-1][2]:7.0f} units/s  "
                  f"steady {steady:7.0f} units/s  driver {1000 * outcome.driver_seconds / outcome.batches:5.2f} "
                  f"ms/batch ({100 * outcome.driver_seconds / outcome.seconds:.0f}% busy)"
                  + (f"  [median of {len(runs)}: {', '.join(f'{r[0]:.0f}' for r in runs)}]" if len(runs) > 1 else ""),
                  flush=True)
        experiment, out = last
        start = time.perf_counter()
        rerun = run_studies(experiment, out, progress=False)
        skip = time.perf_counter() - start
        assert rerun.computed == 0 and rerun.skipped == rerun.total
        print(f"rerun of {rerun.total} finished units: {skip:.2f} s")
        print(f"ratio={rows[-1][3] / rows[0][3]:.2f} (steady units/s at {rows[-1][0]} over {rows[0][0]}) "
              f"wall_ratio={rows[-1][2] / rows[0][2]:.2f} skip_s={skip:.2f}")
        before = query_seconds(out)
        done = compact(out)
        after = query_seconds(out)
        start = time.perf_counter()
        rerun = run_studies(experiment, out, progress=False)
        compacted_skip = time.perf_counter() - start
        assert rerun.computed == 0 and rerun.skipped == rerun.total
        print(f"compact: {done.files_before} files -> {done.files_after}, {done.rows} rows; "
              f"compact_s={done.seconds:.2f} query_s={before:.3f} -> {after:.3f} ({AGGREGATE!r}) skip_s={skip:.2f} -> {compacted_skip:.2f}")
    return 0


def query_seconds(out: Path) -> float:
    """The best of 3 walls of one aggregate through `unravel query`'s views (list the files, scan, group)."""
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        query.run(out, AGGREGATE, "csv")
        walls.append(time.perf_counter() - start)
    return min(walls)


if __name__ == "__main__":
    sys.exit(main())
