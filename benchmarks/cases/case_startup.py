"""Start-up case of ``bench_compare.py``: one fresh interpreter, one measurement.

    case_startup.py embedml STORE_ROOT   # import embedml + ModelStore(root).load("lr")
    case_startup.py onnxruntime MODEL    # import onnxruntime + InferenceSession(file bytes)
    case_startup.py prepare STORE_ROOT MODEL   # untimed: save MODEL as "lr" into the store

The clocks start before anything else is imported (only the built-in ``sys`` and ``time``
are), so each side pays for its own imports, as an application's first load does; both
sides read the same model bytes from disk. Prints the wall-clock seconds and the CPU
seconds of the process (all threads) on one line, then (embedml) the file that embedml was
imported from, so the parent can check which tree ran.
"""

import sys
import time

t0, c0 = time.perf_counter(), time.process_time()
if sys.argv[1] == "embedml":
    import embedml

    handle = embedml.ModelStore(sys.argv[2]).load("lr")
    print(time.perf_counter() - t0, time.process_time() - c0)
    print(embedml.__file__)
elif sys.argv[1] == "onnxruntime":
    import onnxruntime

    with open(sys.argv[2], "rb") as f:
        session = onnxruntime.InferenceSession(f.read(), providers=["CPUExecutionProvider"])
    print(time.perf_counter() - t0, time.process_time() - c0)
elif sys.argv[1] == "prepare":
    from pathlib import Path

    import embedml

    embedml.ModelStore(sys.argv[2]).save("lr", Path(sys.argv[3]).read_bytes())
else:
    raise SystemExit(f"unknown mode {sys.argv[1]!r}: embedml, onnxruntime or prepare")
