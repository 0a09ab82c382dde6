#!/usr/bin/python3
"""Conformance smoke check of one peer against docs/SERVICE.md, with Debian's python3-grpcio.

usage: /usr/bin/python3 check.py PORT [--tls CA.pem]   (the peer listens on 127.0.0.1:PORT)
(Debian's python: pyenv shims lack grpcio.) With --tls the channel is TLS,
verified with that CA, the certificate's name being "localhost" (bench/run.sh
makes the CA and the certificate).

Checks: echo of key/seq/payload; same-key replies in arrival order under work_us
while other keys run in parallel (total time well under the serial sum);
half-close drains in-flight work and ends with OK; fail=true ends the stream
with INTERNAL and a message. Exits non-zero on the first failure.
"""
import os
import subprocess
import sys
import tempfile
import time

import grpc

here = os.path.dirname(os.path.abspath(__file__))
proto_dir = os.path.join(here, "..", "..", "proto")
gen = tempfile.mkdtemp(prefix="bds-check-")
subprocess.check_call(["protoc", "-I" + proto_dir, "--python_out=" + gen, "pipeline.proto"])
sys.path.insert(0, gen)
import pipeline_pb2 as pb  # noqa: E402

port = int(sys.argv[1])
if len(sys.argv) == 4 and sys.argv[2] == "--tls":
    with open(sys.argv[3], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    ch = grpc.secure_channel(f"127.0.0.1:{port}", creds,
                             options=[("grpc.ssl_target_name_override", "localhost")])
elif len(sys.argv) == 2:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
else:
    sys.exit(__doc__)
grpc.channel_ready_future(ch).result(timeout=5)
process = ch.stream_stream("/bidistream.v1.Pipeline/Process",
                           request_serializer=pb.Frame.SerializeToString,
                           response_deserializer=pb.Frame.FromString)


def fail(msg):
    print("check: FAIL:", msg)
    sys.exit(1)


# 1. echo
frames = [pb.Frame(key="k", seq=i, payload=bytes([i % 256]) * (i * 7)) for i in range(1, 50)]
call = process(iter(frames))
got = list(call)
if [(f.key, f.seq, f.payload) for f in got] != [(f.key, f.seq, f.payload) for f in frames]:
    fail("echo mismatch")
if call.code() != grpc.StatusCode.OK:
    fail(f"echo status {call.code()}")

# 2. keyed FIFO with work: 4 keys x 10 frames x 20 ms. Serial would be 800 ms;
# parallel across keys, sequential within a key: ~200 ms.
frames = [pb.Frame(key=f"k{i % 4}", seq=i + 1, work_us=20000) for i in range(40)]
t0 = time.monotonic()
call = process(iter(frames))
got = list(call)
dt = time.monotonic() - t0
if call.code() != grpc.StatusCode.OK or len(got) != 40:
    fail(f"work: status {call.code()} replies {len(got)}")
for k in range(4):
    seqs = [f.seq for f in got if f.key == f"k{k}"]
    if seqs != sorted(seqs) or len(seqs) != 10:
        fail(f"key k{k} out of order: {seqs}")
if dt < 0.19 or dt > 0.6:
    fail(f"work timing {dt:.3f}s, expected ~0.2s (keys parallel, frames of a key serial)")

# 3. fail=true -> INTERNAL with a message
frames = [pb.Frame(key="a", seq=1), pb.Frame(key="a", seq=2, fail=True)]
call = process(iter(frames))
try:
    list(call)
except grpc.RpcError:
    pass
if call.code() != grpc.StatusCode.INTERNAL or not call.details():
    fail(f"fail: status {call.code()} details {call.details()!r}")

print(f"check: OK{' over TLS' if len(sys.argv) == 4 else ''} (work test {dt * 1000:.0f} ms)")
