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

Prints "N passed, N failed" last.

usage: test_conn_timers.py PATH/TO/bidistreamd [test-name-substring]
"""
import os
import socket
import struct
import sys
import time
import unittest

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


class Timers(unittest.TestCase):
    srv = None

    @classmethod
    def setUpClass(cls):
        cls.srv = g.Server('--shards', '2', '--handshake-timeout', '300ms', '--idle-timeout', '400ms',
                           '--keepalive-time', '300ms', '--keepalive-timeout', '400ms',
                           '--send-timeout', '500ms')
        cls.ch = cls.srv.channel()

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        assert cls.srv.stop() == 0

    assert_still_serving = f.Floods.assert_still_serving

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

if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
