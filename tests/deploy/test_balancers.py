#!/usr/bin/python3
"""Several bidistreamd behind a real balancer (README "Several servers behind a
balancer"): the configurations of tools/deploy/ (haproxy.cfg, nginx.conf), as
shipped, with their ports filled in, run by Debian's HAProxy 2.6 and nginx
1.22 on loopback, each in front of three bidistreamd.

Each test, once per balancer:

  before   60 keys, one Pipeline/Process stream each, carrying its key in the
           x-routing-key request header (the balancer hashes it) and in every
           Frame: the server that answered (the balancer's x-bds-backend
           response header) is the key's server. Every server has keys.
  moving   every key runs a stream of 30 Frames paced over ~1 s; meanwhile
           the server with most keys gets SIGTERM (GOAWAY and drain). A
           stream that ends UNAVAILABLE is opened again through the balancer
           with the Frames it got no reply for.
  after    two streams per key again.

  checked  every key on exactly one server before, and one after; the keys
           of the servers left did not move (and their streams were never
           interrupted); the stopped server's keys all moved, each to one
           server; no stream lost a reply: a stream that ended OK has every
           reply, in order, one that ended UNAVAILABLE a prefix of them, and
           per key the replies of all its streams are each Frame once, in
           order; the servers' own counts of Process streams (printed at
           exit) match the streams the client saw each balancer send them;
           every bidistreamd exits 0 with no sanitizer report.

The balancers run as root from a temporary directory (their pid files, logs,
nginx's temporary files) on free 127.0.0.1 ports, in the foreground, and are
stopped by the test. Prints "N passed, N failed" last.

usage: test_balancers.py PATH/TO/bidistreamd [test-name-substring]
"""
import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.join(HERE, '..', '..', 'tools', 'deploy')
sys.path.insert(0, os.path.join(HERE, '..', 'e2e'))
import test_grpcio as g  # noqa: E402  (Server, process, frame codec)

KEYS = ['key-%02d' % i for i in range(60)]
MOVING_FRAMES = 30       # per key, while a server stops
MOVING_PACE_S = 0.035    # between two Frames of a moving stream
STOP_AFTER_REPLIES = 3   # every key has had this many in the moving phase: the victim stops
STREAM_ATTEMPTS = 60     # per key in the moving phase, 0.1 s apart at least


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, deadline_s=15):
    """True once proc accepts connections on port, False if it exited first."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.5).close()
            return proc.poll() is None  # not someone else's listener, the port taken meanwhile
        except OSError:
            time.sleep(0.05)
    raise AssertionError('%s does not accept connections on port %d after %d s' % (what, port, deadline_s))


class Balancer:
    """One balancer process from a tools/deploy template, in the foreground."""
    name = template = exe = None
    # What a client sees when a stopping server's drain ends its stream
    # (bidistreamd: UNAVAILABLE "server shutting down").
    drained_codes = (grpc.StatusCode.UNAVAILABLE,)

    def __init__(self, path, backends):
        self.path, self.backends, self.proc, self.log = path, backends, None, None
        self.dir = tempfile.mkdtemp(prefix='bds-%s-' % self.name)
        os.chmod(self.dir, 0o755)  # nginx's worker (nobody) uses its temporary paths here
        try:
            for _ in range(3):  # a free port may be taken before the balancer binds it
                if self.start():
                    return
                if 'in use' not in self.logs():
                    break
            raise AssertionError('%s did not start:\n%s' % (self.name, self.logs()))
        except BaseException:
            self.stop()
            raise

    def start(self):
        self.port = free_port()
        conf = open(os.path.join(DEPLOY, self.template)).read()
        conf = conf.replace('@LISTEN@', '127.0.0.1:%d' % self.port).replace('@RUNDIR@', self.dir)
        for i, b in enumerate(self.backends):
            conf = conf.replace('@BACKEND%d@' % (i + 1), b.addr)
        if re.search(r'@[A-Z0-9_]+@', re.sub(r'#.*', '', conf)):
            raise AssertionError('%s: a placeholder left unfilled:\n%s' % (self.template, conf))
        self.conf = os.path.join(self.dir, self.template)
        with open(self.conf, 'w') as f:
            f.write(conf)
        if self.log:
            self.log.close()
        self.log = open(os.path.join(self.dir, 'stderr.log'), 'w')
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT)
        if wait_port(self.port, self.proc, self.name):
            self.addr = '127.0.0.1:%d' % self.port
            return True
        self.proc.wait(10)
        return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self):
        out = []
        for name in sorted(os.listdir(self.dir)):
            p = os.path.join(self.dir, name)
            if name.endswith('.log') and os.path.isfile(p):
                out.append('--- %s\n%s' % (name, open(p, errors='replace').read()[-4000:]))
        return '\n'.join(out)

    def server_of(self, value):
        """The index of the backend a x-bds-backend header names, or None."""
        raise NotImplementedError


class HAProxy(Balancer):
    name, template, exe = 'haproxy', 'haproxy.cfg', 'haproxy'
    # HAProxy before 3.2 (Debian 12 has 2.6) passes a server's RST_STREAM
    # (NO_ERROR) after its trailers, on a stream the client still sends on,
    # to the client as RST_STREAM(CANCEL), which may overtake the trailers'
    # status (HAProxy issue 1219): a stream the drain ends may end CANCELLED.
    drained_codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    def argv(self):
        return [self.path, '-f', self.conf, '-db']  # -db: foreground, logs to stderr

    def server_of(self, value):
        m = re.fullmatch(r's(\d+)', value or '')
        return int(m.group(1)) - 1 if m else None


class Nginx(Balancer):
    name, template, exe = 'nginx', 'nginx.conf', 'nginx'

    def argv(self):
        return [self.path, '-c', self.conf, '-e', os.path.join(self.dir, 'error.log'), '-g', 'daemon off;']

    def server_of(self, value):
        """$upstream_addr: every server tried, the one that answered last."""
        if not value:
            return None
        last = value.split(',')[-1].strip()
        for i, b in enumerate(self.backends):
            if b.addr == last:
                return i
        return None


def payload(key, seq):
    return b'%s/%d' % (key.encode(), seq)


class Stream:
    """One Process stream of one key through the balancer: what came back."""

    def __init__(self, ch, lb, key, seqs, pace_s=0.0, on_reply=None):
        def requests():
            for s in seqs:
                yield g.frame(key, s, payload(key, s))
                if pace_s:
                    time.sleep(pace_s)

        call = g.process(ch)(requests(), metadata=(('x-routing-key', key),), timeout=60)
        self.seqs, self.bad = [], []
        try:
            for r in call:
                f = g.unframe(r)
                if f['key'] != key or f['payload'] != payload(key, f['seq']):
                    self.bad.append(f)
                self.seqs.append(f['seq'])
                if on_reply:
                    on_reply()
        except grpc.RpcError:
            pass
        self.code, self.details = call.code(), call.details()
        md = dict(call.initial_metadata() or ())
        md.update(dict(call.trailing_metadata() or ()))  # a trailers-only answer carries its headers there
        self.header = md.get('x-bds-backend')
        self.server = lb.server_of(self.header)
        self.sent = list(seqs)

    def __repr__(self):
        return '<%s via %r: %d/%d replies, %s %r>' % (self.server, self.header, len(self.seqs), len(self.sent),
                                                     self.code, self.details)


class Balancers(unittest.TestCase):
    def run_balancer(self, kind):
        exe = shutil.which(kind.exe) or shutil.which(kind.exe, path='/usr/sbin:/sbin')
        self.assertIsNotNone(exe, '%s is not installed: bash tools/deps.sh installs it' % kind.exe)
        servers = [g.Server('--shards', '1') for _ in range(3)]
        lb = None
        try:
            lb = kind(exe, servers)
            try:
                self.scenario(lb, servers)
            except BaseException:
                sys.stderr.write(lb.logs() + '\n')
                raise
        finally:
            if lb:
                lb.stop()
            rcs = [s.stop() for s in servers]
        self.assertEqual(rcs, [0, 0, 0], 'bidistreamd exit codes')
        # The servers' own count of Process streams against what the client
        # saw the balancer send each of them.
        opened = []
        for s in servers:
            text = ''.join(s.err)
            m = re.search(r'msg="stats" method=/bidistream.v1.Pipeline/Process streams_opened=(\d+) '
                          r'streams_refused=(\d+)', text)
            opened.append((int(m.group(1)), int(m.group(2))) if m else (0, 0))
        self.assertEqual([o for o, _ in opened], self.client_counts,
                         'Process streams each server opened (refused: %r) against the client\'s count' %
                         [r for _, r in opened])

    def scenario(self, lb, servers):
        ch = grpc.insecure_channel(lb.addr)
        streams = []  # every stream of the run
        lock = threading.Lock()

        def run(key, seqs, pace_s=0.0, on_reply=None):
            s = Stream(ch, lb, key, seqs, pace_s, on_reply)
            with lock:
                streams.append(s)
            return s

        def phase(n_streams):
            """Every key, n_streams streams of 5 Frames each, one after another;
            returns {key: [Stream]}."""
            def one_key(key):
                return key, [run(key, list(range(1, 6))) for _ in range(n_streams)]
            with concurrent.futures.ThreadPoolExecutor(12) as ex:
                return dict(ex.map(one_key, KEYS))

        def assert_complete(by_key, when):
            for key, ss in by_key.items():
                for s in ss:
                    self.assertEqual((s.code, s.seqs, s.bad), (grpc.StatusCode.OK, s.sent, []),
                                     '%s: key %s: %r' % (when, key, s))
                    self.assertIsNotNone(s.server, '%s: key %s: which server? %r' % (when, key, s))

        def one_server_per_key(by_key, when):
            home = {}
            for key, ss in by_key.items():
                where = {s.server for s in ss}
                self.assertEqual(len(where), 1, '%s: key %s on several servers: %r' % (when, key, ss))
                home[key] = where.pop()
            return home

        try:
            before = phase(1)
            assert_complete(before, 'before')
            home = one_server_per_key(before, 'before')
            per_server = [sum(1 for k in KEYS if home[k] == i) for i in range(3)]
            self.assertTrue(all(per_server), 'every server has keys: %r' % per_server)
            victim = per_server.index(max(per_server))

            # Moving: each key sends its Frames paced; once every key has a
            # few replies (every stream is mid-way), the victim stops.
            moving, errors = {}, []
            replies = dict.fromkeys(KEYS, 0)
            all_started = threading.Event()

            def replied(key):
                with lock:
                    replies[key] += 1
                    if min(replies.values()) >= STOP_AFTER_REPLIES:
                        all_started.set()

            def moving_key(key):
                pending, ss = list(range(1, MOVING_FRAMES + 1)), []
                try:
                    while pending:
                        if len(ss) >= STREAM_ATTEMPTS:
                            errors.append('key %s: still %d Frames unanswered after %d streams: %r' %
                                          (key, len(pending), len(ss), ss[-3:]))
                            return
                        s = run(key, pending, MOVING_PACE_S, lambda: replied(key))
                        ss.append(s)
                        if s.seqs != pending[:len(s.seqs)] or s.bad:
                            errors.append('key %s: replies lost, reordered or changed: %r got %r' %
                                          (key, s, s.seqs))
                            return
                        if s.code == grpc.StatusCode.OK:
                            if s.seqs != pending:
                                errors.append('key %s: ended OK without every reply: %r' % (key, s))
                            pending = []
                        elif s.code == grpc.StatusCode.UNAVAILABLE or (
                                s.code in lb.drained_codes and s.server == victim):
                            pending = pending[len(s.seqs):]
                            time.sleep(0.1)
                        else:
                            errors.append('key %s: %r' % (key, s))
                            return
                finally:
                    moving[key] = ss

            threads = [threading.Thread(target=moving_key, args=(k,)) for k in KEYS]
            for t in threads:
                t.start()
            self.assertTrue(all_started.wait(60), 'keys with fewer than %d replies after 60 s: %r' %
                            (STOP_AFTER_REPLIES, sorted(k for k, n in replies.items() if n < STOP_AFTER_REPLIES)))
            servers[victim].sigterm()
            for t in threads:
                t.join(120)
            self.assertFalse(any(t.is_alive() for t in threads), 'a key still runs after 120 s')
            self.assertEqual(errors, [])
            self.assertEqual(servers[victim].proc.wait(30), 0, 'the stopped bidistreamd exit code')

            after = phase(2)
            assert_complete(after, 'after')
            home_after = one_server_per_key(after, 'after')

            moved = sorted(k for k in KEYS if home_after[k] != home[k])
            self.assertEqual(moved, sorted(k for k in KEYS if home[k] == victim),
                             'only the stopped server\'s keys moved')
            interrupted, cut = [], []
            for key in KEYS:
                ss = moving[key]
                answered = [q for s in ss for q in s.seqs]
                self.assertEqual(answered, list(range(1, MOVING_FRAMES + 1)),
                                 'key %s: each Frame answered once, in order, over its streams %r' % (key, ss))
                if home[key] != victim:
                    # Never touched: one stream, on its own server, start to end.
                    self.assertEqual([(s.server, s.code) for s in ss], [(home[key], grpc.StatusCode.OK)],
                                     'key %s: %r' % (key, ss))
                else:
                    # Served by the stopped server, then by one other, or by
                    # no server at all in between (the balancer's own 503).
                    self.assertNotEqual(home_after[key], victim)
                    for s in ss:
                        self.assertIn(s.server, (victim, home_after[key], None), 'key %s: %r' % (key, ss))
                        if s.server is None:
                            self.assertEqual(s.seqs, [], 'key %s: replies from no server? %r' % (key, ss))
                    self.assertEqual(ss[-1].server, home_after[key], 'key %s: %r' % (key, ss))
                    if len(ss) > 1:
                        interrupted.append(key)
                    if ss[0].server == victim and ss[0].code != grpc.StatusCode.OK and ss[0].seqs:
                        cut.append(key)  # the drain ended it mid-way, after some replies
            # The stop came while every stream was mid-way (30 Frames paced
            # over a second, 3 answered): the drain has streams to end.
            self.assertTrue(cut, 'no stream of the stopped server was cut mid-way: %r' %
                            {k: moving[k] for k in KEYS if home[k] == victim})
            sys.stderr.write('%s: keys per server %r, server %d stopped; moving phase: %d streams, %d keys '
                             'interrupted (%d cut mid-way), %d streams answered by the balancer alone\n' %
                             (lb.name, per_server, victim + 1, sum(len(v) for v in moving.values()),
                              len(interrupted), len(cut),
                              sum(1 for s in streams if s.server is None and s.code != grpc.StatusCode.OK)))
            ends = {}
            for s in streams:
                if s.code != grpc.StatusCode.OK:
                    what = '%s %s %r' % ('server %d' % (s.server + 1) if s.server is not None else 'no server',
                                         s.code.name, s.details)
                    ends[what] = ends.get(what, 0) + 1
            sys.stderr.write('%s: streams not OK: %r\n' % (lb.name, ends))
        finally:
            ch.close()
        self.client_counts = [sum(1 for s in streams if s.server == i) for i in range(3)]

    def test_haproxy_consistent_hash_on_x_routing_key(self):
        self.run_balancer(HAProxy)

    def test_nginx_consistent_hash_on_x_routing_key(self):
        self.run_balancer(Nginx)


if __name__ == '__main__':
    g.run_main(sys.modules[__name__], __doc__)
