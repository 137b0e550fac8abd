"""Alembic environment: one database URL, our own version table, the typed models as metadata."""

import os
from logging.config import fileConfig

from alembic import context
from portrait_pipeline.audit.db import DEFAULT_DATABASE_URL, VERSION_TABLE, engine_for, normalize_url
from portrait_pipeline.audit.models import Base

config = context.config
if config.config_file_name is not None and not config.attributes.get("database_url"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.attributes.get("database_url") or normalize_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))


def run_migrations() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, version_table=VERSION_TABLE, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with engine_for(url).connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=VERSION_TABLE,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
