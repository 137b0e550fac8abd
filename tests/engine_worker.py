"""One `player_portraits` partition in its own process, for tests that kill a run half-way (SIGKILL).

    python -m tests.engine_worker --database-url URL --image-dir DIR --base-url URL --draft-year 2030 \
        --dagster-home DIR

It uses the project's own resources against a GeminiTestServer that runs in the calling test's process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import dagster as dg  # noqa: E402

from portrait_pipeline.defs.resources import (  # noqa: E402
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
)
from tests.helpers import materialize_portraits, resources_for  # noqa: E402

API_KEY = "engine-worker-key"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--base-url", required=True, help="the GeminiTestServer's base URL")
    parser.add_argument("--draft-year", required=True)
    parser.add_argument("--style", default="default")
    parser.add_argument("--max-concurrency", type=int, default=3)
    parser.add_argument("--image-size", default="512")
    parser.add_argument("--dagster-home", required=True, help="the Dagster instance's folder (runs, event log)")
    args = parser.parse_args()
    gemini = GeminiResource(
        api_key=API_KEY,
        base_url=args.base_url,
        timeout_s=10,
        retry_initial_s=0.05,
        retry_max_s=0.2,
        max_concurrency=args.max_concurrency,
        requests_per_minute=60_000,
    )
    resources = resources_for(
        DatabaseResource(url=args.database_url),
        ImageStorageResource(local=True, local_dir=args.image_dir),
        gemini,
    )
    instance = dg.DagsterInstance.local_temp(args.dagster_home)
    partition = (args.draft_year, args.style)
    result = materialize_portraits(resources, partition, {"image_size": args.image_size}, instance)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
