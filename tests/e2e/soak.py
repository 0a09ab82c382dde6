#!/usr/bin/python3
"""Soak: bidistreamd under a mixed load of its own making, checked from both sides.

Workers (threads, each with its own channels) pick scenarios at random until
the time is up:
  stream    many keys, random work_us and payload sizes, half-close: every
            message answered exactly once, in order per key, then OK
  cancel    the client cancels mid-stream: what arrived is in key order,
            no duplicate, and the stream ends CANCELLED
  deadline  a short grpc-timeout against slow work: DEADLINE_EXCEEDED
  fail      a message with fail set: INTERNAL after in-order replies
  slow      a slow reader of 16 KB replies: all arrive, in order
  vanish    a raw client that sends half a message and disconnects
  reset     a raw client that opens streams with slow work and resets them
  health    grpc.health.v1.Health/Check
A fresh channel (a new connection) is made for about one scenario in five.

From the server's side: RSS and open descriptors are sampled every second;
after the load, descriptors must come back to where they were before it, RSS
after warm-up must stay flat (the last fifth of the run against the second
fifth), and a SIGTERM must end the server with exit 0 (its pools assert at
exit that every message buffer came back, and sessions end before that).

usage: soak.py PATH/TO/bidistreamd SECONDS [extra bidistreamd flags...]
Prints a report, and "N passed, N failed" last (one check per line above).
"""
import collections
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_grpcio as g  # noqa: E402
import grpc  # noqa: E402

HEALTH = '/grpc.health.v1.Health/Check'
RSS_GROWTH_KIB_MAX = 32 * 1024  # RSS after warm-up: flat within this


def proc_fds(pid):
    return len(os.listdir('/proc/%d/fd' % pid))


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.violations = []

    def add(self, **kv):
        with self.lock:
            self.c.update(kv)

    def violation(self, what):
        with self.lock:
            if len(self.violations) < 50:
                self.violations.append(what)
            self.c['violations'] += 1


def check_order(stats, scenario, sent, replies, want_all):
    """replies: Frames in arrival order. Per key: seqs strictly in send order, no duplicate."""
    order = {}
    for i, (k, s) in enumerate(sent):
        order[(k, s)] = i
    last = {}
    seen = set()
    for r in replies:
        f = g.unframe(r)
        ks = (f['key'], f['seq'])
        if ks not in order:
            stats.violation('%s: reply to a message never sent %r' % (scenario, ks))
            continue
        if ks in seen:
            stats.violation('%s: duplicate reply %r' % (scenario, ks))
        seen.add(ks)
        if f['key'] in last and order[ks] < last[f['key']]:
            stats.violation('%s: key %s out of order' % (scenario, f['key']))
        last[f['key']] = order[ks]
    if want_all and len(seen) != len(sent):
        stats.violation('%s: %d of %d replies on an OK stream' % (scenario, len(seen), len(sent)))
    stats.add(msgs_sent=len(sent), replies=len(replies))


def status_of(exc):
    return exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__


class Worker(threading.Thread):
    def __init__(self, addr, stats, deadline, seed):
        super().__init__(daemon=True)
        self.addr, self.stats, self.deadline = addr, stats, deadline
        self.rng = random.Random(seed)
        self.ch = grpc.insecure_channel(addr)
        self.seq = 0

    def msgs(self, n, keys, work_max_us, payload_max):
        out = []
        for _ in range(n):
            self.seq += 1
            k = 'k%d' % self.rng.randrange(keys)
            size = self.rng.choice((0, 8, 64, 512, 4096, self.rng.randrange(payload_max + 1)))
            out.append((k, self.seq, size, self.rng.randrange(work_max_us + 1)))
        return out

    def call(self, ch, frames, timeout=60, slow_s=0.0):
        replies = []
        it = g.process(ch)(iter([g.frame(k, s, b'p' * n, work_us=w, fail=fl) for k, s, n, w, fl in frames]),
                           timeout=timeout)
        try:
            for r in it:
                replies.append(r)
                if slow_s:
                    time.sleep(slow_s)
            return 'OK', replies, it
        except grpc.RpcError as e:
            return e.code().name, replies, it

    def run(self):
        while time.monotonic() < self.deadline:
            fresh = self.rng.random() < 0.2
            ch = grpc.insecure_channel(self.addr) if fresh else self.ch
            kind = self.rng.choices(('stream', 'cancel', 'deadline', 'fail', 'slow', 'vanish', 'reset', 'health'),
                                    weights=(40, 10, 8, 8, 6, 10, 10, 8))[0]
            try:
                getattr(self, 's_' + kind)(ch)
                self.stats.add(**{'scenario_' + kind: 1})
            except Exception as e:  # noqa: BLE001  (every failure is a finding)
                self.stats.add(**{'error_' + kind + '_' + status_of(e): 1})
                if not isinstance(e, grpc.RpcError) or e.code() not in (grpc.StatusCode.UNAVAILABLE,):
                    self.stats.violation('%s: %s: %s' % (kind, status_of(e), e))
            finally:
                if fresh:
                    ch.close()
        self.ch.close()

    def s_stream(self, ch):
        sent = [(k, s, n, w, False) for k, s, n, w in self.msgs(self.rng.randrange(1, 60), 8, 2000, 65536)]
        st, replies, _ = self.call(ch, sent)
        self.stats.add(**{'status_' + st: 1})
        if st != 'OK':
            self.stats.violation('stream ended %s' % st)
        check_order(self.stats, 'stream', [(k, s) for k, s, *_ in sent], replies, st == 'OK')

    def s_cancel(self, ch):
        sent = [(k, s, n, w, False) for k, s, n, w in self.msgs(40, 4, 20000, 4096)]
        replies = []
        it = g.process(ch)(iter([g.frame(k, s, b'p' * n, work_us=w) for k, s, n, w, _ in sent]), timeout=60)
        stop_after = self.rng.randrange(0, 10)
        st = 'OK'
        try:
            for r in it:
                replies.append(r)
                if len(replies) >= stop_after:
                    it.cancel()
        except grpc.RpcError as e:
            st = e.code().name
        self.stats.add(**{'status_' + st: 1})
        if st not in ('CANCELLED', 'OK'):
            self.stats.violation('cancel ended %s' % st)
        check_order(self.stats, 'cancel', [(k, s) for k, s, *_ in sent], replies, st == 'OK')

    def s_deadline(self, ch):
        sent = [(k, s, n, 200000, False) for k, s, n, _ in self.msgs(5, 2, 0, 256)]
        st, replies, _ = self.call(ch, sent, timeout=0.1)
        self.stats.add(**{'status_' + st: 1})
        if st != 'DEADLINE_EXCEEDED':
            self.stats.violation('deadline ended %s' % st)
        check_order(self.stats, 'deadline', [(k, s) for k, s, *_ in sent], replies, False)

    def s_fail(self, ch):
        sent = [(k, s, n, w, False) for k, s, n, w in self.msgs(10, 1, 500, 256)]
        bad = self.rng.randrange(len(sent))
        sent[bad] = sent[bad][:4] + (True,)
        st, replies, _ = self.call(ch, sent)
        self.stats.add(**{'status_' + st: 1})
        if st != 'INTERNAL':
            self.stats.violation('fail ended %s' % st)
        check_order(self.stats, 'fail', [(k, s) for k, s, *_ in sent], replies, False)

    def s_slow(self, ch):
        sent = [(k, s, 16384, 0, False) for k, s, _, _ in self.msgs(40, 2, 0, 0)]
        st, replies, _ = self.call(ch, sent, slow_s=0.01)
        self.stats.add(**{'status_' + st: 1})
        if st != 'OK':
            self.stats.violation('slow reader ended %s' % st)
        check_order(self.stats, 'slow', [(k, s) for k, s, *_ in sent], replies, st == 'OK')

    def raw(self):
        host, port = self.addr.rsplit(':', 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + g.h2frame(4, 0, 0, b''))
        return s

    def s_vanish(self, ch):
        s = self.raw()
        msg = g.frame('v', 1, b'y' * 3000)
        grpc_msg = b'\0' + struct.pack('>I', len(msg)) + msg
        s.sendall(g.h2frame(1, 4, 1, g.hpack_request(g.PROCESS)) + g.h2frame(0, 0, 1, grpc_msg[:self.rng.randrange(1, 3000)]))
        s.close()

    def s_reset(self, ch):
        s = self.raw()
        out = b''
        for i in range(self.rng.randrange(1, 20)):
            sid = 1 + 2 * i
            msg = g.frame('r%d' % i, 1, b'z', work_us=500000)
            out += g.h2frame(1, 4, sid, g.hpack_request(g.PROCESS))
            out += g.h2frame(0, 0, sid, b'\0' + struct.pack('>I', len(msg)) + msg)
            out += g.h2frame(3, 0, sid, struct.pack('>I', 8))  # RST_STREAM(CANCEL)
        s.sendall(out)
        time.sleep(0.05)
        s.close()

    def s_health(self, ch):
        r = ch.unary_unary(HEALTH, request_serializer=lambda x: x, response_deserializer=lambda x: x)(b'', timeout=10)
        if r != b'\x08\x01':
            self.stats.violation('health answered %r' % r)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    server, seconds, extra = os.path.abspath(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    workers_n = int(os.environ.get('BDS_SOAK_WORKERS', '6'))
    g.SERVER = server
    srv = g.Server(*extra)
    pid = srv.proc.pid
    time.sleep(0.5)
    fds0 = proc_fds(pid)
    stats = Stats()
    start = time.monotonic()
    deadline = start + seconds
    workers = [Worker(srv.addr, stats, deadline, seed) for seed in range(workers_n)]
    for w in workers:
        w.start()
    samples = []  # (t, rss KiB, fds)
    while any(w.is_alive() for w in workers):
        samples.append((time.monotonic() - start, g.rss_kib(pid), proc_fds(pid)))
        if srv.proc.poll() is not None:
            break
        time.sleep(1)
    for w in workers:
        w.join(120)
    checks = []
    alive = srv.proc.poll() is None
    checks.append(('server alive through the load', alive, ''))
    checks.append(('no stream broke its contract', stats.c['violations'] == 0,
                   '\n    '.join(stats.violations[:20])))
    # Descriptors back to the baseline once every client has gone.
    fds_end = -1
    settle = time.monotonic() + 30
    while alive and time.monotonic() < settle:
        fds_end = proc_fds(pid)
        if fds_end <= fds0:
            break
        time.sleep(0.5)
    checks.append(('descriptors back to %d after the load' % fds0, alive and fds_end <= fds0, 'now %d' % fds_end))
    n = len(samples)
    if n >= 10:
        warm = [r for _, r, _ in samples[n // 5:2 * n // 5]]
        late = [r for _, r, _ in samples[4 * n // 5:]]
        growth = max(late) - max(warm)
        checks.append(('RSS flat after warm-up (within %d MiB)' % (RSS_GROWTH_KIB_MAX // 1024),
                       growth <= RSS_GROWTH_KIB_MAX, 'warm-up peak %d KiB, last fifth peak %d KiB' % (max(warm), max(late))))
    rc = srv.stop(timeout=60) if alive else srv.proc.returncode
    checks.append(('SIGTERM: exit 0, no buffer or session left (the pools assert)', rc == 0, 'exit %s' % rc))

    took = time.monotonic() - start
    print('soak: %.0f s, %d workers, server %s %s' % (took, workers_n, server, ' '.join(extra)))
    c = stats.c
    print('  messages sent %d, replies %d' % (c['msgs_sent'], c['replies']))
    print('  scenarios: ' + ', '.join('%s %d' % (k[9:], v) for k, v in sorted(c.items()) if k.startswith('scenario_')))
    print('  stream ends: ' + ', '.join('%s %d' % (k[7:], v) for k, v in sorted(c.items()) if k.startswith('status_')))
    errs = [(k, v) for k, v in sorted(c.items()) if k.startswith('error_')]
    print('  errors by kind: ' + (', '.join('%s %d' % (k[6:], v) for k, v in errs) if errs else 'none'))
    step = max(1, n // 30)
    print('  RSS MiB / fds over time (s):')
    for t, rss, fds in samples[::step]:
        print('    %6.0f  %7.1f  %4d' % (t, rss / 1024, fds))
    passed = failed = 0
    for name, ok, detail in checks:
        print('  %s: %s%s' % ('PASS' if ok else 'FAIL', name, '' if ok or not detail else '\n    ' + detail))
        passed += ok
        failed += not ok
    print('%d passed, %d failed' % (passed, failed))
    sys.exit(0 if failed == 0 else 1)


if __name__ == '__main__':
    main()
