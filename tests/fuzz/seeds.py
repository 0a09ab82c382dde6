#!/usr/bin/env python3
"""Writes the hand-built seed corpora of tests/fuzz (corpus/<target>/seed-*).
Each seed is a real request in the target's input format (see each fuzz_*.c).
corpus/h2_raw's seeds are the bytes nghttp2's client sent for the h2_client
seeds, captured with BDS_FUZZ_DUMP: run with the fuzz build directory as the
only argument to write those too. Crash inputs (crash-*) are kept by hand."""
import os
import subprocess
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(x):
    out = b''
    while True:
        b = x & 0x7f
        x >>= 7
        out += bytes([b | (0x80 if x else 0)])
        if not x:
            return out


def ld(field, b):
    return varint(field << 3 | 2) + varint(len(b)) + b


def vi(field, x):
    return varint(field << 3) + varint(x)


def grpc(msg, flag=0):
    return bytes([flag]) + len(msg).to_bytes(4, 'big') + msg


def gz(b, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(b) + c.flush()


FRAME = ld(1, b'k') + vi(2, 1) + ld(3, b'abc')
FRAME_WORK = ld(1, b'key-2') + vi(2, 7) + ld(3, b'payload') + vi(4, 1000)
FRAME_FAIL = ld(1, b'') + vi(5, 1)
HEALTH = ld(1, b'grpc.health.v1.Health')
SIMPLE = vi(2, 10) + ld(3, ld(2, b'abc'))
STREAM_OUT = ld(2, vi(1, 4) + vi(2, 10)) + ld(2, vi(1, 8)) + ld(3, ld(2, b'x'))

SEED = b'\x00\x00\x00\x01'


def h2_client_seeds():
    def open_(path_idx, f=0x00, extra=b''):
        return b'\x00' + bytes([f, path_idx]) + extra

    def data(stream, body, eof=True):
        assert len(body) < 256
        return bytes([0x02 | (0x80 if eof else 0), stream, len(body)]) + body

    pump = b'\x0d\xff'
    return {
        'process-echo': b'\x00' + SEED + open_(0) + data(0, FRAME) + pump + pump,
        'process-work-two-streams': b'\x01' + SEED + open_(0) + open_(0) + data(0, FRAME_WORK, False) +
        data(1, FRAME) + pump + b'\x0c\x07' + data(0, FRAME_FAIL) + pump + pump,
        'health-check': b'\x02' + SEED + open_(1) + data(0, HEALTH) + pump + pump,
        'interop-timeout-rst': b'\x04' + SEED + open_(2, 0x10, b'\x00') + data(0, SIMPLE, False) + pump +
        b'\x05\x00\x08' + pump,
        'control-frames': b'\x08' + SEED + open_(0) + b'\x06' + b'\x07\x04\x00\x00\x40\x00\x00\x01\x00\x00' +
        b'\x08\x00\x00\x00\x10\x00' + pump + data(0, FRAME) + b'\x09\x00' + pump,
        'raw-headers': b'\x10' + SEED + pump + b'\x0a\x04' + b'\x10\x04POST' + b'\x11\x1f/bidistream.v1.Pipeline/Process' +
        b'\x14\x10application/grpc' + b'\x15\x08trailers' + b'\x24' + pump,
        'small-limits': b'\x14' + SEED + open_(0) + data(0, FRAME + b'\x00' * 200) + b'\x0d\x01' + b'\x0c\xff' +
        pump + pump,
        'goaway-mid-call': b'\x00' + SEED + open_(0) + data(0, FRAME, False) + pump + b'\x0c\x18' + pump +
        data(0, FRAME) + pump,
        # grpc-encoding: gzip, then a message with the compressed flag (a fuzzed prefix: op 0x40)
        'gzip-request': b'\x00' + SEED + open_(0, 0x20, b'\x04gzip\x00') +
        bytes([0xc2, 0, len(grpc(gz(FRAME), 1))]) + grpc(gz(FRAME), 1) + pump + pump,
    }


def seeds():
    s = {}
    s['deframer'] = {
        'two-messages': b'\x00\x00' + SEED + grpc(FRAME) + grpc(b''),
        'compressed-allowed': b'\x00\x01' + SEED + grpc(FRAME, 1) + grpc(FRAME),
        'over-limit': b'\x01\x00' + SEED + grpc(b'x' * 64),
        'truncated': b'\x10\x00' + SEED + grpc(FRAME)[:-2],
        'bad-flag': b'\x00\x00' + SEED + grpc(FRAME, 2),
    }
    s['decompress'] = {
        'gzip': b'\x0b' + gz(FRAME * 20),
        'deflate': b'\x0a' + zlib.compress(FRAME * 20),
        'gzip-two-members': b'\x0b' + gz(b'one ') + gz(b'two'),
        'bomb': b'\x09' + gz(bytes(1 << 20), 9),
        'empty': b'\x0b' + gz(b''),
        'round-trip': b'\x1a' + FRAME * 8,
    }
    s['grpc_wire'] = {
        'timeout-1S': b'\x00' + b'1S',
        'timeout-max': b'\x00' + b'99999999H',
        'format': b'\x01' + bytes(range(1, 10)),
        'percent': b'\x02' + b'hello %41 \xff\x00 100% \xe2\x82\xac',
        'request-ok': b'\x03\x00' + b'\x00\x00' + b'\x01\x01' + b'\x02\x02' + b'\x03\x04' + b'\x04\x05',
        'request-fuzzed-values': b'\x03\x04' + b'\x40\x03GET' + b'\x41\x05/a/b\x00' + b'\x82\x04abcd\x05\x01x',
    }
    s['http1_req'] = {
        'scrape': b'\x20\x00' + b'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nUser-Agent: Prometheus/2.42.0\r\n'
                  b'Accept: text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n',
        'head-http10-query': b'\x00\x00' + b'HEAD /metrics?a=b HTTP/1.0\r\n\r\n',
        'no-host': b'\x20\x00' + b'GET /metrics HTTP/1.1\r\n\r\n',
        'tls-hello': b'\x20\x00' + b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03',
        'h2-preface': b'\x20\x00' + b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
        'oversized': b'\x00\x00' + b'GET /metrics HTTP/1.1\r\nHost: a\r\nX: ' + b'a' * 200 + b'\r\n\r\n',
    }
    s['config'] = {
        'flags': b'--grace\x005s\x00--max-attempts\x003\x00--backoff=10ms',
        'sizes': b'--max-message-bytes\x004MiB\x00--stream-window-bytes\x0064KiB\x00--inbound-bytes-max=1GiB',
        'file': b'--check-config\x00\x00# comment\ngrace = 1m30s\nmax-message-bytes = 1MiB\nlisten = [::1]:0\n'
                b'inbound-policy = queue\ninbound-capacity = 4\ninbound-queue-capacity = 8\n',
        'file-and-flags': b'--shards\x002\x00\x00shards = 3\nfail-fast = yes\nlog-level = debug\n',
        'wrap': b'--grace\x005124095.6h',
    }
    s['messages'] = {
        'frame-plain': b'\x00\xff' + FRAME,
        'frame-work': b'\x00\xff' + FRAME_WORK,
        'frame-fail-small-budget': b'\x00\x01' + FRAME_FAIL,
        'health': b'\x01\xff' + HEALTH,
        'simple-request': bytes([3 * 7 + 2]) + b'\xff' + SIMPLE,
        'streaming-output-request': bytes([3 * 12 + 2]) + b'\xff' + STREAM_OUT,
    }
    s['h2_client'] = h2_client_seeds()
    return s


def write(target, name, data):
    d = os.path.join(HERE, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'seed-' + name), 'wb') as f:
        f.write(data)


def raw_ops(stream):
    """The raw bytes as fuzz_h2_raw ops: recv chunks of up to 1024 bytes, output after each."""
    out = b''
    i = 0
    while i < len(stream):
        n = min(len(stream) - i, 1024)
        if n >= 16:
            n -= n % 16
            out += bytes([((n // 16 - 1) << 2) | 1]) + stream[i:i + n] + b'\x01'
        else:
            out += bytes([((n - 1) << 2) | 0]) + stream[i:i + n] + b'\x01'
        out += b'\xfe'  # output, all of it
        i += n
    return out


def main():
    all_seeds = seeds()
    for target, d in all_seeds.items():
        for name, data in d.items():
            write(target, name, data)
    if len(sys.argv) > 1:
        exe = os.path.join(sys.argv[1], 'tests', 'fuzz', 'fuzz_h2_client')
        tmp = os.path.join(HERE, 'corpus', '.dump')
        for name, data in all_seeds['h2_client'].items():
            with open(tmp, 'wb') as f:
                f.write(data)
            subprocess.run([exe, tmp], env=dict(os.environ, BDS_FUZZ_DUMP=tmp + '.out'), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(tmp + '.out', 'rb') as f:
                stream = f.read()
            # Config as the h2_client seed had it, without the preface bit (the capture has it).
            write('h2_raw', name, bytes([data[0] & 0x7f]) + SEED + raw_ops(stream) + b'\x03\x1f\xfe')
            os.unlink(tmp + '.out')
        os.unlink(tmp)
        write('h2_raw', 'preface-then-garbage', b'\x80' + SEED + b'\x1c' + b'\x00\x00\x04\x08\x00\x00\x00\x00\x00' + b'\x01')
        write('h2_raw', 'bad-preface', b'\x00' + SEED + b'\x3c' + b'GET / HTTP/1.1\r\nHost: x\r\n\r\n' + b'\x00\xfe')


if __name__ == '__main__':
    main()
