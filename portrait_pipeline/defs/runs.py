"""Runs whose worker died: a CLI run killed with -9 never tells Dagster it ended, so we tell it.

A run launched in-process (the CLI) has no run monitor watching it; Dagster would show it STARTED for ever, and
its snapshot would stay `running` (the sweep that closes interrupted snapshots waits for the run to end). The
CLI tags each run with the pid and host of the process that executes it; whoever looks next (the CLI's next
start, the next run of the partition, the sensor's tick) marks such a run failed once that process is gone.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

PID_TAG = "portrait/pid"
HOST_TAG = "portrait/host"
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def worker_tags() -> dict[str, str]:
    """The tags that name this process as a run's worker."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def worker_died(run: dg.DagsterRun) -> bool:
    """An unfinished run whose worker was a process on this host that no longer exists.

    A run of another host is never judged from here: its pid means nothing on this machine.
    """
    pid, host = run.tags.get(PID_TAG, ""), run.tags.get(HOST_TAG)
    if run.is_finished or host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not pid_alive(int(pid))


def fail_if_worker_died(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Mark the run failed if its worker died; True if it did (or the run has ended anyway)."""
    if worker_died(run):
        message = (
            f"the run's worker (pid {run.tags[PID_TAG]} on {run.tags[HOST_TAG]}) died without ending the run "
            "(killed, or the machine went down): marked failed"
        )
        instance.report_run_failed(run, message=message)
        return True
    return run.is_finished


def fail_runs_of_dead_workers(instance: dg.DagsterInstance) -> list[str]:
    """Every unfinished run of this host whose worker died, marked failed; their ids."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: socket.gethostname()}))
    return [run.run_id for run in runs if worker_died(run) and fail_if_worker_died(instance, run)]


def run_has_ended(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether the run is over: finished in Dagster, or its worker died (then it is marked failed first).

    Unknown runs (another instance's) are not over: their snapshots are left alone.
    """
    run = instance.get_run_by_id(run_id)
    return run is not None and fail_if_worker_died(instance, run)
