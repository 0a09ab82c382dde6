#!/usr/bin/python3
"""bidistreamd's Prometheus endpoint (--metrics-listen) and its logs
(docs/OPERATIONS.md), against python3-grpcio traffic:

  - the page, scraped while streams flow, passes `promtool check metrics`
    (Debian's prometheus package) every time, and its counters never go down;
  - once the traffic ends, the counters say what the test sent: calls started
    and ended per method and status (gRFC A66 names, an unknown method as
    "other"), messages in and out, bytes, per-message latency counts;
  - an abuse verdict (too_many_pings) and its GOAWAY are counted;
  - malformed, oversized and non-HTTP requests get 400 and are closed, other
    paths 404, a silent connection is closed by the exchange timeout, and the
    scrape connections are bounded (past 8: 503, past 16: closed at once);
    after each, the endpoint and gRPC still serve;
  - every stderr line is one key=value event with ts, level and msg, and
    --access-log writes one line per stream with its method, peer, status,
    messages, bytes and duration.

Prints "N passed, N failed" last.

usage: test_metrics.py PATH/TO/bidistreamd [test-name-substring]
"""
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402
import test_h2_floods as f  # noqa: E402  (raw HTTP/2 client pieces)

PROMTOOL = shutil.which('promtool') or '/usr/bin/promtool'
P = 'bidistream.v1.Pipeline/Process'
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')


class MetricsServer(g.Server):
    """A bidistreamd with the endpoint on an ephemeral port and the access log."""

    def __init__(self, *flags):
        super().__init__('--shards', '2', '--metrics-listen', '127.0.0.1:0', '--access-log', *flags)
        m = re.search(r' metrics=([0-9.]+):(\d+)', self.err[0])
        if not m:
            self.proc.kill()
            raise RuntimeError('no metrics address in the listening line: ' + self.err[0])
        self.maddr = (m.group(1), int(m.group(2)))


def http(addr, request, timeout=10):
    """Sends request, reads until the server closes. Returns (bytes, how):
    how is 'eof' (closed after its answer) or 'reset'."""
    s = socket.create_connection(addr, timeout=timeout)
    try:
        s.sendall(request)
    except OSError:
        pass  # closed while we sent: its answer (if any) is still read
    out, how = b'', 'eof'
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            d = s.recv(65536)
        except socket.timeout:
            how = 'timeout'
            break
        except ConnectionResetError:
            how = 'reset'
            break
        if not d:
            break
        out += d
    s.close()
    return out, how


def scrape(addr):
    out, how = http(addr, b'GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n')
    head, _, body = out.partition(b'\r\n\r\n')
    if not head.startswith(b'HTTP/1.1 200 OK\r\n'):
        raise AssertionError('scrape answered %r (%s)' % (out[:200], how))
    if b'\r\nContent-Type: text/plain; version=0.0.4\r\n' not in head + b'\r\n':
        raise AssertionError('content type: %r' % head)
    n = int(re.search(rb'Content-Length: (\d+)', head).group(1))
    if n != len(body):
        raise AssertionError('Content-Length %d, body %d bytes' % (n, len(body)))
    return body.decode()


def samples(page):
    """{series: value} of every sample line ("name{labels}" as written)."""
    out = {}
    for line in page.splitlines():
        if not line or line.startswith('#'):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise AssertionError('not a sample line: %r' % line)
        out[m.group(1) + (m.group(2) or '')] = float(m.group(3))
    return out


def promtool_check(page):
    p = subprocess.run([PROMTOOL, 'check', 'metrics'], input=page, capture_output=True, text=True, timeout=60)
    return p.returncode, (p.stdout + p.stderr).strip()


def method(name, **labels):
    return '{grpc_method="%s"%s}' % (name, ''.join(',%s="%s"' % kv for kv in labels.items()))


def is_counter(series):
    name = series.split('{', 1)[0]
    return name.endswith('_total') or name.endswith('_bucket') or name.endswith('_count')


class Scrape(unittest.TestCase):

    def setUp(self):
        self.srv = MetricsServer()

    def tearDown(self):
        self.assertEqual(self.srv.stop(), 0)

    def wait_for(self, what, cond, timeout=20):
        """Scrapes until cond(samples) holds (bounded); returns those samples."""
        end = time.monotonic() + timeout
        while True:
            s = samples(scrape(self.srv.maddr))
            if cond(s):
                return s
            if time.monotonic() > end:
                self.fail('%s: not seen within %d s; last page had %r' % (
                    what, timeout, {k: v for k, v in s.items() if 'grpc_server_call' in k and 'bucket' not in k}))
            time.sleep(0.05)

    def test_page_passes_promtool_while_traffic_flows_and_counters_match(self):
        streams, msgs, payload = 4, 200, b'p' * 100
        errors, replied = [], []

        def traffic(k):
            try:
                with self.srv.channel() as ch:
                    reqs = [g.frame('key%d-%d' % (k, i % 7), i + 1, payload, work_us=200) for i in range(msgs)]
                    got = list(g.process(ch)(iter(reqs), timeout=60))
                    if len(got) != msgs:
                        errors.append('stream %d: %d replies' % (k, len(got)))
                    replied.append(sum(len(r) for r in got))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append('stream %d: %r' % (k, e))

        threads = [threading.Thread(target=traffic, args=(k,)) for k in range(streams)]
        for t in threads:
            t.start()
        pages, last = 0, {}
        while any(t.is_alive() for t in threads) or pages < 3:
            page = scrape(self.srv.maddr)
            rc, out = promtool_check(page)
            self.assertEqual(rc, 0, 'promtool check metrics: %s' % out)
            self.assertEqual(out, '', 'promtool lint: %s' % out)
            now = samples(page)
            for k, v in last.items():
                if is_counter(k) and k in now:
                    self.assertGreaterEqual(now[k], v, 'counter %s went down' % k)
            last = now
            pages += 1
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        # One failing stream, one unknown method, one health check.
        with self.srv.channel() as ch:
            with self.assertRaises(grpc.RpcError) as e:
                list(g.process(ch)(iter([g.frame('f', 1, b'x', fail=True)]), timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL)
            with self.assertRaises(grpc.RpcError) as e:
                list(g.raw(ch, '/no.Such/Method')(iter([b'']), timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
            check = ch.unary_unary('/grpc.health.v1.Health/Check', request_serializer=lambda x: x,
                                   response_deserializer=lambda x: x)
            check(b'', timeout=10)
        dur = 'grpc_server_call_duration_seconds_count'
        s = self.wait_for('every call ended', lambda s: s.get(dur + method(P, grpc_status='OK')) == streams and
                          s.get(dur + method(P, grpc_status='INTERNAL')) == 1 and
                          s.get(dur + method('grpc.health.v1.Health/Check', grpc_status='OK')) == 1)
        self.assertEqual(s['grpc_server_call_started_total' + method(P)], streams + 1)
        self.assertEqual(s['grpc_server_call_started_total' + method('other')], 1)
        self.assertEqual(s[dur + method('other', grpc_status='UNIMPLEMENTED')], 1)
        self.assertEqual(s['grpc_server_call_started_total' + method('grpc.health.v1.Health/Check')], 1)
        self.assertEqual(s['grpc_server_call_started_total' + method('grpc.health.v1.Health/Watch')], 0)
        # Sizes: the payload bytes of each call, as sent and as received.
        msg_bytes = sum(len(g.frame('key0-%d' % (i % 7), i + 1, payload, work_us=200)) for i in range(msgs))
        for d, total in (('rcvd', streams * msg_bytes), ('sent', sum(replied))):
            name = 'grpc_server_call_%s_total_compressed_message_size_bytes' % d
            self.assertEqual(s[name + '_sum' + method(P, grpc_status='OK')], total, d)
            self.assertEqual(s[name + '_count' + method(P, grpc_status='OK')], streams, d)
            self.assertEqual(s[name + '_bucket' + method(P, grpc_status='OK', le='+Inf')], streams, d)
        self.assertEqual(s['bidistream_messages_received_total' + method(P)], streams * msgs + 1)
        self.assertEqual(s['bidistream_messages_sent_total' + method(P)], streams * msgs)
        self.assertEqual(s['bidistream_messages_admitted_total' + method(P)], streams * msgs + 1)
        self.assertEqual(s['bidistream_handler_calls_total' + method(P, outcome='completed')], streams * msgs)
        self.assertEqual(s['bidistream_handler_calls_total' + method(P, outcome='failed')], 1)
        self.assertEqual(s['bidistream_message_latency_seconds_count' + method(P)], streams * msgs + 1)
        self.assertGreater(s['bidistream_message_latency_seconds_sum' + method(P)], 0)
        self.assertEqual(s['bidistream_streams_open' + method(P)], 0)
        self.assertEqual(s['bidistream_messages_in_flight' + method(P)], 0)
        # Histograms are cumulative: every bucket at most the next, +Inf the count.
        for base in ('grpc_server_call_duration_seconds', 'bidistream_message_latency_seconds'):
            lab = method(P, grpc_status='OK') if base.startswith('grpc') else method(P)
            buckets = [(k, v) for k, v in s.items() if k.startswith(base + '_bucket' + lab[:-1] + ',le=')]
            self.assertGreater(len(buckets), 10)
            vals = [v for _, v in buckets]  # in page order: increasing le
            self.assertEqual(vals, sorted(vals), base)
            self.assertEqual(vals[-1], s[base + '_count' + lab])
        # grpcio shares connections between channels of a process: at least one.
        self.assertGreaterEqual(sum(v for k, v in s.items() if k.startswith('bidistream_connections_accepted_total')),
                                1)
        for shard in ('0', '1'):
            self.assertGreater(s['bidistream_shard_wait_seconds_total{shard="%s"}' % shard], 0)
            self.assertGreater(s['bidistream_shard_busy_seconds_total{shard="%s"}' % shard], 0)
            self.assertIn('bidistream_shard_inbox_depth{shard="%s"}' % shard, s)
            self.assertGreater(s['bidistream_shard_sleeps_total{shard="%s"}' % shard], 0)
        self.assertEqual(s['bidistream_http2_streams_total{event="started"}'], streams + 2)
        self.assertEqual(s['bidistream_http2_streams_total{event="refused"}'], 1, 'the unknown method')
        self.assertGreaterEqual(s['bidistream_metrics_http_requests_total{outcome="ok"}'], pages)

    def test_a_ping_flood_verdict_and_its_goaway_are_counted(self):
        c = f.Conn(self.srv.addr)
        c.start()
        msg = g.frame('k', 1, b'p', work_us=2 * 1000 * 1000)  # a stream open: the connection is not idle
        c.send(f.h2frame(f.HEADERS, f.END_HEADERS, 1, f.request_headers()) +
               f.h2frame(f.DATA, 0, 1, b'\0' + struct.pack('>I', len(msg)) + msg))
        for i in range(4):  # the default minimum interval is 5 minutes: the third strike
            c.send(f.h2frame(f.PING, 0, 0, struct.pack('>Q', i)))
        c.frames_until_close(10)
        c.s.close()
        s = self.wait_for('the verdict', lambda s: s.get('bidistream_http2_abuse_verdicts_total'
                                                         '{kind="too_many_pings"}') == 1)
        self.assertGreaterEqual(s['bidistream_http2_goaways_sent_total{code="ENHANCE_YOUR_CALM"}'], 1)
        self.assertEqual(s['bidistream_http2_abuse_verdicts_total{kind="glitch_flood"}'], 0)


class Endpoint(unittest.TestCase):
    """What a scraper, or anything else reaching the port, can make the endpoint do."""

    @classmethod
    def setUpClass(cls):
        cls.srv = MetricsServer()

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def assert_still_serving(self):
        s = samples(scrape(self.srv.maddr))
        self.assertIn('grpc_server_call_started_total' + method(P), s)
        with self.srv.channel() as ch:
            got = list(g.process(ch)(iter([g.frame('a', 1, b'ok')]), timeout=10))
        self.assertEqual(len(got), 1)

    def assert_status(self, request, code, allow_reset=False):
        out, how = http(self.srv.maddr, request)
        if allow_reset and how == 'reset' and not out:
            return  # closed before its answer could be read: closed all the same
        self.assertTrue(out.startswith(b'HTTP/1.1 %d ' % code), '%r -> %r (%s)' % (request[:60], out[:120], how))
        self.assertIn(b'\r\nConnection: close\r\n', out)
        self.assertNotEqual(how, 'timeout', 'the server did not close after its answer')

    def test_malformed_requests_get_400_and_are_closed(self):
        for req in (b'GARBAGE\r\n\r\n', b'GET /metrics HTTP/1.1\r\n\r\n',  # no Host
                    b'GET /metrics HTTP/1.1\nHost: a\n\n', b'GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n',
                    b'GET /metrics HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n',
                    b'GET /metrics HTTP/1.1\r\nBad Header: x\r\nHost: a\r\n\r\n',
                    b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + b'\0' * 64,  # a TLS ClientHello
                    f.PREFACE):  # an HTTP/2 client
            self.assert_status(req, 400)
        self.assert_still_serving()

    def test_oversized_request_gets_400_and_is_closed(self):
        self.assert_status(b'GET /metrics HTTP/1.1\r\nHost: a\r\nX-Pad: ' + b'a' * 9000 + b'\r\n\r\n', 400,
                           allow_reset=True)
        self.assert_status(b'GET /' + b'm' * 20000 + b' HTTP/1.1\r\nHost: a\r\n\r\n', 400, allow_reset=True)
        self.assert_still_serving()

    def test_other_paths_and_methods(self):
        self.assert_status(b'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 404)
        self.assert_status(b'GET /metricsx HTTP/1.1\r\nHost: a\r\n\r\n', 404)
        self.assert_status(b'POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n', 405)
        out, _ = http(self.srv.maddr, b'HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n')
        head, _, body = out.partition(b'\r\n\r\n')
        self.assertTrue(head.startswith(b'HTTP/1.1 200 OK'), out[:100])
        self.assertEqual(body, b'', 'HEAD: no body')
        self.assert_status(b'GET /metrics?name[]=x HTTP/1.0\r\n\r\n', 200)
        self.assert_still_serving()

    def test_a_silent_connection_is_closed_by_the_exchange_timeout(self):
        s = socket.create_connection(self.srv.maddr, timeout=30)
        s.sendall(b'GET /metrics HTTP/1.1\r\nHost:')  # and then nothing
        start = time.monotonic()
        try:
            got = s.recv(100)
        except (socket.timeout, ConnectionResetError):
            got = None
        s.close()
        self.assertEqual(got, b'', 'closed without an answer (within 30 s; the bound is 10 s)')
        self.assertLess(time.monotonic() - start, 30)
        self.assertGreaterEqual(samples(scrape(self.srv.maddr))['bidistream_metrics_http_requests_total'
                                                                '{outcome="timeout"}'], 1)
        self.assert_still_serving()

    def test_scrape_connections_are_bounded(self):
        idle = [socket.create_connection(self.srv.maddr, timeout=10) for _ in range(8)]
        time.sleep(0.2)  # every one accepted (an ordering for the next ones, not a timing assert)
        busy = []
        for _ in range(8):  # the next 8: 503 and closed
            out, how = http(self.srv.maddr, b'GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n')
            busy.append(out[:12])
        self.assertTrue(all(b == b'HTTP/1.1 503' or b == b'' for b in busy), busy)
        self.assertIn(b'HTTP/1.1 503', busy)
        # Past twice the bound: closed at once, no answer.
        held = [socket.create_connection(self.srv.maddr, timeout=10) for _ in range(8)]
        out, how = http(self.srv.maddr, b'GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n')
        self.assertTrue(out == b'' or out.startswith(b'HTTP/1.1 503'), out[:100])
        for s in idle + held:
            s.close()
        # Once they are gone, scrapes are served again (bounded wait).
        end = time.monotonic() + 10
        while True:
            out, _ = http(self.srv.maddr, b'GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n')
            if out.startswith(b'HTTP/1.1 200'):
                break
            self.assertLess(time.monotonic(), end, 'no scrape served after the idle connections closed: %r' % out[:80])
            time.sleep(0.05)
        self.assertGreaterEqual(samples(scrape(self.srv.maddr))['bidistream_metrics_http_requests_total'
                                                                '{outcome="busy"}'], 8)
        self.assert_still_serving()


LOGFMT = re.compile(r'^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(error|warn|info|debug) msg="((?:[^"\\]|\\.)*)"'
                    r'((?: [a-z_]+=(?:"(?:[^"\\]|\\.)*"|[^ "=]+))*)$')
FIELD = re.compile(r' ([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "=]+)')


def logfmt(line):
    m = LOGFMT.match(line)
    if not m:
        return None
    fields = {k: v.strip('"') for k, v in FIELD.findall(m.group(3))}
    fields['level'], fields['msg'] = m.group(1), m.group(2)
    return fields


class Logs(unittest.TestCase):

    def test_every_line_is_key_value_and_the_access_log_has_each_stream(self):
        srv = MetricsServer('--log-level', 'debug')
        with srv.channel() as ch:
            got = list(g.process(ch)(iter([g.frame('k', i, b'abc') for i in range(1, 4)]), timeout=10))
            self.assertEqual(len(got), 3)
            with self.assertRaises(grpc.RpcError):
                list(g.process(ch)(iter([g.frame('f', 1, b'x', fail=True)]), timeout=10))
        http(srv.maddr, b'nonsense\r\n\r\n')
        self.assertEqual(srv.stop(), 0)
        lines = [l.rstrip('\n') for l in srv.err if l.strip()]
        bad = [l for l in lines if logfmt(l) is None]
        self.assertEqual(bad, [], 'lines not in key=value form')
        events = [logfmt(l) for l in lines]
        first = events[0]
        self.assertEqual((first['level'], first['shards']), ('info', '2'))
        self.assertRegex(first['msg'], r'^listening on 127\.0\.0\.1:\d+ with 2 shards$')
        self.assertEqual(first['metrics'], '%s:%d' % srv.maddr)
        access = [e for e in events if e['msg'] == 'access']
        self.assertEqual(len(access), 2, access)
        ok = [e for e in access if e['status'] == 'OK'][0]
        self.assertEqual(ok['method'], '/' + P)
        self.assertRegex(ok['peer'], r'^127\.0\.0\.1:\d+$')
        self.assertEqual((ok['messages_in'], ok['messages_out']), ('3', '3'))
        nbytes = sum(len(g.frame('k', i, b'abc')) for i in range(1, 4))
        self.assertEqual((ok['bytes_in'], ok['bytes_out']), (str(nbytes), str(nbytes)))
        self.assertGreater(float(ok['duration_s']), 0)
        self.assertNotIn('message', ok)
        failed = [e for e in access if e['status'] != 'OK'][0]
        self.assertEqual(failed['status'], 'INTERNAL')
        self.assertTrue(failed['message'])
        self.assertIn('shutting down gracefully', [e['msg'] for e in events])
        self.assertEqual(events[-1]['msg'], 'stopped')
        stats = [e for e in events if e['msg'] == 'stats' and e['method'] == '/' + P]
        self.assertEqual(len(stats), 1)
        self.assertEqual((stats[0]['streams_opened'], stats[0]['messages_in']), ('2', '4'))

    def test_no_access_log_without_the_flag(self):
        srv = g.Server('--shards', '1')
        with srv.channel() as ch:
            list(g.process(ch)(iter([g.frame('k', 1, b'abc')]), timeout=10))
        self.assertEqual(srv.stop(), 0)
        self.assertFalse([l for l in srv.err if 'msg="access"' in l])
        self.assertFalse([l for l in srv.err if ' metrics=' in l], 'no endpoint unless asked')


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
