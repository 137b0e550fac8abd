"""The batch lane against the standard lane, on N players, with the Gemini test server in another process.

    .venv/bin/python -m bench.batch_lane                          # 1,000 players, both lanes; RSS at 500/1k/2k
    .venv/bin/python -m bench.batch_lane --players 1000 --no-rss  # the comparison only
    .venv/bin/python -m bench.batch_lane --profile                # cProfile of the batch lane's collecting

This process runs the GeminiTestServer; each measured run is a worker process (this module with --worker) with
its own SQLite database and image folder, so its peak RSS is its own and the server's CPU is not counted in it.
A batch worker submits (`submit_partition`), then waits while the driver makes the server settle every job (the
server renders a job's answers on the first poll that sees it succeed: not the pipeline's work), then collects
(`run_batch_partition`, which finds the jobs in `batch_jobs` and submits nothing new). "Storing" is that collecting
run, from its first poll to its last audit row. A standard worker runs `run_partition` on the same players with a
server that answers at once, so both lanes' figures are images stored per second of the pipeline's own work.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.throughput import DRAFT_YEAR, RssSampler, check, peak_rss_mb, seed_players  # noqa: E402
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, pricing  # noqa: E402
from tests.servers.gemini import GeminiTestServer  # noqa: E402

API_KEY = "bench-key"
CONCURRENCY = 8  # the standard lane's GEMINI_MAX_CONCURRENCY default: both lanes store with it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--players", type=int, default=1000)
    parser.add_argument("--rss-sizes", default="500,1000,2000", help="batch-lane sizes for the RSS comparison")
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS comparison at --rss-sizes")
    parser.add_argument("--profile", action="store_true", help="cProfile the batch worker's collecting run")
    parser.add_argument("--worker", choices=["batch", "standard"], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the worker: one lane's run in this process, its figures as one JSON line on stdout ----------------------


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import func, select

    from portrait_pipeline.audit import db
    from portrait_pipeline.audit.db import session_scope
    from portrait_pipeline.audit.models import PlayerImageAsset
    from portrait_pipeline.defs.resources import (
        GeminiResource,
        ImageStorageResource,
        LikenessResource,
        PortraitSettings,
        generation_service,
    )
    from portrait_pipeline.generation import batch
    from portrait_pipeline.generation.partition import PartitionRequest, run_partition

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as folder:
        url = f"sqlite:///{folder}/bench.db"
        db.upgrade(url)
        seed_players(url, args.players)
        gemini = GeminiResource(
            api_key=API_KEY, base_url=args.base_url, max_concurrency=CONCURRENCY, requests_per_minute=600_000
        )
        storage = ImageStorageResource(local=True, local_dir=f"{folder}/images")
        service = generation_service(storage, gemini, LikenessResource(), PortraitSettings())
        engine = db.engine_for(url)
        request = PartitionRequest(DRAFT_YEAR, "default", lane=args.worker)
        profiler = cProfile.Profile() if args.profile else None
        if args.worker == "batch":
            settings = batch.BatchSettings(poll_initial_s=0.05, poll_max_s=0.5, max_concurrency=CONCURRENCY)
            lane = pricing(DEFAULT_IMAGE_MODEL, lane="batch")
            batch.submit_partition(engine, gemini.client(), service, request, lane, lane.usd_per_image("1K"), settings)
            print(json.dumps({"submitted": True, "rss_mb": peak_rss_mb()}), flush=True)
            sys.stdin.readline()  # the driver has made the server settle every job
            started = time.perf_counter()
            with RssSampler() as sampler:
                if profiler is not None:
                    profiler.enable()
                result = batch.run_batch_partition(engine, service, gemini.client(), request, settings)
                if profiler is not None:
                    profiler.disable()
        else:
            started = time.perf_counter()
            with RssSampler() as sampler:
                result = run_partition(engine, service, request, max_concurrency=CONCURRENCY)
        wall = time.perf_counter() - started
        with session_scope(engine) as session:
            rows = session.execute(
                select(func.count(), func.sum(PlayerImageAsset.cost_usd)).where(PlayerImageAsset.status == "succeeded")
            ).one()
        engine.dispose()
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(r"portrait_pipeline|google/genai|pydantic", 30)
        stats.sort_stats("tottime").print_stats(15)
        print(out.getvalue(), file=sys.stderr)
    stored, cost = rows
    return {
        "stored": len(result.generated),
        "failed": len(result.failed),
        "wall_s": wall,
        "rows": stored,
        "row_cost_per_image": str(cost / stored) if stored else None,
        "peak_rss_mb": peak_rss_mb(),
        "collect_peak_rss_mb": max((rss for _, rss in sampler.samples), default=0.0),
    }


# --- the driver: a server here, one worker process per run -------------------------------------------------


def measure(server: GeminiTestServer, lane: str, players: int, *, profile: bool = False) -> dict[str, Any]:
    """One worker's figures, with the Batch/Files API requests it made for submit + poll, and the downloads."""
    server.reset()
    command = [sys.executable, "-m", "bench.batch_lane", f"--worker={lane}", f"--base-url={server.base_url}"]
    command += [f"--players={players}", *(["--profile"] if profile else [])]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as worker:
        assert worker.stdin is not None and worker.stdout is not None and worker.stderr is not None
        warmed = 0
        if lane == "batch":
            line = worker.stdout.readline()
            if not line:
                sys.exit(f"batch worker failed before submitting:\n{worker.stderr.read()[-4000:]}")
            submitted = dict(server.batch_request_counts)
            warmed = settle(server)
            worker.stdin.write("go\n")
            worker.stdin.flush()
        out, err = worker.communicate()
    if worker.returncode != 0:
        sys.exit(f"{lane} worker failed ({worker.returncode}):\n{err[-4000:]}")
    if profile:
        start = err.find("         ")
        print(err[start:] if start >= 0 else err[-6000:])
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    counts = dict(server.batch_request_counts)
    if lane == "batch":
        counts["get"] = counts.get("get", 0) - warmed  # the driver's own polls, which settled the jobs
        figures["submit_requests"] = {kind: n for kind, n in submitted.items() if n}
    figures["requests"] = {kind: n for kind, n in counts.items() if n}
    figures["submit_poll"] = sum(n for kind, n in counts.items() if kind != "download")
    figures["generate_calls"] = server.request_counts.get("generate_content", 0)
    return figures


def settle(server: GeminiTestServer) -> int:
    """Poll every job once, from here, so the server renders its answers now (it does so on the first poll that
    sees the job succeed); returns how many polls that took."""
    for name in server.batch_names:
        request = urllib.request.Request(f"{server.base_url}/v1beta/{name}", headers={"x-goog-api-key": API_KEY})
        with urllib.request.urlopen(request, timeout=600) as answer:
            answer.read()
    return len(server.batch_names)


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"host: {os.cpu_count()} CPUs, load average {load} at start (other processes share these CPUs)")
    model = pricing(DEFAULT_IMAGE_MODEL)
    standard_price, batch_price = model.standard_usd("1K"), model.batch_usd("1K")
    print(f"model {DEFAULT_IMAGE_MODEL} at 1K: ${standard_price} standard, ${batch_price} batch (model registry)")
    n = args.players
    with GeminiTestServer(api_key=API_KEY, batch_pending_s=0.0, batch_running_s=0.0) as server:
        batch = measure(server, "batch", n, profile=args.profile)
        standard = measure(server, "standard", n)
        sizes = [] if args.no_rss else [int(size) for size in args.rss_sizes.split(",")]
        rss = {size: (batch if size == n else measure(server, "batch", size))["peak_rss_mb"] for size in sizes}
    batch_rate, standard_rate = batch["stored"] / batch["wall_s"], standard["stored"] / standard["wall_s"]
    print(f"\nbatch lane, {n} players: {batch['stored']} stored, {batch['failed']} failed")
    print(f"  Batch/Files API requests: submit {batch['submit_requests']}; in all {batch['requests']}")
    print(f"  submit + poll: {batch['submit_poll']} requests ({batch['submit_poll'] / n * 100:.2f} per 100 players)")
    print(f"  generateContent calls: {batch['generate_calls']}")
    print(f"  storing after the jobs ended: {batch['wall_s']:.2f} s, {batch_rate:.1f} images/s")
    print(f"  peak RSS {batch['peak_rss_mb']:.0f} MiB (collecting: {batch['collect_peak_rss_mb']:.0f} MiB)")
    print(f"standard lane, {n} players, server answering at once: {standard['stored']} stored")
    print(f"  calling + storing: {standard['wall_s']:.2f} s, {standard_rate:.1f} images/s")
    print(f"  peak RSS {standard['peak_rss_mb']:.0f} MiB")
    per_batch, per_standard = (Decimal(run["row_cost_per_image"] or "NaN") for run in (batch, standard))
    print(f"cost per image from the audit rows: ${per_batch} batch, ${per_standard} standard")
    for size, peak in rss.items():
        print(f"peak RSS, batch lane, {size} players: {peak:.0f} MiB")
    print("\ntargets:")
    check("<= 1 submit+poll request per 100 players", batch["submit_poll"] * 100 <= n, f"{batch['submit_poll']}")
    rates = f"{batch_rate:.1f} vs {standard_rate:.1f} images/s"
    check("storing no slower than the standard lane", batch_rate >= standard_rate, rates)
    halves = batch_price is not None and standard_price is not None and batch_price * 2 == standard_price
    check("batch price exactly half (registry)", halves, f"${batch_price} vs ${standard_price}")
    check(
        "batch cost exactly half (audit rows)",
        per_batch * 2 == per_standard,
        f"${per_batch} vs ${per_standard}",
    )
    if len(rss) > 1:
        low, high = min(rss), max(rss)
        ratio = rss[high] / rss[low]
        check(f"peak RSS flat ({high} within 1.2x of {low} players)", ratio <= 1.2, f"{ratio:.2f}x")


if __name__ == "__main__":
    main()
