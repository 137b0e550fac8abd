"""Error types with messages a person can act on; the CLI turns them into exit codes."""


class PortraitPipelineError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidInput(PortraitPipelineError):
    """A flag, config value, roster row or URL is wrong; nothing was written."""


class ConfigurationError(PortraitPipelineError):
    """The environment or a resource setting is wrong (missing database, bad bucket...)."""


class DatabaseNotMigrated(ConfigurationError):
    """The database exists but `alembic upgrade head` has not been run on it."""


class StorageError(PortraitPipelineError):
    """Writing or reading an image failed; the message names bucket and key, never credentials."""


class GenerationFailed(PortraitPipelineError):
    """The model gave no usable image for one player; the run goes on with the others."""


class ReferenceImageRejected(PortraitPipelineError):
    """A likeness reference URL or its content was refused (scheme, address, size, format)."""
