"""Blob store fixtures: every conformance test runs on the local store and on S3.

S3 is a real S3-compatible server (moto's standalone server) on a free loopback port, reached by
boto3 over HTTP with dummy credentials. One server and bucket serve the session; each test gets a
prefix of its own, so tests never see each other's blobs.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from scalemule.blobs import BlobStore, LocalBlobStore
from scalemule.blobs.s3 import S3BlobStore

BUCKET = "scalemule-test"


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3-compatible server and the session's bucket on it."""

    url: str
    bucket: str

    def client(self) -> object:
        """A raw boto3 client for the server (to inspect what the store did)."""
        return boto3.client("s3", endpoint_url=self.url)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """moto's S3 server on 127.0.0.1 and a free port, with dummy AWS credentials in the environment."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = S3Endpoint(url=f"http://{host}:{port}", bucket=BUCKET)
            boto3.client("s3", endpoint_url=endpoint.url).create_bucket(Bucket=BUCKET)
            yield endpoint
        finally:
            server.stop()


def s3_prefix() -> str:
    """A fresh key prefix inside the session's bucket."""
    return f"t-{secrets.token_hex(6)}/"


@pytest.fixture(params=["local", "s3"])
async def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    """A LocalBlobStore in tmp_path, then an S3BlobStore under a fresh prefix of the test bucket."""
    store: BlobStore
    if request.param == "local":
        store = LocalBlobStore(tmp_path / "blobs")
    else:
        endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
        store = S3BlobStore(endpoint.bucket, prefix=s3_prefix(), endpoint_url=endpoint.url)
    try:
        yield store
    finally:
        await store.close()
