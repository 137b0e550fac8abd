"""The S3 client behind `ImageStorageResource`, in a module of its own so that only a configuration with a bucket
imports it: `dagster_aws` imports every one of its components (Athena, Secrets Manager, ...) and boto3, which took
1.1 s of a CLI start-up (4.1 s for `--help`) on a 2-core machine, before any image was stored locally."""

from __future__ import annotations

from typing import Any

from botocore.config import Config
from dagster_aws.s3 import S3Resource
from pydantic import Field


class PortraitS3Resource(S3Resource):
    """dagster-aws's S3Resource, plus the botocore settings S3-compatible stores need."""

    max_pool_connections: int = Field(default=32, description="HTTP pool size: at least the engine's concurrency.")

    def __repr_args__(self) -> Any:
        # Keep credentials out of repr()/str(), which end up in logs and error messages.
        hidden = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
        for name, value in super().__repr_args__():
            yield name, ("***" if name in hidden and value else value)

    def get_client(self) -> Any:
        import boto3
        from botocore import UNSIGNED

        config = Config(
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            max_pool_connections=self.max_pool_connections,
            # Path-style keeps bucket names out of DNS, which R2, MinIO and SeaweedFS expect.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # boto3's default CRC checksums break R2, MinIO and SeaweedFS over HTTPS.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        if self.use_unsigned_session:  # honoured by dagster-aws's S3Resource, so here too
            config = config.merge(Config(signature_version=UNSIGNED))
        session = boto3.session.Session(profile_name=self.profile_name)
        return session.client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=config,
        )
