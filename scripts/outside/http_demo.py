#!/usr/bin/env python3
"""Checks the axum demo from outside: 4 release instances of
examples/axum_server on one private redis-server (fail-closed), driven by
Python's http.client (48 threads), then redis-cli. Exits 1 on any mismatch.

    CARGO_TARGET_DIR=target/rel cargo build --release --features redis --example axum_server
    python3 scripts/outside/http_demo.py target/rel/release/examples/axum_server
"""
import http.client, json, os, socket, subprocess, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(sys.argv[1])
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

rport = free_port()
tmp = tempfile.mkdtemp()
redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no", "--dir", tmp],
                         stdout=subprocess.DEVNULL)
ports = [free_port() for _ in range(4)]
procs = []
for p in ports:
    env = dict(os.environ, ADDR=f"127.0.0.1:{p}", REDIS_URL=f"redis://127.0.0.1:{rport}",
               STORE_FAILURE="closed", PLANS="examples/plans.toml", RUST_LOG="warn")
    procs.append(subprocess.Popen([BIN], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
def up(p):
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", p, timeout=2); c.request("GET", "/health"); c.getresponse().read(); return
        except OSError: time.sleep(0.05)
    raise SystemExit(f"instance {p} did not start")
for p in ports: up(p)

def req(i, method, path, headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", ports[i % 4], timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse(); data = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data

fails = []
def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what); (None if cond else fails.append(what))

try:
    # Bursts of 400 concurrent requests (400 connections) over the 4 instances, cold (the first
    # requests after start) and warm: fail-closed with the default 100 ms timeout, none may be
    # answered 503 on a busy machine (initech: 1000 a minute).
    for phase in ("cold", "warm"):
        barrier = threading.Barrier(400)
        def one(i):
            barrier.wait()
            return req(i, "GET", "/v1/me", {"x-tenant-id": "initech"})[0]
        with ThreadPoolExecutor(400) as ex:
            codes = list(ex.map(one, range(400)))
        check(codes.count(200) == 400, f"{phase} burst of 400: {codes.count(200)} x 200, {codes.count(503)} x 503, others {[c for c in codes if c not in (200, 503)][:5]}")
    with ThreadPoolExecutor(48) as ex:
        res = list(ex.map(lambda i: req(i, "GET", "/v1/me", {"x-tenant-id": "acme"}), range(240)))
    ok = [r for r in res if r[0] == 200]; lim = [r for r in res if r[0] == 429]
    check(len(ok) == 60 and len(lim) == 180, f"acme 240 requests over 4 instances: {len(ok)} x 200, {len(lim)} x 429 (want 60/180)")
    check(all(r[1].get("content-type") == "application/problem+json" and "retry-after" in r[1] and "ratelimit" in r[1] and "ratelimit-policy" in r[1] for r in lim),
          "every 429 has problem+json, Retry-After, RateLimit, RateLimit-Policy")
    check(all("ratelimit" in r[1] for r in ok), "every 200 has RateLimit")
    with ThreadPoolExecutor(30) as ex:
        res = list(ex.map(lambda i: req(i, "POST", "/v1/workflows/1/executions?duration_ms=1500", {"x-tenant-id": "globex"}), range(30)))
    codes = [json.loads(r[2]).get("code") for r in res if r[0] == 429]
    check(sum(r[0] == 200 for r in res) == 10 and codes.count("concurrency_limited") == 20,
          f"globex 30 concurrent executions (limit 10): {sum(r[0] == 200 for r in res)} x 200, {codes.count('concurrency_limited')} x concurrency_limited")
    s = req(0, "POST", "/v1/workflows/1/executions", {"x-tenant-id": "globex"})[0]
    check(s == 200, f"after they ended: {s}")
    for hdrs, path, want in [({}, "/v1/me", 400), ({"x-tenant-id": "../etc"}, "/v1/me", 400),
                             ({"x-tenant-id": "nobody"}, "/v1/me", 403), ({"x-tenant-id": "umbrella"}, "/v1/me", 403),
                             ({"x-tenant-id": "acme"}, "/v1/patterns", 403)]:
        st, h, body = req(1, "GET" if path == "/v1/me" else "POST", path, hdrs)
        check(st == want and h.get("content-type") == "application/problem+json" and json.loads(body).get("code"),
              f"{hdrs} {path} -> {st} {json.loads(body).get('code') if body else ''} (want {want})")
    keys = subprocess.run(["redis-cli", "-p", str(rport), "--scan"], capture_output=True, text=True).stdout.split()
    ttls = [int(subprocess.run(["redis-cli", "-p", str(rport), "pttl", k], capture_output=True, text=True).stdout) for k in keys]
    check(keys and all(t > 0 for t in ttls), f"redis-cli: {len(keys)} keys, all with a TTL ({sorted(ttls)[:3]}..)")
    # A paused Redis (SIGSTOP, 3 s): fail-closed answers 503 problem+json within about a
    # second, then admissions resume within 5 s of SIGCONT.
    import signal
    redis.send_signal(signal.SIGSTOP)
    t0 = time.monotonic(); first503 = None; codes = []
    while time.monotonic() - t0 < 3:
        st, h, body = req(2, "GET", "/v1/me", {"x-tenant-id": "initech"})
        codes.append(st)
        if st == 503 and first503 is None:
            first503 = time.monotonic() - t0
            check(h.get("content-type") == "application/problem+json" and json.loads(body)["code"] == "unavailable",
                  "503 is problem+json, code unavailable")
    redis.send_signal(signal.SIGCONT)
    t1 = time.monotonic(); back = None
    while time.monotonic() - t1 < 5 and back is None:
        if req(2, "GET", "/v1/me", {"x-tenant-id": "initech"})[0] == 200:
            back = time.monotonic() - t1
        else:
            time.sleep(0.05)
    check(first503 is not None and first503 < 1.0 and 200 not in codes[codes.index(503):],
          f"Redis paused: first 503 after {first503 and round(first503, 3)} s, no 200 while paused ({len(codes)} requests)")
    check(back is not None, f"Redis resumed: 200 again after {back and round(back, 3)} s")
finally:
    for p in procs: p.terminate()
    redis.terminate()
print("PASSED" if not fails else f"FAILED: {fails}")
sys.exit(1 if fails else 0)
