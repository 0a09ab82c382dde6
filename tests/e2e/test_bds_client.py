#!/usr/bin/python3
"""tools/bds (the C client) end to end against a server.

The server is bidistreamd or tests/e2e/ref_server.py (the Server helper of
test_grpcio.py starts it per group on 127.0.0.1 with an ephemeral port);
the client binary is $BDS_CLIENT, else the `bds` next to the server binary.
Checks what a new user sees: the replies, the final status line, the one-line
errors and the exit status. Prints "N passed, N failed" last.

usage: test_bds_client.py PATH/TO/bidistreamd [test-name-substring]
"""
import os
import re
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio  # noqa: E402  (the Server helper)

BDS = None
NO_CLIENT = 'no bds client (set BDS_CLIENT=path/to/bds)'


def bds(*args, timeout=60):
    """Runs the client; returns (exit status, stdout, stderr)."""
    p = subprocess.run([BDS, *args], capture_output=True, text=True, timeout=timeout)
    if 'Sanitizer' in p.stderr or 'runtime error' in p.stderr:
        raise AssertionError('sanitizer report from bds:\n' + p.stderr)
    return p.returncode, p.stdout, p.stderr


def replies(out):
    """[(key, seq, payload)] from bds process output."""
    return [(m.group(1), int(m.group(2)), m.group(3))
            for m in re.finditer(r'^reply key=(\S*) seq=(\d+) payload=(.*)$', out, re.M)]


def last_line(out):
    lines = out.strip().splitlines()
    return lines[-1] if lines else ''


class ClientCase(unittest.TestCase):
    flags = ('--shards', '2')

    @classmethod
    def setUpClass(cls):
        if not BDS or not os.access(BDS, os.X_OK):
            raise unittest.SkipTest(NO_CLIENT)
        cls.srv = test_grpcio.Server(*cls.flags)

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0


class Process(ClientCase):
    def test_replies_in_order_then_status_ok(self):
        rc, out, err = bds('process', '--addr', self.srv.addr, '--key', 'k', '--count', '10', '--payload', 'hello')
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(replies(out), [('k', i, 'hello') for i in range(1, 11)])
        self.assertEqual(last_line(out), 'status OK')
        self.assertEqual(err, '')

    def test_many_keys_with_work_keep_order_within_each_key(self):
        rc, out, err = bds('process', '--addr', self.srv.addr, '--keys', '8', '--count', '400', '--work-us', '1500')
        self.assertEqual(rc, 0, out + err)
        got = replies(out)
        self.assertEqual(sorted(s for _, s, _ in got), list(range(1, 401)))
        per_key = {}
        for k, s, _ in got:
            self.assertEqual(k, 'k%d' % ((s - 1) % 8))
            per_key.setdefault(k, []).append(s)
        for k, seqs in per_key.items():
            self.assertEqual(seqs, sorted(seqs), 'key %s out of order' % k)

    def test_many_small_frames_pass_both_flow_control_windows(self):
        rc, out, err = bds('process', '--addr', self.srv.addr, '--keys', '16', '--count', '20000', '--payload', 'x')
        self.assertEqual(rc, 0, err + last_line(out))
        self.assertEqual(len(replies(out)), 20000)

    def test_large_payloads_are_reassembled_across_data_frames(self):
        payload = 'p' * 100000  # each reply spans several DATA frames
        rc, out, err = bds('process', '--addr', self.srv.addr, '--count', '40', '--payload', payload)
        self.assertEqual(rc, 0, err + last_line(out))
        got = replies(out)
        self.assertEqual(len(got), 40)
        self.assertTrue(all(p == payload for _, _, p in got))

    def test_fail_is_a_non_ok_status_with_a_message_and_exit_1(self):
        rc, out, err = bds('process', '--addr', self.srv.addr, '--fail', '--count', '1')
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(last_line(out), r'^status INTERNAL: .+')

    def test_client_deadline_is_deadline_exceeded(self):
        t0 = time.monotonic()
        rc, out, err = bds('process', '--addr', self.srv.addr, '--count', '1', '--work-us', '5000000',
                           '--timeout', '300ms')
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(last_line(out), r'^status DEADLINE_EXCEEDED: ')
        self.assertLess(time.monotonic() - t0, 4)


class Health(ClientCase):
    def test_check_serving_and_unknown_service(self):
        self.assertEqual(bds('health', '--addr', self.srv.addr), (0, 'SERVING\n', ''))
        rc, out, _ = bds('health', '--addr', self.srv.addr, '--service', 'bidistream.v1.Pipeline')
        self.assertEqual((rc, out), (0, 'SERVING\n'))
        rc, out, _ = bds('health', '--addr', self.srv.addr, '--service', 'no.Such')
        self.assertEqual(rc, 1)
        self.assertRegex(out, r'^status NOT_FOUND: ')


class Watch(unittest.TestCase):
    def test_serving_then_not_serving_once_shutdown_begins(self):
        if not BDS or not os.access(BDS, os.X_OK):
            self.skipTest(NO_CLIENT)
        srv = test_grpcio.Server('--shards', '1', '--grace', '1s')
        p = subprocess.Popen([BDS, 'watch', '--addr', srv.addr], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            self.assertEqual(p.stdout.readline(), 'SERVING\n')
            srv.sigterm()
            rest, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertTrue(rest.startswith('NOT_SERVING\n'), rest + err)
        self.assertEqual(len(re.findall(r'^status ', rest, re.M)), 1, rest)
        self.assertEqual(srv.stop(), 0)


class Admission(ClientCase):
    flags = ('--shards', '1', '--inbound-policy', 'hard-reject', '--inbound-capacity', '1',
             '--max-message-bytes', '1024')

    def test_hard_reject_when_full_is_resource_exhausted(self):
        rc, out, err = bds('process', '--addr', self.srv.addr, '--keys', '2', '--count', '2', '--work-us', '500000')
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(last_line(out), r'^status RESOURCE_EXHAUSTED: ')

    def test_message_over_the_limit_is_resource_exhausted(self):
        rc, out, err = bds('process', '--addr', self.srv.addr, '--count', '1', '--payload', 'p' * 2000)
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(last_line(out), r'^status RESOURCE_EXHAUSTED: ')


class Unreachable(unittest.TestCase):
    def test_no_server_is_one_line_on_stderr_and_exit_1(self):
        if not BDS or not os.access(BDS, os.X_OK):
            self.skipTest(NO_CLIENT)
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        addr = '127.0.0.1:%d' % s.getsockname()[1]
        s.close()
        for cmd in ('process', 'health', 'watch'):
            rc, out, err = bds(cmd, '--addr', addr)
            self.assertEqual((rc, out), (1, ''), cmd)
            self.assertEqual(err, 'bds: cannot reach %s: Connection refused\n' % addr)


if __name__ == '__main__':
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    test_grpcio.SERVER = os.path.abspath(sys.argv[1])
    BDS = os.environ.get('BDS_CLIENT') or os.path.join(os.path.dirname(test_grpcio.SERVER), 'bds')
    loader = unittest.TestLoader()
    if len(sys.argv) > 2:
        loader.testNamePatterns = ['*%s*' % sys.argv[2]]
    suite = loader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors)
    # A class skipped in setUpClass is one entry in skipped but no test run.
    skipped = sum(1 for t, _ in result.skipped if isinstance(t, unittest.TestCase))
    if result.skipped:
        print('skipped: %s' % '; '.join(sorted({why for _, why in result.skipped})))
    print('%d passed, %d failed' % (result.testsRun - failed - skipped, failed))
    sys.exit(1 if failed else 0)
