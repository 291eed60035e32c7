#!/usr/bin/env python3
"""Checks the tonic demo from outside with grpcio, grpcio-health-checking
and grpcio-status (`pip install grpcio grpcio-health-checking grpcio-status`):
rate limit across 80 calls, trailers-only refusals with google.rpc.Status
details, and the bad-input codes. Exits 1 on any mismatch.

    CARGO_TARGET_DIR=target/rel cargo build --release --features tonic --example tonic_server
    python3 scripts/outside/grpc_demo.py target/rel/release/examples/tonic_server
"""
import os, socket, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(sys.argv[1])
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
proc = subprocess.Popen([BIN], env=dict(os.environ, ADDR=f"127.0.0.1:{port}", RUST_LOG="warn"), cwd=ROOT,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
fails = []
def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what); (None if cond else fails.append(what))
try:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(ch).result(timeout=20)
    stub = health_pb2_grpc.HealthStub(ch)
    def call(md):
        try:
            r, c = stub.Check.with_call(health_pb2.HealthCheckRequest(), metadata=md, timeout=5)
            return grpc.StatusCode.OK, dict(c.initial_metadata()), "", dict(c.trailing_metadata())
        except grpc.RpcError as e:
            st = rpc_status.from_call(e)
            kinds = []
            for d in (st.details if st else []):
                for name, cls in [("ErrorInfo", error_details_pb2.ErrorInfo), ("QuotaFailure", error_details_pb2.QuotaFailure), ("RetryInfo", error_details_pb2.RetryInfo)]:
                    if d.Is(cls.DESCRIPTOR):
                        m = cls(); d.Unpack(m); kinds.append((name, m))
            return e.code(), dict(e.initial_metadata() or ()), e.details(), dict(e.trailing_metadata() or ()), kinds
    with ThreadPoolExecutor(16) as ex:
        res = list(ex.map(lambda _: call([("x-tenant-id", "acme")]), range(80)))
    ok = [r for r in res if r[0] == grpc.StatusCode.OK]
    ex_ = [r for r in res if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    check(len(ok) == 60 and len(ex_) == 20, f"acme 80 concurrent-ish calls (60/min): {len(ok)} OK, {len(ex_)} RESOURCE_EXHAUSTED, others {[r[0] for r in res if r[0] not in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED)][:3]}")
    check(all("ratelimit" in r[1] for r in ok), "OK replies carry ratelimit metadata")
    check(all({k for k, _ in r[4]} == {"ErrorInfo", "QuotaFailure", "RetryInfo"} and dict(r[4])["ErrorInfo"].reason == "RATE_LIMITED"
              and dict(r[4])["RetryInfo"].retry_delay.seconds == int(r[3]["retry-after"]) for r in ex_),
          "RESOURCE_EXHAUSTED: google.rpc.Status via grpcio-status: ErrorInfo RATE_LIMITED, QuotaFailure, RetryInfo = retry-after")
    for md, want in [([], grpc.StatusCode.INVALID_ARGUMENT), ([("x-tenant-id", "../etc")], grpc.StatusCode.INVALID_ARGUMENT),
                     ([("x-tenant-id", "nobody")], grpc.StatusCode.PERMISSION_DENIED),
                     ([("x-tenant-id", "umbrella")], grpc.StatusCode.PERMISSION_DENIED)]:
        c = call(md)
        check(c[0] == want and c[4] and c[4][0][0] == "ErrorInfo", f"{md} -> {c[0]} {c[2]!r} {[ (k, getattr(m, 'reason', '')) for k, m in c[4]]} (want {want})")
finally:
    proc.terminate()
print("PASSED" if not fails else f"FAILED: {fails}")
sys.exit(1 if fails else 0)
