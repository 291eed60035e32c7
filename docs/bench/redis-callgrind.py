#!/usr/bin/env python3
"""Instructions redis-server spends per script call (BENCHMARKS.md §4).

Starts redis-server under callgrind on a free port, then for each call: a
warm-up of 2 000 calls, `callgrind_control -z`, N calls pipelined 16 at a
time over 4 connections in turn, `callgrind_control -d`; prints the
instructions of the dump divided by N. The calls are binary-safe (raw RESP,
so packed arguments work, which redis-benchmark's argv does not carry).

Usage: docs/bench/redis-callgrind.py [N] [ROUNDS]   (5 000 calls, 1 round)
"""
import glob, hashlib, os, struct, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resp_client import Conn, resp, start_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 1


def run(conns, args, n):
    done = 0
    while done < n:
        for c in conns:
            k = min(16, n - done)
            if k <= 0:
                break
            c.pipeline([resp(args)] * k)
            done += k


def main(calls):
    vg, d, port, c = start_server(
        lambda d: ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out"])
    try:
        conns = [c] + [Conn(port) for _ in range(3)]

        def load(src, function=None):
            if src.endswith(".lua"):
                src = open(os.path.join(ROOT, "src/store", src)).read()  # (absolute paths as they are)
            if function is None:
                return c.call("SCRIPT", "LOAD", src).decode()
            # As the store's Function (src/store/redis.rs): a library and
            # its one function named tt_<function>_<16 hex of the SHA-1>.
            name = "tt_%s_%s" % (function, hashlib.sha1(src.encode()).hexdigest()[:16])
            c.call("FUNCTION", "LOAD", "REPLACE", "#!lua name=%s\nredis.register_function('%s', "
                   "function(KEYS, ARGV)\n%s\nend)\n" % (name, name, src))
            return name

        # Every script loaded before the first measurement: the Lua heap the
        # periodic garbage collection walks is then the same for every call
        # of every round (in round 1, a call measured before the larger
        # scripts were loaded cost 1.2-1.4 k fewer instructions).
        for _, make in calls:
            make(load)
        results = {}
        for _ in range(ROUNDS):
            for label, make in calls:
                args = make(load)
                first = c.call(*args)
                run(conns, args, 2000)
                subprocess.run(["callgrind_control", "-z", str(vg.pid)], stdout=subprocess.DEVNULL, check=True)
                run(conns, args, N)
                subprocess.run(["callgrind_control", "-d", str(vg.pid)], stdout=subprocess.DEVNULL, check=True)
                f = max(glob.glob(f"{d}/cg.out.*"), key=os.path.getmtime)
                ir = None
                for line in open(f):
                    if line.startswith(("summary:", "totals:")):
                        ir = int(line.split()[1])
                        break
                if os.environ.get("CG_KEEP"):
                    os.rename(f, os.path.join(os.environ["CG_KEEP"], label.replace(" ", "_") + ".out"))
                else:
                    os.remove(f)
                results.setdefault(label, []).append(ir / N)
                del first
        for label, _ in calls:
            v = results[label]
            print(f"{label}\t" + " ".join(f"{x / 1000:.1f}k" for x in v), flush=True)
    finally:
        vg.terminate()
        vg.wait()


def pack(fmt, *xs):
    return struct.pack(fmt, *xs)


if __name__ == "__main__":
    calls_file = os.environ.get("CALLS", os.path.join(ROOT, "docs/bench/redis-callgrind-calls.py"))
    ns = {"pack": pack}
    exec(open(calls_file).read(), ns)
    main(ns["CALLS"])
