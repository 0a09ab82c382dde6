#!/usr/bin/python3
"""grpc.testing.TestService (docs/SERVICE.md) against an independent gRPC client.

Complements the Interop group of test_grpcio.py (the interop client's
empty_unary, large_unary, client/server streaming, ping_pong, empty_stream,
status_code_and_message, unimplemented_method, timeout_on_sleeping_server)
with what it leaves out: HalfDuplexCall, interval_us timing (and that waiting
never blocks a core), status echo on every method that has it, every status
code and special_status_message, malformed protobuf -> INTERNAL on each
method, an empty client stream, concurrent client streams, true ping-pong,
cancel_after_begin / cancel_after_first_response, unimplemented_service,
large payloads both ways, custom_metadata, the interop client's
client_compressed_unary / _streaming (the probe: expect_compressed on an
uncompressed request -> INVALID_ARGUMENT; then compressed requests in gzip and
deflate, and a stream with one message compressed and the next not) and
server_compressed_unary / _streaming (the compressed flag on the wire exactly
on the responses that ask for it, a client that does not take gzip getting
identity), an unknown grpc-encoding UNIMPLEMENTED with what the server takes,
a compressed flag without grpc-encoding INTERNAL (test_compress.py has the
rest of compression: Process, the flag, zip bombs). Then what a hostile client must not
get (issue 8): a few KB of request asking for GBs of responses (refused past
the per-request bounds; paced, so a client that never reads makes the server
hold about one response; peak RSS measured and printed), and response streams
whose wait outlives a cancelled call. Every server here runs with --interop:
without it TestService is UNIMPLEMENTED (test_grpcio.py).

The client is Debian's python3-grpcio (/usr/bin/python3); messages are
encoded by hand with the field numbers of grpc-proto's
grpc/testing/messages.proto; the Server helper comes from test_grpcio.py.
Prints "N passed, N failed" last.

usage: test_interop.py PATH/TO/bidistreamd [test-name-substring]
"""
import ctypes
import ctypes.util
import os
import queue
import socket
import struct
import sys
import threading
import time
import unittest
import zlib

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402  (Server, varint, parse_fields, ...)
import test_h2_floods as f  # noqa: E402  (raw HTTP/2 frames)

T = '/grpc.testing.TestService/'
fld, fvar, parse_fields, payload_len = g.fld, g.fvar, g.parse_fields, g.payload_len


def payload(n):
    """Payload{type: COMPRESSABLE, body: n zero bytes}."""
    return fld(2, bytes(n))


def echo_status(code, message):
    return fvar(1, code) + fld(2, message.encode())


def simple_request(response_size=0, payload_size=None, status=None, extra=b''):
    b = fvar(1, 0) + fvar(2, response_size)
    if payload_size is not None:
        b += fld(3, payload(payload_size))
    if status is not None:
        b += fld(7, status)
    return b + extra


def out_request(params, status=None, payload_size=None):
    """StreamingOutputCallRequest; params = [(size, interval_us)]."""
    b = b''.join(fld(2, fvar(1, size) + (fvar(2, us) if us else b'')) for size, us in params)
    if payload_size is not None:
        b += fld(3, payload(payload_size))
    if status is not None:
        b += fld(7, status)
    return b


def in_request(n):
    return fld(1, payload(n))


def body(msg):
    """Payload.body of a SimpleResponse / StreamingOutputCallResponse."""
    p = parse_fields(msg).get(1, [b''])[0]
    return parse_fields(p).get(2, [b''])[0]


def ident(x):
    return x


def bool_value(v):
    """grpc.testing.BoolValue{value: v}."""
    return fvar(1, 1 if v else 0)


ECHO_INITIAL = ('x-grpc-test-echo-initial', 'test_initial_metadata_value')
ECHO_TRAILING = ('x-grpc-test-echo-trailing-bin', b'\xab\xab\xab')


class _Nv(ctypes.Structure):
    _fields_ = [('name', ctypes.c_void_p), ('value', ctypes.c_void_p), ('namelen', ctypes.c_size_t),
                ('valuelen', ctypes.c_size_t), ('flags', ctypes.c_uint8)]


class Hpack:
    """HPACK decoding through libnghttp2 (ctypes): the server's header blocks
    use Huffman codes and its dynamic table."""

    def __init__(self):
        self.lib = ctypes.CDLL(ctypes.util.find_library('nghttp2') or 'libnghttp2.so.14')
        self.lib.nghttp2_hd_inflate_hd2.restype = ctypes.c_ssize_t
        self.lib.nghttp2_hd_inflate_hd2.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Nv),
                                                    ctypes.POINTER(ctypes.c_int), ctypes.c_char_p,
                                                    ctypes.c_size_t, ctypes.c_int]
        self.inf = ctypes.c_void_p()
        assert self.lib.nghttp2_hd_inflate_new(ctypes.byref(self.inf)) == 0

    def decode(self, block):
        out, nv, flags = [], _Nv(), ctypes.c_int()
        while True:
            n = self.lib.nghttp2_hd_inflate_hd2(self.inf, ctypes.byref(nv), ctypes.byref(flags), block,
                                                len(block), 1)
            assert n >= 0, 'HPACK error %d' % n
            block = block[n:]
            if flags.value & 0x02:  # NGHTTP2_HD_INFLATE_EMIT
                out.append((ctypes.string_at(nv.name, nv.namelen).decode(),
                            ctypes.string_at(nv.value, nv.valuelen).decode()))
            if flags.value & 0x01:  # NGHTTP2_HD_INFLATE_FINAL
                self.lib.nghttp2_hd_inflate_end_headers(self.inf)
                return out
            if n == 0 and not block:
                return out

    def close(self):
        self.lib.nghttp2_hd_inflate_del(self.inf)


def raw_call(addr, path, grpc_msg, extra_headers=(), timeout=20):
    """One request over a raw HTTP/2 connection: HEADERS, then |grpc_msg| (the
    framed messages, prefixes included) in DATA frames of at most 16 KiB as
    the server's windows allow, the last with END_STREAM; the response's DATA
    is credited back as it comes. Returns every header field the server sent
    on the stream (a dict, and the list), the DATA bytes, and whether it
    ended the stream."""
    c = f.Conn(addr)
    c.start()
    c.s.settimeout(0.05)
    c.send(f.h2frame(f.HEADERS, f.END_HEADERS, 1, f.request_headers(path.encode(), extra_headers)))
    hp, fields, data, ended, buf = Hpack(), [], b'', False, b''
    conn_win, stream_win, init_win, off, sent_all = 65535, 65535, 65535, 0, False
    deadline = time.monotonic() + timeout
    while not ended and time.monotonic() < deadline:
        while not sent_all:  # what the windows allow
            n = min(16384, len(grpc_msg) - off, conn_win, stream_win)
            if n <= 0 and off < len(grpc_msg):
                break
            sent_all = off + n == len(grpc_msg)
            c.send(f.h2frame(f.DATA, f.END_STREAM if sent_all else 0, 1, grpc_msg[off:off + n]))
            off, conn_win, stream_win = off + n, conn_win - n, stream_win - n
        try:
            chunk = c.s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], 'big'):
            n = int.from_bytes(buf[:3], 'big')
            ftype, flags, sid, payload = buf[3], buf[4], int.from_bytes(buf[5:9], 'big') & 0x7FFFFFFF, buf[9:9 + n]
            buf = buf[9 + n:]
            if ftype == f.SETTINGS and not flags & f.ACK:
                for i in range(0, len(payload) - 5, 6):
                    ident, value = struct.unpack('>HI', payload[i:i + 6])
                    if ident == 4:  # SETTINGS_INITIAL_WINDOW_SIZE moves the stream's window
                        stream_win += value - init_win
                        init_win = value
                c.send(f.h2frame(f.SETTINGS, f.ACK, 0, b''))
            if ftype == f.WINDOW_UPDATE:
                inc = int.from_bytes(payload[:4], 'big') & 0x7FFFFFFF
                if sid == 0:
                    conn_win += inc
                elif sid == 1:
                    stream_win += inc
            if ftype == f.HEADERS:  # every block, in order: HPACK's table (the server sends no CONTINUATION here)
                block = hp.decode(payload)
                if sid == 1:
                    fields += block
            if ftype == f.DATA and sid == 1:
                data += payload
                if payload:
                    c.send(f.h2frame(f.WINDOW_UPDATE, 0, 0, struct.pack('>I', len(payload))) +
                           f.h2frame(f.WINDOW_UPDATE, 0, 1, struct.pack('>I', len(payload))))
            if sid == 1 and ftype in (f.HEADERS, f.DATA) and flags & f.END_STREAM:
                ended = True
            if sid == 1 and ftype == f.RST_STREAM:
                ended = True
    c.close()
    hp.close()
    return dict(fields), fields, data, ended


def grpc_frame(msg, compressed=False):
    """A Length-Prefixed-Message."""
    return (b'\1' if compressed else b'\0') + struct.pack('>I', len(msg)) + msg


def gzip(b, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(b) + c.flush()


def unframe_all(data, encoding=None):
    """The messages of a response body: [(compressed flag, message decompressed)]."""
    out, i = [], 0
    while i < len(data):
        flag, n = data[i], struct.unpack('>I', data[i + 1:i + 5])[0]
        m = data[i + 5:i + 5 + n]
        if flag == 1:
            assert encoding in ('gzip', 'deflate'), 'compressed message with grpc-encoding %r' % encoding
            m = zlib.decompress(m, 31 if encoding == 'gzip' else 15)
        out.append((flag, m))
        i += 5 + n
    assert i == len(data), 'a cut message'
    return out


ACCEPT_ALL = [(b'grpc-accept-encoding', b'identity,deflate,gzip')]


class TestService(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server('--shards', '2', '--interop')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    def unary(self, method, path=None):
        return self.ch.unary_unary(path or T + method, request_serializer=ident, response_deserializer=ident)

    def server_stream(self, method):
        return self.ch.unary_stream(T + method, request_serializer=ident, response_deserializer=ident)

    def client_stream(self, method):
        return self.ch.stream_unary(T + method, request_serializer=ident, response_deserializer=ident)

    def bidi(self, method):
        return g.raw(self.ch, T + method)

    def assertStatus(self, fn, code, details=None):
        with self.assertRaises(grpc.RpcError) as e:
            fn()
        self.assertEqual(e.exception.code(), code, e.exception.details())
        if details is not None:
            self.assertEqual(e.exception.details(), details)
        return e.exception

    # ---- EmptyCall / UnaryCall ---------------------------------------------------------

    def test_empty_call_and_malformed_empty_is_internal(self):
        self.assertEqual(self.unary('EmptyCall')(b'', timeout=10), b'')
        # unknown fields are skipped, as by any protobuf parser
        self.assertEqual(self.unary('EmptyCall')(fvar(5, 1), timeout=10), b'')
        self.assertStatus(lambda: self.unary('EmptyCall')(b'\x0a\x05ab', timeout=10), grpc.StatusCode.INTERNAL)
        self.assertEqual(self.unary('EmptyCall')(b'', timeout=10), b'')

    def test_unary_response_is_response_size_zero_bytes(self):
        for size in (0, 1, 271828, 314159):
            resp = self.unary('UnaryCall')(simple_request(size, payload_size=271828), timeout=30)
            self.assertEqual(body(resp), bytes(size))

    def test_unary_ignores_fill_username_oauth_scope_and_unknown_fields(self):
        extra = fvar(4, 1) + fvar(5, 1) + g.varint(999 << 3) + g.varint(7)
        resp = self.unary('UnaryCall')(simple_request(10, extra=extra), timeout=10)
        self.assertEqual(body(resp), bytes(10))

    def test_unary_echoes_every_status_code_and_message(self):
        for code in grpc.StatusCode:
            n = code.value[0]
            if n in (0, 1):  # CANCELLED: its own test below
                continue
            req = simple_request(100, status=echo_status(n, 'status %d' % n))
            self.assertStatus(lambda: self.unary('UnaryCall')(req, timeout=10), code, 'status %d' % n)
        # response_status with code 0 is just OK
        resp = self.unary('UnaryCall')(simple_request(3, status=echo_status(0, 'ignored')), timeout=10)
        self.assertEqual(body(resp), bytes(3))

    def test_unary_echoes_cancelled(self):
        # A real gRPC server sends grpc-status 1 here; not a silent OK without a response.
        req = simple_request(100, status=echo_status(1, 'status 1'))
        self.assertStatus(lambda: self.unary('UnaryCall')(req, timeout=10), grpc.StatusCode.CANCELLED, 'status 1')

    def test_special_status_message(self):
        msg = '\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n'
        req = simple_request(status=echo_status(2, msg))
        self.assertStatus(lambda: self.unary('UnaryCall')(req, timeout=10), grpc.StatusCode.UNKNOWN, msg)

    def test_unary_malformed_is_internal_and_the_channel_still_works(self):
        for bad in (b'\xff', b'\x1a\x10short', fld(7, b'\x08')):
            self.assertStatus(lambda: self.unary('UnaryCall')(bad, timeout=10), grpc.StatusCode.INTERNAL)
        self.assertEqual(body(self.unary('UnaryCall')(simple_request(5), timeout=10)), bytes(5))

    # ---- StreamingOutputCall ---------------------------------------------------------------

    def test_server_streaming_sizes_in_order_with_zero_bodies(self):
        sizes = [0, 1, 65536, 7, 100000]
        got = list(self.server_stream('StreamingOutputCall')(out_request([(n, 0) for n in sizes]), timeout=30))
        self.assertEqual([body(r) for r in got], [bytes(n) for n in sizes])

    def test_server_streaming_every_response_after_one_over_256_kib(self):
        # one handler writes more than the server's per-stream high water at once
        sizes = [0, 1, 271828, 7, 65536]
        call = self.server_stream('StreamingOutputCall')(out_request([(n, 0) for n in sizes]), timeout=30)
        got = [body(r) for r in call]
        self.assertEqual([len(b) for b in got], sizes, 'responses lost, call ended %s' % call.code())
        self.assertEqual(got, [bytes(n) for n in sizes])
        call = self.bidi('FullDuplexCall')(iter([out_request([(n, 0) for n in sizes])]), timeout=30)
        self.assertEqual([len(body(r)) for r in call], sizes, 'responses lost, call ended %s' % call.code())

    def test_server_streaming_no_parameters_is_ok_with_no_responses(self):
        self.assertEqual(list(self.server_stream('StreamingOutputCall')(b'', timeout=10)), [])

    def test_server_streaming_intervals_are_honoured_and_block_nothing(self):
        srv = g.Server('--shards', '1', '--interop')
        try:
            with srv.channel() as ch:
                slow = ch.unary_stream(T + 'StreamingOutputCall', request_serializer=ident,
                                       response_deserializer=ident)
                fast = ch.unary_unary(T + 'UnaryCall', request_serializer=ident, response_deserializer=ident)
                self.assertEqual(body(fast(simple_request(1), timeout=10)), b'\x00')  # warm up
                stamps = []
                t0 = time.monotonic()

                def run():
                    for r in slow(out_request([(1, 300000), (2, 300000), (3, 300000)]), timeout=30):
                        stamps.append((time.monotonic() - t0, len(body(r))))

                th = threading.Thread(target=run)
                th.start()
                time.sleep(0.1)
                # the one shard keeps serving while the stream waits on its timers
                for _ in range(5):
                    f0 = time.monotonic()
                    self.assertEqual(body(fast(simple_request(4), timeout=10)), bytes(4))
                    self.assertLess(time.monotonic() - f0, 0.2)
                th.join(30)
                self.assertEqual([n for _, n in stamps], [1, 2, 3])
                for i, (at, _) in enumerate(stamps):
                    self.assertGreaterEqual(at, 0.3 * (i + 1) - 0.02, stamps)
                self.assertLess(stamps[-1][0], 3.0, stamps)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_server_streaming_status_after_the_responses(self):
        got = []

        def run():
            req = out_request([(5, 0), (6, 0)], status=echo_status(9, 'after two'))
            for r in self.server_stream('StreamingOutputCall')(req, timeout=10):
                got.append(len(body(r)))

        self.assertStatus(run, grpc.StatusCode.FAILED_PRECONDITION, 'after two')
        self.assertEqual(got, [5, 6])

    def test_server_streaming_malformed_is_internal(self):
        self.assertStatus(lambda: list(self.server_stream('StreamingOutputCall')(b'\x12\x03\x08', timeout=10)),
                          grpc.StatusCode.INTERNAL)

    # ---- StreamingInputCall -----------------------------------------------------------------

    def aggregated(self, resp):
        return parse_fields(resp).get(1, [0])[0]

    def test_client_streaming_empty_stream_is_zero(self):
        self.assertEqual(self.aggregated(self.client_stream('StreamingInputCall')(iter([]), timeout=10)), 0)

    def test_client_streaming_large_and_empty_payloads(self):
        sizes = [271828, 0, 1, 100000, 0]
        resp = self.client_stream('StreamingInputCall')(iter([in_request(n) for n in sizes]), timeout=30)
        self.assertEqual(self.aggregated(resp), sum(sizes))
        # a message without a payload counts as zero
        resp = self.client_stream('StreamingInputCall')(iter([b'', in_request(3)]), timeout=10)
        self.assertEqual(self.aggregated(resp), 3)

    def test_client_streaming_concurrent_streams_keep_separate_sums(self):
        results, errors = {}, []

        def run(i):
            try:
                sizes = [i * 10 + k for k in range(1, 40)]
                resp = self.client_stream('StreamingInputCall')(iter([in_request(n) for n in sizes]), timeout=30)
                results[i] = (self.aggregated(resp), sum(sizes))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 16)
        for got, want in results.values():
            self.assertEqual(got, want)

    def test_client_streaming_answers_only_at_half_close(self):
        q = queue.Queue()

        def reqs():
            while True:
                item = q.get()
                if item is None:
                    return
                yield item

        fut = self.client_stream('StreamingInputCall').future(reqs(), timeout=10)
        q.put(in_request(4))
        q.put(in_request(5))
        time.sleep(0.3)
        self.assertFalse(fut.done(), 'answered before the client half-closed')
        q.put(None)
        self.assertEqual(self.aggregated(fut.result(timeout=10)), 9)

    def test_client_streaming_malformed_is_internal(self):
        self.assertStatus(lambda: self.client_stream('StreamingInputCall')(iter([in_request(1), b'\x0a\x09x']),
                                                                            timeout=10), grpc.StatusCode.INTERNAL)

    def test_cancel_after_begin(self):
        q = queue.Queue()
        fut = self.client_stream('StreamingInputCall').future(iter(q.get, None), timeout=10)
        time.sleep(0.1)
        fut.cancel()
        self.assertTrue(fut.cancelled())
        q.put(None)
        self.assertEqual(self.aggregated(self.client_stream('StreamingInputCall')(iter([in_request(2)]),
                                                                                   timeout=10)), 2)

    # ---- FullDuplexCall / HalfDuplexCall --------------------------------------------------------

    def test_full_duplex_true_ping_pong(self):
        q = queue.Queue()
        call = self.bidi('FullDuplexCall')(iter(q.get, None), timeout=30)
        for out, inp in [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904), (271828, 271828)]:
            q.put(out_request([(out, 0)], payload_size=inp))
            self.assertEqual(body(next(call)), bytes(out))
        q.put(None)
        self.assertEqual(list(call), [])
        self.assertEqual(call.code(), grpc.StatusCode.OK)

    def test_full_duplex_several_responses_per_request_with_intervals(self):
        reqs = [out_request([(1, 0), (2, 50000)]), out_request([(3, 50000)]), out_request([(4, 0), (5, 0)])]
        t0 = time.monotonic()
        got = [len(body(r)) for r in self.bidi('FullDuplexCall')(iter(reqs), timeout=30)]
        self.assertEqual(got, [1, 2, 3, 4, 5])
        self.assertGreaterEqual(time.monotonic() - t0, 0.09)

    def test_full_duplex_status_ends_the_stream_after_earlier_responses(self):
        got = []

        def run():
            reqs = [out_request([(1, 0)]), out_request([(2, 0)], status=echo_status(8, 'no more')),
                    out_request([(3, 0)])]
            for r in self.bidi('FullDuplexCall')(iter(reqs), timeout=10):
                got.append(len(body(r)))

        self.assertStatus(run, grpc.StatusCode.RESOURCE_EXHAUSTED, 'no more')
        self.assertEqual(got, [1, 2])

    def test_full_duplex_malformed_is_internal(self):
        self.assertStatus(lambda: list(self.bidi('FullDuplexCall')(iter([b'\x12']), timeout=10)),
                          grpc.StatusCode.INTERNAL)

    def test_cancel_after_first_response(self):
        q = queue.Queue()
        call = self.bidi('FullDuplexCall')(iter(q.get, None), timeout=30)
        q.put(out_request([(31415, 0)], payload_size=27182))
        self.assertEqual(len(body(next(call))), 31415)
        call.cancel()
        q.put(None)
        self.assertStatus(lambda: list(call), grpc.StatusCode.CANCELLED)
        self.assertEqual(body(self.unary('UnaryCall')(simple_request(2), timeout=10)), bytes(2))

    def test_half_duplex_answers_every_request_in_order(self):
        reqs = [out_request([(n, 0), (n + 1, 0)]) for n in (10, 20, 30)]
        got = [len(body(r)) for r in self.bidi('HalfDuplexCall')(iter(reqs), timeout=30)]
        self.assertEqual(got, [10, 11, 20, 21, 30, 31])
        self.assertEqual(list(self.bidi('HalfDuplexCall')(iter([]), timeout=10)), [])

    def test_half_duplex_status_echo(self):
        self.assertStatus(lambda: list(self.bidi('HalfDuplexCall')(
            iter([out_request([(1, 0)], status=echo_status(3, 'half'))]), timeout=10)),
            grpc.StatusCode.INVALID_ARGUMENT, 'half')

    # ---- custom_metadata ----------------------------------------------------------------------

    def test_custom_metadata_unary(self):
        # The interop client's custom_metadata case, UnaryCall half.
        resp, call = self.unary('UnaryCall').with_call(simple_request(314159, payload_size=271828),
                                                       metadata=(ECHO_INITIAL, ECHO_TRAILING), timeout=30)
        self.assertEqual(body(resp), bytes(314159))
        self.assertIn(ECHO_INITIAL, call.initial_metadata())
        self.assertIn(ECHO_TRAILING, call.trailing_metadata())
        self.assertNotIn(ECHO_TRAILING[0], dict(call.initial_metadata()))
        self.assertNotIn(ECHO_INITIAL[0], dict(call.trailing_metadata()))

    def test_custom_metadata_full_duplex(self):
        # ... and the FullDuplexCall half: echoed once, whatever the number of requests.
        reqs = [out_request([(314159, 0)], payload_size=271828), out_request([(5, 0)])]
        call = self.bidi('FullDuplexCall')(iter(reqs), metadata=(ECHO_INITIAL, ECHO_TRAILING), timeout=30)
        self.assertEqual([len(body(r)) for r in call], [314159, 5])
        self.assertEqual(call.code(), grpc.StatusCode.OK)
        self.assertEqual([m for m in call.initial_metadata() if m[0].startswith('x-grpc-test')], [ECHO_INITIAL])
        self.assertEqual([m for m in call.trailing_metadata() if m[0].startswith('x-grpc-test')], [ECHO_TRAILING])

    def test_custom_metadata_with_an_error_status_is_still_echoed(self):
        # No response message: one trailers-only HEADERS carries both.
        req = simple_request(10, status=echo_status(9, 'precondition'))
        e = self.assertStatus(lambda: self.unary('UnaryCall')(req, metadata=(ECHO_INITIAL, ECHO_TRAILING), timeout=10),
                              grpc.StatusCode.FAILED_PRECONDITION, 'precondition')
        md = dict(e.initial_metadata()) | dict(e.trailing_metadata())
        self.assertEqual(md.get(ECHO_INITIAL[0]), ECHO_INITIAL[1])
        self.assertEqual(md.get(ECHO_TRAILING[0]), ECHO_TRAILING[1])

    def test_custom_metadata_only_the_echo_headers_and_only_where_asked(self):
        # Other request headers are not echoed; methods outside the case echo nothing.
        resp, call = self.unary('UnaryCall').with_call(simple_request(1), metadata=(('x-other', 'v'),), timeout=10)
        self.assertEqual([m for m in call.initial_metadata() + call.trailing_metadata() if m[0].startswith('x-')], [])
        resp, call = self.unary('EmptyCall').with_call(b'', metadata=(ECHO_INITIAL, ECHO_TRAILING), timeout=10)
        self.assertEqual([m for m in call.initial_metadata() + call.trailing_metadata() if m[0].startswith('x-')], [])
        # A long value (near the 4 KiB capture bound) still makes the round trip.
        long_value = ('x-grpc-test-echo-initial', 'v' * 3000)
        resp, call = self.unary('UnaryCall').with_call(simple_request(1), metadata=(long_value,), timeout=10)
        self.assertIn(long_value, call.initial_metadata())

    # ---- compression: the interop client's client_compressed_* and server_compressed_* ---------

    def test_client_compressed_unary(self):
        expect = simple_request(314159, payload_size=271828, extra=fld(8, bool_value(True)))
        # 1. the feature probe: an uncompressed request expecting compression
        self.assertStatus(lambda: self.unary('UnaryCall')(expect, timeout=30), grpc.StatusCode.INVALID_ARGUMENT)
        # 2. the same request compressed (grpcio: grpc-encoding gzip, compressed flag set), then in deflate
        for comp in (grpc.Compression.Gzip, grpc.Compression.Deflate):
            self.assertEqual(body(self.unary('UnaryCall')(expect, compression=comp, timeout=30)), bytes(314159), comp)
        # 3. uncompressed, not expecting compression
        plain = simple_request(314159, payload_size=271828, extra=fld(8, bool_value(False)))
        self.assertEqual(body(self.unary('UnaryCall')(plain, timeout=30)), bytes(314159))

    def test_client_compressed_streaming(self):
        # 1. the probe: StreamingInputCallRequest.expect_compressed (field 2) on an uncompressed message
        probe = in_request(27182) + fld(2, bool_value(True))
        self.assertStatus(lambda: self.client_stream('StreamingInputCall')(iter([probe]), timeout=30),
                          grpc.StatusCode.INVALID_ARGUMENT)
        # 2. + 3. one stream: the first message compressed (expecting it), the second not
        second = in_request(45904) + fld(2, bool_value(False))
        h, fields, data, ended = raw_call(self.srv.addr, T + 'StreamingInputCall',
                                          grpc_frame(gzip(probe), True) + grpc_frame(second),
                                          [(b'grpc-encoding', b'gzip')])
        self.assertTrue(ended)
        self.assertEqual(h.get('grpc-status'), '0', fields)
        self.assertEqual([self.aggregated(m) for _, m in unframe_all(data, h.get('grpc-encoding'))], [73086])
        # ... and through grpcio, every message compressed
        resp = self.client_stream('StreamingInputCall')(iter([probe, second]), compression=grpc.Compression.Gzip,
                                                        timeout=30)
        self.assertEqual(self.aggregated(resp), 73086)

    def test_server_compressed_unary(self):
        for want in (True, False):
            req = simple_request(314159, payload_size=271828, extra=fld(6, bool_value(want)))
            # grpcio decompresses what comes compressed
            self.assertEqual(body(self.unary('UnaryCall')(req, timeout=30)), bytes(314159))
            # on the wire: the compressed flag exactly when asked
            h, fields, data, ended = raw_call(self.srv.addr, T + 'UnaryCall', grpc_frame(req), ACCEPT_ALL)
            self.assertTrue(ended)
            self.assertEqual(h.get('grpc-status'), '0', fields)
            msgs = unframe_all(data, h.get('grpc-encoding'))
            self.assertEqual([flag for flag, _ in msgs], [1 if want else 0], fields)
            self.assertEqual(body(msgs[0][1]), bytes(314159))
            if want:
                self.assertEqual(h.get('grpc-encoding'), 'gzip', fields)
                self.assertLess(len(data), 10000, 'compressed: 314159 zero bytes take a few hundred')

    def test_server_compressed_streaming(self):
        # ResponseParameters{size, compressed}: the first response compressed, the second not
        req = b''.join(fld(2, fvar(1, n) + fld(3, bool_value(c))) for n, c in ((31415, True), (92653, False)))
        got = list(self.server_stream('StreamingOutputCall')(req, timeout=30))
        self.assertEqual([len(body(r)) for r in got], [31415, 92653])
        for method in ('StreamingOutputCall', 'FullDuplexCall'):
            h, fields, data, ended = raw_call(self.srv.addr, T + method, grpc_frame(req), ACCEPT_ALL)
            self.assertTrue(ended, method)
            self.assertEqual(h.get('grpc-status'), '0', fields)
            self.assertEqual(h.get('grpc-encoding'), 'gzip', fields)
            msgs = unframe_all(data, 'gzip')
            self.assertEqual([flag for flag, _ in msgs], [1, 0], method)
            self.assertEqual([body(m) for _, m in msgs], [bytes(31415), bytes(92653)])

    def test_a_client_that_does_not_take_gzip_gets_identity(self):
        # response_compressed asks for gzip; this client takes identity only (or deflate only)
        req = simple_request(314159, extra=fld(6, bool_value(True)))
        for accept in ([(b'grpc-accept-encoding', b'identity')], [(b'grpc-accept-encoding', b'deflate')], []):
            h, fields, data, ended = raw_call(self.srv.addr, T + 'UnaryCall', grpc_frame(req), accept)
            self.assertTrue(ended)
            self.assertEqual(h.get('grpc-status'), '0', fields)
            self.assertNotIn('grpc-encoding', h, fields)
            self.assertEqual([(flag, len(body(m))) for flag, m in unframe_all(data)], [(0, 314159)], accept)
        # a client that sent its request in gzip takes gzip, whatever it lists
        h, fields, data, ended = raw_call(self.srv.addr, T + 'UnaryCall', grpc_frame(gzip(req), True),
                                          [(b'grpc-encoding', b'gzip')])
        self.assertEqual(h.get('grpc-encoding'), 'gzip', fields)
        self.assertEqual([flag for flag, _ in unframe_all(data, 'gzip')], [1])

    def test_unknown_encoding_is_unimplemented_and_what_we_take_is_advertised(self):
        msg = simple_request(1)
        h, _, _, ended = raw_call(self.srv.addr, T + 'UnaryCall', grpc_frame(msg, True),
                                  [(b'grpc-encoding', b'snappy')])
        self.assertTrue(ended)
        self.assertEqual((h.get(':status'), h.get('grpc-status'), h.get('grpc-accept-encoding')),
                         ('200', '12', 'identity,deflate,gzip'), h)
        self.assertIn('grpc-encoding', h.get('grpc-message', ''))
        self.assertEqual(body(self.unary('UnaryCall')(simple_request(3), timeout=10)), bytes(3))

    def test_compressed_flag_without_grpc_encoding_is_internal_everywhere(self):
        # A compressed-flag message with no grpc-encoding: a clear INTERNAL, never a misparse.
        for path, msg in ((T + 'UnaryCall', simple_request(1)), (T + 'FullDuplexCall', out_request([(1, 0)])),
                          (g.PROCESS, g.frame('k', 1, b'x'))):
            h, fields, data, ended = raw_call(self.srv.addr, path, grpc_frame(gzip(msg), True))
            self.assertTrue(ended, path)
            self.assertEqual(data, b'', '%s: no response message' % path)
            self.assertEqual(h.get('grpc-status'), '13', '%s: %r' % (path, fields))
            self.assertIn('compressed', h.get('grpc-message', ''))
            self.assertEqual(h.get('grpc-accept-encoding'), 'identity,deflate,gzip', fields)
        self.assertEqual(body(self.unary('UnaryCall')(simple_request(3), timeout=10)), bytes(3))
        self.assertIsNone(self.srv.proc.poll(), 'the server died')

    def test_uncompressed_raw_call_has_the_echo_and_accept_encoding_headers(self):
        # The same raw client on an ordinary call: the response HEADERS carry
        # grpc-accept-encoding and the echoed metadata, the trailers the -bin echo.
        msg = simple_request(2)
        h, fields, data, ended = raw_call(self.srv.addr, T + 'UnaryCall', grpc_frame(msg),
                                          [(b'x-grpc-test-echo-initial', b'abc'),
                                           (b'x-grpc-test-echo-trailing-bin', b'q6ur')])
        self.assertTrue(ended)
        self.assertEqual(body(data[5:]), bytes(2))
        self.assertEqual(h.get('grpc-status'), '0', fields)
        self.assertEqual(h.get('grpc-accept-encoding'), 'identity,deflate,gzip', fields)
        self.assertNotIn('grpc-encoding', h, 'nothing asked for compression')
        self.assertEqual(h.get('x-grpc-test-echo-initial'), 'abc')
        self.assertEqual(h.get('x-grpc-test-echo-trailing-bin'), 'q6ur', 'the wire value, as is')

    # ---- unimplemented -------------------------------------------------------------------------

    def test_unimplemented_call_and_unimplemented_service(self):
        self.assertStatus(lambda: self.unary('UnimplementedCall')(b'', timeout=10), grpc.StatusCode.UNIMPLEMENTED)
        self.assertStatus(lambda: self.unary(None, '/grpc.testing.UnimplementedService/UnimplementedCall')(
            b'', timeout=10), grpc.StatusCode.UNIMPLEMENTED)



# TSan keeps ~4 bytes of shadow per heap byte: peak-RSS bounds scale with it.
RSS_SCALE = 5 if os.environ.get('BDS_SANITIZE') == 'tsan' else 1


def vm_hwm_kib(pid):
    """The process's peak resident set (VmHWM) in KiB."""
    with open('/proc/%d/status' % pid) as st:
        for line in st:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    return 0


class Amplification(unittest.TestCase):
    """A few KB of StreamingOutputCallRequest must not make the server hold
    GBs: each request may ask for at most 1000 responses and 64 MiB by default
    (--interop-responses-max, --interop-response-bytes-max; RESOURCE_EXHAUSTED
    past either), and the responses are made one at a
    time, the next once the previous has left, so a client that never reads
    holds about one response in the server. Peak RSS (VmHWM) is measured
    around each attack and printed; another connection is served meanwhile."""

    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server('--shards', '1', '--interop')

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def served_elsewhere(self):
        with self.srv.channel() as ch:
            fast = ch.unary_unary(T + 'UnaryCall', request_serializer=ident, response_deserializer=ident)
            self.assertEqual(body(fast(simple_request(3), timeout=10)), bytes(3))

    def assertRefused(self, call, details):
        with self.assertRaises(grpc.RpcError) as e:
            list(call)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.exception.details())
        self.assertIn(details, e.exception.details())

    def test_thousand_entries_of_4_mib_are_refused_without_memory(self):
        req = out_request([(4 << 20, 0)] * 1000)  # ~7 KB asking for ~4 GiB
        self.assertLess(len(req), 8192)
        hwm0 = vm_hwm_kib(self.srv.proc.pid)
        with self.srv.channel() as ch:
            server_stream = ch.unary_stream(T + 'StreamingOutputCall', request_serializer=ident,
                                            response_deserializer=ident)
            self.assertRefused(server_stream(req, timeout=30), 'more than 67108864 bytes')
            self.assertRefused(g.raw(ch, T + 'FullDuplexCall')(iter([req]), timeout=30), 'more than 67108864 bytes')
            self.assertRefused(server_stream(out_request([(0, 0)] * 1001), timeout=30), 'more than 1000 responses')
            # at the bounds (the defaults): served
            self.assertEqual(len(list(server_stream(out_request([(0, 0)] * 1000), timeout=30))), 1000)
            self.served_elsewhere()
            grew = vm_hwm_kib(self.srv.proc.pid) - hwm0
            sys.stderr.write('\n  1000 x 4 MiB request: RESOURCE_EXHAUSTED, VmHWM %d -> %d KiB (+%d KiB)\n'
                             % (hwm0, hwm0 + grew, grew))
            self.assertLess(grew, RSS_SCALE * (32 << 10), 'peak RSS grew by %d KiB' % grew)
            # 16 x 4 MB, near the bytes bound (grpcio takes at most 4 MiB per message)
            self.assertEqual(len(list(server_stream(out_request([(4000000, 0)] * 16), timeout=60))), 16)

    def test_lower_bounds_from_the_flags(self):
        srv = g.Server('--shards', '1', '--interop', '--interop-responses-max', '2',
                       '--interop-response-bytes-max', '1KiB')
        try:
            with srv.channel() as ch:
                server_stream = ch.unary_stream(T + 'StreamingOutputCall', request_serializer=ident,
                                                response_deserializer=ident)
                self.assertRefused(server_stream(out_request([(1, 0)] * 3), timeout=10), 'more than 2 responses')
                self.assertRefused(server_stream(out_request([(600, 0)] * 2), timeout=10), 'more than 1024 bytes')
                self.assertEqual([len(body(r)) for r in server_stream(out_request([(512, 0)] * 2), timeout=10)],
                                 [512, 512])
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_client_that_never_reads_holds_about_one_response(self):
        # 16 x 4 MiB = 64 MiB, within the bounds; the client grants no window,
        # so not one response byte can leave.
        req = out_request([(4 << 20, 0)] * 16)
        msg = b'\0' + struct.pack('>I', len(req)) + req
        hwm0 = vm_hwm_kib(self.srv.proc.pid)
        c = f.Conn(self.srv.addr)
        c.send(f.PREFACE + f.h2frame(f.SETTINGS, 0, 0, struct.pack('>HI', 4, 0)))  # INITIAL_WINDOW_SIZE 0
        c.send(f.h2frame(f.SETTINGS, f.ACK, 0, b''))
        c.send(f.h2frame(f.HEADERS, f.END_HEADERS, 1, f.request_headers((T + 'StreamingOutputCall').encode())) +
               f.h2frame(f.DATA, f.END_STREAM, 1, msg))
        time.sleep(1.5)  # what it would make, it makes now: nothing waits for a timer
        self.served_elsewhere()
        grew = vm_hwm_kib(self.srv.proc.pid) - hwm0
        c.close()
        sys.stderr.write('\n  16 x 4 MiB to a client that never reads: VmHWM %d -> %d KiB (+%d KiB)\n'
                         % (hwm0, hwm0 + grew, grew))
        # all 16 responses held would be 64 MiB and more (146 MiB measured under ASan before the pacing)
        self.assertLess(grew, RSS_SCALE * (32 << 10),
                        'peak RSS grew by %d KiB: responses made ahead of the client' % grew)
        self.served_elsewhere()


class CancelledWork(unittest.TestCase):
    """An interop response stream waiting on a long interval ends with its
    stream: once the client cancels, the stop finds nothing in flight and
    exits 0 (before: the stop waited for the interval, or, with the hard
    stop, abandoned the call and exited 1)."""

    def test_cancelled_interval_leaves_nothing_to_wait_for(self):
        srv = g.Server('--shards', '2', '--grace', '3s', '--interop')
        with srv.channel() as ch:
            req = out_request([(1, 0), (2, 2000000000)])  # the second response 33 min later (int32 µs)
            call = ch.unary_stream(T + 'StreamingOutputCall', request_serializer=ident,
                                   response_deserializer=ident)(req, timeout=60)
            self.assertEqual(body(next(call)), b'\x00')
            call.cancel()
            hold = threading.Event()

            def reqs():
                yield req
                hold.wait(20)
            duplex = g.raw(ch, T + 'FullDuplexCall')(reqs(), timeout=60)
            self.assertEqual(body(next(duplex)), b'\x00')
            duplex.cancel()
            hold.set()
            fast = ch.unary_unary(T + 'UnaryCall', request_serializer=ident, response_deserializer=ident)
            self.assertEqual(body(fast(simple_request(2), timeout=10)), bytes(2))
        self.assertEqual(srv.stop(), 0, 'the stop had work left:\n' + ''.join(srv.err))


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
