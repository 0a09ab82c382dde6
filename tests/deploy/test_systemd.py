#!/usr/bin/python3
"""bidistreamd as a systemd service (tools/deploy/bidistreamd.service).

This machine may not run systemd (a container): the unit is checked with
`systemd-analyze verify` (what systemd itself would parse, with ExecStart
pointed at the binary under test; any warning fails), and the readiness
protocol a Type=notify unit relies on is played by the test in systemd's
place: bidistreamd started with NOTIFY_SOCKET (a datagram socket the test
binds) sends READY=1 once it listens (a Health/Check on the port it names
then answers SERVING), and STOPPING=1 when SIGTERM starts its drain, then
exits 0. Prints "N passed, N failed" last.

usage: test_systemd.py PATH/TO/bidistreamd [test-name-substring]
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT = os.path.join(HERE, '..', '..', 'tools', 'deploy', 'bidistreamd.service')
sys.path.insert(0, os.path.join(HERE, '..', 'e2e'))
import test_grpcio as g  # noqa: E402  (run_main, SERVER)


class Unit(unittest.TestCase):
    def test_unit_file_verifies_without_a_warning(self):
        exe = shutil.which('systemd-analyze')
        self.assertIsNotNone(exe, 'systemd-analyze (Debian systemd) is not installed')
        text = open(UNIT).read()
        self.assertRegex(text, r'(?m)^Type=notify$')
        self.assertRegex(text, r'(?m)^ExecStart=/usr/local/bin/bidistreamd ')
        with tempfile.TemporaryDirectory() as d:
            unit = os.path.join(d, 'bidistreamd.service')
            with open(unit, 'w') as f:
                f.write(text.replace('/usr/local/bin/bidistreamd', g.SERVER))
            out = subprocess.run([exe, 'verify', unit], capture_output=True, text=True, timeout=60)
        self.assertEqual((out.returncode, out.stderr.strip()), (0, ''), out.stdout)


class Readiness(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='bds-notify-')
        self.path = os.path.join(self.dir, 'notify')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(30)
        self.proc = None

    def tearDown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def receive(self, what):
        try:
            return self.sock.recv(4096).decode()
        except socket.timeout:
            self.fail('no %s from bidistreamd within 30 s' % what)

    def test_ready_once_listening_stopping_on_sigterm_then_exit_0(self):
        env = dict(os.environ, NOTIFY_SOCKET=self.path)
        self.proc = subprocess.Popen([g.SERVER, '--listen', '127.0.0.1:0', '--shards', '2'], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        msg = self.receive('READY=1')
        self.assertIn('READY=1', msg.split('\n'), msg)
        m = re.search(r'STATUS=serving on port (\d+)', msg)
        self.assertIsNotNone(m, msg)
        # Ready means clients can connect: no retry, no wait.
        with grpc.insecure_channel('127.0.0.1:%s' % m.group(1)) as ch:
            check = ch.unary_unary('/grpc.health.v1.Health/Check', request_serializer=lambda x: x,
                                   response_deserializer=lambda x: x)
            self.assertEqual(check(b'', timeout=10, wait_for_ready=False), b'\x08\x01')  # status: SERVING
        self.proc.send_signal(signal.SIGTERM)
        msg = self.receive('STOPPING=1')
        self.assertIn('STOPPING=1', msg.split('\n'), msg)
        _, err = self.proc.communicate(timeout=30)
        self.assertEqual(self.proc.returncode, 0, err)
        self.assertNotRegex(err, 'Sanitizer|runtime error')


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
