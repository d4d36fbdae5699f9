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
        import boto3
        from botocore.config import Config

        config = Config(retries={"total_max_attempts": self.max_attempts, "mode": "standard"},  # first attempt included
                        connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s)
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)

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
