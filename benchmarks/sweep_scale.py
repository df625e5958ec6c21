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

``--targets folder,s3`` (the default) repeats the largest size in the same run with OUT on object storage: a
local S3-compatible server (moto's, on 127.0.0.1: every part a PUT over HTTP, the resume index a LIST), and
prints the same figures for it beside the folder's: units/s, the rerun's skip time, compaction and the query.
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

import pyarrow.fs as pafs  # noqa: E402

from benchmarks import local_ray_workspace  # noqa: E402
from orchestrator.store import query
from orchestrator import store  # noqa: E402
from orchestrator.store.compaction import compact  # noqa: E402
from orchestrator.experiment.spec import parse_spec  # noqa: E402
from orchestrator.run.sweep import run_studies  # noqa: E402
from orchestrator.run.training import run_training  # noqa: E402

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


def steady_rate(out) -> float:
    """Units per second between the first and the last part written (actor start-up excluded)."""
    root = store.table_folder(out, "lesion")
    parts = sorted(((i.mtime.timestamp(), root / root.relative(i.path)) for i in root.files()
                    if i.base_name.startswith("part-")), key=lambda p: p[0])
    if len(parts) < 3:
        return float("nan")
    units = sum(store.read_metadata(p).num_rows for _, p in parts[1:])
    return units / max(parts[-1][0] - parts[0][0], 1e-9)


def s3_server():
    """moto's S3 server on 127.0.0.1 with a bucket, and fake credentials for it: (server, bucket URI)."""
    import logging

    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True).create_dir("bench")
    return server, f"s3://bench/{{}}?endpoint_override={host}:{port}&scheme=http"


def prepared(trained: Path, out):
    """OUT holding the trained run (runs and epochs tables, its checkpoint where runs says), as a sweep needs."""
    if store.where(out).local:
        out.mkdir()
        for name in ("runs.parquet", "epochs.parquet"):
            shutil.copy(trained / name, out / name)
        (out / "tune").symlink_to(trained / "tune")  # the checkpoint, at the path runs stores relative to OUT
        return out
    out = store.where(out)
    for name in ("runs.parquet", "epochs.parquet"):
        store.write_file(out / name, (trained / name).read_bytes())
    for checkpoint in store.read_table(trained, "runs")["checkpoint"]:
        store.write_file(out / checkpoint, (trained / checkpoint).read_bytes())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated unit counts")
    p.add_argument("--quick", action="store_true", help="1k and 10k only")
    p.add_argument("--targets", default="folder,s3", help="folder, s3 (a local S3 server), or both")
    args = p.parse_args(argv)
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    targets = args.targets.split(",")
    if "s3" in targets:  # before Ray starts: its workers inherit the credentials
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_EC2_METADATA_DISABLED="true")
        server, bucket = s3_server()
    with local_ray_workspace("unravel-scale-") as work:
        trained = work / "trained"
        run_training(parse_spec(spec(sizes[0])), trained, progress=False)
        rows, last = [], None
        for size in sizes:
            runs = []
            for repeat in range(3 if size < 50_000 else 1):  # small sweeps are short: take the median of 3
                out = prepared(trained, work / f"out-{size}-{repeat}")
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
        finish(experiment, out, rows, "folder")
        if "s3" in targets:
            out = prepared(trained, bucket.format(f"out-{sizes[-1]}"))
            outcome = run_studies(experiment, out, progress=False)
            assert outcome.failed == 0 and outcome.computed == outcome.total, outcome
            print(f"{outcome.total:>7} units  wall {outcome.seconds:7.1f} s  {outcome.computed / outcome.seconds:7.0f} "
                  f"units/s  steady {steady_rate(out):7.0f} units/s  [s3: the local server]", flush=True)
            finish(experiment, out, [rows[0], (outcome.total, outcome.seconds, outcome.computed / outcome.seconds,
                                               steady_rate(out))], "s3")
    if "s3" in targets:
        server.stop()
    return 0


def finish(experiment, out, rows, target: str) -> None:
    """The rerun (every unit written: skip them all), compaction, the query before and after, on one OUT."""
    start = time.perf_counter()
    rerun = run_studies(experiment, out, progress=False)
    skip = time.perf_counter() - start
    assert rerun.computed == 0 and rerun.skipped == rerun.total
    print(f"[{target}] rerun of {rerun.total} finished units: {skip:.2f} s")
    print(f"[{target}] ratio={rows[-1][3] / rows[0][3]:.2f} (steady units/s at {rows[-1][0]} over {rows[0][0]}) "
          f"wall_ratio={rows[-1][2] / rows[0][2]:.2f} skip_s={skip:.2f}")
    before = query_seconds(out)
    done = compact(out)
    after = query_seconds(out)
    start = time.perf_counter()
    rerun = run_studies(experiment, out, progress=False)
    compacted_skip = time.perf_counter() - start
    assert rerun.computed == 0 and rerun.skipped == rerun.total
    print(f"[{target}] compact: {done.files_before} files -> {done.files_after}, {done.rows} rows; "
          f"compact_s={done.seconds:.2f} query_s={before:.3f} -> {after:.3f} ({AGGREGATE!r}) skip_s={skip:.2f} -> {compacted_skip:.2f}")


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
