#!/usr/bin/python3
"""examples/chat end to end: chat_server driven by grpcio.

Starts chat_server on 127.0.0.1:0 (its port read from its first stdout line),
talks to chat.v1.Chat/Join with messages from chat.proto (compiled by protoc
--python_out into a temporary directory), reads the server's event lines from
its stdout, stops it with SIGTERM (exit 0 expected) and checks the counters it
prints. Every wait is bounded and says what it waited for. Prints
"N passed, N failed" last.

usage: test_chat.py PATH/TO/chat_server
"""
import atexit
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
JOIN = '/chat.v1.Chat/Join'
TOKENS = ('alice-token', 'bob-token', 'carol-token', 'dave-token')  # chat_server's users
TYPING_MS = 2000  # long enough that a cancel reaches the server first, however loaded the machine
SERVER = None     # the path, from argv
S = None          # the running server
pb = None         # chat_pb2
opened = 0        # streams opened with a good token
refused = 0       # streams refused at open
messages_in = 0   # messages sent on opened streams (all of them read by the server)
counter_mu = threading.Lock()


def load_messages():
    out = tempfile.mkdtemp(prefix='chat_pb_')
    atexit.register(shutil.rmtree, out, True)
    subprocess.run(['protoc', '--python_out=' + out, '-I' + HERE, os.path.join(HERE, 'chat.proto')], check=True)
    sys.path.insert(0, out)
    import chat_pb2
    return chat_pb2


class Server:
    def __init__(self):
        self.proc = subprocess.Popen([SERVER, '--listen', '127.0.0.1:0', '--typing-ms', str(TYPING_MS)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.cv = threading.Condition()
        self.err = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        m = self.wait_line(r'^port (\d+)$', 10)
        self.addr = '127.0.0.1:%s' % m.group(1)

    def _read(self):
        for line in self.proc.stdout:
            with self.cv:
                self.lines.append(line.rstrip('\n'))
                self.cv.notify_all()
        with self.cv:
            self.lines.append(None)  # end of output
            self.cv.notify_all()

    def wait_line(self, pattern, timeout=10):
        """The first server line matching pattern, waiting up to timeout seconds for it."""
        deadline = time.time() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    m = line is not None and re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.time()
                if left <= 0 or (self.lines and self.lines[-1] is None):
                    raise AssertionError('no server line matching %r within %ss; lines:\n%s\nstderr:\n%s' %
                                         (pattern, timeout, '\n'.join(l for l in self.lines if l), ''.join(self.err)))
                self.cv.wait(left)

    def log(self):
        with self.cv:
            return [l for l in self.lines if l is not None]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


class Member:
    """One Join stream: requests from a queue, replies gathered by a thread."""

    def __init__(self, ch, token):
        global opened, refused
        self.good = token in TOKENS
        with counter_mu:
            if self.good:
                opened += 1
            else:
                refused += 1
        self.q = queue.Queue()
        self.got = []
        self.cv = threading.Condition()
        self.ended = False
        self.error = None
        md = [('authorization', 'Bearer ' + token)] if token else None
        join = ch.stream_stream(JOIN, request_serializer=pb.ClientMessage.SerializeToString,
                                response_deserializer=pb.ServerMessage.FromString)
        self.call = join(self._requests(), metadata=md, timeout=60)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _requests(self):
        while True:
            m = self.q.get()
            if m is None:
                return  # the client's half-close
            yield m

    def _read(self):
        try:
            for r in self.call:
                with self.cv:
                    self.got.append(r)
                    self.cv.notify_all()
        except grpc.RpcError as e:
            self.error = e
        finally:
            with self.cv:
                self.ended = True
                self.cv.notify_all()

    def send(self, room, action, **fields):
        global messages_in
        if self.good:
            with counter_mu:
                messages_in += 1
        m = pb.ClientMessage(room=room)
        getattr(m, action).SetInParent()
        for k, v in fields.items():
            setattr(getattr(m, action), k, v)
        self.q.put(m)

    def enter(self, room):
        self.send(room, 'enter')
        self.wait('Entered %s' % room, lambda got: any(g.WhichOneof('event') == 'entered' and g.entered.room == room
                                                        for g in got))

    def events(self, kind):
        with self.cv:
            return [getattr(g, kind) for g in self.got if g.WhichOneof('event') == kind]

    def wait(self, what, pred, timeout=15):
        deadline = time.time() + timeout
        with self.cv:
            while not pred(self.got):
                left = deadline - time.time()
                if left <= 0 or self.ended:
                    raise AssertionError('waiting for %s (%s): got %r, error %r' %
                                         (what, 'stream ended' if self.ended else 'timed out after %ss' % timeout,
                                          self.got, self.error))
                self.cv.wait(left)

    def half_close(self):
        self.q.put(None)

    def cancel(self):
        self.call.cancel()
        self.q.put(None)  # frees grpcio's request thread

    def wait_end(self, timeout=15):
        self.reader.join(timeout)
        if self.reader.is_alive():
            raise AssertionError('the stream did not end within %ss; got %r' % (timeout, self.got))


def setUpModule():
    global S, pb
    pb = load_messages()
    S = Server()


def tearDownModule():
    rc = S.stop()
    assert rc == 0, 'chat_server exited %d on SIGTERM; stderr:\n%s' % (rc, ''.join(S.err))
    m = S.wait_line(r'^stats /chat.v1.Chat/Join: opened (\d+) refused (\d+) ended (\d+) ok \d+ messages_in (\d+)')
    got = tuple(int(x) for x in m.groups())
    assert got == (opened, refused, opened, messages_in), \
        'stats (opened, refused, ended, messages_in) %r, expected %r' % (got, (opened, refused, opened, messages_in))
    print('server counters at exit: opened %d refused %d ended %d messages_in %d' % got)


def chan():
    return grpc.insecure_channel(S.addr)


def unique(prefix):
    return '%s-%d' % (prefix, int(time.time() * 1e6))


class Auth(unittest.TestCase):
    def test_refused_at_open_before_any_message(self):
        room = unique('vault')
        with chan() as ch:
            before = sum('auth refused' in l for l in S.log())
            for token in (None, 'mallory-token'):
                m = Member(ch, token)
                m.send(room, 'enter')
                m.send(room, 'say', text='let me in')
                m.wait_end()
                self.assertIsNotNone(m.error, 'the stream was refused')
                self.assertEqual(m.error.code(), grpc.StatusCode.UNAUTHENTICATED)
                self.assertEqual(m.error.details(), 'missing or unknown bearer token')
                self.assertEqual(m.got, [], 'nothing was answered')
            deadline = time.time() + 10
            while sum('auth refused' in l for l in S.log()) < before + 2 and time.time() < deadline:
                time.sleep(0.02)
            self.assertEqual(sum('auth refused' in l for l in S.log()), before + 2, 'the interceptor refused both')
            # A known user gets in on the same channel; the refused streams'
            # room never reached a handler (each handled message is logged).
            ok = Member(ch, 'alice-token')
            ok.enter(unique('hall'))
            ok.half_close()
            ok.wait_end()
            self.assertIsNone(ok.error)
            self.assertFalse([l for l in S.log() if room in l], 'no handler saw a refused stream\'s message')


class HalfClose(unittest.TestCase):
    def test_summary_header_and_trailer_at_half_close(self):
        room = unique('hall')
        with chan() as ch:
            a = Member(ch, 'alice-token')
            a.enter(room)
            for i in range(3):
                a.send(room, 'say', text='hello %d' % i)
            a.wait('3 Posted', lambda got: sum(g.WhichOneof('event') == 'posted' for g in got) == 3)
            self.assertEqual([p.seq for p in a.events('posted')], [1, 2, 3])
            self.assertEqual(dict(a.call.initial_metadata()).get('x-chat-user'), 'alice', 'the response header')
            time.sleep(0.3)  # the stream stays open: no summary before the half-close
            self.assertEqual(a.events('summary'), [], 'no summary while the client still sends')
            self.assertFalse(a.ended)
            a.half_close()
            a.wait_end()
            self.assertIsNone(a.error, 'ended OK')
            self.assertEqual(a.call.code(), grpc.StatusCode.OK)
            self.assertEqual(a.got[-1].WhichOneof('event'), 'summary', 'the summary is the last message')
            self.assertEqual((a.got[-1].summary.posted, a.got[-1].summary.received), (3, 0))
            self.assertEqual(dict(a.call.trailing_metadata()).get('x-chat-sent'), '3', 'the response trailer')
            S.wait_line(r'^half-close alice: posted 3 received 0$')
            # the access log: Enter + 3 Say in; Entered + 3 Posted + the Summary out
            S.wait_line(r'^access alice 127\.0\.0\.1:\d+ /chat\.v1\.Chat/Join OK in 4 out 5 ')


class Pushes(unittest.TestCase):
    def test_members_get_the_room_pushes_in_room_order(self):
        lobby, other = unique('lobby'), unique('other')
        n = 20
        with chan() as ch:
            alice, bob, dave, carol = (Member(ch, u + '-token') for u in ('alice', 'bob', 'dave', 'carol'))
            for m in (alice, bob, dave):
                m.enter(lobby)
            carol.enter(other)
            # bob and dave talk at once; alice only listens.
            for i in range(n):
                bob.send(lobby, 'say', text='bob %d' % i)
                dave.send(lobby, 'say', text='dave %d' % i)
            alice.wait('%d pushes' % (2 * n), lambda got: sum(g.WhichOneof('event') == 'message' for g in got) == 2 * n)
            bob.wait('dave\'s pushes', lambda got: sum(g.WhichOneof('event') == 'message' for g in got) == n)
            dave.wait('bob\'s pushes', lambda got: sum(g.WhichOneof('event') == 'message' for g in got) == n)
            bob.wait('bob\'s Posted', lambda got: sum(g.WhichOneof('event') == 'posted' for g in got) == n)
            dave.wait('dave\'s Posted', lambda got: sum(g.WhichOneof('event') == 'posted' for g in got) == n)
            heard = alice.events('message')
            self.assertEqual([m.seq for m in heard], list(range(1, 2 * n + 1)),
                             'one order per room, no gap: alice heard every message, numbered as the room ran them')
            for who in ('bob', 'dave'):
                self.assertEqual([m.text for m in heard if getattr(m, 'from') == who],  # 'from' is a Python keyword
                                 ['%s %d' % (who, i) for i in range(n)], '%s\'s messages in his order' % who)
            for me, them in ((bob, 'dave'), (dave, 'bob')):
                got = me.events('message')
                self.assertEqual({getattr(m, 'from') for m in got}, {them}, 'no member hears itself')
                self.assertEqual([m.seq for m in got], sorted(m.seq for m in got))
            posted = sorted(p.seq for p in bob.events('posted') + dave.events('posted'))
            self.assertEqual(posted, list(range(1, 2 * n + 1)), 'each message posted once, numbered once')
            self.assertEqual(carol.events('message'), [], 'another room hears nothing')
            for m in (alice, bob, dave, carol):
                m.half_close()
            for m in (alice, bob, dave, carol):
                m.wait_end()
                self.assertIsNone(m.error)
            summaries = [(m.got[-1].summary.posted, m.got[-1].summary.received) for m in (alice, bob, dave, carol)]
            self.assertEqual(summaries, [(0, 2 * n), (n, n), (n, n), (0, 0)], 'the summaries count what was sent')
            self.assertEqual([dict(m.call.trailing_metadata()).get('x-chat-sent') for m in (alice, bob, dave)],
                             ['0', str(n), str(n)])


class Typing(unittest.TestCase):
    def typing_pair(self, room):
        ch = chan()
        alice, bob = Member(ch, 'alice-token'), Member(ch, 'bob-token')
        alice.enter(room)
        bob.enter(room)
        bob.send(room, 'typing')
        alice.wait('bob is typing', lambda got: any(g.WhichOneof('event') == 'typing' and g.typing.active
                                                    for g in got))
        return ch, alice, bob

    def test_typing_notice_expires_on_its_own(self):
        room = unique('desk')
        ch, alice, bob = self.typing_pair(room)
        with ch:
            alice.wait('bob stopped typing', lambda got: any(g.WhichOneof('event') == 'typing' and not g.typing.active
                                                             for g in got), timeout=TYPING_MS / 1000 + 15)
            S.wait_line(r'^typing bob %s expired$' % room)
            for m in (alice, bob):
                m.half_close()
                m.wait_end()
                self.assertIsNone(m.error)

    def test_typing_timer_does_not_fire_after_the_stream_is_cancelled(self):
        room = unique('desk')
        ch, alice, bob = self.typing_pair(room)
        with ch:
            bob.cancel()
            bob.wait_end()
            S.wait_line(r'^typing bob %s cancelled: the stream is gone, no notice sent$' % room)
            S.wait_line(r'^access bob 127\.0\.0\.1:\d+ /chat\.v1\.Chat/Join CANCELLED in 2 ')
            time.sleep(TYPING_MS / 1000 + 0.5)  # past the moment the timer was due
            self.assertFalse([t for t in alice.events('typing') if not t.active],
                             'no "stopped typing" after the cancel')
            self.assertFalse([l for l in S.log() if l == 'typing bob %s expired' % room], 'the timer did not fire')
            alice.half_close()
            alice.wait_end()
            self.assertIsNone(alice.error)


if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit('usage: test_chat.py PATH/TO/chat_server')
    SERVER = sys.argv[1]
    result = unittest.main(argv=[sys.argv[0]] + sys.argv[2:], exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)  # the module's setup and teardown (the stop) included
    tests_failed = sum(isinstance(t, unittest.TestCase) for t, _ in result.failures + result.errors)
    print('%d passed, %d failed' % (result.testsRun - tests_failed, failed))
    sys.exit(1 if failed or not result.testsRun else 0)
