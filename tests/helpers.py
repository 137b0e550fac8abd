"""Small helpers shared by the Dagster-level tests."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from portrait_pipeline.cli.main import main
from portrait_pipeline.defs.assets import likeness_descriptions, player_portraits
from portrait_pipeline.defs.io_managers import PortraitIOManager
from portrait_pipeline.defs.partitions import portrait_partition_key
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
    QualitySettings,
)
from portrait_pipeline.model_registry import current_models
from tests.servers import gemini as fake

CLI = str(Path(sys.executable).with_name("portrait-pipeline"))  # the console script


def current_catalogue() -> list[fake.ModelInfo]:
    """The real API's catalogue as far as the registry knows it today: the test server of "the real API" serves
    these and 404s every other id, so a default the registry has retired fails the suite."""
    return [fake.ModelInfo(model.id, kind="image" if model.kind == "image" else "text") for model in current_models()]


def generate_requests(server: fake.GeminiTestServer, model: str | None = None) -> list[fake.RecordedRequest]:
    """The generateContent requests (paid calls), of one model or all; not the preflight's `models.get`."""
    return [
        request
        for request in server.requests
        if request.kind == "generate_content" and (model is None or request.model == model)
    ]


def gemini_for(server: fake.GeminiTestServer, api_key: str, **settings: Any) -> GeminiResource:
    """A fresh resource on the local Gemini: quick retries, no client-side rate limit, unless `settings` say
    otherwise (Dagster rebuilds a run's resources from their config, so a test changes them here)."""
    defaults: dict[str, Any] = {
        "api_key": api_key,
        "base_url": server.base_url,
        "timeout_s": 5.0,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
        "requests_per_minute": 60_000,
    }
    return GeminiResource(**{**defaults, **settings})


def resources_for(
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    likeness: LikenessResource | None = None,
    settings: PortraitSettings | None = None,
) -> dict[str, Any]:
    return {
        "settings": settings or PortraitSettings(current_draft_year=2025),
        "database": database,
        "storage": storage,
        "gemini": gemini,
        "likeness": likeness or LikenessResource(),
        "quality": QualitySettings(),
        "image_io_manager": PortraitIOManager(storage=storage),
    }


def materialize_portraits(
    resources: dict[str, Any],
    partition: tuple[str, str],
    config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """One partition of `player_portraits`, the way the UI or the CLI launches it."""
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("draft_years", [partition[0]])
    return dg.materialize(
        [player_portraits],
        partition_key=portrait_partition_key(*partition),
        instance=instance,
        resources=resources,
        run_config={"ops": {"player_portraits": {"config": config or {}}}},
        raise_on_error=False,
    )


def materialize_likeness(
    resources: dict[str, Any],
    draft_year: str,
    config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("draft_years", [draft_year])
    return dg.materialize(
        [likeness_descriptions],
        partition_key=draft_year,
        instance=instance,
        resources=resources,
        run_config={"ops": {"likeness_descriptions": {"config": config or {}}}},
        raise_on_error=False,
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    """A CLI subprocess's exit status and output; killed if it outlives `timeout`."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def wait_for(
    condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 60, every_s: float = 0.01
) -> None:
    """Poll `condition` while the CLI subprocess runs; fail if it ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the CLI ended early: {finish(process)}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)


def run_console_script(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`portrait-pipeline ARGS` in a new process, with `env` as its whole environment."""
    return subprocess.run([CLI, *args], env=dict(env), capture_output=True, text=True, timeout=300)


def run_cli(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The console script's `main` called in this process, with `env` as its whole environment meanwhile.

    The same code, output and exit status as `run_console_script`, without the 3 s a new interpreter spends
    importing Dagster and google-genai. What only a process shows (signals, a crash, the entry point itself) is
    tested through `run_console_script`.
    """
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                status = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess([CLI, *args], status, out.getvalue(), err.getvalue())
