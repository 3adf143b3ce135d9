"""Profile the features dataflow process during an ingest catch-up run with py-spy.

    .venv/bin/pip install py-spy       # not a project dependency
    python -m benchmarks.profile_ingest --events 300000 [--processes 1] [--native]
    python -m benchmarks.profile_ingest --live 10000 --seconds 15      # live load instead
    python -m benchmarks.profile_ingest --gc [--gc-threshold 50000,50,100]   # GC time, no py-spy

Sets up like :mod:`benchmarks.ingest` (embedded stack, generated events on a fresh topic),
starts the job, attaches ``py-spy record --format raw`` to process 0 until every event is
folded and visible, then prints the top functions by self and inclusive share of the
sampled (non-idle) stacks. The raw collapsed stacks are kept (``--out``) for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from benchmarks.ingest import (
    FEATURE_SPEC,
    _LiveLoad,
    Job,
    generate_events,
    job_config,
    log,
    produce_all,
    wait_until_done,
)
from engine.config import load_config
from engine.runtime.stack import LocalStack
from engine.runtime.topics import ensure_topics

_LINE = re.compile(r":\d+\)$")


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)`` (lines merged)."""
    frame = _LINE.sub(")", frame.strip())
    m = re.match(r"^(.*) \((.*)\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


def summarize(raw_path: Path, top: int = 25) -> str:
    """Self and inclusive shares per function from py-spy's raw (collapsed) output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        # Drop the thread/process header frames py-spy may add.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith("_PollLikeSelector.select") or frames[-1].startswith("select ("):
            continue  # the metrics HTTP thread waiting in select(): idle, not CPU
        if any(f.startswith("_locate_dataflow") for f in frames):
            continue  # start-up: importing and building the dataflow
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n
    out = [f"{total} samples (non-idle, start-up imports and the metrics thread's select() excluded)", "",
           "self %   function"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in self_c.most_common(top)]
    out += ["", "incl %   function"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in incl_c.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_ingest")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include native (Rust/C) frames")
    parser.add_argument("--out", default="/tmp/rtml-ingest-profile.txt", help="raw collapsed stacks")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--live", type=float, default=0.0, metavar="RATE",
                        help="profile a live run instead: produce RATE events/s (event_time = now) for --seconds")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of a --live profile")
    parser.add_argument("--gc", action="store_true",
                        help="instead of py-spy, measure the time the dataflow spends in garbage collection")
    parser.add_argument("--gc-threshold", default=None, metavar="G0,G1,G2",
                        help="with --gc: run the dataflow with this gc.set_threshold")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not args.gc and not Path(py_spy).exists():
        parser.error("py-spy not found: .venv/bin/pip install py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="rtml-bench-profile-"))
    stack = LocalStack(load_config(env={}, overrides={"kafka": {"bootstrap": None}, "redis": {"url": None}}))
    job = spy = None
    try:
        stack.start()
        scfg = stack.config
        spec = tmp / "features.yaml"
        spec.write_text(FEATURE_SPEC)
        topic = f"bench-profile-{uuid.uuid4().hex[:8]}"
        ensure_topics(stack.bootstrap, [topic], partitions=3)
        ensure_topics(stack.bootstrap, [topic + ".dlq"], partitions=1)
        ev = None
        if not args.live:
            ev = generate_events(args.events)
            produce_all(stack.bootstrap, topic, ev.messages)
            ev.messages = []
        prefix = f"p{uuid.uuid4().hex[:8]}"
        cfg = job_config(scfg, topic=topic, spec_path=spec, workdir=tmp, processes=args.processes,
                         recovery=False, prefix=prefix, idle_advance=bool(args.live))
        gc_out = tmp / "gc.json"

        def gc_wrap(argv: list[str]) -> list[str]:
            rest = argv[argv.index("bytewax.run") + 1:]
            threshold = ["--threshold", args.gc_threshold] if args.gc_threshold else []
            return [sys.executable, "-m", "benchmarks._gcwrap", str(gc_out), *threshold, *rest]

        job = Job(cfg, tmp / "logs", "profile", wrap_argv=gc_wrap if args.gc else None).start()
        load = None
        if args.live:
            load = _LiveLoad(stack.bootstrap, topic, args.live, ["probe-0"], 1.0)
            load.start()
            t_up = time.perf_counter() + 60
            while job.scrape().get("rtml_events_in_total") <= 0:  # wait past startup (imports)
                job.check_alive()
                if time.perf_counter() > t_up:
                    raise TimeoutError(f"live job did not start:\n{job.logs()}")
                time.sleep(0.1)
            time.sleep(2.0)
        cmd = [py_spy, "record", "--pid", str(job.procs[0].pid), "--format", "raw", "-o", args.out,
               "--rate", str(args.rate)]
        if args.native:
            cmd.append("--native")
        if not args.gc:
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.perf_counter()
        if load is not None:
            cpu0 = job.cpu_seconds()
            time.sleep(args.seconds)
            cpu1 = job.cpu_seconds()
            if cpu0 is not None and cpu1 is not None:
                log(f"live: dataflow CPU utilisation {(cpu1 - cpu0) / args.seconds:.2f} of one core")
            load.stop_event.set()
            load.join(15)
        else:
            assert ev is not None
            client = redis.Redis.from_url(scfg.redis.url or "")
            t_first, _t_folded, t_done, _last, _tl = wait_until_done(
                job, client, prefix, ev.final_times, args.events, t0 + 600)
            client.close()
            log(f"catch-up: {args.events / (t_done - t_first):.0f} events/s ({t_done - t_first:.1f}s)")
        if args.gc:
            time.sleep(0.7)  # the wrapper writes its numbers every 0.5 s
            stats = json.loads(gc_out.read_text())
            print(f"garbage collection in the dataflow process (threshold {stats['threshold']}):")
            for g in range(3):
                print(f"  gen {g}: {stats['collections'][g]} collections, {stats['seconds'][g]:.2f}s")
            print(f"  total {sum(stats['seconds']):.2f}s")
            return 0
        log(f"done in {time.perf_counter() - t0:.1f}s; stopping py-spy")
        assert spy is not None
        spy.send_signal(signal.SIGINT)
        try:
            _out, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _out, err = spy.communicate()
        if spy.returncode not in (0, -signal.SIGINT) and not Path(args.out).exists():
            print(err.decode(errors="replace"), file=sys.stderr)
            return 1
        spy = None
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if job is not None:
            job.stop()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(summarize(Path(args.out), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
