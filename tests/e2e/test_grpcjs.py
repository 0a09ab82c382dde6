#!/usr/bin/python3
"""The interop cases with a second independent client, @grpc/grpc-js
(tests/e2e/js/interop_client.js), against bidistreamd over h2c and over TLS.

grpc-js comes from the npm registry at the versions js/package-lock.json
pins (`npm ci` into WORKDIR, once; tools/deps.sh installs node and npm).
Each case is one unittest here, so a failure names the case and the client's
reason. Prints "N passed, N failed" last.

usage: test_grpcjs.py PATH/TO/bidistreamd WORKDIR
"""
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402
import test_tls as tls  # noqa: E402  (the test CA and certificates)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKDIR = None
CASES = ['empty_unary', 'large_unary', 'client_streaming', 'server_streaming', 'ping_pong', 'empty_stream',
         'custom_metadata', 'status_code_and_message', 'special_status_message', 'unimplemented_method',
         'unimplemented_service', 'cancel_after_begin', 'cancel_after_first_response', 'timeout_on_sleeping_server']


def npm_ci():
    """node_modules for the pinned lock file, installed once per WORKDIR."""
    os.makedirs(WORKDIR, exist_ok=True)
    lock = os.path.join(HERE, 'js', 'package-lock.json')
    stamp = os.path.join(WORKDIR, 'package-lock.json')
    if os.path.isdir(os.path.join(WORKDIR, 'node_modules')) and os.path.exists(stamp) and \
            open(stamp, 'rb').read() == open(lock, 'rb').read():
        return
    for f in ('package.json', 'package-lock.json'):
        shutil.copy(os.path.join(HERE, 'js', f), WORKDIR)
    p = subprocess.run(['npm', 'ci', '--no-audit', '--no-fund', '--ignore-scripts'], cwd=WORKDIR,
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError('npm ci failed:\n' + p.stdout + p.stderr)


def setUpModule():
    npm_ci()
    tls.setUpModule()


def tearDownModule():
    tls.tearDownModule()


def run_cases(srv, ca=None):
    """Runs every case once; returns {case: (ok, line)}."""
    host, port = srv.addr.rsplit(':', 1)
    argv = ['node', os.path.join(HERE, 'js', 'interop_client.js'), '--host', host, '--port', port]
    if ca:
        argv += ['--ca', ca]
    env = dict(os.environ, NODE_PATH=os.path.join(WORKDIR, 'node_modules'))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    got = {}
    for line in p.stdout.splitlines():
        word, _, rest = line.partition(' ')
        if word in ('ok', 'FAIL'):
            got[rest.split(':')[0]] = (word == 'ok', line)
    if not got:
        raise AssertionError('the client ran no case:\n' + p.stdout + p.stderr)
    return got


class _Cases:
    results = None

    def case(self, name):
        ok, line = self.results.get(name, (False, 'case %s did not run' % name))
        self.assertTrue(ok, line)


def _add_tests(cls):
    for name in CASES:
        setattr(cls, 'test_' + name, lambda self, n=name: self.case(n))
    return cls


@_add_tests
class H2c(_Cases, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        srv = g.Server('--interop')
        try:
            cls.results = run_cases(srv)
        finally:
            assert srv.stop() == 0


@_add_tests
class Tls(_Cases, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        srv = tls.tls_server('--interop')
        try:
            cls.results = run_cases(srv, ca=tls.path('ca.pem'))
        finally:
            assert srv.stop() == 0


if __name__ == '__main__':
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    WORKDIR = os.path.abspath(sys.argv.pop(2))
    g.run_main(sys.modules[__name__], __doc__)
