#!/usr/bin/python3
"""bidistreamd as a systemd service (tools/deploy/bidistreamd.service),
through its readiness protocol: a unix datagram socket in NOTIFY_SOCKET, as
systemd gives a Type=notify service, receives READY=1 once the server
listens (it then serves at once) and STOPPING=1 when SIGTERM starts the
drain; an abstract socket ('@name') works too, and a server with no
NOTIFY_SOCKET or a dead one serves the same. The unit file passes
`systemd-analyze verify` when the machine has it. (systemd-run itself needs
systemd as PID 1, which a test machine or chroot may not have.)
Prints "N passed, N failed" last.

usage: test_service.py PATH/TO/bidistreamd
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools', 'deploy', 'bidistreamd.service')


def serves(addr):
    ch = g.grpc.insecure_channel(addr)
    try:
        frames = [g.frame('k', i) for i in range(3)]
        return [g.unframe(r)['seq'] for r in g.process(ch)(iter(frames), timeout=10)] == [0, 1, 2]
    finally:
        ch.close()


class Notify(unittest.TestCase):
    def run_with(self, address, env_value):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.settimeout(20)
        old = os.environ.get('NOTIFY_SOCKET')
        os.environ['NOTIFY_SOCKET'] = env_value
        try:
            srv = g.Server()
        finally:
            if old is None:
                del os.environ['NOTIFY_SOCKET']
            else:
                os.environ['NOTIFY_SOCKET'] = old
        try:
            ready = sock.recv(4096).decode()
            self.assertIn('READY=1', ready.split('\n'))
            self.assertIn('STATUS=serving on port %s' % srv.addr.rsplit(':', 1)[1], ready)
            self.assertTrue(serves(srv.addr), 'ready means serving')
            srv.sigterm()
            self.assertEqual(sock.recv(4096).decode(), 'STOPPING=1')
        finally:
            self.assertEqual(srv.stop(), 0)
            sock.close()

    def test_ready_then_stopping_on_a_socket_path(self):
        d = tempfile.mkdtemp(prefix='bds-notify-')
        try:
            path = os.path.join(d, 'notify')
            self.run_with(path, path)
        finally:
            shutil.rmtree(d)

    def test_ready_then_stopping_on_an_abstract_socket(self):
        name = 'bds-notify-%d' % os.getpid()
        self.run_with('\0' + name, '@' + name)

    def test_no_listener_changes_nothing(self):
        os.environ['NOTIFY_SOCKET'] = '/nonexistent/notify'
        try:
            srv = g.Server()
        finally:
            del os.environ['NOTIFY_SOCKET']
        try:
            self.assertTrue(serves(srv.addr))
        finally:
            self.assertEqual(srv.stop(), 0)


class Unit(unittest.TestCase):
    def test_the_unit_file_verifies(self):
        if not shutil.which('systemd-analyze'):
            self.skipTest('no systemd-analyze here')
        text = open(UNIT).read()
        self.assertIn('Type=notify', text)
        self.assertIn('ExecReload=/bin/kill -HUP $MAINPID', text)
        d = tempfile.mkdtemp(prefix='bds-unit-')
        try:
            # verify wants the ExecStart binary to exist: point it at the one under test.
            unit = os.path.join(d, 'bidistreamd.service')
            with open(unit, 'w') as f:
                f.write(text.replace('/usr/local/bin/bidistreamd', os.path.abspath(g.SERVER)))
            p = subprocess.run(['systemd-analyze', 'verify', unit], capture_output=True, text=True, timeout=60)
            errors = [l for l in (p.stdout + p.stderr).splitlines() if 'bidistreamd.service' in l]
            self.assertEqual(errors, [], p.stdout + p.stderr)
        finally:
            shutil.rmtree(d)


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
