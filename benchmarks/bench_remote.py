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

The store (``ModelStore("s3://...")``), with an ONNX model of the same size:

5. cached load: ``store.load(name, "@production")`` of a version already in the cache, from a
   store object whose client exists (one conditional GET of the index, ``304``), against the
   same load from a local-folder store. Target: at most 1.2x.
6. first load (empty cache): against boto3 downloading the same bytes (streamed, SHA-256)
   plus the cached load: the store's overhead on the download. Target: at most 1.1x.
7. one-off costs in a fresh process: import embedml, the first ``resolve`` (imports s3fs,
   makes the client, reads the marker and the index), then the load.
8. eight processes loading the same new version at once: GETs of its artifact logged.

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


def boto3_download(client, bucket: str, key: str, dest: Path, prefix: str = "p/") -> None:
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=prefix + key)["Body"]
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
        store_cases(server, work, bucket, rounds, size)


_COLD_STORE = """
import json, sys, time
t0 = time.perf_counter()
import embedml
t1 = time.perf_counter()
store = embedml.ModelStore(sys.argv[1])
mv = store.resolve("big", "@production")
t2 = time.perf_counter()
store.load("big", "@production").close()
t3 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t1, t3 - t2]))
"""

_LOAD8 = """
import sys
import embedml
sys.stdin.read()
embedml.ModelStore(sys.argv[1]).load("big", "@production").close()
"""


def big_onnx(size: int):
    """An ONNX graph whose weights take ``size`` bytes: y = x @ W, W [size / 8, 2] float32."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rows = size // 8
    w = np.random.default_rng(0).random((rows, 2), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def store_cases(server, work: Path, bucket: str, rounds: int, size: int) -> None:
    import boto3

    import embedml

    url = f"s3://{bucket}/store"
    env = {**ENV, "EMBEDML_CACHE_DIR": str(work / "store-cache")}
    os.environ["EMBEDML_CACHE_DIR"] = env["EMBEDML_CACHE_DIR"]
    model = big_onnx(size)
    remote = embedml.ModelStore(url)
    local = embedml.ModelStore(work / "local-store")
    for store in (remote, local):
        store.save("big", model, version="1")
        store.set_alias("big", "production", "1")
    sha = remote.resolve("big", "1").manifest.sha256
    blob = f"blobs/sha256/{sha}"
    raw = boto3.client("s3")
    remote.load("big", "@production").close()  # in the cache from now on
    print(f"\nthe store: an ONNX model of {size >> 20} MiB")

    # 5. cached load vs a local-store load
    res: dict[str, list[float]] = {"local": [], "remote": []}
    for i in range(rounds):
        order = ["local", "remote"] if i % 2 else ["remote", "local"]
        for who in order:
            store = {"local": local, "remote": remote}[who]
            res[who].append(timed(lambda s=store: s.load("big", "@production").close()))
    print("5. load of a cached version (client exists) vs a local-store load")
    print(f"   local store                    {med(res['local'])}")
    print(
        f"   s3 store, cached               {med(res['remote'])}   {ratio(res['remote'], res['local'])}"
    )
    cached = res["remote"]

    # 6. first load vs boto3 download + cached load
    first: list[float] = []
    boto: list[float] = []
    for i in range(rounds):
        fresh = embedml.ModelStore(url, cache_dir=work / f"first-{i}")
        fresh.resolve("big", "1")  # the client exists, as in case 5
        dest = work / f"boto-{i}"
        pair = [
            ("first", lambda f=fresh: f.load("big", "@production").close()),
            ("boto3", lambda d=dest: boto3_download(raw, bucket, blob, d, "store/")),
        ]
        for who, run in pair if i % 2 else pair[::-1]:
            (first if who == "first" else boto).append(timed(run))
        dest.unlink()
    base = [b + c for b, c in zip(boto, cached, strict=True)]
    print("6. first load (empty cache) vs boto3 download of the same bytes + the cached load")
    print(f"   boto3 download                 {med(boto)}")
    print(f"   boto3 download + cached load   {med(base)}")
    print(f"   s3 store, first load           {med(first)}   {ratio(first, base)}")

    # 7. one-off costs in a fresh process
    runs = []
    for _ in range(max(3, rounds // 2)):
        out = subprocess.run(
            [PYTHON, "-c", _COLD_STORE, url], env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout))
    cols = list(zip(*runs, strict=True))
    print(
        "7. fresh process: import embedml | first resolve (imports the store and s3fs, client, marker, index) | load"
    )
    print("   " + " | ".join(med(list(c)) for c in cols))

    # 8. eight processes loading one new version at once
    remote.save("big", big_onnx(size + 8), version="2")
    remote.set_alias("big", "production", "2")
    sha2 = remote.resolve("big", "2").manifest.sha256
    env8 = {**env, "EMBEDML_CACHE_DIR": str(work / "cache-load8")}
    start_r, start_w = os.pipe()
    children = [
        subprocess.Popen([PYTHON, "-c", _LOAD8, url], env=env8, stdin=start_r) for _ in range(8)
    ]
    os.close(start_r)
    t = time.perf_counter()
    os.close(start_w)
    codes = [c.wait(600) for c in children]
    wall = time.perf_counter() - t
    remote.objects.list("none")  # a marker request: every earlier one is logged before it
    gets = server.log_path.read_text(errors="replace").count(
        f"GET /{bucket}/store/blobs/sha256/{sha2} "
    )
    print(
        f"8. eight processes loading a new version: {wall * 1e3:.0f} ms wall (incl. interpreter"
        f" start), GETs of its artifact logged: {gets}, exit codes {set(codes)}"
    )
    remote.close()


if __name__ == "__main__":
    main()
