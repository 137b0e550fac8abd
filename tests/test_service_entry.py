"""The seed's programmatic entry point, `image_generation_service`, works from its own module in a fresh process."""

import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from portrait_pipeline.audit.db import engine_for, session_scope, upgrade
from portrait_pipeline.audit.models import PlayerImageAsset
from portrait_pipeline.roster import import_roster, read_roster

SCRIPT = """
import asyncio
from portrait_pipeline.audit import records
from portrait_pipeline.audit.db import engine_for, session_scope
from portrait_pipeline.audit.models import Player
from portrait_pipeline.service import image_generation_service

async def main() -> None:
    with session_scope(engine_for(URL)) as db:
        player = db.get_one(Player, 1)
        spec = records.SnapshotSpec("script", "comic", "player", player.draft_year, 1, "sys", "v", "1K", "m", 0)
        snapshot = records.start_snapshot(db, spec)
        db.commit()
        service = image_generation_service
        asset = await service.generate_for_player(db=db, player=player, snapshot=snapshot, style="comic")
        print(asset.status, asset.model, asset.s3_key)

asyncio.run(main())
"""


def test_image_generation_service_generates_one_player_from_a_script(tmp_path: Path, demo_roster: Path) -> None:
    url = f"sqlite:///{tmp_path / 'portraits.db'}"
    upgrade(url)
    with session_scope(engine_for(url)) as db:
        import_roster(db, read_roster(demo_roster))
    env = {"DATABASE_URL": url, "IMAGE_LOCAL_DIR": str(tmp_path / "images"), "PORTRAIT_RENDERER": "offline"}
    result = subprocess.run(
        [sys.executable, "-c", f"URL = {url!r}\n{SCRIPT}"],
        env={**env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    status, model, key = result.stdout.split()
    assert (status, model) == ("succeeded", "offline-renderer")
    assert (tmp_path / "images" / key).is_file()
    with session_scope(engine_for(url)) as db:
        assert db.scalars(select(PlayerImageAsset.style)).all() == ["comic"]
