"""S3 store round trips: the listing of an environment's backups (what `invoke backups`,
`restore latest` and the prune after every backup read: the bucket's keys, then each
manifest) against the same manifests read one after the other with boto3, as the tool
did until 2026-12-07. moto's server on loopback answers in a few milliseconds, a real
bucket in tens: a proxy in front of moto adds --latency-ms to each request. The ratio
is ours over the one-by-one reads: how many round trips a listing still waits.

    python benchmarks/bench_store.py [--backups 40] [--latency-ms 25] [--runs 5] [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import arguments, environment_file, finish, median, moto_server

AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def delaying_proxy(target_port: int, latency: float) -> int:
    """A loopback port that forwards to ``target_port``, holding each request (data
    after a pause of more than 5 ms) for ``latency`` seconds; runs on a daemon thread."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])

    async def pipe(reader: Any, writer: Any, delay: float) -> None:
        last = 0.0
        try:
            while data := await reader.read(65536):
                if delay and time.monotonic() - last > 0.005:
                    await asyncio.sleep(delay)
                last = time.monotonic()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(client_reader: Any, client_writer: Any) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            pipe(client_reader, server_writer, latency), pipe(server_reader, client_writer, 0)
        )

    started = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        started.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    started.wait(10)
    return port


def one_by_one(client: Any, bucket: str, prefix: str) -> int:
    """The listing as it was: the keys, then each manifest in turn."""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    count = 0
    for item in listed:
        if item["Key"].endswith(".manifest.json"):
            json.loads(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            count += 1
    return count


def main() -> None:
    args = arguments(__doc__, runs=5, backups=40, latency_ms=25)
    backups, runs = (5, 1) if args.quick else (args.backups, args.runs)
    os.environ.update(AWS)
    import boto3

    from safe_migrations.core.config import load_environment
    from safe_migrations.stores.s3 import remote_manifests
    from safe_migrations.stores.s3bucket import bucket_for

    with moto_server() as endpoint:
        port = delaying_proxy(int(endpoint.rsplit(":", 1)[1]), args.latency_ms / 1000)
        proxied = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=proxied, region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        for number in range(backups):
            name = f"bench-20260101T{number // 60:02d}{number % 60:02d}00000Z-base.dump"
            created = f"2026-01-01T{number // 60:02d}:{number % 60:02d}:00+00:00"
            manifest = {"environment": "bench", "created_at": created}
            client.put_object(
                Bucket="bench", Key=f"b/{name}.manifest.json", Body=json.dumps(manifest)
            )
        work = Path(tempfile.mkdtemp(prefix="bench-store-"))
        storage = {"type": "s3", "bucket": "bench", "prefix": "b/", "endpoint_url": proxied}
        directory = environment_file(work, "bench", backup={"storage": storage})
        env = load_environment(
            "bench",
            environ=dict(os.environ, DATABASE_URL="postgresql://bench@127.0.0.1:1/bench"),
            directory=directory,
        )
        store = bucket_for(env)
        ours, raw = [], []
        for run in range(runs):
            for side in ("ours", "raw") if run % 2 == 0 else ("raw", "ours"):
                started = time.perf_counter()
                if side == "ours":
                    assert len(remote_manifests(env, store)) == backups
                    ours.append(time.perf_counter() - started)
                else:
                    assert one_by_one(client, "bench", "b/") == backups
                    raw.append(time.perf_counter() - started)
    ratio = median(ours) / median(raw)
    print(f"{backups} backups in the store, {args.latency_ms} ms per request, {runs} run(s)")
    print(f"  manifests read one after the other: median {median(raw):.3f} s")
    print(f"  the store's listing (8 at a time):  median {median(ours):.3f} s")
    print(f"  ratio ours/one-by-one: {ratio:.3f}")
    finish(
        "store",
        {
            "backups": backups,
            "latency_ms": args.latency_ms,
            "runs": runs,
            "one_by_one_s": round(median(raw), 3),
            "ours_s": round(median(ours), 3),
            "ratio": round(ratio, 3),
        },
    )


if __name__ == "__main__":
    main()
