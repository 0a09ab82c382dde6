#!/usr/bin/python3
"""HTTP/2 abuse against the running server (docs/SERVICE.md), over a real socket.

tests/proto/test_h2_abuse.c feeds the same floods to the HTTP/2 session in
memory; here they go through bidistreamd's sockets and shards, and each test
then checks what docs/SERVICE.md asks of the server: the abusive connection gets a
clear HTTP/2 error (GOAWAY with a code, or RST_STREAM) or is closed, a
well-behaved client on another connection is served during and after the
abuse, and the server exits 0 on SIGTERM with no sanitizer report.

The abusive client writes frames by hand (HPACK literals without indexing
or Huffman); the well-behaved one is Debian's python3-grpcio.
Prints "N passed, N failed" last.

usage: test_h2_floods.py PATH/TO/bidistreamd [test-name-substring]
"""
import os
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402  (Server, process, frame codec)

PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
PROTOCOL_ERROR, ENHANCE_YOUR_CALM = 0x1, 0xb


h2frame = g.h2frame


def hpack_int(x, prefix_bits, first=0):
    top = (1 << prefix_bits) - 1
    if x < top:
        return bytes([first | x])
    out = bytearray([first | top])
    x -= top
    while x >= 128:
        out.append(x % 128 + 128)
        x //= 128
    out.append(x)
    return bytes(out)


def hpack(headers):
    """Literal header fields without indexing, new names, no Huffman."""
    out = bytearray()
    for name, value in headers:
        out += b'\x00' + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value
    return bytes(out)


def hpack_indexed_literal(name, value):
    """A literal field with a new name, added to the decoder's dynamic table."""
    return b'\x40' + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def peak_rss_kib(pid):
    """VmHWM of a process (its peak resident set so far), in KiB."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    return -1


def request_headers(path=b'/bidistream.v1.Pipeline/Process', extra=()):
    return hpack([(b':method', b'POST'), (b':scheme', b'http'), (b':path', path), (b':authority', b'localhost'),
                  (b'content-type', b'application/grpc'), (b'te', b'trailers'), *extra])


class Conn:
    """One raw HTTP/2 client connection."""

    def __init__(self, addr):
        host, port = addr.rsplit(':', 1)
        self.s = socket.create_connection((host, int(port)), timeout=10)
        self.buf = b''
        self.closed = False  # the server closed the connection (frames_until_close)

    def send(self, data):
        try:
            self.s.sendall(data)
            return True
        except OSError:  # the server closed first: that is an answer too
            return False

    def start(self):
        self.send(PREFACE + h2frame(SETTINGS, 0, 0, b''))

    def frames_until_close(self, deadline_s=10):
        """Every frame the server sends until it closes (or the deadline)."""
        return self.frames_until(lambda frames: False, deadline_s)

    def frames_until(self, done, deadline_s=10):
        """Frames the server sends until done(frames so far), it closes, or the deadline."""
        frames, end = [], time.monotonic() + deadline_s
        while time.monotonic() < end and not done(frames):
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                self.closed = True
                break
            self.buf += chunk
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], 'big')
                if len(self.buf) < 9 + n:
                    break
                ftype, flags = self.buf[3], self.buf[4]
                sid = int.from_bytes(self.buf[5:9], 'big') & 0x7FFFFFFF
                frames.append((ftype, flags, sid, self.buf[9:9 + n]))
                self.buf = self.buf[9 + n:]
        return frames

    def close(self):
        self.s.close()


def goaway_code(frames):
    for ftype, _, _, payload in frames:
        if ftype == GOAWAY and len(payload) >= 8:
            return int.from_bytes(payload[4:8], 'big')
    return None


class Floods(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server('--shards', '2')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    def assert_still_serving(self):
        """A well-behaved stream on another connection gets every reply in order."""
        frames = [g.frame('k', i, b'x%d' % i) for i in range(1, 6)]
        got = [g.unframe(r)['seq'] for r in g.process(self.ch)(iter(frames), timeout=30)]
        self.assertEqual(got, [1, 2, 3, 4, 5])
        self.assertIsNone(self.srv.proc.poll(), 'the server died')

    def flood(self, data, want_codes):
        c = Conn(self.srv.addr)
        c.start()
        c.send(data)
        frames = c.frames_until_close()
        c.close()
        code = goaway_code(frames)
        self.assertIn(code, want_codes, 'GOAWAY code %r; frames %r' % (code, [f[0] for f in frames][:20]))
        self.assert_still_serving()

    def test_rapid_reset_flood_gets_goaway(self):
        hdr = request_headers()
        burst = b''.join(h2frame(HEADERS, END_HEADERS, sid, hdr) + h2frame(RST_STREAM, 0, sid, struct.pack('>I', 8))
                         for sid in range(1, 2 * 4000, 2))
        self.flood(burst, (ENHANCE_YOUR_CALM, PROTOCOL_ERROR))

    def test_continuation_flood_gets_goaway(self):
        hdr = request_headers()
        pad = hpack([(b'x-pad', b'a' * 1000)])
        # Never ends its header block: cut off by nghttp2's CONTINUATION
        # limit long before 3 MB of headers are buffered.
        self.flood(h2frame(HEADERS, 0, 1, hdr) + b''.join(h2frame(CONTINUATION, 0, 1, pad) for _ in range(3000)),
                   (ENHANCE_YOUR_CALM, PROTOCOL_ERROR))

    def test_settings_flood_gets_enhance_your_calm(self):
        self.flood(b''.join(h2frame(SETTINGS, 0, 0, b'') for _ in range(20000)), (ENHANCE_YOUR_CALM,))

    def test_ping_flood_gets_enhance_your_calm(self):
        self.flood(b''.join(h2frame(PING, 0, 0, b'12345678') for _ in range(20000)), (ENHANCE_YOUR_CALM,))

    def test_padding_only_data_flood_gets_enhance_your_calm(self):
        padded = b'\x04' + b'\0' * 4  # Pad Length 4, no data
        self.flood(h2frame(HEADERS, END_HEADERS, 1, request_headers()) +
                   b''.join(h2frame(DATA, 0x8, 1, padded) for _ in range(5000)), (ENHANCE_YOUR_CALM,))

    def test_huge_header_list_gets_431_and_the_connection_keeps_working(self):
        big = request_headers(extra=[(b'x-big-%d' % i, b'v' * 4000) for i in range(24)])  # ~96 KB
        chunks = [big[i:i + 16000] for i in range(0, len(big), 16000)]
        c = Conn(self.srv.addr)
        c.start()
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            c.send(h2frame(HEADERS if i == 0 else CONTINUATION, (END_HEADERS if last else 0) |
                           (END_STREAM if i == 0 else 0), 1, chunk))
        # then a normal request on the same connection
        msg = g.frame('k', 7, b'z')
        c.send(h2frame(HEADERS, END_HEADERS, 3, request_headers()) +
               h2frame(DATA, END_STREAM, 3, b'\0' + struct.pack('>I', len(msg)) + msg))
        frames = c.frames_until_close(deadline_s=3)
        c.close()
        first = [f for f in frames if f[2] == 1 and f[0] == HEADERS]
        self.assertTrue(first and b'431' in first[0][3] and first[0][1] & END_STREAM, frames)
        self.assertIsNone(goaway_code(frames), 'the connection survives a refused stream')
        replies = b''.join(f[3] for f in frames if f[2] == 3 and f[0] == DATA)
        self.assertEqual(g.unframe(replies[5:])['seq'], 7)
        self.assert_still_serving()

    def test_hpack_bomb_gets_enhance_your_calm_at_once(self):
        # 40 streams of 12,000 one-byte references to one 4 KiB dynamic table
        # entry: ~470 KiB on the wire that would decode to ~1.9 GB of header
        # values. The server stops at the first block's decoded bound.
        entry = hpack_indexed_literal(b'x-b', b'b' * (4096 - 32 - 3))  # fills the 4 KiB table
        refs = b'\xbe' * 12000  # index 62: the newest dynamic entry
        bomb = b''.join(h2frame(HEADERS, END_HEADERS | END_STREAM, sid,
                                request_headers() + (entry if sid == 1 else b'') + refs)
                        for sid in range(1, 81, 2))
        pid = self.srv.proc.pid
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        c = Conn(self.srv.addr)
        c.start()
        c.send(bomb)
        frames = c.frames_until_close()
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        c.close()
        sys.stderr.write('hpack bomb: %d bytes sent, connection ended after %.3f s, server CPU %.3f s, '
                         'server peak RSS %d KiB\n' % (len(PREFACE) + 9 + len(bomb), elapsed, cpu, peak_rss_kib(pid)))
        self.assertEqual(goaway_code(frames), ENHANCE_YOUR_CALM, [f[0] for f in frames][:20])
        self.assertTrue(c.closed, 'the server closed the connection')
        self.assertFalse([f for f in frames if f[0] == HEADERS], 'no call was answered')
        self.assert_still_serving()

    def test_provoked_resets_get_enhance_your_calm(self):
        # "MadeYouReset": each stream carries a message, then a prefix with the
        # compressed flag and no grpc-encoding, so the server ends it with
        # INTERNAL at once and the client opens the next one.
        # Batches stay under MAX_CONCURRENT_STREAMS and each waits for its
        # answers, so no stream is refused and no frame is invalid: only the
        # resets count.
        hdr = request_headers()
        msg = g.frame('k', 1, b'w')
        good = b'\0' + struct.pack('>I', len(msg)) + msg
        bad = b'\1' + struct.pack('>I', 1) + b'z'
        c = Conn(self.srv.addr)
        c.start()
        frames, sid, batch = [], 1, 100
        while sid < 2 * 3000 and goaway_code(frames) is None and not c.closed:
            sids = range(sid, sid + 2 * batch, 2)
            sid += 2 * batch
            c.send(b''.join(h2frame(HEADERS, END_HEADERS, s, hdr) + h2frame(DATA, 0, s, good) +
                            h2frame(DATA, 0, s, bad) for s in sids))
            last = sids[-1]
            got = c.frames_until(lambda fs: any(f[0] == GOAWAY or (f[0] == RST_STREAM and f[2] == last)
                                                for f in fs))
            frames += got
            if not any(f[2] == last or f[0] == GOAWAY for f in got):
                break  # no answer within the deadline: the assertions below say so
        frames += c.frames_until_close()
        c.close()
        answered = sum(1 for f in frames if f[0] == RST_STREAM)
        sys.stderr.write('provoked resets: %d streams answered before GOAWAY %r, server peak RSS %d KiB\n'
                         % (answered, goaway_code(frames), peak_rss_kib(self.srv.proc.pid)))
        self.assertEqual(goaway_code(frames), ENHANCE_YOUR_CALM, '%d streams answered' % answered)
        self.assertLess(answered, 1000)
        self.assert_still_serving()

    def test_bad_preface_is_closed(self):
        c = Conn(self.srv.addr)
        c.send(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n' + b'\0' * 100)
        c.frames_until_close(deadline_s=5)
        c.close()
        self.assert_still_serving()

    def test_client_vanishing_mid_message_leaves_the_server_serving(self):
        for _ in range(20):
            c = Conn(self.srv.addr)
            c.start()
            msg = g.frame('k', 1, b'y' * 1000)
            grpc_msg = b'\0' + struct.pack('>I', len(msg)) + msg
            c.send(h2frame(HEADERS, END_HEADERS, 1, request_headers()) + h2frame(DATA, 0, 1, grpc_msg[:500]))
            c.close()
        self.assert_still_serving()


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
