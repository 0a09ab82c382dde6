#!/usr/bin/python3
"""The stream API of bidistream/server.h, end to end, with grpcio as the client.

tests/e2e/api_server.c is built on the public API only; each of its methods
shows one capability: request metadata (-bin decoded) and response headers
and trailers, the peer and the deadline, an early end with any status (OK
included), pushes from another thread, on_end firing with work in flight
(cancel, deadline), on_half_close answering a client-streaming call after
work in flight, unary enforcement, an interceptor refusing a stream before
any message is read, and the live counters. What the server saw that the
client cannot see goes to its event log (/test.Api/Events). Prints
"N passed, N failed" last.

usage: test_api.py PATH/TO/api_server
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_h2_floods as h2  # noqa: E402  (a raw HTTP/2 client)
import test_reflection as refl  # noqa: E402  (the reflection messages)

SERVER = None
ident = dict(request_serializer=lambda x: x, response_deserializer=lambda x: x)


class Server:
    def __init__(self):
        # api.proto's descriptor set, for reflection (bds_server_add_descriptors).
        self.desc = os.path.join(refl.gen_dir, 'api.desc')
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run(['protoc', '-I' + here, '--descriptor_set_out=' + self.desc, os.path.join(here, 'api.proto')],
                       check=True, timeout=60)
        self.proc = subprocess.Popen([SERVER, '2', self.desc], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r'port (\d+)', line)
        if not m:
            self.proc.kill()
            raise RuntimeError('api_server did not start: %r %s' % (line, self.proc.stderr.read()))
        self.addr = '127.0.0.1:%s' % m.group(1)
        self.err = []
        self.reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.reader.join(5)
        text = ''.join(self.err)
        if 'Sanitizer' in text or 'runtime error' in text:
            raise AssertionError('sanitizer report from api_server:\n' + text)
        return rc


S = None


def setUpModule():
    global S
    refl.setUpModule()
    S = Server()


def tearDownModule():
    rc = S.stop()
    refl.tearDownModule()
    assert rc == 0, 'api_server exited %d on SIGTERM' % rc


def chan():
    return grpc.insecure_channel(S.addr)


def events(ch):
    """The server's event log since the last call (and clears it)."""
    return ch.unary_unary('/test.Api/Events', **ident)(b'', timeout=10).decode()


def wait_event(ch, pattern, timeout=10):
    """Polls the event log until a line matches; returns the log seen so far."""
    seen = ''
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen += events(ch)
        if re.search(pattern, seen, re.M):
            return seen
        time.sleep(0.05)
    raise AssertionError('no event matching %r within %ss; events were:\n%s' % (pattern, timeout, seen))


def bidi(ch, method, msgs, metadata=None, timeout=10):
    call = ch.stream_stream(method, **ident)(iter(msgs), metadata=metadata, timeout=timeout)
    replies = list(call)
    return call, replies


class Metadata(unittest.TestCase):
    def test_metadata_both_ways_with_bin_values(self):
        with chan() as ch:
            events(ch)
            md = [('x-plain', 'hello'), ('x-data-bin', b'\x00\x01\x02\xff'), ('x-echo-bin', b'\xde\xad\x00\xbe\xef')]
            call, replies = bidi(ch, '/test.Api/Echo', [b'md'], metadata=md)
            self.assertEqual(call.code(), grpc.StatusCode.OK)
            seen = replies[0].decode()
            self.assertIn('x-plain=hello;', seen)
            self.assertIn('x-data-bin=000102ff;', seen, 'a -bin value reaches the handler decoded')
            names = [kv.split('=', 1)[0] for kv in seen.split(';') if kv]
            self.assertFalse([n for n in names if n.startswith(('grpc-', ':')) or n in ('content-type', 'te')],
                             'no reserved header is metadata: %r' % names)
            self.assertIn('user-agent=grpc-python', seen)
            initial = dict(call.initial_metadata())
            trailing = dict(call.trailing_metadata())
            self.assertEqual(initial.get('x-header'), 'h1')
            self.assertEqual(initial.get('x-header-bin'), b'\x00\x01\xff')
            self.assertEqual(trailing.get('x-trailer'), 't1')
            self.assertEqual(trailing.get('x-trailer-bin'), b'\xfe\x00')
            self.assertEqual(trailing.get('x-echo-bin'), b'\xde\xad\x00\xbe\xef', 'a -bin value round trip')
            self.assertNotIn('x-late', initial)
            log = wait_event(ch, r'^md late header')
            self.assertIn('md header OK', log)
            self.assertIn('md bad name E_INVALID', log)
            self.assertIn('md reserved E_INVALID', log)
            self.assertIn('md bad value E_INVALID', log)
            self.assertIn('md late header FAILED_PRECONDITION', log, 'a header after the first reply is refused')

    def test_malformed_bin_metadata_is_refused_and_the_server_serves_on(self):
        with chan() as ch:
            refused = Stats.stats(None, ch, '/test.Api/Echo')['refused']
            c = h2.Conn(S.addr)
            c.start()
            hdrs = h2.request_headers(b'/test.Api/Echo', [(b'x-bad-bin', b'not base64!')])
            c.send(h2.h2frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, hdrs))
            frames = c.frames_until(lambda fs: any(f[0] == h2.HEADERS and f[1] & h2.END_STREAM for f in fs))
            c.close()
            self.assertTrue(any(f[0] == h2.HEADERS and f[1] & h2.END_STREAM and f[2] == 1 for f in frames),
                            'answered trailers-only: %r' % frames)
            self.assertEqual(Stats.stats(None, ch, '/test.Api/Echo')['refused'], refused + 1)
            call, replies = bidi(ch, '/test.Api/Echo', [b'ping'], metadata=[('x-ok-bin', b'\x01')])
            self.assertEqual(replies, [b'ping'])

    def test_peer_and_deadline(self):
        with chan() as ch:
            call, replies = bidi(ch, '/test.Api/Echo', [b'peer', b'deadline'], timeout=30)
            self.assertRegex(replies[0].decode(), r'^127\.0\.0\.1:\d+$')
            left = int(replies[1].decode())
            # grpcio rounds the grpc-timeout it sends up (30 s may go out as 30100m)
            self.assertTrue(20000 < left <= 31000, 'deadline %d ms ahead' % left)
            call = ch.stream_stream('/test.Api/Echo', **ident)(iter([b'deadline']))
            self.assertEqual(list(call), [b'none'])


class Finish(unittest.TestCase):
    def finish_with(self, code_num):
        with chan() as ch:
            events(ch)
            done = threading.Event()

            def reqs():  # the client keeps its side open: the server ends the stream
                yield ('finish:%d' % code_num).encode()
                done.wait(10)
            call = ch.stream_stream('/test.Api/Echo', **ident)(reqs(), timeout=10)
            replies = []
            try:
                for r in call:
                    replies.append(r)
            except grpc.RpcError:
                pass  # a non-OK end: call.code() says which
            done.set()
            log = wait_event(ch, r'^push after finish')
            return call, replies, log

    def test_early_ok_end_delivers_the_replies_made_first(self):
        call, replies, log = self.finish_with(0)
        self.assertEqual(call.code(), grpc.StatusCode.OK, 'ended OK while the client still had its side open')
        self.assertEqual(replies, [b'before-finish'])
        self.assertIn('finish OK', log)
        self.assertIn('finish again E_SESSION_CLOSED', log)
        self.assertIn('reply after finish E_SESSION_CLOSED', log)
        self.assertIn('push after finish E_SESSION_CLOSED', log)
        self.assertRegex(log, r'end /test.Api/Echo OK')

    def test_early_end_with_an_error_status(self):
        call, replies, log = self.finish_with(9)  # FAILED_PRECONDITION
        self.assertEqual(call.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(call.details(), 'finished by the handler')
        self.assertEqual(replies, [b'before-finish'], 'the reply made before the finish still arrives')


class Push(unittest.TestCase):
    def test_pushes_from_another_thread_then_finish(self):
        with chan() as ch:
            done = threading.Event()

            def reqs():  # the client's side stays open: the server ends the stream
                yield b'push:50'
                done.wait(10)
            call = ch.stream_stream('/test.Api/Echo', **ident)(reqs(), timeout=10)
            replies = list(call)
            done.set()
            self.assertEqual(call.code(), grpc.StatusCode.OK)
            self.assertEqual(replies, [('push-%d' % i).encode() for i in range(50)], 'in order, all of them')
            self.assertEqual(dict(call.trailing_metadata()).get('x-pushed'), 'yes')


class Callbacks(unittest.TestCase):
    def test_cancel_reaches_on_end_with_work_in_flight(self):
        with chan() as ch:
            events(ch)
            gate = threading.Event()

            def reqs():
                yield b'hold'
                gate.wait(10)
            call = ch.stream_stream('/test.Api/Echo', **ident)(reqs(), timeout=30)
            wait_event(ch, r'^hold 1$')
            call.cancel()
            gate.set()
            log = wait_event(ch, r'^send after end')
            self.assertRegex(log, r'end /test.Api/Echo CANCELLED .* held 1 cancelled-seen 1')
            self.assertIn('reply after end E_SESSION_CLOSED', log)
            self.assertIn('send after end E_SESSION_CLOSED', log)

    def test_deadline_reaches_on_end_with_work_in_flight(self):
        # grpcio's own timer fires as the server's does and resets the stream
        # (CANCELLED); a raw client sends grpc-timeout and waits for the
        # server's verdict.
        with chan() as ch:
            events(ch)
            c = h2.Conn(S.addr)
            c.start()
            hdrs = h2.request_headers(b'/test.Api/Echo', [(b'grpc-timeout', b'300m')])
            c.send(h2.h2frame(h2.HEADERS, h2.END_HEADERS, 1, hdrs) +
                   h2.h2frame(h2.DATA, 0, 1, b'\x00' + (4).to_bytes(4, 'big') + b'hold'))
            frames = c.frames_until(lambda fs: any(f[0] == h2.HEADERS and f[1] & h2.END_STREAM and f[2] == 1
                                                   for f in fs))
            c.close()
            self.assertTrue(any(f[0] == h2.HEADERS and f[1] & h2.END_STREAM and f[2] == 1 for f in frames),
                            'the server ended the stream: %r' % frames)
            log = wait_event(ch, r'^end /test.Api/Echo')
            self.assertRegex(log, r'end /test.Api/Echo DEADLINE_EXCEEDED .* held 1 cancelled-seen 1')

    def test_half_close_answers_after_the_work_in_flight(self):
        with chan() as ch:
            events(ch)
            call = ch.stream_unary('/test.Api/Sum', **ident)
            resp, c = call.with_call(iter([b'1', b'slow:100', b'2', b'slow:1000']), timeout=10)
            self.assertEqual(resp, b'total=1103 count=4', 'the slow messages were done before the answer')
            self.assertEqual(dict(c.trailing_metadata()).get('x-count'), 'total=1103 count=4')
            log = wait_event(ch, r'^end /test.Api/Sum')
            self.assertIn('sum answer OK', log)
            self.assertIn('sum second answer FAILED_PRECONDITION', log, 'one answer for a client-streaming method')
            self.assertRegex(log, r'end /test.Api/Sum OK')
            if 'sum freed' not in log:
                log += wait_event(ch, r'^sum freed')

    def test_stream_state_outlives_a_handler_running_past_the_end(self):
        """Cancelled with work in flight: on_end runs at once, the handler
        still reads the stream's state afterwards, and the state's free hook
        runs only after that handler is done."""
        with chan() as ch:
            events(ch)
            call = ch.stream_unary('/test.Api/Sum', **ident).future(iter([b'1', b'slow:5']), timeout=10)
            time.sleep(0.1)  # the slow message is in its thread (300 ms)
            call.cancel()
            log = wait_event(ch, r'^sum freed')
            lines = log.splitlines()
            end = next(i for i, l in enumerate(lines) if l.startswith('end /test.Api/Sum CANCELLED'))
            done = lines.index('slow done')
            freed = lines.index('sum freed')
            self.assertLess(end, done, 'on_end came while the work was in flight: ' + log)
            self.assertLess(done, freed, 'the state is freed after the last handler: ' + log)


class Kinds(unittest.TestCase):
    def test_unary_answers_exactly_one_reply(self):
        with chan() as ch:
            events(ch)
            u = ch.unary_unary('/test.Api/Unary', **ident)
            self.assertEqual(u(b'one', timeout=10), b'one')
            self.assertEqual(u(b'two', timeout=10), b'one', 'the second reply is refused')
            log = wait_event(ch, r'^unary second')
            self.assertIn('unary first OK', log)
            self.assertIn('unary second FAILED_PRECONDITION', log)
            with self.assertRaises(grpc.RpcError) as e:
                u(b'none', timeout=10)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL)
            self.assertIn('without its reply', e.exception.details())

    def test_unary_refuses_a_second_request_and_none(self):
        with chan() as ch:
            s = ch.stream_unary('/test.Api/Unary', **ident)
            with self.assertRaises(grpc.RpcError) as e:
                s(iter([b'one', b'one']), timeout=10)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL)
            self.assertIn('more than one request', e.exception.details())
            with self.assertRaises(grpc.RpcError) as e:
                s(iter([]), timeout=10)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INTERNAL)
            self.assertIn('no request message', e.exception.details())
            self.assertEqual(ch.unary_unary('/test.Api/Unary', **ident)(b'one', timeout=10), b'one')


class Retries(unittest.TestCase):
    def test_retryable_failure_is_retried_and_answered_once(self):
        with chan() as ch:
            events(ch)
            call, replies = bidi(ch, '/test.Api/Retry', [b'flaky-1', b'fine', b'flaky-2'])
            self.assertEqual(call.code(), grpc.StatusCode.OK)
            self.assertEqual(replies, [b'flaky-1 attempt 2', b'fine attempt 1', b'flaky-2 attempt 2'],
                             'the failed attempts\' replies are never sent')
            log = wait_event(ch, r'^retry flaky-2 attempt 2')
            self.assertIn('retry flaky-1 attempt 1', log, 'the first attempt ran and replied')

    def test_a_non_retryable_failure_is_not_retried(self):
        with chan() as ch:
            events(ch)
            call = ch.stream_stream('/test.Api/Retry', **ident)(iter([b'bad']), timeout=10)
            replies = []
            with self.assertRaises(grpc.RpcError) as e:
                for r in call:
                    replies.append(r)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertEqual(replies, [], 'the failed attempt\'s reply is dropped')
            log = wait_event(ch, r'^retry bad attempt 1')
            self.assertNotIn('bad attempt 2', log)


class Interceptors(unittest.TestCase):
    def test_auth_interceptor_refuses_before_the_first_message(self):
        with chan() as ch:
            before = events(ch)
            handled0 = int(re.search(r'secret handled (\d+)', before).group(1))
            for md in (None, [('authorization', 'Bearer bad')]):
                call, replies = None, None
                with self.assertRaises(grpc.RpcError) as e:
                    list(ch.stream_stream('/test.Api/Secret', **ident)(iter([b'a', b'b']), metadata=md, timeout=10))
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                self.assertEqual(e.exception.details(), 'missing or bad authorization token')
            log = events(ch)
            self.assertEqual(int(re.search(r'secret handled (\d+)', log).group(1)), handled0,
                             'no message of a refused stream reached the handler')
            self.assertEqual(log.count('auth refused'), 2)
            self.assertNotIn('auth end', log, 'no on_end for the interceptor that refused')
            self.assertEqual(log.count('audit open'), 2)
            self.assertEqual(log.count('audit end UNAUTHENTICATED'), 2,
                             'the interceptor before the refusal gets its on_end: ' + log)
            call, replies = bidi(ch, '/test.Api/Secret', [b'a', b'b'], metadata=[('authorization', 'Bearer good')])
            self.assertEqual(replies, [b'a', b'b'])
            log = wait_event(ch, r'^auth end')
            self.assertIn('auth end OK in 2 out 2', log)

    def test_message_interceptor_ends_the_stream(self):
        with chan() as ch:
            with self.assertRaises(grpc.RpcError) as e:
                list(ch.stream_stream('/test.Api/Secret', **ident)(
                    iter([b'a', b'forbidden', b'c']), metadata=[('authorization', 'Bearer good')], timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)


class Reflection(unittest.TestCase):
    def test_a_user_service_is_listed_and_its_file_served(self):
        """The service's own descriptor set, added by the program, answers
        reflection beside the built-in services'."""
        rpb = refl.rpb
        with chan() as ch:
            listed, by_symbol, builtin = refl.ask(ch, [rpb.ServerReflectionRequest(list_services=''),
                                                       rpb.ServerReflectionRequest(file_containing_symbol='test.Api.Sum'),
                                                       rpb.ServerReflectionRequest(file_containing_symbol='bidistream.v1.Frame')])
        names = [s.name for s in listed.list_services_response.service]
        self.assertIn('test.Api', names)
        self.assertIn('bidistream.v1.Pipeline', names)
        f = refl.files_of(by_symbol)[0]
        self.assertEqual(f.name, 'api.proto')
        self.assertEqual([m.name for m in f.service[0].method],
                         ['Echo', 'Unary', 'Sum', 'Secret', 'Retry', 'Events', 'Stats'])
        self.assertEqual(refl.files_of(builtin)[0].name, 'pipeline.proto')


class Stats(unittest.TestCase):
    def stats(self, ch, method):
        text = ch.unary_unary('/test.Api/Stats', **ident)(method.encode(), timeout=10).decode()
        return {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', text)}

    def test_stats_move_under_load_and_show_live_streams(self):
        with chan() as ch:
            before = self.stats(ch, '/test.Api/Echo')
            gate = threading.Event()
            calls = []
            for _ in range(4):
                def reqs():
                    yield b'x' * 100
                    gate.wait(10)
                calls.append(ch.stream_stream('/test.Api/Echo', **ident)(reqs(), timeout=20))
            for c in calls:
                self.assertEqual(next(c), b'x' * 100)
            live = self.stats(ch, '/test.Api/Echo')
            self.assertGreaterEqual(live['live'], before['live'] + 4, 'streams still open are counted live')
            self.assertGreaterEqual(live['in'], before['in'] + 4)
            self.assertGreaterEqual(live['out'], before['out'] + 4)
            self.assertGreaterEqual(live['bytes_in'], before['bytes_in'] + 400)
            self.assertGreaterEqual(live['conns'], 1)
            self.assertGreaterEqual(live['admitted'], before['admitted'] + 4, 'the pipeline counts live too')
            self.assertGreaterEqual(live['completed'], before['completed'] + 4)
            gate.set()
            for c in calls:
                self.assertEqual(list(c), [])
            deadline = time.time() + 10
            while time.time() < deadline:
                after = self.stats(ch, '/test.Api/Echo')
                if after['ended'] >= before['ended'] + 4:
                    break
                time.sleep(0.05)
            self.assertGreaterEqual(after['ended'], before['ended'] + 4, 'stats: %r' % after)
            self.assertGreaterEqual(after['ok'], before['ok'] + 4)
            held = self.stats(ch, '/test.Api/Echo')['calls_live']
            gate2 = threading.Event()

            def hold():
                yield b'hold'
                gate2.wait(10)
            c = ch.stream_stream('/test.Api/Echo', **ident)(hold(), timeout=20)
            deadline = time.time() + 10
            while time.time() < deadline and self.stats(ch, '/test.Api/Echo')['calls_live'] < held + 1:
                time.sleep(0.05)
            self.assertEqual(self.stats(ch, '/test.Api/Echo')['calls_live'], held + 1, 'a held call is live')
            c.cancel()
            gate2.set()
            deadline = time.time() + 10
            while time.time() < deadline and self.stats(ch, '/test.Api/Echo')['calls_live'] > held:
                time.sleep(0.05)
            self.assertEqual(self.stats(ch, '/test.Api/Echo')['calls_live'], held, 'and no longer once finished')
            refused = self.stats(ch, '/test.Api/Secret')['refused']
            with self.assertRaises(grpc.RpcError):
                list(ch.stream_stream('/test.Api/Secret', **ident)(iter([b'a']), timeout=10))
            self.assertEqual(self.stats(ch, '/test.Api/Secret')['refused'], refused + 1)


if __name__ == '__main__':
    SERVER = sys.argv[1]
    argv = [sys.argv[0]] + sys.argv[2:]
    result = unittest.main(argv=argv, exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print('%d passed, %d failed' % (result.testsRun - failed, failed))
    sys.exit(1 if failed or not result.testsRun else 0)
