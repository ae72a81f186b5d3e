"""Remote-store building blocks: the object layer over S3 and the local cache, against a real
S3-compatible server (moto, its own process, on 127.0.0.1; the tests' ``s3_server.py``).

    .venv/bin/python benchmarks/bench_remote.py            # 32 MiB, 9 interleaved rounds
    .venv/bin/python benchmarks/bench_remote.py --quick    # 8 MiB, 3 rounds

Cases (medians over interleaved rounds, with min-max; ratios are per round, then median):

1. cached read: ``LocalCache.fetch`` of an entry already there, then reading its bytes,
   against reading a plain local file; with the hash check on both sides (a store load
   verifies the artifact hash) and without.
2. first download: ``S3ObjectStore.download`` (streamed to a file, SHA-256 on the way,
   verified, renamed) and ``LocalCache.fetch`` of a new entry, against boto3's
   ``get_object`` streamed the same way (8 MiB reads, file, SHA-256). Target: within 10%.
3. client creation: in a fresh process, importing the layer, making the client and the first
   small GET, then a second small GET (boto3 alongside).
4. eight processes fetching one new entry at once: wall time, and how many GETs of it the
   server logged (the bytes must be downloaded once).

Needs the ``s3`` extra and ``moto[server]`` (both in the ``dev`` extra) and boto3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # s3_server.py: the tests' server fixture

from embedml.store.local_cache import LocalCache  # noqa: E402
from embedml.store.objects import CHUNK_BYTES, S3ObjectStore  # noqa: E402
from s3_server import start_s3_server  # noqa: E402

PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:8.2f} ms  [{min(xs) * 1e3:.2f}-{max(xs) * 1e3:.2f}]"


def ratio(a: list[float], b: list[float]) -> str:
    rs = [x / y for x, y in zip(a, b, strict=True)]
    return f"{statistics.median(rs):.2f}x [{min(rs):.2f}-{max(rs):.2f}]"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def read_plain(path: Path, verify: bool) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            if verify:
                digest.update(chunk)


def boto3_download(client, bucket: str, key: str, dest: Path) -> None:
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key="p/" + key)["Body"]
    with open(dest, "wb") as f:
        while chunk := body.read(CHUNK_BYTES):
            f.write(chunk)
            digest.update(chunk)
        f.flush()
        os.fsync(f.fileno())


_COLD = """
import json, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "embedml":
    from embedml.store.objects import S3ObjectStore
    t1 = time.perf_counter()
    store = S3ObjectStore(sys.argv[2])
    first = lambda: store.get(sys.argv[3])
else:
    import boto3
    t1 = time.perf_counter()
    client = boto3.client("s3")
    bucket, key = sys.argv[2][5:].split("/", 1)
    first = lambda: client.get_object(Bucket=bucket, Key=key + "/" + sys.argv[3])["Body"].read()
first()
t2 = time.perf_counter()
first()
t3 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t1, t3 - t2]))
"""

_FETCH8 = """
import sys
from embedml.store.local_cache import LocalCache
from embedml.store.objects import S3ObjectStore
url, key, digest, root = sys.argv[1:]
sys.stdin.read()
LocalCache(root).fetch(S3ObjectStore(url), key, digest)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size-mb", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    opts = parser.parse_args()
    size = (opts.size_mb or (8 if opts.quick else 32)) << 20
    rounds = opts.rounds or (3 if opts.quick else 9)

    import boto3

    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    with start_s3_server(work) as server:
        os.environ.update(server.env())
        ENV.update(server.env())
        bucket = "bench-" + uuid.uuid4().hex[:12]
        server.admin().create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/p"
        store = S3ObjectStore(url)
        raw = boto3.client("s3")
        data = os.urandom(size)
        digest = hashlib.sha256(data).hexdigest()
        key = f"blobs/sha256/{digest}"
        store.put_new(key, data)
        store.put_new("index.json", b'{"latest": "1"}')
        print(f"object: {size >> 20} MiB, {rounds} interleaved rounds; server {server.endpoint}")

        # 1. cached read vs a local file
        cache = LocalCache(work / "cache")
        entry = cache.fetch(store, key, digest, size=size)
        plain = work / "plain.bin"
        plain.write_bytes(data)
        # Each side hashes the bytes once, as a store load does: in fetch (verify=True), or
        # at read after a size-only fetch (how ModelStore will use it: it hashes at load).
        res: dict[str, list[float]] = {k: [] for k in ("plain", "fetch_v", "fetch_s")}
        for _ in range(rounds):
            res["plain"].append(timed(lambda: read_plain(plain, True)))
            res["fetch_v"].append(
                timed(lambda: read_plain(cache.fetch(store, key, digest, size=size), False))
            )
            res["fetch_s"].append(
                timed(
                    lambda: read_plain(
                        cache.fetch(store, key, digest, size=size, verify=False), True
                    )
                )
            )
        print("\n1. cached read (entry present) vs a local file read, sha256 once on each side")
        print(f"   local file: read + sha256               {med(res['plain'])}")
        f_v, f_s = res["fetch_v"], res["fetch_s"]
        print(f"   fetch (verify) + read                   {med(f_v)}   {ratio(f_v, res['plain'])}")
        print(f"   fetch (size check) + read + sha256      {med(f_s)}   {ratio(f_s, res['plain'])}")
        assert entry.exists()

        # 2. first download: the object layer vs boto3, same bytes, same work per chunk
        res = {k: [] for k in ("layer", "cache", "boto3")}
        for i in range(rounds):
            order = ["layer", "cache", "boto3"]
            order = order[i % 3 :] + order[: i % 3]  # rotate who goes first
            for who in order:
                dest = work / f"dl-{who}-{i}"
                fresh = LocalCache(work / f"cache-{i}")
                run = {
                    "layer": lambda d=dest: store.download(key, d, sha256=digest),
                    "cache": lambda c=fresh: c.fetch(store, key, digest, size=size),
                    "boto3": lambda d=dest: boto3_download(raw, bucket, key, d),
                }[who]
                res[who].append(timed(run))
            for p in work.glob(f"dl-*-{i}"):
                p.unlink()
        print("\n2. first download (streamed to a file, sha256, 8 MiB reads)")
        print(f"   boto3 get_object               {med(res['boto3'])}")
        print(
            f"   S3ObjectStore.download         {med(res['layer'])}   {ratio(res['layer'], res['boto3'])}"
        )
        print(
            f"   LocalCache.fetch (new entry)   {med(res['cache'])}   {ratio(res['cache'], res['boto3'])}"
        )

        # 3. client creation in a fresh process
        cold: dict[str, list[list[float]]] = {"embedml": [], "boto3": []}
        for _ in range(max(3, rounds // 2)):
            for who in cold:
                out = subprocess.run(
                    [PYTHON, "-c", _COLD, who, url, "index.json"],
                    env=ENV,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                cold[who].append(json.loads(out.stdout))
        print("\n3. one-off costs in a fresh process: import | client + first small GET | next GET")
        for who, runs in cold.items():
            cols = list(zip(*runs, strict=True))
            print(f"   {who:8s} " + " | ".join(med(list(c)) for c in cols))

        # 4. eight processes, one new entry
        print("\n4. eight processes fetching one new entry at once")
        for n in (1, 8):
            data8 = os.urandom(size)
            d8 = hashlib.sha256(data8).hexdigest()
            k8 = f"blobs/sha256/{d8}"
            store.put_new(k8, data8)
            root = work / f"cache8-{n}"
            start_r, start_w = os.pipe()
            children = [
                subprocess.Popen(
                    [PYTHON, "-c", _FETCH8, url, k8, d8, str(root)], env=ENV, stdin=start_r
                )
                for _ in range(n)
            ]
            os.close(start_r)
            t = time.perf_counter()
            os.close(start_w)
            codes = [c.wait(600) for c in children]
            wall = time.perf_counter() - t
            store.list("none")  # a marker request: every earlier one is logged before it
            gets = server.log_path.read_text(errors="replace").count(f"GET /{bucket}/p/{k8} ")
            print(
                f"   {n} process(es): {wall * 1e3:8.1f} ms wall (incl. interpreter start),"
                f" GETs of the entry logged by the server: {gets}, exit codes {set(codes)}"
            )
        store.close()


if __name__ == "__main__":
    main()
