"""A small S3 helper: upload and download files and folders with boto3.

Works against AWS and any S3-compatible endpoint (MinIO, moto) through
``endpoint_url``. Credentials come from boto3's own chain (``AWS_*``
variables, profiles, instance roles), never from ``params.yaml``::

    store = ObjectStore.from_config(cfg.storage)       # None when no bucket is configured
    uri = store.upload_file(Path("reports/x.html"), "drift/run-1/x.html")
    store.download_file("drift/run-1/x.html", Path("/tmp/x.html"))

Keys are relative to the configured prefix; every method returns or takes
those relative keys, and :meth:`ObjectStore.uri` gives the ``s3://`` form.
"""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onevision.config import StorageConfig

ENDPOINT_ENV = "ONEVISION_S3_ENDPOINT_URL"  # used when storage.endpoint_url is unset


class StoreError(RuntimeError):
    """The object store refused or could not be reached; the message says which and what to do."""


_MISSING_BUCKET = {"NoSuchBucket"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "InvalidToken",
                    "ExpiredToken", "AccessDenied", "AuthorizationHeaderMalformed", "UnrecognizedClientException"}


def describe_store_error(exc: BaseException, bucket: str | None = None, endpoint: str | None = None) -> str | None:
    """One line naming the cause of a botocore failure and the next step, or None for other errors.

    Covers a missing bucket, rejected or absent credentials and an unreachable endpoint; never includes a
    credential (botocore's messages carry at most the access key id, which is dropped here).
    """
    # lazy: botocore on the first store call; the command line imports this module for its error messages
    from botocore import exceptions as bce
    where = f" at {endpoint}" if endpoint else ""
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return ("no AWS credentials found in the standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, an instance role): set them in the environment of this process")
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectTimeoutError | bce.ConnectionClosedError):
        return (f"the object store{where or ' endpoint'} is unreachable after the configured retries "
                f"(storage.max_attempts): check storage.endpoint_url / ${ENDPOINT_ENV} and that the server is up")
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        name = f"bucket {bucket!r}" if bucket else "the bucket"
        if code in _MISSING_BUCKET or (code == "404" and exc.operation_name == "HeadBucket"):
            return (f"{name} does not exist{where}: create it (aws s3 mb s3://{bucket or '<bucket>'}) "
                    "or fix storage.bucket / the MLflow artifact root")
        if code in _BAD_CREDENTIALS or status == 403 or code == "403":
            return (f"the object store{where} rejected the credentials for {name} ({code or status}): check "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the bucket policy (values not shown)")
        return None
    return None


def retry_environment(max_attempts: int) -> dict[str, str]:
    """``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS`` for boto3 clients this code does not build (MLflow's S3
    artifact repository, an MLflow server with --artifacts-destination s3://): botocore reads them itself."""
    return {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": str(max_attempts)}


@dataclass(frozen=True)
class ObjectStore:
    """One bucket and key prefix on an S3-compatible store."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    @classmethod
    def from_config(cls, cfg: StorageConfig) -> ObjectStore | None:
        """The configured store, or None when ``storage.bucket`` is unset (artifacts stay local)."""
        if not cfg.bucket:
            return None
        # The compose stack's worker reaches MinIO under another name than the host: it sets the endpoint by env.
        endpoint = cfg.endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        return cls(cfg.bucket, cfg.prefix, endpoint, cfg.region, cfg.max_attempts, cfg.connect_timeout_s, cfg.read_timeout_s)

    def client(self) -> Any:
        """A boto3 client that retries transient errors (throttling, 5xx, dropped connections) with backoff."""
        # lazy: boto3, botocore on the first store call; the command line imports this module for its error messages
        import boto3
        from botocore.config import Config

        config = Config(retries={"total_max_attempts": self.max_attempts, "mode": "standard"},  # first attempt included
                        connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s)
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)

    def check(self) -> None:
        """Fail fast with a :class:`StoreError` naming the cause when the bucket cannot be used."""
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - re-raised, described when it is the store's fault
            message = describe_store_error(exc, self.bucket, self.endpoint_url)
            if message is None:
                raise
            raise StoreError(message) from None

    def key(self, relative: str) -> str:
        """Full object key: ``prefix/relative`` (no leading or doubled slashes)."""
        parts = [p.strip("/") for p in (self.prefix, relative) if p and p.strip("/")]
        return "/".join(parts)

    def uri(self, relative: str) -> str:
        return f"s3://{self.bucket}/{self.key(relative)}"

    def upload_file(self, path: Path, relative_key: str, client: Any = None) -> str:
        """Upload one file; returns its ``s3://`` URI."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot upload {path}: not a file")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        (client or self.client()).upload_file(str(path), self.bucket, self.key(relative_key), ExtraArgs={"ContentType": content_type})
        return self.uri(relative_key)

    def upload_dir(self, folder: Path, relative_prefix: str) -> list[str]:
        """Upload every file under ``folder`` (recursively), keeping relative paths; returns the URIs."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot upload {folder}: not a folder")
        client = self.client()
        return [
            self.upload_file(path, f"{relative_prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}", client)
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        ]

    def download_file(self, relative_key: str, dest: Path, client: Any = None) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        (client or self.client()).download_file(self.bucket, self.key(relative_key), str(dest))
        return dest

    def list_keys(self, relative_prefix: str = "") -> list[str]:
        """Keys under ``relative_prefix``, relative to the store's prefix, sorted."""
        client = self.client()
        base = self.key(relative_prefix)
        strip = len(self.key("")) + 1 if self.key("") else 0
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def download_dir(self, relative_prefix: str, dest: Path) -> list[Path]:
        """Download every object under ``relative_prefix`` into ``dest``, keeping relative paths."""
        client = self.client()
        head = relative_prefix.strip("/")
        out = []
        for key in self.list_keys(head):
            rel = key[len(head) :].lstrip("/") if head else key
            out.append(self.download_file(key, Path(dest) / rel, client))
        return out
