"""Run ``bytewax.run`` while recording the time the garbage collector takes (for profiling).

    python -m benchmarks._gcwrap OUT_FILE [--threshold G0,G1,G2] <bytewax.run arguments...>

Every 0.5 s (and at exit) OUT_FILE receives a JSON object: collections and seconds per
generation. ``--threshold`` sets ``gc.set_threshold`` first, to try other settings.
Used by ``python -m benchmarks.profile_ingest --gc``.
"""

from __future__ import annotations

import atexit
import gc
import json
import runpy
import sys
import threading
import time


def main() -> None:
    args = sys.argv[1:]
    out = args.pop(0)
    if args and args[0] == "--threshold":
        args.pop(0)
        gc.set_threshold(*(int(x) for x in args.pop(0).split(",")))
    stats = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "threshold": list(gc.get_threshold())}
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        g = info["generation"]
        stats["collections"][g] += 1
        stats["seconds"][g] += time.perf_counter() - started[0]

    def dump() -> None:
        with open(out, "w") as fh:
            json.dump(stats, fh)

    def loop() -> None:
        while True:
            time.sleep(0.5)
            dump()

    gc.callbacks.append(on_gc)
    atexit.register(dump)
    threading.Thread(target=loop, name="gc-stats", daemon=True).start()
    sys.argv = ["bytewax.run", *args]
    runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
