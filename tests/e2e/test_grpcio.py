#!/usr/bin/python3
"""End-to-end tests of bidistreamd with an independent gRPC client.

The client is Debian's python3-grpcio (use /usr/bin/python3), written against
SPEC.md only: bidistream.v1.Frame is encoded by hand here (5 fields), the
methods are called through generic stubs. Each test group starts its own
bidistreamd on 127.0.0.1 with an ephemeral port and the flags it needs, and
checks at the end that the server exited 0 on SIGTERM without a sanitizer
report. Prints "N passed, N failed" last.

usage: test_grpcio.py PATH/TO/bidistreamd [test-name-substring[,substring...]]

The server may also be bidistream-grpcpp (adapters/grpcpp: gRPC C++ with the
pipeline in front), which takes bidistreamd's flags: tests/e2e/tests.cmake
runs the groups that test the pipeline (ordering, backpressure, drain)
against it as well.
"""
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

import grpc

SERVER = None
PROCESS = '/bidistream.v1.Pipeline/Process'


def varint(x):
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def frame(key='', seq=0, payload=b'', work_us=0, fail=False):
    b = b''
    if key:
        kb = key.encode()
        b += b'\x0a' + varint(len(kb)) + kb
    if seq:
        b += b'\x10' + varint(seq)
    if payload:
        b += b'\x1a' + varint(len(payload)) + payload
    if work_us:
        b += b'\x20' + varint(work_us)
    if fail:
        b += b'\x28\x01'
    return b


def read_varint(b, i):
    x = s = 0
    while True:
        c = b[i]
        i += 1
        x |= (c & 0x7F) << s
        s += 7
        if not c & 0x80:
            return x, i


def unframe(b):
    """Frame bytes -> dict(key, seq, payload, work_us, fail)."""
    out = {'key': '', 'seq': 0, 'payload': b'', 'work_us': 0, 'fail': False, 'pressure': False}
    names = {1: 'key', 2: 'seq', 3: 'payload', 4: 'work_us', 5: 'fail', 6: 'pressure'}
    i = 0
    while i < len(b):
        tag, i = read_varint(b, i)
        f, t = tag >> 3, tag & 7
        if t == 0:
            v, i = read_varint(b, i)
        elif t == 2:
            n, i = read_varint(b, i)
            v = b[i:i + n]
            i += n
        else:
            raise ValueError('unexpected wire type')
        if f in names:
            out[names[f]] = v.decode() if f == 1 else (bool(v) if f in (5, 6) else v)
    return out


class Server:
    """A bidistreamd on an ephemeral port."""

    def __init__(self, *flags):
        extra = ['--log-level', 'debug'] if os.environ.get('BDS_E2E_VERBOSE') else []
        argv = [SERVER, '--listen', '127.0.0.1:0', *extra, *flags]
        if os.path.basename(SERVER) == 'example_server':
            argv = [SERVER, '127.0.0.1:0']
        self.proc = subprocess.Popen(argv,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.err = []
        self.signalled = False
        line = self.proc.stderr.readline()
        self.err.append(line)
        m = re.search(r'listening on ([0-9.]+):(\d+) with (\d+) shard', line)
        if not m:
            self.proc.kill()
            raise RuntimeError('server did not start: ' + line + self.proc.stderr.read())
        self.addr = '%s:%s' % (m.group(1), m.group(2))
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.err.append(line)

    def channel(self):
        return grpc.insecure_channel(self.addr)

    def sigterm(self):
        """The one SIGTERM a graceful stop takes: a second one ends the server at once."""
        if not self.signalled and self.proc.poll() is None:
            self.signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=30):
        """SIGTERM (unless sent already); returns the exit code. Fails the
        caller on a sanitizer report."""
        self.sigterm()
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        text = ''.join(self.err)
        if os.environ.get('BDS_E2E_VERBOSE'):
            sys.stderr.write(text)
        if 'Sanitizer' in text or 'runtime error' in text:
            raise AssertionError('sanitizer report from bidistreamd:\n' + text)
        return rc


def process(ch):
    return ch.stream_stream(PROCESS, request_serializer=lambda x: x, response_deserializer=lambda x: x)


def raw(ch, path):
    return ch.stream_stream(path, request_serializer=lambda x: x, response_deserializer=lambda x: x)


class Pipeline(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server('--shards', '2', '--max-message-bytes', '65536')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    def test_keyed_fifo_under_random_work_many_keys_concurrent_streams(self):
        errors = []

        def stream(sid):
            try:
                check_stream(sid)
            except Exception as e:  # a thread's failure must fail the test
                errors.append('stream %d: %r' % (sid, e))

        def check_stream(sid):
            rnd = random.Random(sid)
            reqs = [frame('k%d' % rnd.randrange(20), i + 1, b'p%d-%d' % (sid, i), work_us=rnd.randrange(0, 3000))
                    for i in range(150)]
            got = [unframe(r) for r in process(self.ch)(iter(reqs), timeout=60)]
            if len(got) != len(reqs):
                errors.append('stream %d: %d replies for %d' % (sid, len(got), len(reqs)))
            per_key = {}
            for g in got:
                per_key.setdefault(g['key'], []).append(g['seq'])
                if g['payload'] != b'p%d-%d' % (sid, g['seq'] - 1):
                    errors.append('payload not echoed')
            for k, seqs in per_key.items():
                if seqs != sorted(seqs):
                    errors.append('stream %d key %s out of order' % (sid, k))
        threads = [threading.Thread(target=stream, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    def test_keys_run_in_parallel_and_in_sequence_within_a_key(self):
        # A slow head of key a must not hold key b back; a's successor waits for it.
        reqs = [frame('a', 1, b'x', work_us=300000), frame('a', 2, b'y'), frame('b', 3, b'z')]
        got = [unframe(r)['seq'] for r in process(self.ch)(iter(reqs), timeout=30)]
        self.assertEqual(sorted(got), [1, 2, 3])
        self.assertLess(got.index(3), got.index(1), 'key b waited for key a')
        self.assertLess(got.index(1), got.index(2), 'key a out of order')

    def test_half_close_drains_every_reply_before_ok(self):
        reqs = [frame('k%d' % (i % 3), i + 1, b'v', work_us=20000) for i in range(30)]
        call = process(self.ch)(iter(reqs), timeout=30)
        got = list(call)
        self.assertEqual(len(got), 30)
        self.assertEqual(call.code(), grpc.StatusCode.OK)

    def test_fail_ends_the_stream_with_a_status_and_message(self):
        with self.assertRaises(grpc.RpcError) as e:
            list(process(self.ch)(iter([frame('a', 1, b'x', fail=True)]), timeout=10))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL)
        self.assertTrue(e.exception.details())

    def test_malformed_protobuf_is_internal_and_the_channel_still_works(self):
        with self.assertRaises(grpc.RpcError) as e:
            list(process(self.ch)(iter([b'\xff\xff\xff\xff']), timeout=10))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL)
        got = list(process(self.ch)(iter([frame('a', 7, b'ok')]), timeout=10))
        self.assertEqual(unframe(got[0])['seq'], 7)

    def test_seq_varints_cut_short_or_past_ten_bytes_are_malformed(self):
        # The scan steps over seq (field 2) without decoding it: a varint that
        # runs off the message's end, or past the ten bytes a varint may
        # have, is still INTERNAL; ten bytes (2^64 - 1) are a seq.
        for seq in (b'\xff\xff', b'\xff' * 10 + b'\x01'):
            with self.assertRaises(grpc.RpcError) as e:
                list(process(self.ch)(iter([b'\x0a\x01a\x10' + seq]), timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL, seq.hex())
        got = list(process(self.ch)(iter([b'\x0a\x01a\x10' + b'\xff' * 9 + b'\x01']), timeout=10))
        self.assertEqual(unframe(got[0])['seq'], 2**64 - 1)

    def test_field_numbers_past_2_pow_29_are_malformed(self):
        # Found by tests/fuzz/fuzz_messages: the scan cut a tag's field number
        # to 32 bits, so field 2^32 + 1 was taken for the key (field 1) while
        # the reply dropped it. Protobuf field numbers end at 2^29 - 1.
        for field in (2**32 + 1, 2**29):
            bogus = varint(field << 3 | 2) + b'\x01k'
            with self.assertRaises(grpc.RpcError) as e:
                list(process(self.ch)(iter([bogus + frame('a', 1, b'x')]), timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL, 'field %d' % field)
        unknown = varint((2**29 - 1) << 3 | 2) + b'\x01k'
        got = list(process(self.ch)(iter([unknown + frame('a', 1, b'x', work_us=1)]), timeout=10))
        self.assertEqual(unframe(got[0])['key'], 'a')

    def test_message_over_the_limit_is_resource_exhausted_and_the_channel_still_works(self):
        with self.assertRaises(grpc.RpcError) as e:
            list(process(self.ch)(iter([frame('a', 1, b'x' * 70000)]), timeout=10))
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(len(list(process(self.ch)(iter([frame('a', 2, b'ok')]), timeout=10))), 1)

    def test_unknown_method_and_service_are_unimplemented(self):
        for path in ('/bidistream.v1.Pipeline/Nope', '/no.Such/Service'):
            with self.assertRaises(grpc.RpcError) as e:
                list(raw(self.ch, path)(iter([b'']), timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED, path)

    def test_interop_test_service_is_unimplemented_without_the_flag(self):
        # grpc.testing.TestService is opt-in (--interop): this server has no flag.
        for method in ('EmptyCall', 'UnaryCall', 'StreamingOutputCall', 'FullDuplexCall'):
            with self.assertRaises(grpc.RpcError) as e:
                list(raw(self.ch, '/grpc.testing.TestService/' + method)(iter([b'']), timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED, method)
        self.assertEqual(len(list(process(self.ch)(iter([frame('a', 1, b'ok')]), timeout=10))), 1)

    def test_deadline_exceeded(self):
        with self.assertRaises(grpc.RpcError) as e:
            list(process(self.ch)(iter([frame('a', 1, b'x', work_us=3000000)]), timeout=0.3))
        self.assertEqual(e.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_client_cancel_mid_stream_then_the_server_still_serves(self):
        stop = threading.Event()

        def slow():
            for i in range(100000):
                if stop.is_set():
                    return
                yield frame('c', i + 1, b'x', work_us=1000)
                time.sleep(0.001)
        call = process(self.ch)(slow(), timeout=30)
        n = 0
        for _ in call:
            n += 1
            if n == 20:
                call.cancel()
                break
        stop.set()
        self.assertEqual(call.code(), grpc.StatusCode.CANCELLED)
        self.assertEqual(len(list(process(self.ch)(iter([frame('d', 1, b'ok')]), timeout=10))), 1)

    def test_health_check_serving_and_unknown_service(self):
        check = self.ch.unary_unary('/grpc.health.v1.Health/Check', request_serializer=lambda x: x,
                                    response_deserializer=lambda x: x)
        self.assertEqual(check(b'', timeout=10), b'\x08\x01')
        svc = b'bidistream.v1.Pipeline'
        self.assertEqual(check(b'\x0a' + varint(len(svc)) + svc, timeout=10), b'\x08\x01')
        with self.assertRaises(grpc.RpcError) as e:
            check(b'\x0a\x03xyz', timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)


    def test_health_check_skips_unknown_fields_of_every_wire_type(self):
        # Found by tests/fuzz/fuzz_messages: a valid request with an unknown
        # fixed32/fixed64 field was answered INTERNAL ("malformed").
        check = self.ch.unary_unary('/grpc.health.v1.Health/Check', request_serializer=lambda x: x,
                                    response_deserializer=lambda x: x)
        svc = b'grpc.health.v1.Health'
        unknown = b'\x11' + bytes(8) + b'\x1d' + bytes(4) + b'\x18\x07' + b'\x22\x01z'
        self.assertEqual(check(unknown + b'\x0a' + varint(len(svc)) + svc + unknown, timeout=10), b'\x08\x01')
        with self.assertRaises(grpc.RpcError) as e:
            check(b'\x1d\x00\x00', timeout=10)  # a fixed32 cut short is still malformed
        self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL)

class Cli(unittest.TestCase):
    """bidistreamd's command line (the bds client has test_bds_client.py)."""

    def test_bidistreamd_bad_flags_exit_2_with_one_line(self):
        for args in (['--bogus'], ['--inbound-capacity', '-1'], ['--inbound-policy', 'nope'],
                     ['--grace', 'soon'], ['--listen', 'nowhere']):
            out = subprocess.run([SERVER, *args], capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 2, args)
            lines = [l for l in out.stderr.splitlines() if l.strip()]
            self.assertEqual(len(lines), 1, (args, out.stderr))


class Example(unittest.TestCase):
    """tools/example_server.c registers its own method through the library."""

    def test_example_server_serves_its_own_method_in_order(self):
        global SERVER
        example = os.path.join(os.path.dirname(SERVER), 'example_server')
        saved, SERVER = SERVER, example
        try:
            srv = Server()
        finally:
            SERVER = saved
        try:
            with srv.channel() as ch:
                call = raw(ch, '/example.Shout/Upper')
                reqs = [b'a%d' % i for i in range(50)] + [b'b%d' % i for i in range(50)]
                got = list(call(iter(reqs), timeout=30))
                self.assertEqual(sorted(got), sorted(r.upper() for r in reqs))
                self.assertEqual([g for g in got if g.startswith(b'A')], [b'A%d' % i for i in range(50)])
                # the built-in services are there too
                self.assertEqual(len(list(process(ch)(iter([frame('k', 1, b'x')]), timeout=10))), 1)
        finally:
            self.assertEqual(srv.stop(), 0)


def fld(num, b):
    return bytes([num << 3 | 2]) + varint(len(b)) + b


def fvar(num, x):
    return bytes([num << 3]) + varint(x)


def parse_fields(b):
    """Protobuf bytes -> {field: [values]} (varints and length-delimited only)."""
    out, i = {}, 0
    while i < len(b):
        tag, i = read_varint(b, i)
        if tag & 7 == 0:
            v, i = read_varint(b, i)
        else:
            n, i = read_varint(b, i)
            v = b[i:i + n]
            i += n
        out.setdefault(tag >> 3, []).append(v)
    return out


def payload_len(msg, field=1):
    """Length of Payload.body inside a response's payload field."""
    p = parse_fields(msg).get(field, [b''])[0]
    return len(parse_fields(p).get(2, [b''])[0])


class Pressure(unittest.TestCase):
    """SOFT_ALLOW_SIGNAL: a message admitted over capacity runs, and its reply says so (Frame.pressure)."""

    def test_soft_allow_signal_reaches_the_client(self):
        srv = Server('--shards', '2', '--inbound-policy', 'soft-allow-signal', '--inbound-capacity', '2')
        try:
            with srv.channel() as ch:
                # 8 keys at once, each 200 ms of work: 2 fit the capacity, the rest run over it.
                reqs = [frame('k%d' % i, i + 1, b'p', work_us=200000) for i in range(8)]
                got = [unframe(r) for r in process(ch)(iter(reqs), timeout=30)]
                self.assertEqual(sorted(g['seq'] for g in got), list(range(1, 9)), 'every message ran')
                over = [g['seq'] for g in got if g['pressure']]
                self.assertGreaterEqual(len(over), 1, 'some replies carry pressure: %r' % got)
                self.assertLessEqual(len(over), 6, 'at least the capacity ran without it: %r' % over)
                # One message at a time never exceeds it: no pressure.
                got = [unframe(r) for r in process(ch)(iter([frame('a', 1, b'x')]), timeout=10)]
                self.assertFalse(got[0]['pressure'])
        finally:
            self.assertEqual(srv.stop(), 0)


class Metrics(unittest.TestCase):
    """--metrics (on by default) prints each method's counters (bds_server_get_stats) at stop."""

    def run_server(self, *flags):
        srv = Server('--shards', '2', *flags)
        with srv.channel() as ch:
            replies = list(process(ch)(iter([frame('k', i, b'abcd') for i in range(1, 4)]), timeout=10))
            self.assertEqual(len(replies), 3)
        self.assertEqual(srv.stop(), 0)
        return ''.join(srv.err)

    def test_metrics_flags_print_the_counters_at_stop(self):
        text = self.run_server('--metrics', 'true', '--metrics-payload-sizes', 'true')
        line = [l for l in text.splitlines() if 'msg="stats" method=/bidistream.v1.Pipeline/Process ' in l]
        self.assertEqual(len(line), 1, text)
        self.assertIn('streams_opened=1 streams_refused=0 streams_ended=1 streams_ok=1 messages_in=3 messages_out=3',
                      line[0])
        self.assertRegex(line[0], r' bytes_in=(\d+) bytes_out=\1$', 'echoes: as many bytes out as in')
        text = self.run_server('--metrics', 'true')
        self.assertIn('messages_in=3 messages_out=3', text)
        self.assertNotIn('bytes_in=', text, 'payload sizes only with --metrics-payload-sizes')
        text = self.run_server('--metrics', 'false')
        self.assertNotIn('msg="stats"', text, 'nothing with --metrics false')


class Interop(unittest.TestCase):
    """grpc.testing.TestService, as the standard interop client drives it
    (empty_unary, large_unary, client/server streaming, ping_pong, empty_stream,
    status_code_and_message, unimplemented, timeout_on_sleeping_server)."""

    T = '/grpc.testing.TestService/'

    @classmethod
    def setUpClass(cls):
        cls.srv = Server('--shards', '2', '--interop')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    def unary(self, method):
        return self.ch.unary_unary(self.T + method, request_serializer=lambda x: x, response_deserializer=lambda x: x)

    def stream(self, method):
        return raw(self.ch, self.T + method)

    def test_empty_unary(self):
        self.assertEqual(self.unary('EmptyCall')(b'', timeout=10), b'')

    def test_large_unary(self):
        req = fvar(2, 314159) + fld(3, fld(2, bytes(271828)))
        self.assertEqual(payload_len(self.unary('UnaryCall')(req, timeout=30)), 314159)

    def test_client_streaming(self):
        sizes = [27182, 8, 1828, 45904]
        reqs = [fld(1, fld(2, bytes(n))) for n in sizes]
        got = list(self.stream('StreamingInputCall')(iter(reqs), timeout=30))
        self.assertEqual(len(got), 1)
        self.assertEqual(parse_fields(got[0]).get(1, [0])[0], sum(sizes))

    def test_server_streaming(self):
        sizes = [31415, 9, 2653, 58979]
        req = b''.join(fld(2, fvar(1, n)) for n in sizes)
        call = self.ch.unary_stream(self.T + 'StreamingOutputCall', request_serializer=lambda x: x,
                                    response_deserializer=lambda x: x)
        self.assertEqual([payload_len(r) for r in call(req, timeout=30)], sizes)

    def test_ping_pong(self):
        sizes = [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]
        reqs = [fld(2, fvar(1, out)) + fld(3, fld(2, bytes(inp))) for out, inp in sizes]
        got = [payload_len(r) for r in self.stream('FullDuplexCall')(iter(reqs), timeout=30)]
        self.assertEqual(got, [out for out, _ in sizes])

    def test_empty_stream(self):
        self.assertEqual(list(self.stream('FullDuplexCall')(iter([]), timeout=10)), [])

    def test_status_code_and_message(self):
        status = fld(7, fvar(1, 2) + fld(2, b'test status message'))
        with self.assertRaises(grpc.RpcError) as e:
            self.unary('UnaryCall')(status, timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNKNOWN)
        self.assertEqual(e.exception.details(), 'test status message')
        with self.assertRaises(grpc.RpcError) as e:
            list(self.stream('FullDuplexCall')(iter([status]), timeout=10))
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNKNOWN)
        self.assertEqual(e.exception.details(), 'test status message')

    def test_unimplemented_method(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.unary('UnimplementedCall')(b'', timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_timeout_on_sleeping_server(self):
        req = fld(2, fvar(1, 10) + fvar(2, 5000000))  # one response after 5 s
        with self.assertRaises(grpc.RpcError) as e:
            list(self.stream('FullDuplexCall')(iter([req]), timeout=0.2))
        self.assertEqual(e.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)


class Admission(unittest.TestCase):
    def test_hard_reject_when_full_is_resource_exhausted(self):
        srv = Server('--shards', '1', '--inbound-policy', 'hard-reject', '--inbound-capacity', '1',
                     '--inbound-queue-capacity', '0')
        try:
            with srv.channel() as ch:
                reqs = [frame('a', 1, b'x', work_us=500000), frame('b', 2, b'y')]
                with self.assertRaises(grpc.RpcError) as e:
                    list(process(ch)(iter(reqs), timeout=10))
                self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                # the server keeps serving
                self.assertEqual(len(list(process(ch)(iter([frame('c', 3, b'z')]), timeout=10))), 1)
        finally:
            self.assertEqual(srv.stop(), 0)


class NeverReads(unittest.TestCase):
    """A client that sends but never reads: the server buffers boundedly and
    answers RESOURCE_EXHAUSTED (outbound backpressure, fail fast); other
    connections are served meanwhile."""

    def test_client_that_never_reads_is_bounded_and_others_are_served(self):
        srv = Server('--shards', '1', '--outbound-capacity', '64', '--outbound-queue-capacity', '64')
        try:
            port = int(srv.addr.split(':')[1])
            s = socket.create_connection(('127.0.0.1', port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            # HTTP/2 preface; SETTINGS with INITIAL_WINDOW_SIZE = 0: we grant no send window, ever.
            s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + h2frame(4, 0, 0, b'\x00\x04\x00\x00\x00\x00'))
            s.sendall(h2frame(4, 1, 0, b''))  # ACK the server's SETTINGS (sent blind)
            s.sendall(h2frame(1, 4, 1, hpack_request(PROCESS)))
            payload = b'q' * 1000
            msgs = b''.join(b'\x00' + len(m).to_bytes(4, 'big') + m
                            for m in (frame('k%d' % (i % 7), i + 1, payload) for i in range(300)))
            for off in range(0, len(msgs), 16000):
                s.sendall(h2frame(0, 0, 1, msgs[off:off + 16000]))
            rss0 = rss_kib(srv.proc.pid)
            # Meanwhile a well-behaved client on another connection is served.
            with srv.channel() as ch:
                for i in range(20):
                    self.assertEqual(len(list(process(ch)(iter([frame('w', i + 1, b'ok')]), timeout=10))), 1)
            self.assertLess(rss_kib(srv.proc.pid) - rss0, 64 * 1024, 'server memory grew without bound')
            s.close()
        finally:
            self.assertEqual(srv.stop(), 0)


class FastSender(unittest.TestCase):
    """A client that sends much faster than its work finishes is stopped at
    its socket: the stream's window is credited only while the admitted,
    unfinished payload is under --inbound-bytes-max (4 MiB by default)."""

    def test_sender_faster_than_the_work_is_stopped_at_the_socket(self):
        srv = Server('--shards', '1')
        try:
            # 300 messages of 256 KiB (75 MiB), all on one key, 100 ms of
            # work each: 30 s of work. grpcio takes the next message from the
            # iterator only when the last one went out (flow control).
            taken = [0]
            payload = b'p' * (256 * 1024)

            def requests():
                for i in range(300):
                    taken[0] += 1
                    yield frame('k', i + 1, payload, work_us=100000)

            with srv.channel() as ch:
                call = process(ch)(requests(), timeout=3)
                time.sleep(2)
                took = taken[0]
                call.cancel()
            # Bounded by the 4 MiB of admitted bytes, one stream window and
            # the sockets' buffers; without the bound all 300 would be taken.
            self.assertLess(took * len(payload), 32 << 20, 'the server read %d messages it cannot start' % took)
            with srv.channel() as ch:
                self.assertEqual(len(list(process(ch)(iter([frame('w', 1, b'ok')]), timeout=10))), 1)
        finally:
            self.assertEqual(srv.stop(), 0)


class LargeMessages(unittest.TestCase):
    """Issue 11: large messages at window speed. The windows grow with the
    measured bandwidth-delay product and output of 32 KiB or more leaves by
    reference (the HTTP/2 output buffer handed to the socket whole): every
    byte must still come back, in order, on streams running side by side."""

    def test_one_mebibyte_messages_echo_whole_on_parallel_streams(self):
        srv = Server('--shards', '1')
        try:
            errors = []

            def stream(sid):
                try:
                    rnd = random.Random(sid)
                    payloads = [bytes(rnd.getrandbits(8) for _ in range(256)) * (4096 + sid) for _ in range(6)]
                    reqs = [frame('k', i + 1, p) for i, p in enumerate(payloads)]
                    got = [unframe(r) for r in process(ch)(iter(reqs), timeout=60)]
                    if [g['seq'] for g in got] != list(range(1, len(reqs) + 1)):
                        errors.append('stream %d: replies %r' % (sid, [g['seq'] for g in got]))
                    for g in got:
                        if g['payload'] != payloads[g['seq'] - 1]:
                            errors.append('stream %d: payload %d not echoed whole' % (sid, g['seq']))
                except Exception as e:  # a thread's failure must fail the test
                    errors.append('stream %d: %r' % (sid, e))
            ch = srv.channel()  # one connection: the streams' DATA interleave in each buffer
            threads = [threading.Thread(target=stream, args=(s,)) for s in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
                self.assertFalse(t.is_alive(), 'a stream is still waiting for its replies')
            ch.close()
            self.assertEqual(errors, [])
        finally:
            self.assertEqual(srv.stop(), 0)


class PartialMessages(unittest.TestCase):
    """Issue 8, finding 2: a client that sends each message but its last byte,
    then that byte, queued on one key behind a message whose work takes 8 s.
    The server used to credit the bytes of a message in progress whether or
    not it could take the message, so only each last byte was withheld and
    the stream parked messages without bound (256 MiB in 6 s). Now the client
    stops at the stream window once the session has no room."""

    def test_messages_cut_before_their_last_byte_do_not_park_without_bound(self):
        srv = Server('--shards', '1')
        try:
            port = int(srv.addr.split(':')[1])
            s = socket.create_connection(('127.0.0.1', port))
            h2 = FlowSender(s)
            h2.send(h2frame(1, 4, 1, hpack_request(PROCESS)))
            work = frame('k', 1, b'', work_us=8000000)
            h2.data(1, b'\x00' + len(work).to_bytes(4, 'big') + work)
            body = frame('k', 2, b'p' * (1 << 20))
            msg = b'\x00' + len(body).to_bytes(4, 'big') + body
            sent = 0
            end = time.monotonic() + 6
            while time.monotonic() < end and sent < (256 << 20):
                if not h2.data(1, msg[:-1], until=end) or not h2.data(1, msg[-1:], until=end):
                    break
                sent += len(msg)
            hwm = vm_hwm_kib(srv.proc.pid)
            sys.stderr.write('partial messages: sent %d MiB in 6 s, server VmHWM %d MiB\n'
                             % (sent >> 20, hwm >> 10))
            # 4 MiB admitted (--inbound-bytes-max), one message over it, one
            # parked, one stream window: the client is stopped well before 16 MiB.
            self.assertLess(sent, 16 << 20, 'the server took %d MiB it cannot start' % (sent >> 20))
            with srv.channel() as ch:
                self.assertEqual(len(list(process(ch)(iter([frame('w', 1, b'ok')]), timeout=10))), 1)
            s.close()
        finally:
            self.assertEqual(srv.stop(), 0)


class NeverReadsDefaults(unittest.TestCase):
    """Issue 8, finding 7, with the default caps: 8 streams whose client never
    grants the server any window for replies (INITIAL_WINDOW_SIZE 0) and sends
    64 KiB messages as fast as the server's windows allow. Counts used to be
    the only bound (1,024 unwritten + 8,192 queued replies per stream, ~576
    MiB at 64 KiB): the server read on. Now each stream holds at most
    --outbound-bytes-max (4 MiB) of replies, then the server stops reading it
    (QUEUE: no error, the client waits at its socket); another connection is
    served meanwhile."""

    def test_client_that_never_reads_is_stopped_by_bytes_with_default_caps(self):
        srv = Server('--shards', '1')
        try:
            port = int(srv.addr.split(':')[1])
            s = socket.create_connection(('127.0.0.1', port))
            h2 = FlowSender(s, settings=b'\x00\x04\x00\x00\x00\x00')
            streams = [1 + 2 * i for i in range(8)]
            pending = {}
            for i, sid in enumerate(streams):
                h2.send(h2frame(1, 4, sid, hpack_request(PROCESS)))
                pending[sid] = b''
            payload = b'q' * (64 * 1024)
            seq = [0]

            def next_msg(sid):
                seq[0] += 1
                m = frame('k%d' % sid, seq[0], payload)
                return b'\x00' + len(m).to_bytes(4, 'big') + m

            sent = 0
            end = time.monotonic() + 8
            idle_since = None
            while time.monotonic() < end and sent < (512 << 20):
                moved = 0
                for sid in streams:
                    if not pending[sid]:
                        pending[sid] = next_msg(sid)
                    n = h2.data_some(sid, pending[sid])
                    pending[sid] = pending[sid][n:]
                    moved += n
                sent += moved
                if moved:
                    idle_since = None
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    break  # every stream waits for a window the server does not give
                self.assertTrue(h2.poll(0.05), 'the server ended the connection or a stream')
            hwm = vm_hwm_kib(srv.proc.pid)
            sys.stderr.write('never reads: sent %d MiB on 8 streams, server VmHWM %d MiB\n'
                             % (sent >> 20, hwm >> 10))
            # Per stream: 4 MiB of replies, one message over it, one parked,
            # a stream window, the socket buffers.
            self.assertLess(sent, 8 * (8 << 20), 'the server read %d MiB it cannot answer' % (sent >> 20))
            with srv.channel() as ch:
                for i in range(5):
                    self.assertEqual(len(list(process(ch)(iter([frame('w', i + 1, b'ok')]), timeout=10))), 1)
            s.close()
        finally:
            self.assertEqual(srv.stop(), 0)


class ConnBudget(unittest.TestCase):
    """Issue 8, the memory budget per connection (--conn-bytes-max 2MiB): one
    stream's messages, each on its own key with 3 s of work, hold their
    payloads; at the budget the connection is no longer read and its largest
    stream ends RESOURCE_EXHAUSTED, while a client on another connection is
    served."""

    def test_connection_at_its_memory_budget_loses_its_largest_stream_and_others_are_served(self):
        srv = Server('--shards', '1', '--conn-bytes-max', '2MiB')
        try:
            port = int(srv.addr.split(':')[1])
            s = socket.create_connection(('127.0.0.1', port))
            h2 = FlowSender(s)
            h2.send(h2frame(1, 4, 1, hpack_request(PROCESS)))
            payload = b'b' * (64 * 1024)
            pending = b''
            i = 0
            end = time.monotonic() + 10
            while 1 not in h2.ended and time.monotonic() < end and i < 256:
                if not pending:
                    i += 1
                    m = frame('k%d' % i, i, payload, work_us=3000000)
                    pending = b'\x00' + len(m).to_bytes(4, 'big') + m
                n = h2.data_some(1, pending)
                pending = pending[n:]
                if not n:
                    h2.poll(0.05)
            self.assertIn(1, h2.ended, 'the stream was not ended after %d messages' % i)
            self.assertLess(i, 64, 'the connection was read past its budget')
            self.assertEqual(dict(h2.header_fields(1)).get('grpc-status'), '8', 'RESOURCE_EXHAUSTED')
            with srv.channel() as ch:
                self.assertEqual(len(list(process(ch)(iter([frame('w', 1, b'ok')]), timeout=10))), 1)
            s.close()
        finally:
            self.assertEqual(srv.stop(), 0)


class FlowSender:
    """Raw HTTP/2 client side that sends DATA only within the windows the
    server grants (RFC 9113 §6.9), reading its frames as they come."""

    def __init__(self, sock, settings=b''):
        self.s = sock
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle/delayed-ACK stalls
        self.buf = b''
        self.conn = 65535
        self.initial = 65535
        self.streams = {}
        self.blocks = {}    # stream -> the header blocks the server sent
        self.ended = set()  # streams the server ended (END_STREAM on HEADERS)
        self.s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + h2frame(4, 0, 0, settings))

    def header_fields(self, sid):
        """The server's header fields on sid, decoded (HPACK via libnghttp2)."""
        import test_interop  # Hpack; imported here, test_interop imports us
        h = test_interop.Hpack()
        try:
            out = []
            for block in self.blocks.get(sid, []):
                out += h.decode(block)
            return out
        finally:
            h.close()

    def poll(self, timeout):
        """Reads what the server sent within timeout; False once it ended the
        connection or reset a stream."""
        return self._read(timeout)

    def data_some(self, sid, payload):
        """Sends as much of payload as the windows allow now; returns how much."""
        self.streams.setdefault(sid, self.initial)
        off = 0
        while off < len(payload):
            room = min(self.conn, self.streams[sid], 16384, len(payload) - off)
            if room <= 0:
                break
            self.s.sendall(h2frame(0, 0, sid, payload[off:off + room]))
            self.conn -= room
            self.streams[sid] -= room
            off += room
        return off

    def send(self, data):
        self.s.sendall(data)

    def _read(self, timeout):
        self.s.settimeout(timeout)
        try:
            b = self.s.recv(65536)
        except (socket.timeout, BlockingIOError):  # timeout 0: nothing there now
            return True
        if not b:
            return False
        self.buf += b
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], 'big')
            if len(self.buf) < 9 + n:
                break
            ftype, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], 'big') & 0x7fffffff
            payload = self.buf[9:9 + n]
            self.buf = self.buf[9 + n:]
            if ftype == 4 and not flags & 1:
                for i in range(0, len(payload), 6):
                    if int.from_bytes(payload[i:i + 2], 'big') == 4:
                        v = int.from_bytes(payload[i + 2:i + 6], 'big')
                        for k in self.streams:
                            self.streams[k] += v - self.initial
                        self.initial = v
                self.s.sendall(h2frame(4, 1, 0, b''))
            elif ftype == 8:
                inc = int.from_bytes(payload[:4], 'big') & 0x7fffffff
                if sid == 0:
                    self.conn += inc
                else:
                    self.streams[sid] = self.streams.get(sid, self.initial) + inc
            elif ftype == 1:  # HEADERS (no padding or priority from this server)
                self.blocks.setdefault(sid, []).append(payload)
                if flags & 1:
                    self.ended.add(sid)
            elif ftype == 3 and sid in self.ended:
                pass  # RST_STREAM after the server's own END_STREAM (gRPC early trailers)
            elif ftype in (3, 7):  # RST_STREAM, GOAWAY
                return False
        return True

    def data(self, sid, payload, until=None):
        """Sends payload as DATA on sid within the windows; False if the
        connection ended or `until` (monotonic) passed first."""
        self.streams.setdefault(sid, self.initial)
        off = 0
        while off < len(payload):
            room = min(self.conn, self.streams[sid], 16384, len(payload) - off)
            if room <= 0:
                if until is not None and time.monotonic() >= until:
                    return False
                if not self._read(0.05):
                    return False
                continue
            self.s.sendall(h2frame(0, 0, sid, payload[off:off + room]))
            self.conn -= room
            self.streams[sid] -= room
            off += room
        return True


def vm_hwm_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    return 0


def h2frame(ftype, flags, stream, payload):
    return len(payload).to_bytes(3, 'big') + bytes([ftype, flags]) + stream.to_bytes(4, 'big') + payload


def hpack_str(s):
    b = s.encode()
    assert len(b) < 127
    return bytes([len(b)]) + b


def hpack_request(path):
    # Literal header fields without indexing, new names, no Huffman (RFC 7541 §6.2.2).
    out = b''
    for k, v in ((':method', 'POST'), (':scheme', 'http'), (':path', path), (':authority', 'localhost'),
                 ('content-type', 'application/grpc'), ('te', 'trailers')):
        out += b'\x00' + hpack_str(k) + hpack_str(v)
    return out


def rss_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


class Shutdown(unittest.TestCase):
    def test_sigterm_delivers_in_flight_replies_then_unavailable_and_watch_sees_not_serving(self):
        srv = Server('--shards', '2', '--grace', '2s')
        ch = srv.channel()
        watch = ch.unary_stream('/grpc.health.v1.Health/Watch', request_serializer=lambda x: x,
                                response_deserializer=lambda x: x)
        statuses = []
        first_status = threading.Event()
        wcall = watch(b'', timeout=30)

        def watcher():
            try:
                for r in wcall:
                    statuses.append(r)
                    first_status.set()
            except grpc.RpcError:
                pass
            first_status.set()
        wt = threading.Thread(target=watcher)
        wt.start()
        hold = threading.Event()

        def reqs():
            # Four messages with 300 ms of work, then one without: its reply comes
            # first and proves the server has received all five (one stream keeps
            # order), so the other four are in flight when SIGTERM arrives.
            for i in range(4):
                yield frame('k%d' % i, i + 1, b'x', work_us=300000)
            yield frame('k4', 5, b'x')
            hold.wait(20)  # keep the stream open: no half-close
        call = process(ch)(reqs(), timeout=30)
        self.assertTrue(first_status.wait(20), 'Watch answered')
        got = [unframe(next(call))['seq']]
        self.assertEqual(got, [5])
        srv.sigterm()
        try:
            for r in call:
                got.append(unframe(r)['seq'])
            code = call.code()
        except grpc.RpcError as e:
            code = e.code()
        hold.set()
        self.assertEqual(sorted(got), [1, 2, 3, 4, 5], 'in-flight replies delivered')
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
        wt.join(10)
        self.assertEqual(statuses[:1], [b'\x08\x01'])
        self.assertIn(b'\x08\x02', statuses, 'Watch saw NOT_SERVING')
        ch.close()
        self.assertEqual(srv.stop(), 0)

    def test_reset_stream_with_an_hour_of_work_leaves_nothing_to_wait_for(self):
        # The hour of work comes first on the stream; the plain frame's reply
        # proves its handler runs. Once the stream is cancelled its timer and
        # session go with it: the stop finds nothing in flight and exits 0
        # (before: the stop waited for the hour, or was cut at the hard stop).
        srv = Server('--shards', '2', '--grace', '3s')
        with srv.channel() as ch:
            hold = threading.Event()

            def reqs():
                yield frame('slow', 1, b'x', work_us=3600 * 1000000)
                yield frame('fast', 2, b'y')
                hold.wait(20)
            call = process(ch)(reqs(), timeout=30)
            self.assertEqual(unframe(next(call))['seq'], 2)
            call.cancel()
            hold.set()
            # the cancel is a RST_STREAM: a later call on the same channel is behind it
            self.assertEqual(len(list(process(ch)(iter([frame('w', 3, b'ok')]), timeout=10))), 1)
        self.assertEqual(srv.stop(), 0, 'the stop had work left:\n' + ''.join(srv.err))

    def test_second_sigterm_exits_at_once(self):
        if SERVER.endswith('.py'):
            self.skipTest('the reference server drains through further signals')
        srv = Server('--shards', '2', '--grace', '60s')
        ch = srv.channel()
        hold = threading.Event()

        def reqs():
            yield frame('slow', 1, b'x', work_us=30 * 1000000)  # in flight through the grace period
            yield frame('fast', 2, b'y')
            hold.wait(30)
        call = process(ch)(reqs(), timeout=60)
        try:
            self.assertEqual(unframe(next(call))['seq'], 2)
            srv.sigterm()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any('shutting down' in l for l in srv.err):
                time.sleep(0.05)
            self.assertTrue(any('shutting down' in l for l in srv.err), 'the first SIGTERM was not seen')
            srv.proc.send_signal(signal.SIGTERM)  # the second, by hand
            try:
                rc = srv.proc.wait(10)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
                self.fail('a second SIGTERM did not end bidistreamd within 10 s (the work has 30 s left)')
            self.assertEqual(rc, 128 + signal.SIGTERM)
        finally:
            hold.set()
            call.cancel()
            ch.close()
            srv.stop()


def run_main(module, doc):
    """The command line of every suite built on this file: SERVER [PATTERN[,PATTERN...]]
    (a test runs when its name contains any PATTERN). Prints "N passed, N
    failed" last; exit 0 only if something ran and nothing failed."""
    global SERVER
    if len(sys.argv) < 2:
        print(doc)
        sys.exit(2)
    SERVER = os.path.abspath(sys.argv[1])
    loader = unittest.TestLoader()
    if len(sys.argv) > 2:
        loader.testNamePatterns = ['*%s*' % p for p in sys.argv[2].split(',')]
    result = unittest.TextTestRunner(verbosity=2).run(loader.loadTestsFromModule(module))
    failed = len(result.failures) + len(result.errors)
    print('%d passed, %d failed' % (result.testsRun - failed, failed))
    sys.exit(0 if failed == 0 and result.testsRun > 0 else 1)


if __name__ == '__main__':
    run_main(sys.modules[__name__], __doc__)
