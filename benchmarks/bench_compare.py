"""Before/after benchmark: the same cases on two embedml source trees, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_compare.py --before main           # ~3 minutes
    .venv/bin/python benchmarks/bench_compare.py --before 53a79ac --quick  # < 1 minute
    .venv/bin/python benchmarks/bench_compare.py --before main --after HEAD --cases startup

"before" is a git ref, extracted with ``git archive`` into a temporary directory (removed at
the end, also on failure or Ctrl-C); "after" is this working tree (uncommitted changes
included) unless ``--after`` names a ref too. The benchmark code itself (this script and
``benchmarks/cases/``) always comes from this working tree, so both sides run the same cases.

Every measurement runs in a fresh child process of the same Python whose ``PYTHONPATH`` is
one tree's ``src`` (the child checks where embedml came from), so the two versions never
share a process. Children alternate between the sides round by round, in the order
before-after, after-before, ... so that load from other processes hits both alike. Cases:

* ``percall``: bench_foundation's per-call figures (cases/case_percall.py);
* ``batching``: bench_batching's 64 threads and 64 asyncio tasks on the MLP at --hidden
  (cases/case_batching.py);
* ``hooks``: bench_observability's CPU per call with a JSONL sink and a drift monitor
  against no hooks (cases/case_hooks.py);
* ``startup``: ``import embedml`` + the first ``ModelStore.load`` of an ONNX model against
  ``import onnxruntime`` + ``InferenceSession``, each in a fresh interpreter with bytecode
  compiled (cases/case_startup.py).

The report (markdown, on stdout; progress goes to stderr) starts with the exact command and
what each side was, then the guard-rail ratios of both sides with their targets, then the
figures behind them (medians and p99).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
CASES = BENCHMARKS / "cases"
ALL_CASES = ("percall", "batching", "hooks", "startup")
SIDES = ("before", "after")
CHILD_TIMEOUT_S = 900  # a hung child fails the run instead of hanging it


@dataclass(frozen=True)
class Tree:
    """One side of the comparison: where its ``src`` is, and what it is (for the report)."""

    side: str
    src: Path
    describe: str
    src_tree: str  # git's hash of the commit's src/ directory
    dirty: bool = False


@dataclass(frozen=True)
class Figure:
    """A guard-rail ratio: its per-round values on each side, and its target."""

    name: str
    rounds: dict[str, list[float]]
    target: str = ""
    check: Callable[[float], bool] | None = None
    higher_is_better: bool = False


class ChildFailed(RuntimeError):
    """A case process exited with an error; carries the end of its stderr."""


# ------------------------------------------------------------------ trees and children


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def describe_commit(ref: str) -> str:
    return git("log", "-1", "--format=%h (%cs) %s", f"{ref}^{{commit}}")


def extract(ref: str, dest: Path, side: str) -> Tree:
    """``src/`` of ``ref``, written under ``dest`` by ``git archive`` (no worktree to clean)."""
    try:
        git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"--{side} {ref!r} is not a commit in {ROOT}") from None
    dest.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    archive.stdout.close()  # type: ignore[union-attr]
    if archive.wait() != 0:
        raise SystemExit(f"git archive {ref} src failed")
    return Tree(side, dest / "src", describe_commit(ref), git("rev-parse", f"{ref}:src"))


def working_tree(side: str) -> Tree:
    dirty = git("status", "--porcelain", "--", "src")
    changes = f"{len(dirty.splitlines())} uncommitted change(s) under src/" if dirty else "clean"
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    describe = f"working tree {ROOT} ({branch}, {changes}) at {describe_commit('HEAD')}"
    return Tree(side, ROOT / "src", describe, git("rev-parse", "HEAD:src"), bool(dirty))


def child_env(tree: Tree) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree.src), BENCH_COMPARE_SRC=str(tree.src))
    env.pop("PYTHONSTARTUP", None)
    # Children start as an installed package does, from compiled .pyc files (see
    # bench_foundation: without them each start would recompile embedml).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_child(tree: Tree, script: str, *args: str) -> list[str]:
    """Run ``cases/<script>`` against ``tree``; return its stdout lines."""
    try:
        out = subprocess.run(
            [sys.executable, str(CASES / script), *args],
            env=child_env(tree),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{script} {' '.join(args)} hung on {tree.side}: killed") from None
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-30:])
        raise ChildFailed(f"{script} {' '.join(args)} failed on {tree.side} ({tree.src}):\n{tail}")
    return out.stdout.strip().splitlines()


def alternating(rounds: int, trees: dict[str, Tree]) -> Iterator[tuple[int, Tree]]:
    """before, after, after, before, before, after, ...: each side goes first half the time."""
    for r in range(rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for side in order:
            yield r, trees[side]


class Progress:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(
            f"[{time.perf_counter() - self.started:5.0f} s] {message}", file=sys.stderr, flush=True
        )


# ------------------------------------------------------------------ the cases


def measure_percall(
    trees: dict[str, Tree], model: Path, rounds: int, quick: bool, log: Progress
) -> dict:
    """Per side: the samples (ns) of each case, one dict per round."""
    counts = (5, 300, 5, 20) if quick else (10, 1000, 10, 50)
    flags = ("--rounds", "--per-round", "--batch-rounds", "--batch-per-round")
    per = [x for flag, n in zip(flags, counts) for x in (flag, str(n))]
    results: dict[str, list[dict[str, list[int]]]] = {side: [] for side in SIDES}
    for r, tree in alternating(rounds, trees):
        log(f"percall round {r + 1}/{rounds}: {tree.side}")
        lines = run_child(tree, "case_percall.py", str(model), *per)
        results[tree.side].append(json.loads(lines[-1])["samples"])
    return results


def measure_batching(
    trees: dict[str, Tree], model: Path, rounds: int, rows: int, log: Progress
) -> dict:
    """Per side: one ``{"cases": ..., "mean_batch": ...}`` per round."""
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for r, tree in alternating(rounds, trees):
        log(f"batching round {r + 1}/{rounds}: {tree.side}")
        lines = run_child(tree, "case_batching.py", str(model), "--rows", str(rows))
        results[tree.side].append(json.loads(lines[-1]))
    return results


def measure_hooks(
    trees: dict[str, Tree], model: Path, rounds: int, quick: bool, log: Progress
) -> dict:
    """Per side: CPU microseconds per call of each hooks scenario, one dict per round."""
    calls = "2000" if quick else "5000"
    results: dict[str, list[dict[str, list[float]]]] = {side: [] for side in SIDES}
    for r, tree in alternating(rounds, trees):
        log(f"hooks round {r + 1}/{rounds}: {tree.side}")
        lines = run_child(tree, "case_hooks.py", str(model), "--calls", calls)
        results[tree.side].append(json.loads(lines[-1])["cpu_us"])
    return results


def measure_startup(
    trees: dict[str, Tree], model: Path, tmp: Path, runs: int, log: Progress
) -> dict:
    """Wall-clock and CPU seconds per fresh process (``{"wall": {kind: [...]}, "cpu": ...}``)
    of ``onnxruntime`` (tree-independent) and of each side's embedml.

    Each round runs the three back to back, starting one later in the list each round.
    """
    stores = {side: tmp / f"startup-store-{side}" for side in SIDES}
    for side, tree in trees.items():
        run_child(tree, "case_startup.py", "prepare", str(stores[side]), str(model))
    # (name, tree, mode, argument); onnxruntime's PYTHONPATH does not matter
    kinds = [("onnxruntime", trees["after"], "onnxruntime", str(model))]
    kinds += [(side, trees[side], "embedml", str(stores[side])) for side in SIDES]

    def one(name: str, tree: Tree, mode: str, arg: str) -> tuple[float, float]:
        lines = run_child(tree, "case_startup.py", mode, arg)
        if mode == "embedml" and tree.src.resolve() not in Path(lines[1]).resolve().parents:
            raise ChildFailed(f"start-up ran embedml from {lines[1]}, not from {tree.src}")
        wall, cpu = lines[0].split()
        return float(wall), float(cpu)

    for kind in kinds:  # not counted: writes .pyc files, warms the OS file cache
        one(*kind)
    results: dict[str, dict[str, list[float]]] = {
        clock: {kind[0]: [] for kind in kinds} for clock in ("wall", "cpu")
    }
    for r in range(runs):
        if r % 5 == 0:
            log(f"startup round {r + 1}/{runs}")
        for i in range(len(kinds)):
            kind = kinds[(r + i) % len(kinds)]
            wall, cpu = one(*kind)
            results["wall"][kind[0]].append(wall)
            results["cpu"][kind[0]].append(cpu)
    return results


# ------------------------------------------------------------------ figures


def us(samples_ns: list[int]) -> tuple[float, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return float(np.median(a)), float(np.percentile(a, 99))


def fmt_time(med: float, p99: float, unit: str = "us") -> str:
    if unit == "us" and med >= 1000:
        return f"{med / 1000:,.2f} ms / {p99 / 1000:,.2f} ms"
    return f"{med:,.1f} {unit} / {p99:,.1f} {unit}"


def fmt_ratio(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}x"
    return f"{med:.2f}x ({min(values):.2f}-{max(values):.2f})"


def percall_figures(res: dict) -> tuple[list[Figure], list[str]]:
    from case_percall import BATCHED, RAW_BATCH, RAW_ROW, RECORD, ROW

    def per_round(case: str, base: str) -> dict[str, list[float]]:
        return {
            side: [statistics.median(r[case]) / statistics.median(r[base]) for r in res[side]]
            for side in SIDES
        }

    def at_most(limit: float) -> Callable[[float], bool]:
        return lambda v: v <= limit

    figures = [
        Figure("predict, numpy row / raw session.run", per_round(ROW, RAW_ROW),
               "<= 2x (moonshot 1.3x)", at_most(2.0)),
        Figure("predict, dict record / raw session.run", per_round(RECORD, RAW_ROW),
               "<= 4x", at_most(4.0)),
        Figure("predict_batch, 1,024 rows / raw session.run", per_round(BATCHED, RAW_BATCH),
               "<= 1.2x", at_most(1.2)),
    ]  # fmt: skip
    lines = [
        "| case | before: median / p99 | after: median / p99 | after/before (medians) |",
        "|---|---|---|---:|",
    ]
    for case in (RAW_ROW, ROW, RECORD, RAW_BATCH, BATCHED):
        pooled = {side: us([x for r in res[side] for x in r[case]]) for side in SIDES}
        lines.append(
            f"| {case} | {fmt_time(*pooled['before'])} | {fmt_time(*pooled['after'])} "
            f"| {pooled['after'][0] / pooled['before'][0]:.2f} |"
        )
    return figures, lines


def batching_figures(res: dict) -> tuple[list[Figure], list[str]]:
    def per_round(case: str, base: str) -> dict[str, list[float]]:
        return {
            side: [r["cases"][case]["rows_s"] / r["cases"][base]["rows_s"] for r in res[side]]
            for side in SIDES
        }

    figures = [
        Figure("batching, 64 threads / offline limit", per_round("batched", "offline"),
               ">= 0.8 (issue 13: 0.49 before)", lambda v: v >= 0.8, higher_is_better=True),
        Figure("batching, 64 threads / raw session.run, 64 threads", per_round("batched", "raw"),
               "no worse than before", higher_is_better=True),
        Figure("apredict, 64 tasks / offline limit", per_round("async", "offline"),
               "no worse than before", higher_is_better=True),
        Figure("apredict, 64 tasks / raw session.run, 64 threads", per_round("async", "raw"),
               "no worse than before", higher_is_better=True),
    ]  # fmt: skip
    names = {
        "raw": "raw session.run, 64 threads, single rows",
        "batched": "embedml predict with Batching, 64 threads, single rows",
        "offline": "offline limit: session.run on batches of 64, 1 thread",
        "async": "embedml apredict with Batching, 64 asyncio tasks, single rows",
    }
    lines = [
        "| case | before: rows/s (p50 / p99 ms) | after: rows/s (p50 / p99 ms) | after/before (rows/s) |",
        "|---|---|---|---:|",
    ]

    def med(side: str, case: str, key: str) -> float:
        return statistics.median(r["cases"][case][key] for r in res[side])

    for case, name in names.items():
        cells = [
            f"{med(s, case, 'rows_s'):,.0f} ({med(s, case, 'p50_ms'):.2f} / {med(s, case, 'p99_ms'):.2f})"
            for s in SIDES
        ]
        ratio = med("after", case, "rows_s") / med("before", case, "rows_s")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
    mean_batch = [statistics.median(r["mean_batch"] for r in res[s]) for s in SIDES]
    lines.append(
        f"| mean batch of the 64 threads (of 64) | {mean_batch[0]:.1f} | {mean_batch[1]:.1f} | |"
    )
    return figures, lines


def hooks_figures(res: dict) -> tuple[list[Figure], list[str]]:
    from case_hooks import SCENARIOS

    def cpu(r: dict[str, list[float]], name: str) -> float:
        return statistics.median(r[name])

    figures = [
        Figure(
            f"{name}: CPU per call / no hooks",
            {side: [cpu(r, name) / cpu(r, "no hooks") for r in res[side]] for side in SIDES},
            "no worse than before",
        )
        for name in SCENARIOS[1:]
    ]
    lines = [
        "| scenario | before: CPU us per call | after: CPU us per call | after/before |",
        "|---|---:|---:|---:|",
    ]
    for name in SCENARIOS:
        med = [statistics.median(cpu(r, name) for r in res[side]) for side in SIDES]
        lines.append(f"| {name} | {med[0]:.1f} | {med[1]:.1f} | {med[1] / med[0]:.2f} |")
    return figures, lines


def startup_figures(res: dict[str, dict[str, list[float]]]) -> tuple[list[Figure], list[str]]:
    def per_round(clock: str) -> dict[str, list[float]]:
        raw = res[clock]["onnxruntime"]
        return {side: [t / b for t, b in zip(res[clock][side], raw)] for side in SIDES}

    name = "start-up: import embedml + first store.load / import onnxruntime + InferenceSession"
    figures = [
        Figure(name, per_round("wall"), "<= 1.5x", lambda v: v <= 1.5),
        Figure(name + ", CPU time", per_round("cpu"), "(less sensitive to load)"),
    ]
    lines = [
        "| fresh process | wall: median / p99 | / onnxruntime's | CPU: median / p99 | / onnxruntime's |",
        "|---|---|---:|---|---:|",
    ]
    kinds = {
        "onnxruntime": "import onnxruntime + InferenceSession (both sides)",
        "before": "before: import embedml + ModelStore(root).load('lr')",
        "after": "after: import embedml + ModelStore(root).load('lr')",
    }
    for kind, label in kinds.items():
        cells = [
            f"{fmt_ms(res[clock][kind])} | "
            f"{statistics.median(res[clock][kind]) / statistics.median(res[clock]['onnxruntime']):.2f}x"
            for clock in ("wall", "cpu")
        ]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return figures, lines


def fmt_ms(seconds: list[float]) -> str:
    a = np.asarray(seconds) * 1e3
    return fmt_time(float(np.median(a)), float(np.percentile(a, 99)), "ms")


def verdicts(f: Figure) -> tuple[str, str]:
    """Target met on each side, and the after side against before's noise band."""
    med = {side: statistics.median(f.rounds[side]) for side in SIDES}
    met = ""
    if f.check is not None:
        met = " / ".join("met" if f.check(med[side]) else "MISSED" for side in SIDES)
    lo, hi = min(f.rounds["before"]), max(f.rounds["before"])
    better = med["after"] > hi if f.higher_is_better else med["after"] < lo
    worse = med["after"] < lo if f.higher_is_better else med["after"] > hi
    return met, "better" if better else "WORSE" if worse else "within noise"


def guard_rail_table(figures: list[Figure]) -> list[str]:
    lines = [
        "| figure | before | after | after/before | target | met (before / after) | after vs before |",
        "|---|---|---|---:|---|---|---|",
    ]
    for f in figures:
        met, versus = verdicts(f)
        change = statistics.median(f.rounds["after"]) / statistics.median(f.rounds["before"])
        lines.append(
            f"| {f.name} | {fmt_ratio(f.rounds['before'])} | {fmt_ratio(f.rounds['after'])} "
            f"| {change:.2f} | {f.target} | {met} | {versus} |"
        )
    return lines


# ------------------------------------------------------------------ the run


def build_models(tmp: Path, hidden: int, cases: set[str]) -> dict[str, Path]:
    """The benchmark scripts' own models, as ONNX files the children read."""
    paths = {}
    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        if cases & {"percall", "startup"}:
            from bench_foundation import lr_model

            paths["lr"] = tmp / "lr.onnx"
            paths["lr"].write_bytes(lr_model()["onx"].SerializeToString())
        if "batching" in cases:
            from bench_batching import mlp_bytes

            paths["mlp"] = tmp / f"mlp-{hidden}.onnx"
            paths["mlp"].write_bytes(mlp_bytes(hidden))
        if "hooks" in cases:
            from bench_observability import build_mlp

            paths["obs"] = tmp / "mlp-observability.onnx"
            paths["obs"].write_bytes(build_mlp().SerializeToString())
    finally:
        sys.path[:] = saved
    return paths


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="main", help="git ref of the 'before' side (default: main)")
    ap.add_argument(
        "--after", default=None, help="git ref of the 'after' side (default: this working tree)"
    )
    ap.add_argument(
        "--cases", default=",".join(ALL_CASES), help=f"comma-separated, of {', '.join(ALL_CASES)}"
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds (< 1 minute): a smoke run")
    ap.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    ap.add_argument(
        "--hidden", type=int, default=1024, help="hidden width of the batching MLP (default 1024)"
    )
    ap.add_argument(
        "--percall-rounds", type=int, help="child processes per side (default 10, quick 4)"
    )
    ap.add_argument(
        "--batching-rounds", type=int, help="child processes per side (default 8, quick 2)"
    )
    ap.add_argument(
        "--batching-rows", type=int, help="rows per batching case (default 12288, quick 4096)"
    )
    ap.add_argument(
        "--hooks-rounds", type=int, help="child processes per side (default 4, quick 2)"
    )
    ap.add_argument(
        "--startup-runs", type=int, help="fresh processes per kind (default 45, quick 9)"
    )
    args = ap.parse_args()
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not args.cases or args.cases - set(ALL_CASES):
        ap.error(f"--cases takes a comma-separated list of {', '.join(ALL_CASES)}")
    q = args.quick
    # Even rounds: each side goes first equally often; start-up rotates through 3 kinds.
    args.percall_rounds = args.percall_rounds or (4 if q else 10)
    args.batching_rounds = args.batching_rounds or (2 if q else 8)
    args.batching_rows = args.batching_rows or (4096 if q else 12288)
    args.hooks_rounds = args.hooks_rounds or (2 if q else 4)
    args.startup_runs = args.startup_runs or (9 if q else 45)
    if args.batching_rows % 64:
        ap.error("--batching-rows must be a multiple of 64 (rows are shared by 64 callers)")
    return args


def main() -> int:
    args = parse_args()
    # On SIGTERM, unwind like Ctrl-C, so the temporary trees are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = shlex.join([sys.executable, os.path.relpath(__file__), *sys.argv[1:]])
    log = Progress()
    load_start = os.getloadavg()[0]
    sys.path.insert(0, str(CASES))  # case_percall's case names

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as d:
        tmp = Path(d)
        # What a child leaves behind when it is killed (Ctrl-C, SIGTERM, timeout) goes with
        # this directory: children inherit TMPDIR (this process has already read it).
        (tmp / "children").mkdir()
        os.environ["TMPDIR"] = str(tmp / "children")
        log(f"extracting {args.before} (before)")
        trees = {"before": extract(args.before, tmp / "before", "before")}
        if args.after is None:
            trees["after"] = working_tree("after")
        else:
            log(f"extracting {args.after} (after)")
            trees["after"] = extract(args.after, tmp / "after", "after")
        log("building the models")
        models = build_models(tmp, args.hidden, args.cases)

        figures: list[Figure] = []
        sections: list[tuple[str, list[str]]] = []
        raw: dict[str, dict] = {}  # every measurement, for --json
        if "percall" in args.cases:
            res = raw["percall"] = measure_percall(
                trees, models["lr"], args.percall_rounds, args.quick, log
            )
            f, lines = percall_figures(res)
            n = len(res["before"][0][next(iter(res["before"][0]))])
            title = (f"Per call: logistic regression, 20 features ({args.percall_rounds} processes "
                     f"per side, {n:,} one-row samples per case each; medians and p99 of all samples)")  # fmt: skip
            figures += f
            sections.append((title, lines))
        if "batching" in args.cases:
            res = raw["batching"] = measure_batching(
                trees, models["mlp"], args.batching_rounds, args.batching_rows, log
            )
            f, lines = batching_figures(res)
            title = (f"Batching: MLP 20 -> {args.hidden} -> {args.hidden} -> 2, {args.batching_rows:,} "
                     f"rows per case ({args.batching_rounds} processes per side; medians over them)")  # fmt: skip
            figures += f
            sections.append((title, lines))
        if "hooks" in args.cases:
            res = raw["hooks"] = measure_hooks(
                trees, models["obs"], args.hooks_rounds, args.quick, log
            )
            f, lines = hooks_figures(res)
            title = (f"Hooks: CPU per call, 1 caller, MLP 20 -> 256 -> 256 -> 2 with Batching() "
                     f"({args.hooks_rounds} processes per side; medians over them)")  # fmt: skip
            figures += f
            sections.append((title, lines))
        if "startup" in args.cases:
            res = raw["startup"] = measure_startup(trees, models["lr"], tmp, args.startup_runs, log)
            f, lines = startup_figures(res)
            figures += f
            sections.append((f"Start-up ({args.startup_runs} fresh processes of each kind)", lines))
        log("done; removing the temporary trees")

    ort_version = importlib.metadata.version("onnxruntime")
    same = trees["before"].src_tree == trees["after"].src_tree and not trees["after"].dirty
    print("## embedml before / after\n")
    print(f"Command (from {Path.cwd()}): `{command}`\n")
    print(f"* before: {trees['before'].describe}")
    print(f"* after: {trees['after'].describe}")
    if same:
        print("* both sides have the same src/: every difference below is noise")
    print(
        f"* Python {sys.version.split()[0]}, onnxruntime {ort_version}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs; load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end; {time.perf_counter() - log.started:.0f} s"
        + (" (--quick: a smoke run, not figures to quote)" if args.quick else "")
    )
    print(
        "\nRatios are taken within each round (one process, or one back-to-back set of fresh "
        "processes, where both figures were measured side by side): median over rounds, "
        "min-max in brackets. 'after vs before' is 'within noise' when after's median lies "
        "inside before's min-max.\n"
    )
    print("\n".join(guard_rail_table(figures)))
    for title, lines in sections:
        print(f"\n### {title}\n")
        print("\n".join(lines))
    if args.json:
        sides = {side: trees[side].describe for side in SIDES}
        args.json.write_text(json.dumps({"command": command, "sides": sides, "results": raw}))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ChildFailed as exc:
        print(f"bench_compare: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
