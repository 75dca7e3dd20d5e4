"""An S3-compatible bucket through boto3: one environment's prefix (``Store``), and a
dump's multipart upload (``ObjectSink``), completed only by ``commit``.

Credentials come from the AWS SDK's standard chain (environment, profile, instance
or OIDC role), never from the environment file.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import ConfigError

PART_SIZE = 8 * 1024 * 1024  # S3 wants at least 5 MiB per part but the last


class Store:
    """One environment's place in a bucket: keys under its prefix."""

    def __init__(self, env: Environment) -> None:
        import boto3
        from botocore.config import Config

        storage = env.settings.backup.storage
        assert storage.bucket is not None
        self.bucket = storage.bucket
        self.prefix = storage.prefix
        self.client = boto3.client(
            "s3",
            endpoint_url=storage.endpoint_url,
            region_name=storage.region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def name_of(self, spec: str) -> str | None:
        """The object name a spec (s3:// URL, key or name) points to under this prefix."""
        key = spec
        if spec.startswith("s3://"):
            bucket, _, key = spec[5:].partition("/")
            if bucket != self.bucket:
                return None
        if key.startswith(self.prefix):
            key = key[len(self.prefix) :]
        return key if key and "/" not in key else None

    def put_json(self, key: str, data: dict[str, Any]) -> None:
        body = json.dumps(data, indent=2).encode("utf-8")
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def get_json(self, key: str) -> dict[str, Any] | None:
        """A manifest object; None when it is missing or not JSON (a store that cannot be
        reached raises, it is not a missing manifest)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def tag(self, key: str, tags: dict[str, str]) -> None:
        self.client.put_object_tagging(
            Bucket=self.bucket,
            Key=key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )

    def tags(self, key: str) -> dict[str, str]:
        answer = self.client.get_object_tagging(Bucket=self.bucket, Key=key)
        return {t["Key"]: t["Value"] for t in answer.get("TagSet", [])}

    def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        """(key, upload id) of the multipart uploads under the prefix begun more than
        ``older_than`` seconds ago."""
        from datetime import UTC, datetime, timedelta

        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        found = []
        pages = self.client.get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    found.append((upload["Key"], upload["UploadId"]))
        return found

    def names(self) -> list[str]:
        """Object names directly under the prefix."""
        found = []
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) :]
                if "/" not in name:
                    found.append(name)
        return found

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def download(self, key: str, target: Path) -> None:
        """Into a new private file (0600); removed again when the download fails."""
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                self.client.download_fileobj(self.bucket, key, handle)
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    def probe(self) -> None:
        """Write and remove a small object: the bucket is there and takes writes."""
        key = self.key(".safe-migrations-probe")
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"probe")
        self.delete(key)


class ObjectSink:
    """A dump's destination in the store: a multipart upload, begun at once, completed
    by ``commit`` only; ``abort`` leaves nothing behind. Parts go up on two threads of
    their own, so pg_dump never waits on the network (at most three parts in memory)."""

    IN_FLIGHT = 2

    def __init__(self, store: Store, name: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.store = store
        self.key = store.key(name)
        self.path = store.url(self.key)
        self.written = 0
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._pending: list[Any] = []
        self._slots = threading.BoundedSemaphore(self.IN_FLIGHT)
        self._pool = ThreadPoolExecutor(self.IN_FLIGHT, thread_name_prefix="s3-part")
        self._upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=self.key)[
            "UploadId"
        ]

    def write(self, data: bytes) -> int:
        self._buffer += data
        self.written += len(data)
        while len(self._buffer) >= PART_SIZE:
            self._send(bytes(self._buffer[:PART_SIZE]))
            del self._buffer[:PART_SIZE]
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        """The stream ended: send what is left (the last part may be short) and wait for
        every part; a part that failed raises here."""
        if self._buffer or not self._pending:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        for future in self._pending:
            future.result()

    def commit(self) -> None:
        self._pool.shutdown()
        self.store.client.complete_multipart_upload(
            Bucket=self.store.bucket,
            Key=self.key,
            UploadId=self._upload,
            MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])},
        )

    def abort(self) -> None:
        self._pool.shutdown(cancel_futures=True)  # waits for a part on its way
        self.store.client.abort_multipart_upload(
            Bucket=self.store.bucket, Key=self.key, UploadId=self._upload
        )

    def _send(self, data: bytes) -> None:
        number = len(self._pending) + 1
        self._slots.acquire()  # blocks the writer only when two parts are on their way
        try:
            self._pending.append(self._pool.submit(self._upload_part, number, data))
        except BaseException:
            self._slots.release()
            raise

    def _upload_part(self, number: int, data: bytes) -> None:
        try:
            answer = self.store.client.upload_part(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self._upload,
                PartNumber=number,
                Body=data,
            )
            self._parts.append({"ETag": answer["ETag"], "PartNumber": number})
        finally:
            self._slots.release()


def bucket_for(env: Environment) -> Store:
    """The environment's store; missing credentials are one sentence naming the chain."""
    import boto3

    if boto3.session.Session().get_credentials() is None:
        raise ConfigError(
            f"backup.storage of {env.name} is s3 but no AWS credentials were found; set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE), or a role."
        )
    return Store(env)


class PendingSink:
    """An ObjectSink still being made (the client built, stale uploads aborted, the upload
    begun) while the dump already runs: what the dump writes meanwhile waits in memory,
    up to BUFFERED bytes, after which the writer waits for the sink. Made so that boto3's
    import and the first requests (a third of a second) overlap the dump's start."""

    BUFFERED = 64 * 1024 * 1024

    def __init__(self, making: Any) -> None:
        self._making = making  # a Future of the ObjectSink
        self._sink: ObjectSink | None = None
        self._early = bytearray()
        self.written = 0

    def _ready(self) -> ObjectSink:
        if self._sink is None:
            self._sink = self._making.result()  # a failure to begin the upload raises here
            if self._early:
                self._sink.write(bytes(self._early))
                self._early.clear()
        return self._sink

    def write(self, data: bytes) -> int:
        self.written += len(data)
        room = len(self._early) + len(data) <= self.BUFFERED
        if self._sink is None and not self._making.done() and room:
            self._early += data
            return len(data)
        return self._ready().write(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        self._ready().finish()

    def commit(self) -> None:
        self._ready().commit()

    def abort(self) -> None:
        """Abort the upload if it began; one that never began left nothing behind."""
        try:
            sink = self._ready()
        except Exception:  # noqa: BLE001 - the begin's own failure is reported by save
            self._early.clear()
            return
        sink.abort()

    @property
    def key(self) -> str:
        return self._ready().key

    @property
    def path(self) -> str:
        return self._ready().path
