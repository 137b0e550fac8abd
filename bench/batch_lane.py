"""The batch lane on N players against the local Gemini test server: requests made, storing time, cost, peak RSS.

    .venv/bin/python -m bench.batch_lane                  # 1,000 players, one job
    .venv/bin/python -m bench.batch_lane --players 200    # RSS at another size, to compare

The server runs in a thread of this process (its memory counts in the peak RSS, as does the SDK's parsed job):
run two sizes and compare. Wall time "storing" is from the poll that saw the job succeed to the last row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.throughput import DRAFT_YEAR, peak_rss_mb, seed_players  # noqa: E402
from portrait_pipeline.audit import db  # noqa: E402
from portrait_pipeline.defs.resources import (  # noqa: E402
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
    generation_service,
)
from portrait_pipeline.generation import batch  # noqa: E402
from portrait_pipeline.generation.partition import PartitionRequest  # noqa: E402
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, pricing  # noqa: E402
from tests.servers.gemini import GeminiTestServer  # noqa: E402

API_KEY = "bench-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--players", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, GeminiTestServer(api_key=API_KEY, batch_pending_s=0.2) as server:
        url = f"sqlite:///{folder}/bench.db"
        db.upgrade(url)
        seed_players(url, args.players)
        gemini = GeminiResource(api_key=API_KEY, base_url=server.base_url, max_concurrency=8)
        storage = ImageStorageResource(local=True, local_dir=f"{folder}/images")
        service = generation_service(storage, gemini, LikenessResource(), PortraitSettings())
        settings = batch.BatchSettings(poll_initial_s=0.1, poll_max_s=0.5, max_concurrency=8)
        request = PartitionRequest(DRAFT_YEAR, "default", lane="batch")
        started = time.monotonic()
        engine = db.engine_for(url)
        result = batch.run_batch_partition(engine, service, gemini.client(), request, settings)
        ended = time.monotonic()
        last_get = [record for record in server.requests if record.kind == "batch_get"][-1]
        # From the answer that carried the results (the server made them meanwhile) to the last audit row.
        total, storing = ended - started, ended - (last_get.ended or ended)
        print(f"the results' poll took {last_get.duration_s or 0:.2f} s at the server (it renders the images then)")
        counts = server.batch_request_counts
        submit_poll = sum(count for kind, count in counts.items() if kind != "download")
        standard = pricing(DEFAULT_IMAGE_MODEL).standard_usd("1K") or 0
        print(f"players {args.players}: stored {len(result.generated)}, failed {len(result.failed)}")
        per_player = submit_poll / args.players
        print(f"Batch/Files API requests: {dict(counts)}: {submit_poll} submit+poll ({per_player:.3f} per player)")
        print(f"all HTTP requests to the server: {len(server.requests)}")
        print(f"wall time: {total:.2f} s in all; {storing:.2f} s from the results' answer to the last row")
        last_job = args.players - settings.max_requests_per_job * ((args.players - 1) // settings.max_requests_per_job)
        print(f"storing the last job: {last_job} images in {storing:.2f} s, {last_job / storing:.1f} images/s")
        print(
            f"cost: ${result.cost_usd:.4f} batch vs ${standard * args.players:.4f} standard "
            f"({result.cost_usd / (standard * args.players):.3f}x)"
        )
        print(f"peak RSS (process, server included): {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
