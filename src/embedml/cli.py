"""The ``embedml`` command: look into a model store, score files, verify, alias, benchmark.

::

    embedml [--store DIR] ls
    embedml show NAME[@SPEC]
    embedml predict NAME[@SPEC] --input FILE --output FILE [--method NAME]
    embedml verify [NAME] [--require-signature] [--store-id ID]
    embedml sign [NAME@VERSION] [--store-id ID]
    embedml alias NAME ALIAS VERSION
    embedml pull NAME[@SPEC]
    embedml copy SOURCE DESTINATION NAME[@SPEC]
    embedml bench NAME[@SPEC] [--method NAME]
    embedml quantize NAME[@SPEC] [--sample FILE] [--new-version V]
    embedml import-mlflow MODEL_URI [--name NAME] [--new-version V] [--tracking-uri URI]
    embedml stream NAME[@SPEC] --source URL --sink URL [--dead-letter URL] [--until-idle S]

The store is ``--store DIR`` (or a URL: ``s3://bucket/prefix``), else ``$EMBEDML_STORE``,
else ``./models``. ``NAME@SPEC``
takes a version (``fraud@1.2``), a specifier (``'fraud@>=1,<2'``) or an alias
(``fraud@production``); a bare ``NAME`` means the latest version. User mistakes end with one
line on stderr and exit status 1 (2 for a bad command line), never a traceback. The signing
key comes from ``$EMBEDML_SIGNING_KEY`` only (a key on the command line would show in ``ps``):
``verify`` then checks signatures and the signed store record, ``alias`` signs the move.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ConfigurationError, EmbedMLError, MissingExtraError, StoreError
from .integrations.mlflow import import_model
from .offline.broker import StreamRunner
from .offline.export import ExportReport, quantize
from .offline.redis_streams import RedisStreamSink, RedisStreamSource
from .offline.scoring import score
from .schema.synthetic import stack_rows, synthetic_rows
from .serving.batching import Batching
from .serving.load import ModelStore
from .serving.options import LoadOptions
from .store.model_store import is_remote_url, store_root
from .store.signing import KEY_ENV
from .store.transfer import copy_versions, pull
from .store.versions import parse_ref

__all__ = ["main", "parse_ref"]

PROG = "embedml"


def _open_store(args: argparse.Namespace) -> ModelStore:
    return _open_at(args.store or os.environ.get("EMBEDML_STORE") or "models", args)


def _open_at(where: str, args: argparse.Namespace, *, create: bool = False) -> ModelStore:
    """The store at a folder or URL; a folder must exist unless ``create``."""
    if is_remote_url(where):  # s3://bucket/prefix (another scheme: ConfigurationError)
        return ModelStore(where, store_id=getattr(args, "store_id", None))
    root = store_root(where)
    if not create and not root.is_dir():
        raise StoreError(
            f"no model store at {root} (give --store DIR or set EMBEDML_STORE)"
        )
    return ModelStore(root, store_id=getattr(args, "store_id", None))


def _out(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- commands


def _cmd_ls(args: argparse.Namespace) -> int:
    store = _open_store(args)
    rows = []
    for name in store.models():
        versions = store.versions(name)
        aliases = store.aliases(name)
        rows.append(
            {"name": name, "versions": versions, "latest": store.resolve(name).version, "aliases": aliases}
        )
    if args.json:
        _out(json.dumps(rows, indent=2))
        return 0
    if not rows:
        _out(f"no models in {store.root}")
        return 0
    width = max(4, *(len(r["name"]) for r in rows))
    _out(f"{'NAME':<{width}}  {'LATEST':<8}  {'VERSIONS':<8}  ALIASES")
    for r in rows:
        alias_text = ", ".join(f"{a} -> {v}" for a, v in sorted(r["aliases"].items())) or "-"
        _out(f"{r['name']:<{width}}  {r['latest']:<8}  {len(r['versions']):<8}  {alias_text}")
    return 0


def _describe_schema(d: Any) -> list[str]:
    if d is None:
        return ["  (none declared)"]
    if d.get("kind") == "record":
        lines = []
        for f in d["fields"]:
            extra = []
            for key, sym in (("minimum", ">="), ("exclusive_minimum", ">"), ("maximum", "<="), ("exclusive_maximum", "<")):
                if f.get(key) is not None:
                    extra.append(f"{sym}{f[key]}")
            if f.get("enum"):
                extra.append(f"one of {f['enum']}")
            if f.get("nullable"):
                extra.append("nullable")
            lines.append(f"  {f['name']}: {f['kind']}" + (f"  ({', '.join(extra)})" if extra else ""))
        return lines
    return [
        f"  {t['name']}: {t['dtype']} "
        + (str(tuple(t["shape"])) if t["shape"] is not None else "(shape not declared)")
        for t in d.get("tensors", [])
    ]


def _describe_tensor(t: dict[str, Any]) -> str:
    dims = t.get("dims")
    if dims is None and t.get("shape") is not None:
        dims = [None if d == -1 else d for d in t["shape"]]
    shape = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]" if dims is not None else ""
    if t.get("dtype") is None:  # a sequence or map (e.g. skl2onnx ZipMap)
        return f"    {t['name']}: {t.get('type', '?')}"
    kind = t["dtype"]
    return f"    {t['name']}: {kind} {shape}".rstrip()


def describe_signature(sig: dict[str, Any] | None) -> list[str]:
    """The lines ``embedml show`` prints for a version's recorded signature."""
    if not sig:
        return ["  (none recorded)"]
    lines = []
    for key in ("inputs", "outputs"):
        if sig.get(key):
            lines.append(f"  {key}:")
            lines += [_describe_tensor(t) for t in sig[key]]
    for key, label in (("input_names", "input names"), ("feature_names", "feature names"),
                       ("n_features", "features"), ("classes", "classes")):  # fmt: skip
        if sig.get(key) is not None:
            lines.append(f"  {label}: {sig[key]}")
    if sig.get("columns"):
        lines.append("  example columns:")
        for c in sig["columns"]:
            extra = ", nullable" if c.get("nullable") else ""
            if c.get("categories") is not None:
                extra += f", categories {c['categories']}"
            lines.append(f"    {c['name']}: {c['kind']} ({c.get('dtype', c['kind'])}{extra})")
    if sig.get("batch_invariant") is not None:
        lines.append(f"  batch invariant: {'yes' if sig['batch_invariant'] else 'NO (batching is refused)'}")
    return lines or ["  (none recorded)"]


def _cmd_show(args: argparse.Namespace) -> int:
    store = _open_store(args)
    name, spec = parse_ref(args.ref)
    mv = store.resolve(name, spec)
    aliases = store.aliases(name)
    history = []
    for version in store.versions(name):
        m = store.manifest(name, version)
        history.append(
            {
                "version": version,
                "created_at": m.created_at,
                "aliases": sorted(a for a, v in aliases.items() if v == version),
            }
        )
    m = mv.manifest
    if args.json:
        data = {"manifest": m.model_dump(mode="json"), "aliases": aliases, "history": history}
        _out(json.dumps(data, indent=2, sort_keys=True))
        return 0
    _out(f"{mv}  ({m.format}, {m.size} bytes)")
    _out(f"path:       {mv.path}")
    _out(f"sha256:     {m.sha256}")
    _out(f"created:    {m.created_at}")
    _out(f"python:     {m.python}   embedml: {m.embedml or '?'}")
    if m.frameworks:
        _out("frameworks: " + ", ".join(f"{k} {v}" for k, v in sorted(m.frameworks.items())))
    if m.method:
        _out(f"method:     {m.method}")
    if m.preprocess or m.postprocess:
        _out(f"steps:      preprocess={m.preprocess}  postprocess={m.postprocess}")
    if m.metadata:
        _out("metadata:   " + json.dumps(m.metadata, sort_keys=True, default=str))
    _out("input schema:")
    if m.input_schema is None and m.signature:
        _out("  (none declared: inputs are matched to the model's signature)")
    else:
        for line in _describe_schema(m.input_schema):
            _out(line)
    _out("output schema:")
    for line in _describe_schema(m.output_schema):
        _out(line)
    _out("signature:")
    for line in describe_signature(m.signature):
        _out(line)
    _out("aliases:    " + (", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"))
    _out("history:")
    for h in history:
        mark = " *" if h["version"] == mv.version else "  "
        tags = "  " + " ".join("@" + a for a in h["aliases"]) if h["aliases"] else ""
        _out(f"{mark} {h['version']:<10} {h['created_at']}{tags}")
    return 0


def _load_options(args: argparse.Namespace, **more: Any) -> LoadOptions:
    """The load options the command line sets (``--method``, ``--allow-extra``)."""
    return LoadOptions(
        method=getattr(args, "method", None),
        allow_extra=getattr(args, "allow_extra", False),
        **more,
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    store = _open_store(args)
    name, spec = parse_ref(args.ref)
    progress = None if args.progress is None else args.progress
    with store.load(name, spec, _load_options(args)) as handle:
        summary = score(
            handle,
            args.input,
            args.output,
            batch_size=args.batch_size,
            id_column=args.id_column,
            rejects=args.rejects,
            progress=progress,
        )
    line = (
        f"{summary.model}@{summary.version}: scored {summary.scored} rows "
        f"in {summary.seconds:.2f}s -> {summary.output}"
    )
    if summary.rejected:
        line += f"; rejected {summary.rejected} -> {summary.rejects}"
    _out(line)
    if summary.rows and not summary.scored:  # nothing usable came out: a script must notice
        print(
            f"{PROG}: error: every row ({summary.rows}) was rejected; see {summary.rejects}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    store = _open_store(args)
    report = store.verify(
        args.name,
        require_signature=args.require_signature,
        restricted=args.restricted,
        trusted_callables=args.trusted_callables,
    )
    bad = {k: v for k, v in report.items() if v is not None}
    for key, error in report.items():
        _out(f"ok        {key}" if error is None else f"MISMATCH  {key}: {error}")
    signed = "signatures checked" if os.environ.get(KEY_ENV) else f"no ${KEY_ENV}: hashes only"
    _out(f"{len(report)} version(s) checked, {len(bad)} mismatch(es) ({signed})")
    return 1 if bad else 0


def _cmd_sign(args: argparse.Namespace) -> int:
    store = _open_store(args)
    if args.ref:
        name, spec = parse_ref(args.ref)
        mv = store.resolve(name, spec)
        store.sign(name, mv.version)
        _out(f"signed {mv} and recorded it in the store record")
        return 0
    report = store.sign_store()
    for key, why in report.items():
        _out(f"recorded  {key}" if why is None else f"LEFT OUT  {key}: {why}")
    left = sum(why is not None for why in report.values())
    _out(f"store record written: {len(report) - left} recorded, {left} left out")
    return 0


def _cmd_alias(args: argparse.Namespace) -> int:
    store = _open_store(args)
    mv = store.set_alias(args.name, args.alias, args.version)
    _out(f"{mv.name}@{args.alias.lstrip('@')} -> {mv.version}")
    return 0


def _cmd_import_mlflow(args: argparse.Namespace) -> int:
    # importing, like saving, may start a new store (ModelStore creates its folder)
    store = ModelStore(args.store or os.environ.get("EMBEDML_STORE") or "models")
    mv = import_model(
        args.model_uri, store, name=args.name, version=args.new_version,
        use_signature=args.signature, tracking_uri=args.tracking_uri,
        registry_uri=args.registry_uri,
    )  # fmt: skip
    prov = mv.manifest.metadata["mlflow"]
    source = f"{args.model_uri} ({prov['flavor']}, run {prov['run_id']})"
    _out(f"imported {source} as {mv} ({mv.manifest.format})")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    store = _open_store(args)
    name, spec = parse_ref(args.ref)
    mv = pull(store, name, spec)
    where = getattr(store, "cache", None)
    _out(f"{mv}: {mv.manifest.size} bytes verified" + (f" in the cache at {where.root}" if where else ""))
    return 0


def _cmd_copy(args: argparse.Namespace) -> int:
    source = _open_at(args.source, args)
    destination = _open_at(args.destination, args, create=True)
    name, spec = parse_ref(args.ref) if "@" in args.ref else (args.ref, None)
    for copied in copy_versions(source, destination, name, spec):
        _out(f"{'copied' if copied.added else 'present'}  {copied.name}@{copied.version}")
    return 0


def _synthetic(handle: Any, n: int, seed: int = 0) -> list[Any]:
    """``n`` valid records made up from the handle's input schema (see embedml.schema.synthetic)."""
    try:
        return synthetic_rows(handle.input_schema, n, seed)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{handle.name}@{handle.version}: {exc}") from None


def _stack(handle: Any, records: list[Any]) -> Any:
    return stack_rows(handle.input_schema, records)


def _cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np

    store = _open_store(args)
    name, spec = parse_ref(args.ref)
    with store.load(name, spec, _load_options(args)) as handle:
        handle.check_row_wise("embedml bench (it times rows, batches of them and batching)")
        records = _synthetic(handle, max(args.batch_size, 256))
        handle.predict(records[0])  # warm-up, and a schema check of the synthetic inputs
        lat = []
        deadline = time.perf_counter() + args.seconds
        i = 0
        while time.perf_counter() < deadline or len(lat) < 5:
            t = time.perf_counter()
            handle.predict(records[i % len(records)])
            lat.append(time.perf_counter() - t)
            i += 1
        batch = _stack(handle, records[: args.batch_size])
        handle.predict_batch(batch)
        blat = []
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline or len(blat) < 5:
            t = time.perf_counter()
            handle.predict_batch(batch)
            blat.append(time.perf_counter() - t)
        one, many = np.array(lat) * 1e3, np.array(blat) * 1e3
    dynamic = _bench_dynamic(store, name, spec, records, args)
    result = {
        "model": f"{handle.name}@{handle.version}",
        "format": handle.format,
        "single": {
            "calls": len(one),
            "median_ms": float(np.median(one)),
            "p99_ms": float(np.percentile(one, 99)),
            "rows_per_s": float(len(one) / (one.sum() / 1e3)),
        },
        "batch": {
            "batch_size": args.batch_size,
            "calls": len(many),
            "median_ms": float(np.median(many)),
            "p99_ms": float(np.percentile(many, 99)),
            "rows_per_s": float(args.batch_size * len(many) / (many.sum() / 1e3)),
        },
        "dynamic": dynamic,
    }
    if args.json:
        _out(json.dumps(result, indent=2))
        return 0
    s, b = result["single"], result["batch"]
    _out(f"{result['model']} ({result['format']}), synthetic inputs from the schema")
    _out(f"{'mode':<22} {'calls':>7} {'median ms':>10} {'p99 ms':>9} {'rows/s':>11}")
    _out(f"{'predict (1 row)':<22} {s['calls']:>7} {s['median_ms']:>10.3f} {s['p99_ms']:>9.3f} {s['rows_per_s']:>11.0f}")
    label = f"predict_batch ({args.batch_size})"
    _out(f"{label:<22} {b['calls']:>7} {b['median_ms']:>10.3f} {b['p99_ms']:>9.3f} {b['rows_per_s']:>11.0f}")
    d = result["dynamic"]
    label = f"dynamic ({d['threads']} threads)"
    _out(f"{label:<22} {d['calls']:>7} {d['median_ms']:>10.3f} {d['p99_ms']:>9.3f} {d['rows_per_s']:>11.0f}")
    _out(f"batching speed-up: {b['rows_per_s'] / s['rows_per_s']:.1f}x rows/s")
    _out(
        f"dynamic batching: {d['rows_per_s'] / s['rows_per_s']:.1f}x rows/s of one-row predict, "
        f"mean batch {d['mean_batch_size']:.1f} rows"
    )
    return 0


def _bench_dynamic(
    store: ModelStore, name: str, spec: str, records: list[Any], args: argparse.Namespace
) -> dict[str, Any]:
    """One-row ``predict`` from ``--threads`` threads at once on a handle loaded with
    dynamic batching (``embedml.Batching``), which joins concurrent calls into batches."""
    import numpy as np

    batching = Batching(max_batch_size=args.batch_size, max_queue=max(1024, args.batch_size))
    lats: list[list[float]] = [[] for _ in range(args.threads)]
    errors: list[BaseException] = []
    with store.load(name, spec, _load_options(args, batching=batching)) as handle:
        handle.predict(records[0])  # warm-up
        start = threading.Barrier(args.threads + 1)
        deadline = 0.0

        def worker(k: int) -> None:
            out = lats[k]
            try:
                start.wait()
                i = k
                while time.perf_counter() < deadline or len(out) < 5:
                    t = time.perf_counter()
                    handle.predict(records[i % len(records)])
                    out.append(time.perf_counter() - t)
                    i += args.threads
            except BaseException as exc:  # reported once below, in the main thread
                errors.append(exc)

        threads = [
            threading.Thread(target=worker, args=(k,), name=f"embedml-bench-{k}")
            for k in range(args.threads)
        ]
        for t in threads:
            t.start()
        began = time.perf_counter()
        deadline = began + args.seconds
        start.wait()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        stats = handle.batching_stats()
    if errors:
        raise errors[0]
    all_ms = np.concatenate([np.array(x) for x in lats]) * 1e3
    return {
        "threads": args.threads,
        "max_batch_size": args.batch_size,
        "calls": int(all_ms.size),
        "median_ms": float(np.median(all_ms)),
        "p99_ms": float(np.percentile(all_ms, 99)),
        "rows_per_s": float(all_ms.size / wall),
        "mean_batch_size": float(stats.mean_batch_size) if stats is not None else 1.0,
    }


def _read_sample(path: Path) -> Any:
    """A sample batch from ``.npy`` (a 2-D array) or ``.jsonl`` (one record or row per line)."""
    import numpy as np

    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ConfigurationError(f"--sample {path}: not a plain .npy array: {exc}") from None
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise ConfigurationError(f"--sample {path}:{lineno}: not valid JSON: {exc}") from None
        return np.asarray(rows) if rows and not isinstance(rows[0], dict) else rows
    raise ConfigurationError(f"--sample {path}: expected a .npy or .jsonl file")


def _cmd_quantize(args: argparse.Namespace) -> int:
    store = _open_store(args)
    name, spec = parse_ref(args.ref)
    if args.sample is not None:
        sample = _read_sample(Path(args.sample))
        where = str(args.sample)
    else:
        with store.load(name, spec) as handle:
            sample = _stack(handle, _synthetic(handle, args.rows))
        where = "synthetic inputs from the schema"
    # ONNX Runtime logs advice ("consider pre-processing") on the root logger; the command
    # owns the process, so keep its stderr for errors.
    quiet = logging.Filter("embedml")  # passes only records of embedml's own loggers
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        mv = quantize(store, name, spec, sample, new_version=args.new_version)
    finally:
        root.removeFilter(quiet)
    report = ExportReport.of(mv)
    if args.json:
        _out(json.dumps({"version": str(mv), **report.to_dict()}, indent=2))
        return 0
    diff = "n/a" if report.max_abs_diff is None else f"{report.max_abs_diff:.3g}"
    _out(f"{mv}: int8 quantisation of {report.source}")
    _out(f"size:       {report.size_before} -> {report.size_after} bytes ({report.size_ratio:.2f}x)")
    _out(f"agreement:  {report.agreement:.2%} of {report.rows} rows ({where}); max abs diff {diff}")
    return 0


#: Signals that make ``embedml stream`` finish its in-flight batch and exit 0.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: How often the main thread looks at a stop request while the runner works (seconds).
STOP_POLL_S = 0.1


def _stream_ends(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The source, sink and dead-letter sink of ``embedml stream``. Raises
    :class:`ConfigurationError` naming the option whose URL is wrong."""
    current = "--source"
    try:
        source = RedisStreamSource(
            args.source, start_id=args.start_id, claim_idle_ms=args.claim_idle_ms
        )
        current = "--sink"
        sink = RedisStreamSink(args.sink, max_len=args.max_len)
        dead = None
        if args.dead_letter is not None:
            current = "--dead-letter"
            dead = RedisStreamSink(args.dead_letter, max_len=args.max_len)
    except MissingExtraError:
        raise
    except ConfigurationError as exc:
        raise ConfigurationError(f"{current}: {exc}") from None
    return source, sink, dead


def _cmd_stream(args: argparse.Namespace) -> int:
    try:  # the URLs first: a bad one is a bad command line, told before the model loads
        source, sink, dead = _stream_ends(args)
    except MissingExtraError:
        raise
    except ConfigurationError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    # the broker's warnings (retries, claims, dead letters without a sink) tell the
    # operator what happens: one prefixed line each, for as long as the command runs
    logs = logging.StreamHandler(sys.stderr)
    logs.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logging.getLogger("embedml").addHandler(logs)
    try:
        store = _open_store(args)
        name, spec = parse_ref(args.ref)
        with store.load(name, spec, _load_options(args, follow=args.follow)) as handle:
            runner = StreamRunner(
                handle, source, sink, dead_letters=dead, field=args.field,
                batch_size=args.batch_size, max_wait_ms=args.max_wait_ms,
                max_deliveries=args.max_deliveries, until_idle_s=args.until_idle,
                broker_timeout_s=args.broker_timeout,
            )  # fmt: skip
            target = sink.url + (f", dead letters -> {dead.url}" if dead else "")
            where = f"{handle.name}@{handle.version}: {source.url} -> {target}"
            print(f"{PROG}: streaming {where}", file=sys.stderr, flush=True)
            stopped = _run_until_stopped(runner, args.broker_timeout)
            summary = runner.metrics()
    finally:
        logging.getLogger("embedml").removeHandler(logs)
        for end in (source, sink, dead):
            if end is not None:
                end.close()
    print(json.dumps(summary, default=str), file=sys.stderr, flush=True)
    if runner.error is not None:
        raise runner.error
    if not stopped:
        print(f"{PROG}: error: the stream runner did not stop in time", file=sys.stderr, flush=True)
        return 1
    return 0


def _run_until_stopped(runner: StreamRunner, broker_timeout: float) -> bool:
    """Run ``runner`` until it finishes (``--until-idle``, or an error: left in
    ``runner.error``) or a SIGTERM / SIGINT asks it to stop: then it finishes the batches
    it has read, writes and acknowledges them. The handlers are restored afterwards; a
    second signal during the stop acts as it would without them (SIGINT: interrupted).
    Returns whether the runner's threads ended."""
    asked: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def ask_stop(signum: int, frame: Any) -> None:
        # Only a flag: the handler runs in the main thread between two bytecodes, possibly
        # while it holds a lock of the runner's events, so it must not take one itself.
        asked.append(signum)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in STOP_SIGNALS:
        signal.signal(sig, ask_stop)
    try:
        runner.start()
        while not asked and not runner.join(STOP_POLL_S):
            pass
        if asked:
            name = signal.Signals(asked[0]).name
            print(f"{PROG}: {name}: finishing the batches in flight", file=sys.stderr, flush=True)
        # every broker call gives up after broker_timeout: the threads end well within this
        return runner.stop(timeout=2 * broker_timeout + 30.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- parser


def _number(parse: Callable[[str], float], allow_zero: bool) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse`` the text, refuse what is not a finite number above
    zero (or at zero, with ``allow_zero``)."""
    words = "a whole number" if parse is int else "a number"
    bound = ">= 0" if allow_zero else "> 0" if parse is float else ">= 1"

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {value}")
        return value

    return convert


_positive_int = _number(int, allow_zero=False)
_positive_float = _number(float, allow_zero=False)
_non_negative_float = _number(float, allow_zero=True)


_METHOD_HELP = (
    "method to call on pickle/joblib models, e.g. predict_proba (default: the one saved "
    "with the version, else predict)"
)


def _command(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    parents: list[argparse.ArgumentParser],
    ref: str | None = "NAME[@SPEC]",
    *,
    optional_ref: bool = False,
    **text: str,
) -> argparse.ArgumentParser:
    """The subcommand ``name`` (``text``: its ``help`` and ``description``), run by ``func``;
    ``ref`` is the metavar of its first argument, a model reference (``None``: none)."""
    p = sub.add_parser(name, parents=parents, **text)
    if ref is not None:
        p.add_argument("ref", nargs="?" if optional_ref else None, metavar=ref)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embedml`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="DIR|URL",
        default=argparse.SUPPRESS,
        help="model store: a folder or a URL such as s3://bucket/prefix (default: $EMBEDML_STORE, else ./models)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look into an embedml model store, score files, verify artifacts.",
        epilog="NAME@SPEC: fraud (latest), fraud@1.2, 'fraud@>=1,<2', fraud@production",
    )
    parser.add_argument("--store", metavar="DIR|URL", default=None, help=common._actions[0].help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(sub, "ls", _cmd_ls, [common], None, help="list models, latest versions and aliases")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _command(sub, "show", _cmd_show, [common], help="manifest, schema, aliases and history of a version")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _command(
        sub, "predict", _cmd_predict, [common],
        help="score a CSV / JSON Lines / Parquet file into another",
        description="Score every row of --input into --output (formats from the suffixes). "
        "Bad rows go to a reject file with their row number; the rest is scored.",
    )  # fmt: skip
    p.add_argument("--input", "-i", required=True, metavar="FILE", help=".csv, .jsonl or .parquet")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help=".csv, .jsonl or .parquet")
    p.add_argument("--batch-size", type=_positive_int, default=1024, metavar="N", help="rows per chunk (default 1024)")
    p.add_argument("--id-column", metavar="COL", help="copy this input column to the output (default: row number)")
    p.add_argument("--rejects", metavar="FILE", help="reject file (default: OUTPUT.rejects.jsonl)")
    p.add_argument("--allow-extra", action="store_true", help="ignore input columns the schema does not know")
    p.add_argument("--method", metavar="NAME", help=_METHOD_HELP)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")

    p = _command(
        sub, "verify", _cmd_verify, [common], None,
        help="re-hash every artifact, check signatures and the store record; exit 1 on any mismatch",
    )  # fmt: skip
    p.add_argument("name", nargs="?", metavar="NAME", help="only this model")
    p.add_argument(
        "--require-signature", action="store_true",
        help="report unsigned versions and a missing store record (key: $EMBEDML_SIGNING_KEY)",
    )  # fmt: skip
    p.add_argument("--store-id", metavar="ID", help="refuse a store record of another store")
    p.add_argument(
        "--restricted",
        action="store_true",
        help="also report manifest import paths a load(restricted=True) would refuse",
    )
    p.add_argument(
        "--trusted-callable",
        dest="trusted_callables",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="an import path the restricted load trusts (repeatable)",
    )

    p = _command(
        sub, "sign", _cmd_sign, [common], "NAME@VERSION", optional_ref=True,
        help="sign a version, or (without NAME@VERSION) write the signed store record",
        description="With NAME@VERSION: sign that version's manifest and add it to the signed "
        "store record. Without: write the store record from the store as it is now (every "
        "version whose signature and hashes check out, its aliases and their moves): the "
        "migration of a store made before the record existed. Run `embedml verify` first. "
        "The key comes from $EMBEDML_SIGNING_KEY.",
    )  # fmt: skip
    p.add_argument("--store-id", metavar="ID", help="the store's name in a new record (default: random)")

    p = _command(sub, "alias", _cmd_alias, [common], None, help="point ALIAS of NAME at VERSION")
    p.add_argument("name", metavar="NAME")
    p.add_argument("alias", metavar="ALIAS")
    p.add_argument("version", metavar="VERSION")

    p = _command(
        sub, "pull", _cmd_pull, [common],
        help="download a version into the local cache ahead of time (and verify it)",
        description="Resolve NAME@SPEC in the store and download its artifact and files into "
        "the local cache ($EMBEDML_CACHE_DIR), checking their SHA-256: for container builds "
        "and hosts that load later, or offline ($EMBEDML_OFFLINE=1).",
    )  # fmt: skip

    p = _command(
        sub, "copy", _cmd_copy, [], None,
        help="copy versions between stores (folder or s3://), manifests and signatures unchanged",
        description="Copy the version NAME@SPEC picks (every version of NAME without @SPEC) "
        "from SOURCE to DESTINATION, each a folder or a URL. Manifests and signatures stay "
        "byte-identical; with $EMBEDML_SIGNING_KEY the versions are recorded in the "
        "destination's signed store record. Aliases and history are not copied.",
    )  # fmt: skip
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("destination", metavar="DESTINATION")
    p.add_argument("ref", metavar="NAME[@SPEC]")
    p.add_argument("--store-id", metavar="ID", help="the destination's name in a new store record")

    p = _command(
        sub, "bench", _cmd_bench, [common],
        help="latency and throughput on synthetic inputs: one row, batches, dynamic batching",
    )  # fmt: skip
    p.add_argument("--seconds", type=_positive_float, default=1.0, metavar="S", help="time per mode (default 1)")
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="batch size (default 64)")
    p.add_argument(
        "--threads", type=_positive_int, default=8, metavar="N",
        help="threads calling predict at once in the dynamic batching run (default 8)",
    )  # fmt: skip
    p.add_argument("--method", metavar="NAME", help=_METHOD_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _command(
        sub, "quantize", _cmd_quantize, [common],
        help="save an int8 (dynamically quantised) copy of an ONNX version as a new version",
        description="Quantise the weights of an ONNX version to int8 with ONNX Runtime and save "
        "the result as a new version; print sizes and how well its predictions agree with the "
        "source on a sample (a file, or synthetic inputs made from the input schema).",
    )  # fmt: skip
    p.add_argument("--sample", metavar="FILE", help="inputs to compare on: .npy (2-D array) or .jsonl")
    p.add_argument("--rows", type=_positive_int, default=256, metavar="N", help="synthetic rows without --sample (default 256)")
    p.add_argument("--new-version", metavar="V", help="version to save as (default: next major)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _command(
        sub, "import-mlflow", _cmd_import_mlflow, [common], None,
        help="import an MLflow model (models:/NAME@ALIAS, models:/NAME/V, runs:/ID/PATH) as a new version",
        description="Load an MLflow model (sklearn, onnx or pytorch flavour) with MLflow's own "
        "loader and save it as a new version, its MLflow signature as the input schema and its "
        "provenance in the metadata. Needs the mlflow extra. Trusts the registry: see "
        "docs/security.md. The signing key comes from $EMBEDML_SIGNING_KEY.",
    )  # fmt: skip
    p.add_argument("model_uri", metavar="MODEL_URI")
    p.add_argument("--name", help="embedml model name (default: the registered model's name)")
    p.add_argument("--new-version", metavar="V", help="version to save as (default: next major)")
    for flag in ("tracking", "registry"):
        text = f"MLflow {flag} URI (default: MLflow's configuration)"
        p.add_argument(f"--{flag}-uri", metavar="URI", help=text)
    p.add_argument(
        "--no-signature", dest="signature", action="store_false",
        help="ignore the MLflow signature: keep only what the model declares",
    )  # fmt: skip

    p = _command(
        sub, "stream", _cmd_stream, [common],
        help="score a Redis stream: micro-batches in, one output entry per input entry out",
        description="Read entries from a Redis stream through a consumer group (--source), "
        "score the JSON record in each entry's --field with the model in micro-batches, write "
        "one entry per input to --sink (fields id, model, version, prediction, latency_ms) "
        "and acknowledge each input only after its output (or dead letter) is written: "
        "at-least-once delivery. Bad entries go to --dead-letter with the reason. URLs: "
        "redis://[USER:PASSWORD@]HOST:PORT/DB?stream=NAME&group=GROUP&consumer=NAME, "
        "rediss:// for TLS, unix:///PATH/redis.sock?stream=NAME. SIGTERM or SIGINT finishes "
        "the batches in flight and exits 0; a JSON summary goes to stderr at the end. "
        "Needs the redis extra.",
    )  # fmt: skip
    p.add_argument("--source", required=True, metavar="URL", help="input stream; its URL names the consumer group (&group=GROUP)")
    p.add_argument("--sink", required=True, metavar="URL", help="output stream")
    p.add_argument("--dead-letter", metavar="URL", help="stream for entries that cannot be scored (default: logged and acknowledged)")
    p.add_argument("--field", default="data", metavar="NAME", help="entry field holding the JSON record (default data)")
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="entries per model call (default 64)")
    p.add_argument("--max-wait-ms", type=_non_negative_float, default=10.0, metavar="MS", help="longest a batch waits to fill after its first entry (default 10)")
    p.add_argument("--claim-idle-ms", type=_positive_int, default=30_000, metavar="MS", help="take over entries another consumer left pending this long (default 30000)")
    p.add_argument("--max-deliveries", type=_positive_int, default=5, metavar="N", help="dead-letter an entry delivered this many times without an output (default 5)")
    p.add_argument("--max-len", type=_positive_int, metavar="N", help="cap the output and dead-letter streams at about N entries (MAXLEN ~)")
    p.add_argument("--start-id", default="0", metavar="ID", help="where a consumer group created here starts: 0 (the whole stream, default), $ (only new entries) or an entry id")
    p.add_argument("--until-idle", type=_non_negative_float, metavar="SECONDS", help="exit 0 once no entry arrived for this long and none is pending for this consumer")
    p.add_argument("--broker-timeout", type=_non_negative_float, default=60.0, metavar="SECONDS", help="retry an unreachable broker this long, then exit 1 (default 60)")
    p.add_argument("--follow", action="store_true", help="move to the version NAME@SPEC resolves to when an alias moves")
    p.add_argument("--method", metavar="NAME", help=_METHOD_HELP)
    p.add_argument("--allow-extra", action="store_true", help="ignore record fields the schema does not know")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``embedml`` command; return its exit status (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader went away (`embedml show x | head`): stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (EmbedMLError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
