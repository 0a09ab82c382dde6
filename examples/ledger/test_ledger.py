#!/usr/bin/python3
"""examples/ledger end to end: ledger_server driven by grpcio.

Starts ledger_server on 127.0.0.1:0 (its port read from its first stdout
line) with a capacity of 4 concurrent ops per stream and a 50 ms store commit,
talks to ledger.v1.Ledger with messages from ledger.proto (compiled by protoc
--python_out into a temporary directory), stops it with SIGTERM (exit 0
expected) and checks the counters it prints then. Every wait is bounded and
says what it waited for. Prints "N passed, N failed" last.

usage: test_ledger.py PATH/TO/ledger_server
"""
import atexit
import os
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
APPLY = '/ledger.v1.Ledger/Apply'
CAPACITY = 4
MAX_RETRIES = 3
SERVER = None
S = None
pb = None
sent = 0      # Ops sent over the whole run (the server reads every one)
retried = 0   # failed attempts the tests caused that had a retry left


def load_messages():
    out = tempfile.mkdtemp(prefix='ledger_pb_')
    atexit.register(shutil.rmtree, out, True)
    subprocess.run(['protoc', '--python_out=' + out, '-I' + HERE, os.path.join(HERE, 'ledger.proto')], check=True)
    sys.path.insert(0, out)
    import ledger_pb2
    return ledger_pb2


class Server:
    def __init__(self):
        self.proc = subprocess.Popen([SERVER, '--listen', '127.0.0.1:0', '--capacity', str(CAPACITY),
                                      '--commit-ms', '50', '--max-retries', str(MAX_RETRIES)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.cv = threading.Condition()
        self.err = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        self.addr = '127.0.0.1:%s' % self.wait_line(r'^port (\d+)$').group(1)

    def _read(self):
        for line in self.proc.stdout:
            with self.cv:
                self.lines.append(line.rstrip('\n'))
                self.cv.notify_all()
        with self.cv:
            self.lines.append(None)
            self.cv.notify_all()

    def wait_line(self, pattern, timeout=10):
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

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def setUpModule():
    global S, pb
    pb = load_messages()
    S = Server()


def tearDownModule():
    rc = S.stop()
    assert rc == 0, 'ledger_server exited %d on SIGTERM; stderr:\n%s' % (rc, ''.join(S.err))
    m = S.wait_line(r'^stats /ledger.v1.Ledger/Apply: streams \d+ messages_in (\d+) .* retried (\d+) '
                    r'pressure_signals (\d+)$')
    got = (int(m.group(1)), int(m.group(2)))
    assert got == (sent, retried), 'at exit (messages_in, retried) %r, expected %r' % (got, (sent, retried))
    assert int(m.group(3)) > 0, 'pressure signals counted'
    print('server counters at exit: messages_in %d retried %d pressure_signals %s' % (got + (m.group(3),)))


def chan():
    return grpc.insecure_channel(S.addr)


def op(account, id, amount, fail_commits=0):
    global sent
    sent += 1
    return pb.Op(account=account, id=id, amount=amount, fail_commits=fail_commits)


def apply(ch, ops, timeout=30):
    """Sends ops on one Apply stream, half-closes, returns (results, the RpcError or None)."""
    call = ch.stream_stream(APPLY, request_serializer=pb.Op.SerializeToString,
                            response_deserializer=pb.Result.FromString)(iter(ops), timeout=timeout)
    results = []
    try:
        for r in call:
            results.append(r)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise AssertionError('Apply did not end within %ss; results so far: %r' % (timeout, results))
        return results, e
    return results, None


def stats(ch):
    return ch.unary_unary('/ledger.v1.Ledger/Stats', request_serializer=pb.StatsRequest.SerializeToString,
                          response_deserializer=pb.StatsReply.FromString)(pb.StatsRequest(), timeout=10)


def delta(after, before):
    return {f.name: getattr(after, f.name) - getattr(before, f.name) for f in pb.StatsReply.DESCRIPTOR.fields}


def unique(prefix):
    return '%s-%d' % (prefix, int(time.time() * 1e6))


def balance(ch, account):
    results, err = apply(ch, [op(account, 0, 0)])
    if err or len(results) != 1:
        raise AssertionError('reading %s: %r %r' % (account, results, err))
    return results[0].balance


class Ordering(unittest.TestCase):
    def test_per_account_order_and_retries_answered_once(self):
        global retried
        a, b = unique('acct-a'), unique('acct-b')
        with chan() as ch:
            before = stats(ch)
            # Interleaved; op 2 fails its first commit, op 103 its first two.
            ops = [op(a, 1, 100), op(b, 101, 10), op(a, 2, -70, fail_commits=1), op(b, 102, -20),
                   op(a, 3, -50), op(b, 103, 5, fail_commits=2), op(a, 4, 20), op(b, 104, -15), op(a, 5, -50)]
            retried += 3
            results, err = apply(ch, ops)
            self.assertIsNone(err)
            ids = [r.id for r in results]
            self.assertEqual(sorted(ids), sorted(o.id for o in ops), 'exactly one Result per Op: %r' % ids)
            got = {acct: [(r.id, r.applied, r.balance, r.attempts) for r in results if r.account == acct]
                   for acct in (a, b)}
            # Each account's ops in the order sent, each seeing the one before
            # it (a retried op keeps its account's turn).
            self.assertEqual(got[a], [(1, True, 100, 1), (2, True, 30, 2), (3, False, 30, 1), (4, True, 50, 1),
                                      (5, True, 0, 1)])
            self.assertEqual(got[b], [(101, True, 10, 1), (102, False, 10, 1), (103, True, 15, 3), (104, True, 0, 1)])
            for line in ('%s id 2 attempt 1' % a, '%s id 103 attempt 1' % b, '%s id 103 attempt 2' % b):
                S.wait_line(r'^store unavailable: %s$' % line)
            d = delta(stats(ch), before)
            self.assertEqual((d['streams_opened'], d['messages_in'], d['messages_out']), (1, 9, 9), d)
            self.assertEqual(d['retried'], 3, 'the failed attempts: %r' % d)
            self.assertEqual(d['completed'], 9, d)
            self.assertEqual(d['failed'], 0, d)

    def test_retries_run_out_the_op_is_not_applied(self):
        global retried
        c = unique('acct-c')
        with chan() as ch:
            before = stats(ch)
            results, err = apply(ch, [op(c, 1, 40), op(c, 2, -10, fail_commits=100)])
            retried += MAX_RETRIES
            self.assertIsNotNone(err, 'the stream failed')
            self.assertEqual(err.code(), grpc.StatusCode.UNAVAILABLE)
            self.assertEqual([(r.id, r.balance) for r in results], [(1, 40)],
                             'no Result for the op that never committed (each failed attempt\'s reply dropped)')
            S.wait_line(r'^store unavailable: %s id 2 attempt %d$' % (c, MAX_RETRIES + 1))
            d = delta(stats(ch), before)
            self.assertEqual((d['retried'], d['failed']), (MAX_RETRIES, 1), d)
            self.assertEqual(balance(ch, c), 40, 'the debit was never applied')

    def test_two_streams_on_one_account_lose_no_update(self):
        acct = unique('acct-shared')
        n = 30
        with chan() as ch1, chan() as ch2:
            out = {}

            def run(name, ch, base):
                out[name] = apply(ch, [op(acct, base + i, 1) for i in range(n)], timeout=60)
            threads = [threading.Thread(target=run, args=('x', ch1, 0)),
                       threading.Thread(target=run, args=('y', ch2, 1000))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(70)
                self.assertFalse(t.is_alive(), 'a stream did not end')
            for name in ('x', 'y'):
                results, err = out[name]
                self.assertIsNone(err)
                self.assertEqual(len(results), n)
                bal = [r.balance for r in results]
                self.assertEqual(bal, sorted(bal), 'a stream sees its credits land in order')
            self.assertEqual(balance(ch1, acct), 2 * n, 'every credit of both streams applied once')


class Pressure(unittest.TestCase):
    def test_ops_over_capacity_run_and_say_so(self):
        n = 24
        prefix = unique('acct-p')
        with chan() as ch:
            before = stats(ch)
            # n accounts at once: all run (soft), those past the capacity are flagged.
            results, err = apply(ch, [op('%s-%d' % (prefix, i), i + 1, 1) for i in range(n)])
            self.assertIsNone(err)
            self.assertEqual(sorted(r.id for r in results), list(range(1, n + 1)), 'every op ran, once')
            self.assertTrue(all(r.applied and r.balance == 1 for r in results))
            pressured = [r.id for r in results if r.pressured]
            self.assertGreaterEqual(len(pressured), 1, 'some Results carry the pressure flag: %r' % results)
            self.assertLessEqual(len(pressured), n - CAPACITY, 'the first %d ran within capacity' % CAPACITY)
            d = delta(stats(ch), before)
            self.assertEqual(d['pressure_signals'], len(pressured), 'one signal per flagged op: %r' % d)
            # One op alone is within capacity: no flag.
            results, err = apply(ch, [op(prefix + '-alone', 1, 1)])
            self.assertIsNone(err)
            self.assertFalse(results[0].pressured)


class Stats(unittest.TestCase):
    def test_counters_move_and_show_work_in_flight(self):
        global retried
        acct = unique('acct-s')
        with chan() as ch:
            before = stats(ch)
            # A slow op (three store failures, each followed by a retry)
            # stays in flight long enough to be seen live.
            retried += 3
            call = ch.stream_stream(APPLY, request_serializer=pb.Op.SerializeToString,
                                    response_deserializer=pb.Result.FromString)(
                iter([op(acct, 1, 5, fail_commits=3)]), timeout=30)
            deadline = time.time() + 10
            live = stats(ch)
            while live.calls_live == 0 and time.time() < deadline:
                time.sleep(0.01)
                live = stats(ch)
            self.assertGreaterEqual(live.calls_live, 1, 'an op in flight is live: %r' % live)
            self.assertEqual([(r.id, r.attempts) for r in call], [(1, 4)])
            d = delta(stats(ch), before)
            self.assertEqual((d['streams_opened'], d['messages_in'], d['messages_out'], d['retried']), (1, 1, 1, 3), d)
            deadline = time.time() + 10
            while stats(ch).calls_live != 0 and time.time() < deadline:
                time.sleep(0.01)
            self.assertEqual(stats(ch).calls_live, 0, 'and no longer once done')


if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit('usage: test_ledger.py PATH/TO/ledger_server')
    SERVER = sys.argv[1]
    result = unittest.main(argv=[sys.argv[0]] + sys.argv[2:], exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)  # the module's setup and teardown (the stop) included
    tests_failed = sum(isinstance(t, unittest.TestCase) for t, _ in result.failures + result.errors)
    print('%d passed, %d failed' % (result.testsRun - tests_failed, failed))
    sys.exit(1 if failed or not result.testsRun else 0)
