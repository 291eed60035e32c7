#!/usr/bin/env python3
"""Server µs per call of two versions of window.lua and of the peer's script,
interleaved in one run (BENCHMARKS.md §4, "the window's fast path for wide
counts").

Starts redis-server on a free port, loads A, B (two window.lua files) and
rate-limiter-flexible's script, then per round sends N pipelined EVALSHA
calls of each (the order reversed every other round), reading
`usec_per_call` of `cmdstat_evalsha` after a `CONFIG RESETSTAT`. Two cases:
"wide", one key per script made wide first (70 000 units: 97 bytes, as the
key of benches/redis.rs); "16-bit", a fresh key per script and round.

Usage: docs/bench/window-ab.py A.lua B.lua [N] [ROUNDS]
  e.g. git show fc098e5:src/store/window.lua > /tmp/old.lua
       docs/bench/window-ab.py /tmp/old.lua src/store/window.lua 60000 5
"""
import os, struct, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resp_client import resp, start_server  # noqa: E402

A, B = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 60000
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 5
LIMIT, WINDOW = 10**12, 60000
RLF = ("redis.call('set', KEYS[1], 0, 'EX', ARGV[2], 'NX') "
       "local consumed = redis.call('incrby', KEYS[1], ARGV[1]) "
       "local ttl = redis.call('pttl', KEYS[1]) "
       "if ttl == -1 then redis.call('expire', KEYS[1], ARGV[2]) ttl = 1000 * ARGV[2] end "
       "return {consumed, ttl}")


def main():
    server, _, _, c = start_server()
    try:
        shas = {name: c.call("SCRIPT", "LOAD", src).decode() for name, src in
                (("A", open(A).read()), ("B", open(B).read()), ("peer", RLF))}

        def call(name, key, cost):
            if name == "peer":
                return resp(["EVALSHA", shas[name], "1", key, str(cost), "60"])
            return resp(["EVALSHA", shas[name], "1", key,
                         struct.pack("<ddd", LIMIT, cost, WINDOW)])

        def usec():
            for line in c.call("INFO", "commandstats").decode().splitlines():
                if line.startswith("cmdstat_evalsha:"):
                    fields = dict(f.split("=") for f in line.split(":", 1)[1].split(","))
                    return float(fields["usec_per_call"])

        for case in ("wide", "16-bit"):
            us = {"A": [], "B": [], "peer": []}
            for r in range(ROUNDS):
                key = lambda name: f"{name}:{case}" + ("" if case == "wide" else f":{r}")
                if case == "wide" and r == 0:
                    c.pipeline([call(name, key(name), 70000) for name in us])
                order = list(us) if r % 2 == 0 else list(reversed(list(us)))
                for name in order:
                    cmds = [call(name, key(name), 1)] * N
                    c.call("CONFIG", "RESETSTAT")
                    for i in range(0, N, 64):
                        c.pipeline(cmds[i:i + 64])
                    us[name].append(usec())
            med = {k: sorted(v)[len(v) // 2] for k, v in us.items()}
            print(f"{case}: " + "  ".join(f"{k} {med[k]:.2f} µs {v}" for k, v in us.items())
                  + f"  A/peer {med['A'] / med['peer']:.2f}  B/peer {med['B'] / med['peer']:.2f}"
                  + f"  B/A {med['B'] / med['A']:.2f}", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
