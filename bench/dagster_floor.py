"""Dagster's own cost per partition run, with nothing of ours in it: a no-op partitioned asset (and five no-op
partitioned checks), run `RUNS` times from 8 threads of one process on the CLI's instance (dagster.dev.yaml,
compute logs off), as `generate --all` runs its partitions. Prints wall and CPU seconds per run: the floor under
issue 15's scenario 5 (seconds per partition) for one run per partition.

    python -m bench.dagster_floor
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg

from portrait_pipeline.cli.launch import QUIET_LOGGERS, runs_instance

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = 80
CHECKS = 5  # as many as player_portraits has
PARTITIONS = dg.StaticPartitionsDefinition([f"p{i}" for i in range(RUNS + 1)])


@dg.asset(partitions_def=PARTITIONS)
def noop() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 1})


def noop_check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=noop, name=name, partitions_def=PARTITIONS)
    def check() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    return check


def per_run(instance: dg.DagsterInstance, checks: int) -> tuple[float, float]:
    """Wall and CPU seconds per run of the no-op asset with `checks` checks (after one warm-up run)."""
    defs = dg.Definitions(
        assets=[noop],
        asset_checks=[noop_check(f"check_{i}") for i in range(checks)],
        jobs=[dg.define_asset_job("floor", selection=[noop])],
    )
    job = defs.resolve_job_def("floor")
    quiet = {"loggers": QUIET_LOGGERS}
    job.execute_in_process(quiet, instance=instance, partition_key="p0")
    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(8) as pool:
        keys = [f"p{i}" for i in range(1, RUNS + 1)]
        list(pool.map(lambda key: job.execute_in_process(quiet, instance=instance, partition_key=key), keys))
    return (time.perf_counter() - started) / RUNS, (time.process_time() - cpu) / RUNS


def main() -> None:
    warnings.filterwarnings("ignore")  # partitioned checks are a preview feature
    with tempfile.TemporaryDirectory(prefix="dagster-floor-") as home:
        shutil.copy(REPO_ROOT / "dagster.dev.yaml", Path(home) / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = home
        with dg.DagsterInstance.get() as instance, runs_instance(instance) as runs:
            print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {RUNS} runs from 8 threads")
            for checks in (0, CHECKS):
                wall, cpu = per_run(runs, checks)
                print(f"no-op partitioned asset, {checks} checks: {wall:.3f} s per run (wall), {cpu:.3f} s CPU")


if __name__ == "__main__":
    main()
