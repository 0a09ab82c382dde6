#!/usr/bin/python3
"""gRPC message compression (docs/SERVICE.md) against bidistreamd.

The interop client's compression cases are in test_interop.py; here is the
rest: gzip and deflate requests on Pipeline/Process (grpcio compressing them,
and by hand), corrupt compressed data INTERNAL, an unknown grpc-encoding
UNIMPLEMENTED, --compress-responses (every reply compressed when its client
takes it, identity for a client that does not, replies that would not shrink
sent as they are), and zip bombs: 1 MiB of zeros in ~1 KiB against a 64 KiB
message limit, and 1 GiB of zeros in ~1 MiB against the default 4 MiB,
answered RESOURCE_EXHAUSTED with the server's peak RSS (VmHWM) measured
around them and bounded, the server serving on.

The clients are Debian's python3-grpcio (/usr/bin/python3) and a raw HTTP/2
client (test_interop.raw_call) where the bytes on the wire matter.
Prints "N passed, N failed" last.

usage: test_compress.py PATH/TO/bidistreamd [test-name-substring]
"""
import os
import sys
import threading
import unittest
import zlib

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402  (Server, frame, process)
import test_interop as ti  # noqa: E402  (raw_call, messages, VmHWM)

T = ti.T
fld, fvar, body = ti.fld, ti.fvar, ti.body
grpc_frame, gzip, unframe_all, ACCEPT_ALL = ti.grpc_frame, ti.gzip, ti.unframe_all, ti.ACCEPT_ALL


def deflate(b):
    """gRPC's deflate: the zlib format."""
    return zlib.compress(b, 6)


def frames_echoed(ch, comp, n=20, size=3000):
    """A Process stream of n Frames compressed with comp; returns the replies' (seq, payload)."""
    reqs = [g.frame('k%d' % (i % 3), i + 1, (b'payload %d ' % i) * (size // 12)) for i in range(n)]
    got = [g.unframe(r) for r in g.process(ch)(iter(reqs), compression=comp, timeout=30)]
    return sorted((r['seq'], r['payload']) for r in got), sorted((g.unframe(r)['seq'], g.unframe(r)['payload'])
                                                                 for r in reqs)


class Requests(unittest.TestCase):
    """Compressed requests on Pipeline/Process, and what bad ones get."""

    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server('--shards', '2', '--interop')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    def test_process_takes_gzip_and_deflate_from_grpcio(self):
        for comp in (grpc.Compression.Gzip, grpc.Compression.Deflate, grpc.Compression.NoCompression):
            got, want = frames_echoed(self.ch, comp)
            self.assertEqual(got, want, comp)

    def test_process_takes_them_by_hand_mixed_with_uncompressed_messages(self):
        msgs = [g.frame('a', 1, b'x' * 5000), g.frame('b', 2, b'y'), g.frame('a', 3, b'z' * 70000)]
        for name, enc in ((b'gzip', gzip), (b'deflate', deflate)):
            body_ = grpc_frame(enc(msgs[0]), True) + grpc_frame(msgs[1]) + grpc_frame(enc(msgs[2]), True)
            h, fields, data, ended = ti.raw_call(self.srv.addr, g.PROCESS, body_, [(b'grpc-encoding', name)])
            self.assertTrue(ended, name)
            self.assertEqual(h.get('grpc-status'), '0', fields)
            got = sorted(g.unframe(m)['seq'] for _, m in unframe_all(data, h.get('grpc-encoding')))
            self.assertEqual(got, [1, 2, 3], name)
            payloads = {g.unframe(m)['seq']: g.unframe(m)['payload'] for _, m in unframe_all(data)}
            self.assertEqual(payloads[3], b'z' * 70000)

    def test_corrupt_or_cut_compressed_data_is_internal_and_the_server_serves_on(self):
        good = gzip(g.frame('a', 1, b'x' * 1000))
        crc = bytearray(good)
        crc[-6] ^= 0xFF  # the CRC-32
        for bad in (bytes(crc), good[:len(good) // 2], b'not gzip at all', deflate(g.frame('a', 1, b'x'))):
            h, fields, data, ended = ti.raw_call(self.srv.addr, g.PROCESS, grpc_frame(bad, True),
                                                 [(b'grpc-encoding', b'gzip')])
            self.assertTrue(ended)
            self.assertEqual(data, b'')
            self.assertEqual(h.get('grpc-status'), '13', fields)
            self.assertIn('corrupt compressed message', h.get('grpc-message', ''), fields)
        got, want = frames_echoed(self.ch, grpc.Compression.Gzip, n=3)
        self.assertEqual(got, want)

    def test_unknown_encoding_is_unimplemented_with_what_the_server_takes(self):
        for enc in (b'snappy', b'zstd', b'GZIP', b'gzip, identity'):
            h, fields, data, ended = ti.raw_call(self.srv.addr, g.PROCESS, grpc_frame(g.frame('a', 1, b'x'), True),
                                                 [(b'grpc-encoding', enc)])
            self.assertTrue(ended, enc)
            self.assertEqual((h.get(':status'), h.get('grpc-status')), ('200', '12'), fields)
            self.assertEqual(h.get('grpc-accept-encoding'), 'identity,deflate,gzip', fields)
            self.assertEqual(data, b'')
        got, want = frames_echoed(self.ch, grpc.Compression.Deflate, n=3)
        self.assertEqual(got, want)

    def test_identity_named_is_identity(self):
        h, fields, data, ended = ti.raw_call(self.srv.addr, g.PROCESS, grpc_frame(g.frame('a', 9, b'x')),
                                             [(b'grpc-encoding', b'identity')])
        self.assertEqual(h.get('grpc-status'), '0', fields)
        self.assertEqual([g.unframe(m)['seq'] for _, m in unframe_all(data)], [9])


class ResponsesFlag(unittest.TestCase):
    """--compress-responses: every reply compressed for a client that takes it."""

    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server('--shards', '2', '--interop', '--compress-responses', 'gzip')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    def test_replies_go_compressed_to_a_client_that_takes_gzip(self):
        msgs = [g.frame('a', i, b'compress me ' * 500) for i in range(1, 4)]
        h, fields, data, ended = ti.raw_call(self.srv.addr, g.PROCESS, b''.join(grpc_frame(m) for m in msgs),
                                             ACCEPT_ALL)
        self.assertEqual(h.get('grpc-status'), '0', fields)
        self.assertEqual(h.get('grpc-encoding'), 'gzip', fields)
        out = unframe_all(data, 'gzip')
        self.assertEqual([flag for flag, _ in out], [1, 1, 1])
        self.assertEqual(sorted(m for _, m in out), sorted(msgs))
        self.assertLess(len(data), sum(len(m) for m in msgs) // 10)
        # grpcio takes gzip (and says so): it reads them back
        got, want = frames_echoed(self.ch, grpc.Compression.NoCompression, n=5)
        self.assertEqual(got, want)

    def test_a_client_that_does_not_take_it_gets_identity(self):
        msg = g.frame('a', 1, b'compress me ' * 500)
        for accept in ([(b'grpc-accept-encoding', b'identity')], [(b'grpc-accept-encoding', b'deflate')], []):
            h, fields, data, ended = ti.raw_call(self.srv.addr, g.PROCESS, grpc_frame(msg), accept)
            self.assertEqual(h.get('grpc-status'), '0', fields)
            self.assertNotIn('grpc-encoding', h, accept)
            self.assertEqual(unframe_all(data), [(0, msg)], accept)
        # grpcio told to take identity only (its compression algorithms: identity)
        ch = grpc.insecure_channel(self.srv.addr, options=[('grpc.compression_enabled_algorithms_bitset', 1)])
        try:
            got, want = frames_echoed(ch, grpc.Compression.NoCompression, n=3)
            self.assertEqual(got, want)
        finally:
            ch.close()

    def test_a_reply_that_would_not_shrink_goes_as_it_is(self):
        small = g.frame('a', 1, b'x')
        noise = g.frame('b', 2, os.urandom(4000))
        h, fields, data, ended = ti.raw_call(self.srv.addr, g.PROCESS, grpc_frame(small) + grpc_frame(noise),
                                             ACCEPT_ALL)
        self.assertEqual(h.get('grpc-status'), '0', fields)
        self.assertEqual(h.get('grpc-encoding'), 'gzip', fields)
        self.assertEqual(sorted(unframe_all(data, 'gzip')), sorted([(0, small), (0, noise)]))

    def test_response_compressed_false_overrides_the_flag(self):
        for want in (True, False, None):
            extra = fld(6, ti.bool_value(want)) if want is not None else b''
            req = ti.simple_request(100000, extra=extra)
            h, fields, data, ended = ti.raw_call(self.srv.addr, T + 'UnaryCall', grpc_frame(req), ACCEPT_ALL)
            self.assertEqual(h.get('grpc-status'), '0', fields)
            out = unframe_all(data, h.get('grpc-encoding'))
            self.assertEqual([flag for flag, _ in out], [0 if want is False else 1], 'response_compressed %s' % want)
            self.assertEqual(body(out[0][1]), bytes(100000))

    def test_deflate_flag(self):
        srv = g.Server('--shards', '1', '--compress-responses', 'deflate')
        try:
            msg = g.frame('a', 1, b'deflate me ' * 300)
            h, fields, data, ended = ti.raw_call(srv.addr, g.PROCESS, grpc_frame(msg), ACCEPT_ALL)
            self.assertEqual(h.get('grpc-encoding'), 'deflate', fields)
            self.assertEqual(unframe_all(data, 'deflate'), [(1, msg)])
            # a client taking gzip only gets identity: the server compresses in deflate
            h, fields, data, ended = ti.raw_call(srv.addr, g.PROCESS, grpc_frame(msg),
                                                 [(b'grpc-accept-encoding', b'gzip')])
            self.assertNotIn('grpc-encoding', h, fields)
            self.assertEqual(unframe_all(data), [(0, msg)])
        finally:
            self.assertEqual(srv.stop(), 0)


# TSan keeps ~4 bytes of shadow per heap byte: peak-RSS bounds scale with it.
RSS_SCALE = ti.RSS_SCALE


def gigabyte_bomb(wbits):
    """1 GiB of zeros, compressed at level 9 into ~1 MiB (one gzip member, or the zlib format)."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    return b''.join([c.compress(zeros) for _ in range(1024)] + [c.flush()])


class Bombs(unittest.TestCase):
    """A compressed message that expands past the message limit ends its
    stream RESOURCE_EXHAUSTED after at most the limit's worth of output: the
    server's peak RSS stays within a few times the limit, whatever the bomb
    expands to, and it serves the next call."""

    def served(self, ch):
        got, want = frames_echoed(ch, grpc.Compression.Gzip, n=3)
        self.assertEqual(got, want)

    def test_a_megabyte_of_zeros_against_a_64_kib_limit(self):
        srv = g.Server('--shards', '1', '--max-message-bytes', '64KiB', '--interop')
        try:
            with srv.channel() as ch:
                self.served(ch)
                hwm0 = ti.vm_hwm_kib(srv.proc.pid)
                bomb = ti.in_request(1 << 20)  # 1 MiB of zeros: ~1 KiB in gzip
                for comp in (grpc.Compression.Gzip, grpc.Compression.Deflate):
                    with self.assertRaises(grpc.RpcError) as e:
                        ch.stream_unary(T + 'StreamingInputCall', request_serializer=ti.ident,
                                        response_deserializer=ti.ident)(iter([bomb]), compression=comp, timeout=30)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.exception.details())
                    self.assertIn('after decompression (65536 bytes)', e.exception.details())
                # Process too, by hand: one gzip member of 1 MiB of zeros
                h, fields, data, ended = ti.raw_call(srv.addr, g.PROCESS, grpc_frame(gzip(bytes(1 << 20), 9), True),
                                                     [(b'grpc-encoding', b'gzip')])
                self.assertEqual(h.get('grpc-status'), '8', fields)
                self.assertLess(len(gzip(bytes(1 << 20), 9)), 2048)
                # just under the limit, compressed: served
                ok = ti.in_request(60000)
                resp = ch.stream_unary(T + 'StreamingInputCall', request_serializer=ti.ident,
                                       response_deserializer=ti.ident)(iter([ok]), compression=grpc.Compression.Gzip,
                                                                       timeout=30)
                self.assertEqual(ti.parse_fields(resp).get(1, [0])[0], 60000)
                self.served(ch)
                grew = ti.vm_hwm_kib(srv.proc.pid) - hwm0
                sys.stderr.write('\n  1 MiB bombs against 64 KiB: VmHWM %d -> %d KiB (+%d KiB)\n'
                                 % (hwm0, hwm0 + grew, grew))
                self.assertLess(grew, RSS_SCALE * (16 << 10), 'peak RSS grew by %d KiB' % grew)
        finally:
            self.assertEqual(srv.stop(), 0)

    def bomb(self, srv, path, enc, bomb):
        h, fields, data, ended = ti.raw_call(srv.addr, path, grpc_frame(bomb, True), [(b'grpc-encoding', enc)],
                                             timeout=60)
        self.assertTrue(ended, '%s %s: no answer' % (enc, path))
        self.assertEqual(h.get('grpc-status'), '8', '%s %s: %r' % (enc, path, fields))
        self.assertIn('larger than max after decompression (4194304 bytes)', h.get('grpc-message', ''))
        self.assertEqual(data, b'')

    def test_a_gigabyte_of_zeros_against_the_default_limit(self):
        srv = g.Server('--shards', '1', '--interop')
        try:
            with srv.channel() as ch:
                self.served(ch)
                bombs = {b'gzip': gigabyte_bomb(31), b'deflate': gigabyte_bomb(15)}
                self.assertLess(len(bombs[b'gzip']), 2 << 20)
                # The first bomb, measured alone: ASan keeps freed memory in
                # quarantine, so the peak of several would add up under it.
                hwm0 = ti.vm_hwm_kib(srv.proc.pid)
                self.bomb(srv, g.PROCESS, b'gzip', bombs[b'gzip'])
                grew = ti.vm_hwm_kib(srv.proc.pid) - hwm0
                sys.stderr.write('\n  a 1 GiB bomb (%d KiB of gzip) against 4 MiB: VmHWM %d -> %d KiB (+%d KiB)\n'
                                 % (len(bombs[b'gzip']) >> 10, hwm0, hwm0 + grew, grew))
                # the 4 MiB output buffer, the ~1 MiB message, zlib's state; never the gigabyte
                self.assertLess(grew, RSS_SCALE * (32 << 10), 'peak RSS grew by %d KiB' % grew)
                self.served(ch)
                # Every encoding and method, while another connection streams on.
                done = threading.Event()
                errors = []

                def other():
                    try:
                        while not done.is_set():
                            self.served(ch)
                    except Exception as e:  # noqa: BLE001
                        errors.append(e)
                t = threading.Thread(target=other)
                t.start()
                try:
                    for enc, bomb in bombs.items():
                        for path in (g.PROCESS, T + 'UnaryCall', T + 'StreamingInputCall'):
                            self.bomb(srv, path, enc, bomb)
                finally:
                    done.set()
                    t.join(30)
                self.assertEqual(errors, [])
                grew = ti.vm_hwm_kib(srv.proc.pid) - hwm0
                sys.stderr.write('  7 of them: VmHWM %d -> %d KiB (+%d KiB)\n' % (hwm0, hwm0 + grew, grew))
                self.assertLess(grew, RSS_SCALE * (256 << 10), 'peak RSS grew by %d KiB' % grew)
                self.served(ch)
                self.assertIsNone(srv.proc.poll(), 'the server died')
        finally:
            self.assertEqual(srv.stop(), 0)


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
