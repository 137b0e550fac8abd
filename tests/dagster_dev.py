"""Real Dagster processes for the deployment tests: `dagster dev`, `dagster-webserver`, `dagster-daemon`.

Each process starts in its own session with a tag in its environment, which every child (webserver, daemon,
code servers, run workers) inherits; stopping sends SIGTERM to the process group, then SIGKILL, then kills by
PID anything still carrying the tag, so no test leaves a Dagster process behind.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TAG_VARIABLE = "PORTRAIT_TEST_PROCESS_TAG"
LOCATION = "portrait_pipeline"  # workspace.yaml's code location
T = TypeVar("T")
# Settings a developer's shell may carry that would point the processes at real services or the wrong instance.
_INHERITED_PREFIXES = ("DAGSTER_", "DATABASE_URL", "GEMINI_", "S3_", "IMAGE_", "PORTRAIT_", "LIKENESS_")


class DagsterProcessError(AssertionError):
    """A Dagster process died, or did not become ready in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def project_env(**settings: str) -> dict[str, str]:
    """This environment minus any project or Dagster settings, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_INHERITED_PREFIXES)}
    return {**env, "PYTHONUNBUFFERED": "1", **settings}


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 60) -> str:
    """Run a console script of this venv (`portrait-pipeline ...`, `dagster ...`) and return its output."""
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise DagsterProcessError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


DEMO_ROSTER = REPO_ROOT / "data" / "demo_roster.csv"


def prepare_app_database(env: Mapping[str, str]) -> None:
    """Migrate the app database and import the demo roster, which also registers the draft-year partitions."""
    run_cli(["portrait-pipeline", "db", "upgrade"], env)
    run_cli(["portrait-pipeline", "players", "import", str(DEMO_ROSTER)], env)


def demo_players_of(draft_year: str) -> int:
    """How many players of the demo roster a (draft_year, style) partition covers."""
    with DEMO_ROSTER.open(newline="") as file:
        return sum(1 for row in csv.DictReader(file) if row["draft_year"] == draft_year)


@dataclass
class DagsterProcess:
    """One started command and everything it spawned."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    tag: str

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise DagsterProcessError(f"{self.name} exited {self.popen.returncode}; log:\n{self.log_tail()}")

    def leftovers(self) -> list[int]:
        """Processes started by this one that are still alive (empty once stopped)."""
        return tagged_pids(self.tag)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the group (Dagster shuts its children down), SIGKILL after `grace_s`, then stragglers."""
        pgid = self.popen.pid  # start_new_session: the leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (self.popen.poll() is None or _live_group_members(pgid)):
            time.sleep(0.2)
        _signal_group(pgid, signal.SIGKILL)
        for pid in tagged_pids(self.tag):  # anything that left the group, e.g. a run worker in its own session
            _kill(pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        while tagged_pids(self.tag) and time.monotonic() < deadline:
            time.sleep(0.2)


@contextmanager
def started(name: str, command: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Iterator[DagsterProcess]:
    """Start a console script of this venv in a new session; stop it and all its children on exit."""
    tag = uuid.uuid4().hex
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [str(BIN / command[0]), *command[1:]],
            cwd=REPO_ROOT,
            env={**env, TAG_VARIABLE: tag},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_interrupts,
        )
    process = DagsterProcess(name=name, popen=popen, log_path=log_path, tag=tag)
    try:
        yield process
    finally:
        process.stop()


def _default_interrupts() -> None:
    # A shell's background job inherits SIGINT ignored, and Dagster maps SIGTERM onto the SIGINT handler,
    # so without this the processes would shrug off SIGTERM and only stop at SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def tagged_pids(tag: str) -> list[int]:
    """Live processes (not zombies) whose environment carries `tag`."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    return [pid for pid, state, _ in _processes() if state != "Z" and needle in _environ(pid)]


def _live_group_members(pgid: int) -> list[int]:
    return [pid for pid, state, group in _processes() if group == pgid and state != "Z"]


def _processes() -> Iterator[tuple[int, str, int]]:
    """(pid, state, process group) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/<pid>/stat: pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            state, _ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # exited meanwhile
            continue
        yield int(entry.name), state, int(group)


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # exited meanwhile, or not ours to read
        return []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _kill(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_until(
    what: str, ready: Callable[[], T | None], timeout_s: float, processes: Sequence[DagsterProcess] = ()
) -> T:
    """Poll `ready()` until it returns something truthy; fail with the processes' logs on timeout or death."""
    deadline = time.monotonic() + timeout_s
    while True:
        for process in processes:
            process.check_alive()
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {process.name}:\n{process.log_tail()}" for process in processes)
            raise DagsterProcessError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")
        time.sleep(0.5)


class Webserver:
    """The GraphQL API of a running dagster-webserver (alone or inside `dagster dev`)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:  # GraphQL validation errors come back as HTTP 500 with a body
            raise DagsterProcessError(f"GraphQL HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        if payload.get("errors"):
            raise DagsterProcessError(f"GraphQL errors: {payload['errors']}")
        data: dict[str, Any] = payload["data"]
        return data

    def location_loaded(self) -> bool:
        """True once every code location has loaded; a location that failed to load fails the test."""
        try:
            data = self.graphql(WORKSPACE_QUERY)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        entries = data["workspaceOrError"].get("locationEntries") or []
        for entry in entries:
            location = entry["locationOrLoadError"] or {}
            if location.get("__typename") == "PythonError":
                raise DagsterProcessError(f"code location {entry['name']} failed to load: {location['message']}")
        return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)

    def launch_asset_run(self, asset: str, partition_tags: Mapping[str, str]) -> dict[str, Any]:
        """Launch one partition of an asset the way the UI's Materialize button does: it goes to the run queue."""
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": [asset]}],
            },
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": key, "value": value} for key, value in partition_tags.items()]},
        }
        result = self.graphql(LAUNCH_RUN_MUTATION, {"executionParams": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise DagsterProcessError(f"launchRun: {result}")
        run: dict[str, Any] = result["run"]
        return run

    def run_status(self, run_id: str) -> str:
        run = self.graphql(RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]
        status: str = run.get("status", run["__typename"])
        return status

    def wait_for_run(self, run_id: str, timeout_s: float, processes: Sequence[DagsterProcess] = ()) -> str:
        """The run's final status (SUCCESS, FAILURE, CANCELED)."""
        done = ("SUCCESS", "FAILURE", "CANCELED")
        return wait_until(
            f"run {run_id}",
            lambda: status if (status := self.run_status(run_id)) in done else None,
            timeout_s,
            processes,
        )


WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

LAUNCH_RUN_MUTATION = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status tags { key value } } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN_STATUS_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""


def multipartition_tags(draft_year: str, style: str) -> dict[str, str]:
    """The tags Dagster gives a run of one (draft_year, style) partition."""
    return {
        "dagster/partition": f"{draft_year}|{style}",
        "dagster/partition/draft_year": draft_year,
        "dagster/partition/style": style,
    }
