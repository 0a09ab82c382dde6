#!/usr/bin/python3
"""Connection timers of bidistreamd (docs/SERVICE.md: idle, silent and dead peers are
closed by timers), each hit over a real socket with the timer shortened by
its flag, while a well-behaved python3-grpcio client on another connection is
served:

  --handshake-timeout   no preface/SETTINGS: closed
  --idle-timeout        no stream open: a GOAWAY(NO_ERROR) notice, a stream
                        opened just then still served, the final
                        GOAWAY(NO_ERROR) a second later, then closed
  --keepalive-time/-timeout  a peer that never answers our PING: closed;
                        one that answers stays
  --ping-min-interval   a client pinging too often: GOAWAY(ENHANCE_YOUR_CALM,
                        debug data "too_many_pings"), then closed
  --send-timeout        a peer that stops reading while replies are due: closed
  --max-connection-age(-grace)  a connection this old (+-10%) gets the GOAWAY
                        notice, a second later the final GOAWAY; a stream
                        finishing within the grace completes, one outliving
                        it ends UNAVAILABLE and the connection closes;
                        grpcio reconnects and loses nothing; ranges checked

Prints "N passed, N failed" last.

usage: test_conn_timers.py PATH/TO/bidistreamd [test-name-substring]
"""
import os
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

NO_ERROR = 0x0
SETTINGS_INITIAL_WINDOW_SIZE = 0x4


def wait_closed(conn, deadline_s, on_frame=None):
    """Reads frames until the server closes the socket; returns (closed, frames, seconds)."""
    frames, start = [], time.monotonic()
    conn.s.settimeout(0.2)
    while time.monotonic() - start < deadline_s:
        try:
            chunk = conn.s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return True, frames, time.monotonic() - start
        if not chunk:
            return True, frames, time.monotonic() - start
        conn.buf += chunk
        while len(conn.buf) >= 9:
            n = int.from_bytes(conn.buf[:3], 'big')
            if len(conn.buf) < 9 + n:
                break
            fr = (conn.buf[3], conn.buf[4], int.from_bytes(conn.buf[5:9], 'big') & 0x7FFFFFFF, conn.buf[9:9 + n])
            conn.buf = conn.buf[9 + n:]
            frames.append(fr)
            if on_frame:
                on_frame(fr)
    return False, frames, time.monotonic() - start


def goaway(frames):
    """(code, debug data) of the first GOAWAY, or None."""
    for ftype, _, _, payload in frames:
        if ftype == f.GOAWAY and len(payload) >= 8:
            return int.from_bytes(payload[4:8], 'big'), payload[8:]
    return None


class FreshConnection:
    """For servers whose timers end idle or aging connections: a channel
    kept by the class would itself be going away (an idle GOAWAY, then
    close, racing the next call), so none is kept and "still serving" is
    asked on a connection of its own. The server: SERVER_ARGS."""

    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server(*cls.SERVER_ARGS)

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def assert_still_serving(self):
        """A fresh connection gets every reply in order."""
        with self.fresh_channel() as ch:
            got = [g.unframe(r)['seq'] for r in g.process(ch)(iter([g.frame('k', i) for i in range(1, 6)]),
                                                              timeout=30)]
        self.assertEqual(got, [1, 2, 3, 4, 5])
        self.assertIsNone(self.srv.proc.poll(), 'the server died')

    def fresh_channel(self):
        """A channel with its own connection: grpcio shares subchannels across channels by default."""
        return grpc.insecure_channel(self.srv.addr, options=[('grpc.use_local_subchannel_pool', 1)])


class Timers(FreshConnection, unittest.TestCase):
    srv = None

    SERVER_ARGS = ('--shards', '2', '--handshake-timeout', '300ms', '--idle-timeout', '400ms',
                   '--keepalive-time', '300ms', '--keepalive-timeout', '400ms', '--send-timeout', '500ms')

    def test_silent_client_is_closed_by_the_handshake_timeout(self):
        for opening in (b'', f.PREFACE[:10]):  # nothing at all; half a preface
            c = f.Conn(self.srv.addr)
            c.send(opening)
            closed, frames, took = wait_closed(c, 10)
            c.close()
            self.assertTrue(closed, 'still open after 10 s (sent %r)' % opening)
            self.assertGreaterEqual(took, 0.2, 'closed before the timeout')
        self.assert_still_serving()

    def test_connection_without_streams_gets_goaway_no_error_then_closed(self):
        c = f.Conn(self.srv.addr)
        c.start()
        # Answer keepalive PINGs so that only the idle timer can act.
        closed, frames, took = wait_closed(c, 10, on_frame=lambda fr: self.ack_ping(c, fr))
        c.close()
        self.assertTrue(closed, 'idle connection still open after 10 s: %r' % [x[0] for x in frames])
        self.assertEqual(goaway(frames), (NO_ERROR, b''), [x[0] for x in frames])
        self.assertGreaterEqual(took, 0.3)
        self.assert_still_serving()

    def test_a_stream_opened_as_the_idle_goaway_leaves_is_still_served(self):
        """The client opens a stream the moment the server's idle GOAWAY
        arrives (as a client does that started a call just then): the first
        GOAWAY is a notice (last stream 2^31 - 1), so that stream is served;
        the final GOAWAY names it as the last, then the connection closes.
        Before, the server closed at once: the stream met a closed socket
        (grpcio: UNAVAILABLE "Broken pipe", seen in a full test run)."""
        c = f.Conn(self.srv.addr)
        c.start()
        raced = []

        def on_frame(fr):
            self.ack_ping(c, fr)
            if fr[0] == f.GOAWAY and not raced:
                raced.append(True)
                msg = g.frame('race', 1, b'raced-stream')
                c.send(f.h2frame(f.HEADERS, f.END_HEADERS, 1, f.request_headers()) +
                       f.h2frame(f.DATA, f.END_STREAM, 1, b'\0' + struct.pack('>I', len(msg)) + msg))

        closed, frames, _ = wait_closed(c, 10, on_frame=on_frame)
        c.close()
        kinds = [(x[0], x[2]) for x in frames]
        self.assertTrue(closed, 'idle connection still open after 10 s: %r' % kinds)
        last_ids = [int.from_bytes(x[3][0:4], 'big') & 0x7FFFFFFF for x in frames if x[0] == f.GOAWAY]
        self.assertEqual(last_ids, [2 ** 31 - 1, 1], 'a notice, then the final GOAWAY naming the raced stream')
        self.assertEqual([goaway([x]) for x in frames if x[0] == f.GOAWAY], [(NO_ERROR, b'')] * 2)
        data = b''.join(x[3] for x in frames if x[0] == f.DATA and x[2] == 1)
        self.assertIn(b'raced-stream', data, 'the raced stream was answered: %r' % kinds)
        self.assertTrue(any(x[0] == f.HEADERS and x[2] == 1 and x[1] & f.END_STREAM for x in frames),
                        'the raced stream ended with trailers: %r' % kinds)
        self.assertFalse(any(x[0] == f.RST_STREAM for x in frames), kinds)
        self.assert_still_serving()

    @staticmethod
    def ack_ping(conn, fr):
        ftype, flags, _, payload = fr
        if ftype == f.PING and not flags & f.ACK:
            conn.send(f.h2frame(f.PING, f.ACK, 0, payload))

    def open_slow_stream(self, c):
        """A stream whose one message takes 4 s: the connection is not idle."""
        msg = g.frame('k', 1, b'p', work_us=4 * 1000 * 1000)
        c.send(f.h2frame(f.HEADERS, f.END_HEADERS, 1, f.request_headers()) +
               f.h2frame(f.DATA, 0, 1, b'\0' + struct.pack('>I', len(msg)) + msg))

    def test_peer_that_never_answers_our_ping_is_closed(self):
        c = f.Conn(self.srv.addr)
        c.start()
        self.open_slow_stream(c)
        closed, frames, took = wait_closed(c, 10)
        c.close()
        pings = [x for x in frames if x[0] == f.PING and not x[1] & f.ACK]
        self.assertTrue(pings, 'the server sent no keepalive PING')
        self.assertTrue(closed, 'a dead peer is still connected after 10 s')
        self.assertGreaterEqual(took, 0.6, 'closed before keepalive time + timeout')
        self.assertIsNone(goaway(frames))
        self.assert_still_serving()

    def test_peer_that_answers_our_pings_stays(self):
        c = f.Conn(self.srv.addr)
        c.start()
        self.open_slow_stream(c)
        closed, frames, _ = wait_closed(c, 2.5, on_frame=lambda fr: self.ack_ping(c, fr))
        c.close()
        pings = [x for x in frames if x[0] == f.PING and not x[1] & f.ACK]
        self.assertFalse(closed, 'closed although every PING was answered: %r' % [x[0] for x in frames])
        self.assertGreaterEqual(len(pings), 2, 'keepalive PINGs while the stream waits')
        self.assert_still_serving()

    def test_client_pinging_too_often_gets_too_many_pings(self):
        c = f.Conn(self.srv.addr)
        c.start()
        self.open_slow_stream(c)
        for i in range(4):  # the default minimum interval is 5 minutes
            c.send(f.h2frame(f.PING, 0, 0, struct.pack('>Q', i)))
        closed, frames, _ = wait_closed(c, 10)
        c.close()
        self.assertEqual(goaway(frames), (f.ENHANCE_YOUR_CALM, b'too_many_pings'))
        self.assertTrue(closed, 'still open after the GOAWAY')
        self.assert_still_serving()



class SendTimeout(unittest.TestCase):
    """Keepalive off: a peer that stops reading answers no PING either, and
    here only the send-progress timer may act."""

    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server('--send-timeout', '500ms', '--keepalive-time', '0')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    assert_still_serving = f.Floods.assert_still_serving

    def test_peer_that_stops_reading_is_closed_by_the_send_timeout(self):
        """64 streams each send one 60 KB message whose echo is due 2 s later,
        while the client still reads (only WINDOW_UPDATEs arrive then); then
        it stops reading. ~3.8 MB of replies fall due: the kernel's buffers
        take about 1 MB, the rest waits in the server and makes no progress."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = self.srv.addr.rsplit(':', 1)
        s.connect((host, int(port)))
        c = f.Conn.__new__(f.Conn)
        c.s, c.buf = s, b''
        c.send(f.PREFACE + f.h2frame(f.SETTINGS, 0, 0, struct.pack('>HI', SETTINGS_INITIAL_WINDOW_SIZE, 2**31 - 1)) +
               f.h2frame(f.WINDOW_UPDATE, 0, 0, struct.pack('>I', 2**31 - 1 - 65535)))
        window = 65535  # the connection's send window the server gives us
        s.settimeout(5)
        for k in range(64):
            msg = g.frame('k%d' % k, 1, b'r' * 60000, work_us=2 * 1000 * 1000)
            body = b'\0' + struct.pack('>I', len(msg)) + msg
            deadline = time.monotonic() + 10
            while window < len(body):
                self.assertLess(time.monotonic(), deadline, 'no connection WINDOW_UPDATE from the server')
                _, frames, _ = wait_closed(c, 0.2)
                window += sum(int.from_bytes(p[:4], 'big') for t, _, sid, p in frames
                              if t == f.WINDOW_UPDATE and sid == 0)
            sid = 1 + 2 * k
            c.send(f.h2frame(f.HEADERS, f.END_HEADERS, sid, f.request_headers()) +
                   b''.join(f.h2frame(f.DATA, 0, sid, body[i:i + 16384]) for i in range(0, len(body), 16384)))
            window -= len(body)
        time.sleep(4.0)  # not reading: the replies fall due, and the server's output stalls
        closed, _, _ = wait_closed(c, 15)
        s.close()
        self.assertTrue(closed, 'a peer that stopped reading is still connected')
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any('no send progress' in l for l in self.srv.err):
            time.sleep(0.1)
        self.assertTrue(any('no send progress' in l for l in self.srv.err), ''.join(self.srv.err[-5:]))
        self.assert_still_serving()

class ConnectionAge(FreshConnection, unittest.TestCase):
    """--max-connection-age 1s --max-connection-age-grace 5s: each connection
    gets its notice 0.9-1.1 s after accept, its final GOAWAY a second later,
    and its streams still open 5 s after the notice end UNAVAILABLE."""

    SERVER_ARGS = ('--shards', '2', '--max-connection-age', '1s', '--max-connection-age-grace', '5s',
                   '--log-level', 'debug')

    def aged_lines(self):
        return sum('max connection age: GOAWAY' in line for line in self.srv.err)

    @staticmethod
    def goaways(frames):
        """(last stream id, error code) of each GOAWAY, in order."""
        return [(int.from_bytes(p[0:4], 'big') & 0x7FFFFFFF, int.from_bytes(p[4:8], 'big'))
                for t, _, _, p in frames if t == f.GOAWAY]

    def test_connection_without_streams_gets_goaway_at_its_age_then_closed(self):
        c = f.Conn(self.srv.addr)
        c.start()
        closed, frames, took = wait_closed(c, 10, on_frame=lambda fr: Timers.ack_ping(c, fr))
        c.close()
        self.assertTrue(closed, 'an aged connection is still open after 10 s: %r' % [x[0] for x in frames])
        self.assertEqual(self.goaways(frames), [(2 ** 31 - 1, NO_ERROR), (0, NO_ERROR)],
                         'a notice, then the final GOAWAY')
        self.assertGreaterEqual(took, 0.85, 'GOAWAY before the age less its 10% jitter')
        self.assert_still_serving()

    def test_stream_finishing_within_the_grace_completes_after_both_goaways(self):
        """Its one Frame's reply is due 2.5 s after accept: after the final
        GOAWAY (at most 2.1 s), before the grace ends (at least 5.9 s)."""
        c = f.Conn(self.srv.addr)
        c.start()
        msg = g.frame('long', 7, b'finishes-in-grace', work_us=2500 * 1000)
        c.send(f.h2frame(f.HEADERS, f.END_HEADERS, 1, f.request_headers()) +
               f.h2frame(f.DATA, f.END_STREAM, 1, b'\0' + struct.pack('>I', len(msg)) + msg))
        closed, frames, took = wait_closed(c, 10, on_frame=lambda fr: Timers.ack_ping(c, fr))
        c.close()
        kinds = [(x[0], x[2]) for x in frames]
        self.assertTrue(closed, 'still open after 10 s: %r' % kinds)
        self.assertEqual(self.goaways(frames), [(2 ** 31 - 1, NO_ERROR), (1, NO_ERROR)],
                         'the final GOAWAY names the open stream: %r' % kinds)
        final = max(i for i, x in enumerate(frames) if x[0] == f.GOAWAY)
        data = b''.join(x[3] for x in frames[final:] if x[0] == f.DATA and x[2] == 1)
        self.assertIn(b'finishes-in-grace', data, 'the reply came after the final GOAWAY: %r' % kinds)
        self.assertTrue(any(x[0] == f.HEADERS and x[2] == 1 and x[1] & f.END_STREAM for x in frames[final:]),
                        'the stream ended with trailers: %r' % kinds)
        self.assertFalse(any(x[0] == f.RST_STREAM for x in frames), kinds)
        self.assertGreaterEqual(took, 2.4, 'closed before the stream was over')
        self.assert_still_serving()

    def test_grpcio_stream_sending_through_the_goaways_completes_with_every_reply(self):
        """A grpcio stream sends a Frame every 100 ms for 2.5 s (through the
        notice and the final GOAWAY), then half-closes: every reply, in order, OK."""
        def requests():
            for i in range(1, 26):
                yield g.frame('paced', i, b'p%d' % i)
                time.sleep(0.1)

        with self.fresh_channel() as ch:
            got = [g.unframe(r)['seq'] for r in g.process(ch)(requests(), timeout=30)]
        self.assertEqual(got, list(range(1, 26)))

    def test_stream_outliving_the_grace_ends_unavailable_and_the_connection_closes(self):
        before = sum('msg="max connection age: grace period over"' in line for line in self.srv.err)
        start = time.monotonic()
        with self.fresh_channel() as ch:
            with self.assertRaises(grpc.RpcError) as e:
                list(g.process(ch)(iter([g.frame('forever', 1, work_us=30 * 1000 * 1000)]), timeout=30))
        took = time.monotonic() - start
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE, e.exception.details())
        self.assertEqual(e.exception.details(), 'max connection age: grace period over')
        self.assertGreaterEqual(took, 5.5, 'ended before age + grace less jitter')
        self.assertLess(took, 25, 'not the grace: the 30 s deadline or the work ended it')
        deadline = time.monotonic() + 10
        over = 'msg="max connection age: grace period over"'
        while time.monotonic() < deadline and sum(over in l for l in self.srv.err) == before:
            time.sleep(0.1)
        self.assertGreater(sum('msg="max connection age: grace period over"' in l for l in self.srv.err), before,
                           'the server logged no grace period over: ' + ''.join(self.srv.err[-5:]))
        self.assert_still_serving()

    def test_grpcio_client_reconnects_across_ages_and_loses_nothing(self):
        """4 threads run short streams back to back on one channel for 5 s:
        its connections age (each one after another), grpcio reconnects, and
        every stream ends OK with each of its replies in order."""
        before = self.aged_lines()
        errors, done = [], []
        end = time.monotonic() + 5.0

        def worker(w):
            n = 0
            try:
                while time.monotonic() < end:
                    n += 1
                    reqs = [g.frame('w%d-%d' % (w, i % 3), i, b'%d/%d/%d' % (w, n, i), work_us=(i % 4) * 500)
                            for i in range(1, 21)]
                    replies = [g.unframe(r) for r in g.process(ch)(iter(reqs), timeout=30)]
                    for k in range(3):  # keyed order: per key, in sending order
                        seqs = [r['seq'] for r in replies if r['key'] == 'w%d-%d' % (w, k)]
                        want = [i for i in range(1, 21) if i % 3 == k]
                        if seqs != want:
                            errors.append('worker %d stream %d key %d: %r' % (w, n, k, seqs))
                    if sorted(r['payload'] for r in replies) != sorted(b'%d/%d/%d' % (w, n, i) for i in range(1, 21)):
                        errors.append('worker %d stream %d: replies lost or changed' % (w, n))
                    time.sleep(0.05)
                done.append(n)
            except Exception as e:  # a thread's failure must fail the test
                errors.append('worker %d stream %d: %r' % (w, n, e))

        with self.fresh_channel() as ch:
            threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads), 'a worker still runs after 60 s')
        self.assertEqual(errors, [])
        self.assertEqual(len(done), 4)
        self.assertGreaterEqual(self.aged_lines() - before, 2,
                                'the channel reconnected after its first connection aged')

    def test_age_flags_out_of_range_or_grace_without_age_exit_2_with_one_line(self):
        for args, why in ((['--max-connection-age', '25h'], 'out of range'),
                          (['--max-connection-age', '-1s'], '--max-connection-age'),
                          (['--max-connection-age', '1s', '--max-connection-age-grace', '25h'], 'out of range'),
                          (['--max-connection-age-grace', '1s'], 'needs --max-connection-age')):
            out = subprocess.run([g.SERVER, '--listen', '127.0.0.1:0', *args], capture_output=True, text=True,
                                 timeout=30)
            self.assertEqual(out.returncode, 2, (args, out.stderr))
            lines = [l for l in out.stderr.splitlines() if l.strip()]
            self.assertEqual(len(lines), 1, (args, out.stderr))
            self.assertIn(why, lines[0])
        out = subprocess.run([g.SERVER, '--check-config', '--max-connection-age', '30m',
                              '--max-connection-age-grace', '90s'], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn('max-connection-age = 30m\n', out.stdout)
        self.assertIn('max-connection-age-grace = 90s\n', out.stdout)


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
