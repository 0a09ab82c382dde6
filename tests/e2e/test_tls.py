#!/usr/bin/python3
"""bidistreamd over TLS (--tls-cert, --tls-key, --tls-client-ca), with
python3-grpcio and Python's ssl module as clients.

A CA, a server certificate (localhost, 127.0.0.1) and a client certificate
are made here with the openssl command. Checked: a Pipeline/Process stream
and the interop cases through a TLS channel; mTLS refusing a client without
a certificate and serving one with; a client offering only http/1.1 in ALPN
refused with the no_application_protocol alert, one offering no ALPN closed
after the handshake, a plaintext HTTP/2 client refused, each logged with its
reason while the server serves on; TLS 1.1 refused; the certificate swapped
and SIGHUP'd while a stream stays up (that stream finishes, new connections
get the new certificate), and a bad file on SIGHUP leaving the old one in
place. Prints "N passed, N failed" last.

usage: test_tls.py PATH/TO/bidistreamd
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402
import test_interop as interop  # noqa: E402

D = None  # the temporary directory with the keys and certificates


def openssl(*args):
    subprocess.run(['openssl', *args], check=True, timeout=60, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_cert(name, cn, ca='ca', san=None, client=False):
    """A P-256 key and a certificate for it signed by the CA."""
    key, csr, pem = (os.path.join(D, name + ext) for ext in ('.key', '.csr', '.pem'))
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr,
            '-subj', '/CN=' + cn)
    ext = os.path.join(D, name + '.ext')
    with open(ext, 'w') as f:
        f.write('extendedKeyUsage=%s\n' % ('clientAuth' if client else 'serverAuth'))
        if san:
            f.write('subjectAltName=%s\n' % san)
    openssl('x509', '-req', '-in', csr, '-CA', os.path.join(D, ca + '.pem'), '-CAkey', os.path.join(D, ca + '.key'),
            '-CAcreateserial', '-out', pem, '-days', '2', '-extfile', ext)
    return pem, key


def setUpModule():
    global D
    D = tempfile.mkdtemp(prefix='bds-tls-')
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout',
            os.path.join(D, 'ca.key'), '-out', os.path.join(D, 'ca.pem'), '-days', '2', '-subj', '/CN=bidistream test CA')
    make_cert('server', 'localhost', san='DNS:localhost,IP:127.0.0.1')
    make_cert('server2', 'localhost renewed', san='DNS:localhost,IP:127.0.0.1')
    make_cert('client', 'a client', client=True)


def tearDownModule():
    shutil.rmtree(D, ignore_errors=True)


def path(name):
    return os.path.join(D, name)


def read(name):
    with open(path(name), 'rb') as f:
        return f.read()


def tls_server(*flags, cert='server'):
    return g.Server('--tls-cert', path(cert + '.pem'), '--tls-key', path(cert + '.key'), *flags)


def tls_channel(srv, client_cert=False):
    creds = grpc.ssl_channel_credentials(read('ca.pem'), read('client.key') if client_cert else None,
                                         read('client.pem') if client_cert else None)
    return grpc.secure_channel(srv.addr, creds)


def stream_ok(test, ch, n=20, keys=4):
    frames = [g.frame('k%d' % (i % keys), i, b'p%d' % i) for i in range(n)]
    got = [g.unframe(r) for r in g.process(ch)(iter(frames), timeout=20)]
    for k in range(keys):
        test.assertEqual([r['seq'] for r in got if r['key'] == 'k%d' % k], list(range(k, n, keys)))


def peer_cert(addr, alpn=('h2',)):
    """The DER certificate the server presents to a new connection."""
    ctx = ssl.create_default_context(cafile=path('ca.pem'))
    ctx.set_alpn_protocols(list(alpn))
    host, port = addr.rsplit(':', 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname='localhost') as t:
            return t.getpeercert(binary_form=True)


def wait_log(srv, text, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in srv.err):
            return
        time.sleep(0.05)
    raise AssertionError('no log line with %r within %ss; the server said:\n%s' % (text, timeout, ''.join(srv.err[-10:])))


class Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = tls_server()
        cls.ch = tls_channel(cls.srv)

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    def test_a_process_stream_over_tls(self):
        stream_ok(self, self.ch, n=200)

    def test_many_streams_on_one_tls_connection(self):
        errors = []

        def one():
            try:
                stream_ok(self, self.ch, n=40)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])

    def test_a_large_message_crosses_many_records(self):
        big = b'z' * (1 << 20)
        [r] = list(g.process(self.ch)(iter([g.frame('big', 1, big)]), timeout=30))
        self.assertEqual(g.unframe(r)['payload'], big)

    def test_http11_only_alpn_is_refused_with_its_reason(self):
        with self.assertRaises(ssl.SSLError) as e:
            peer_cert(self.srv.addr, alpn=('http/1.1',))
        self.assertIn('NO APPLICATION PROTOCOL', str(e.exception).upper().replace('_', ' '))
        wait_log(self.srv, 'application protocol')  # the server says why too
        stream_ok(self, self.ch)

    def test_no_alpn_is_closed_after_the_handshake(self):
        ctx = ssl.create_default_context(cafile=path('ca.pem'))
        host, port = self.srv.addr.rsplit(':', 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname='localhost') as t:
                t.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
                try:
                    got = t.recv(100)
                except (ConnectionError, ssl.SSLError):
                    got = b''
                self.assertEqual(got, b'', 'nothing is served without ALPN h2')
        wait_log(self.srv, 'did not offer ALPN h2')
        stream_ok(self, self.ch)

    def test_plaintext_http2_on_the_tls_port_is_refused(self):
        host, port = self.srv.addr.rsplit(':', 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + b'\0' * 9)
            data = b''
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionError:
                pass
        self.assertNotIn(b'\x00\x00\x00\x04', data[:4], 'no HTTP/2 SETTINGS in the clear')
        wait_log(self.srv, 'closing a TLS connection')
        stream_ok(self, self.ch)

    def test_replies_past_a_full_socket_queue_arrive_whole(self):
        """A client that does not read while 20 streams of 1 MiB responses
        fall due (the interop StreamingOutputCall, all windows open): the
        server's output queue for the connection (4 MiB) fills, the record
        in progress waits in the TLS session and the rest is encrypted from
        the HTTP/2 output as the queue drains. Every response of every
        stream arrives whole, in order."""
        import struct
        import test_h2_floods as f
        srv = tls_server('--interop')
        try:
            ctx = ssl.create_default_context(cafile=path('ca.pem'))
            ctx.set_alpn_protocols(['h2'])
            host, port = srv.addr.rsplit(':', 1)
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: shrunk later, TCP stalls
            raw.settimeout(10)
            raw.connect((host, int(port)))
            s = ctx.wrap_socket(raw, server_hostname='localhost')
            c = f.Conn.__new__(f.Conn)
            c.s, c.buf, c.closed = s, b'', False
            sizes = [262144 + i for i in range(4)]
            req = interop.out_request([(n, 0) for n in sizes])
            msg = b'\0' + struct.pack('>I', len(req)) + req
            path_ = b'/grpc.testing.TestService/StreamingOutputCall'
            streams = list(range(1, 41, 2))
            c.send(f.PREFACE + f.h2frame(f.SETTINGS, 0, 0, struct.pack('>HI', 4, 2**31 - 1)) +
                   f.h2frame(f.WINDOW_UPDATE, 0, 0, struct.pack('>I', 2**31 - 1 - 65535)) +
                   b''.join(f.h2frame(f.HEADERS, f.END_HEADERS, sid, f.request_headers(path_)) +
                            f.h2frame(f.DATA, f.END_STREAM, sid, msg) for sid in streams))
            time.sleep(2)  # not reading: the responses pile up on the server
            got = {sid: bytearray() for sid in streams}
            ended = set()

            def done(frames):
                for t, fl, sid, p in frames[done.seen:]:
                    if t == f.DATA and sid in got:
                        got[sid].extend(p)
                    if sid in got and fl & f.END_STREAM:
                        ended.add(sid)
                done.seen = len(frames)
                return len(ended) == len(streams)
            done.seen = 0
            c.frames_until(done, 60)
            s.close()
            self.assertEqual(sorted(ended), streams, 'streams that ended (bytes per stream: %r)' %
                             {k: len(v) for k, v in got.items()})
            for sid in streams:
                lens, off, data = [], 0, got[sid]
                while off < len(data):
                    n = struct.unpack('>I', data[off + 1:off + 5])[0]
                    lens.append(len(interop.body(bytes(data[off + 5:off + 5 + n]))))
                    off += 5 + n
                self.assertEqual(lens, sizes, 'stream %d: every response whole and in order' % sid)
            with tls_channel(srv) as ch:
                stream_ok(self, ch)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_tls_1_1_is_refused(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(path('ca.pem'))
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        try:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError):
            self.skipTest('this OpenSSL cannot even offer TLS 1.1')
        host, port = self.srv.addr.rsplit(':', 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                ctx.wrap_socket(s, server_hostname='localhost')
        stream_ok(self, self.ch)


class Interop(interop.TestService):
    """The interop cases of test_interop.py that use grpcio, through TLS."""

    @classmethod
    def setUpClass(cls):
        cls.srv = tls_server('--shards', '2', '--interop')
        cls.ch = tls_channel(cls.srv)


# The raw-socket cases speak plaintext HTTP/2: not here.
for _name in dir(interop.TestService):
    if _name.startswith('test_') and _name not in (
            'test_empty_call_and_malformed_empty_is_internal', 'test_unary_response_is_response_size_zero_bytes',
            'test_unary_echoes_every_status_code_and_message', 'test_server_streaming_sizes_in_order_with_zero_bodies',
            'test_server_streaming_every_response_after_one_over_256_kib', 'test_client_streaming_large_and_empty_payloads',
            'test_client_streaming_answers_only_at_half_close', 'test_cancel_after_begin',
            'test_full_duplex_true_ping_pong', 'test_full_duplex_status_ends_the_stream_after_earlier_responses',
            'test_cancel_after_first_response', 'test_half_duplex_answers_every_request_in_order',
            'test_custom_metadata_unary', 'test_custom_metadata_full_duplex'):
        setattr(Interop, _name, None)


class MutualTls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = tls_server('--tls-client-ca', path('ca.pem'))

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def test_a_client_without_a_certificate_is_refused(self):
        with tls_channel(self.srv) as ch:
            with self.assertRaises(grpc.RpcError) as e:
                list(g.process(ch)(iter([g.frame('k', 1)]), timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
        wait_log(self.srv, 'closing a TLS connection')

    def test_a_client_with_a_certificate_is_served(self):
        with tls_channel(self.srv, client_cert=True) as ch:
            stream_ok(self, ch)


class Reload(unittest.TestCase):
    def test_certificate_swapped_on_sighup_while_a_stream_stays_up(self):
        os.makedirs(path('live'), exist_ok=True)
        for ext in ('.pem', '.key'):
            shutil.copy(path('server' + ext), path('live/cert' + ext))
        srv = g.Server('--tls-cert', path('live/cert.pem'), '--tls-key', path('live/cert.key'))
        try:
            old = peer_cert(srv.addr)
            with tls_channel(srv) as ch:
                # A stream opened before the swap, fed after it.
                sent, release = [], threading.Event()

                def requests():
                    for i in range(5):
                        sent.append(i)
                        yield g.frame('k', i)
                    release.wait(20)
                    for i in range(5, 10):
                        sent.append(i)
                        yield g.frame('k', i)
                replies = g.process(ch)(requests(), timeout=30)
                got = [g.unframe(next(replies))['seq'] for _ in range(5)]
                for ext in ('.pem', '.key'):
                    shutil.copy(path('server2' + ext), path('live/cert' + ext))
                srv.proc.send_signal(signal.SIGHUP)
                wait_log(srv, 'TLS certificate reloaded')
                release.set()
                got += [g.unframe(r)['seq'] for r in replies]
                self.assertEqual(got, list(range(10)), 'the stream lived through the reload')
            new = peer_cert(srv.addr)
            self.assertNotEqual(new, old, 'new connections get the new certificate')
            self.assertEqual(new, ssl.PEM_cert_to_DER_cert(read('server2.pem').decode()))
            # A file that does not load: the old certificate stays.
            with open(path('live/cert.pem'), 'w') as f:
                f.write('not a certificate\n')
            srv.proc.send_signal(signal.SIGHUP)
            wait_log(srv, 'TLS certificate not reloaded')
            self.assertEqual(peer_cert(srv.addr), new)
            with tls_channel(srv) as ch:
                stream_ok(self, ch)
        finally:
            self.assertEqual(srv.stop(), 0)


class Config(unittest.TestCase):
    def test_a_bad_certificate_or_a_lone_key_is_refused_at_start(self):
        for argv, want in (([ '--tls-cert', path('ca.key'), '--tls-key', path('server.key')], 'certificate chain'),
                           (['--tls-cert', path('server.pem'), '--tls-key', path('client.key')], 'key values mismatch'),
                           (['--tls-key', path('server.key')], 'needs --tls-cert')):
            p = subprocess.run([g.SERVER, '--listen', '127.0.0.1:0', *argv], capture_output=True, text=True,
                               timeout=30)
            self.assertNotEqual(p.returncode, 0, argv)
            self.assertIn(want, p.stderr, argv)


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
