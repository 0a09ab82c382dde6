#!/usr/bin/python3
"""ref_server.py — a reference bidistreamd in Python, written from SPEC.md alone.

A cross-check for the e2e tests and the bds client: if a test fails against
both bidistreamd and this server, the test is wrong; if only against one, that
server is. It is slow and simple on purpose (one asyncio loop, Debian's
python3-grpcio, generic handlers, bidistream.v1.Frame encoded by hand).

Serves (docs/SERVICE.md):
  /bidistream.v1.Pipeline/Process   echo each Frame (key, seq, payload) after
                                    work_us of simulated work on a timer, keyed
                                    FIFO (per key in order, keys in parallel),
                                    fail -> the stream ends INTERNAL; half-close
                                    drains every reply, then OK
  /grpc.health.v1.Health/Check      SERVING, NOT_SERVING once shutdown begins,
                                    NOT_FOUND for an unknown service
  /grpc.health.v1.Health/Watch      the status now and at each change

The pipeline of docs/SERVICE.md, per stream: ordering (fifo|keyed) with its capacity,
then backpressure on concurrent executions (hard-reject -> RESOURCE_EXHAUSTED,
queue, soft-allow, soft-allow-signal), retries with backoff, outbound capacity
(unwritten replies; past it and past the queue, RESOURCE_EXHAUSTED with
fail-fast). When a bound on waiting messages is reached, the stream simply
stops reading, so gRPC flow control slows the client (never rejected).
SIGTERM/SIGINT: health turns NOT_SERVING, streams take no new messages, drain
what they have within --grace, end with UNAVAILABLE; exit 0.

Takes bidistreamd's flags (same names, same one-line errors, exit 2) and
prints, like it, "...: listening on HOST:PORT with N shards" on stderr once
it serves. Flags it accepts but cannot honour in Python: --shards,
--max-concurrent-streams, --max-header-list-bytes, --stream-window-bytes,
--idle-spin-us, --outbound-ordering, --metrics*.

usage: ref_server.py [--listen HOST:PORT] [bidistreamd flags...]
"""
import asyncio
import collections
import os
import re
import signal
import sys
import time

import grpc

PROG = 'ref_server'

# ---- flags (bidistreamd's names and rules) ----------------------------------------------------

BOOL_WORDS = {'true': True, 'yes': True, 'on': True, '1': True,
              'false': False, 'no': False, 'off': False, '0': False}
POLICIES = ('hard-reject', 'queue', 'soft-allow', 'soft-allow-signal')
LEVELS = ('error', 'warn', 'info', 'debug')
DUR_UNITS = (('ns', 1), ('us', 1000), ('ms', 10**6), ('s', 10**9), ('m', 60 * 10**9), ('h', 3600 * 10**9))
HOUR_NS = 3600 * 10**9

# name: (kind, default, (min, max))
FLAGS = {
    'listen': ('listen', '127.0.0.1:50051', None),
    'shards': ('u32', 0, (0, 64)),
    'inbound-ordering': ('ordering', 'keyed', None),
    'inbound-ordering-capacity': ('u32', 4096, (0, 2**32 - 1)),
    'inbound-policy': ('policy', 'queue', None),
    'inbound-capacity': ('u32', 256, (0, 2**32 - 1)),
    'inbound-queue-capacity': ('u32', 4096, (0, 2**32 - 1)),
    'outbound-ordering': ('ordering', 'fifo', None),
    'outbound-ordering-capacity': ('u32', 0, (0, 2**32 - 1)),
    'outbound-policy': ('policy', 'queue', None),
    'outbound-capacity': ('u32', 1024, (0, 2**32 - 1)),
    'outbound-queue-capacity': ('u32', 8192, (0, 2**32 - 1)),
    'fail-fast': ('bool', True, None),
    'drain-on-client-close': ('bool', True, None),
    'failures-terminal': ('bool', True, None),
    'max-attempts': ('u32', 0, (0, 1000)),
    'backoff': ('duration', 0, (0, HOUR_NS)),
    'grace': ('duration', 5 * 10**9, (0, HOUR_NS)),
    'drain-inbound': ('bool', True, None),
    'drain-outbound': ('bool', True, None),
    'metrics': ('bool', True, None),
    'metrics-payload-sizes': ('bool', False, None),
    'max-message-bytes': ('bytes', 4 << 20, (16, 2**31 - 1)),
    'max-concurrent-streams': ('u32', 1024, (1, 2**31 - 1)),
    'max-header-list-bytes': ('bytes', 16 << 10, (1024, 2**32 - 1)),
    'stream-window-bytes': ('bytes', 64 << 10, (1024, 2**31 - 1)),
    'idle-spin-us': ('u32', 0, (0, 1000000)),
    'log-level': ('level', 'info', None),
}


class Usage(Exception):
    """A bad flag: one line, exit 2."""


def parse_duration(v):
    if v == '0':
        return 0
    total, pos = 0, 0
    if not v:
        raise ValueError
    while pos < len(v):
        m = re.compile(r'(\d*)(?:\.(\d*))?').match(v, pos)
        whole, frac = m.group(1), m.group(2)
        if not whole and not frac:
            raise ValueError
        pos = m.end()
        for unit, ns in sorted(DUR_UNITS, key=lambda u: -len(u[0])):
            if v.startswith(unit, pos):
                break
        else:
            raise ValueError
        pos += len(unit)
        total += int(whole or '0') * ns
        scale = ns // 10
        for d in frac or '':
            total += int(d) * scale
            scale //= 10
    return total


def parse_value(name, v):
    kind, _, rng = FLAGS[name]
    flag = '--' + name
    if kind == 'listen':
        m = re.fullmatch(r'(\[[^\]]*\]|[^:\[\]]*|[^\[\]]*):(\d+)', v)
        if not m or int(m.group(2)) > 65535:
            raise Usage('%s: expected HOST:PORT with a port 0 to 65535, got %r' % (flag, v))
        return v
    if kind in ('u32', 'bytes', 'duration'):
        if v.startswith('-'):
            raise Usage('%s: %r is negative (expected 0 or more)' % (flag, v))
        try:
            if kind == 'duration':
                x = parse_duration(v)
            else:
                m = re.fullmatch(r'(\d+)(B|KiB|MiB|GiB)?' if kind == 'bytes' else r'(\d+)()', v)
                if not m:
                    raise ValueError
                x = int(m.group(1)) * {'': 1, None: 1, 'B': 1, 'KiB': 1 << 10, 'MiB': 1 << 20,
                                       'GiB': 1 << 30}[m.group(2)]
        except ValueError:
            raise Usage('%s: expected %s, got %r' % (flag, {'u32': 'a whole number', 'bytes': 'a size like 4MiB',
                                                            'duration': 'a duration like 250ms or 5s'}[kind], v))
        if not rng[0] <= x <= rng[1]:
            raise Usage('%s: %r is out of range (%d to %d)' % (flag, v, rng[0], rng[1]))
        return x
    if kind == 'bool':
        if v not in BOOL_WORDS:
            raise Usage('%s: expected true or false, got %r' % (flag, v))
        return BOOL_WORDS[v]
    names = {'ordering': ('fifo', 'keyed'), 'policy': POLICIES, 'level': LEVELS}[kind]
    if v not in names:
        raise Usage('%s: expected one of %s, got %r' % (flag, ', '.join(names), v))
    return v


def parse_args(argv):
    """argv -> dict of settings (defaults, then --config FILE, then flags)."""
    items, config = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a in ('--help', '-h'):
            print(__doc__)
            sys.exit(0)
        if not a.startswith('--') or a == '--':
            raise Usage('%s: unexpected argument (options start with --, see --help)' % a)
        name, eq, v = a[2:].partition('=')
        if name != 'config' and name not in FLAGS:
            raise Usage('--%s: unknown option (see --help)' % name)
        is_bool = name in FLAGS and FLAGS[name][0] == 'bool'
        if not eq:
            if i < len(argv) and not argv[i].startswith('--') and (not is_bool or argv[i] in BOOL_WORDS):
                v = argv[i]
                i += 1
            elif is_bool:
                v = 'true'
            else:
                raise Usage('--%s: missing value' % name)
        if name == 'config':
            if config is not None:
                raise Usage('--config: given twice')
            config = v
        else:
            items.append((name, v))
    cfg = {name: spec[1] for name, spec in FLAGS.items()}
    given = set()
    if config is not None:
        try:
            lines = open(config).read().splitlines()
        except OSError as e:
            raise Usage('--config: %s: %s' % (config, e.strerror))
        for n, line in enumerate(lines, 1):
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            key, eq, v = line.partition('=')
            key, v = key.strip(), v.strip()
            if not eq or key not in FLAGS:
                raise Usage('%s:%d: expected a known key = value, got %r' % (config, n, line))
            try:
                cfg[key] = parse_value(key, v)
            except Usage as e:
                raise Usage('%s:%d: %s' % (config, n, str(e)[2:]))
            given.add(key)
    for name, v in items:
        cfg[name] = parse_value(name, v)
        given.add(name)
    for d in ('inbound', 'outbound'):  # the queue capacity follows the policy unless set on purpose
        if cfg[d + '-policy'] != 'queue' or cfg[d + '-capacity'] == 0:
            if d + '-queue-capacity' in given and cfg[d + '-queue-capacity']:
                raise Usage('--%s-queue-capacity: applies only with --%s-policy queue and a capacity' % (d, d))
            cfg[d + '-queue-capacity'] = 0
    if cfg['backoff'] and not cfg['max-attempts']:
        raise Usage('--backoff: needs --max-attempts above 0')
    return cfg


# ---- protobuf, by hand -------------------------------------------------------------------------

def varint(x):
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(b, i):
    x = s = 0
    while True:
        if i >= len(b) or s > 63:
            raise ValueError('truncated varint')
        c = b[i]
        i += 1
        x |= (c & 0x7F) << s
        s += 7
        if not c & 0x80:
            return x, i


def decode(b):
    """Protobuf bytes -> {field: value}; strict enough to refuse garbage (wire types 0, 1, 2, 5)."""
    out, i = {}, 0
    while i < len(b):
        tag, i = read_varint(b, i)
        field, wt = tag >> 3, tag & 7
        if field == 0:
            raise ValueError('field number 0')
        if wt == 0:
            out[field], i = read_varint(b, i)
        elif wt == 2:
            n, i = read_varint(b, i)
            if i + n > len(b):
                raise ValueError('length past the end')
            out[field] = b[i:i + n]
            i += n
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            if i + n > len(b):
                raise ValueError('fixed field past the end')
            out[field] = b[i:i + n]
            i += n
        else:
            raise ValueError('wire type %d' % wt)
    return out


class Frame:
    __slots__ = ('key', 'seq', 'payload', 'work_us', 'fail')

    def __init__(self, raw):
        f = decode(raw)
        key = f.get(1, b'')
        if not isinstance(key, bytes):
            raise ValueError('key is not length-delimited')
        self.key = key.decode()  # proto3 string: must be UTF-8
        self.seq = f.get(2, 0)
        self.payload = f.get(3, b'')
        self.work_us = f.get(4, 0)
        self.fail = bool(f.get(5, 0))
        if not isinstance(self.seq, int) or not isinstance(self.payload, bytes) or \
           not isinstance(self.work_us, int) or self.work_us >= 2**32:
            raise ValueError('field of the wrong type')

    def reply(self):
        out = b''
        if self.key:
            k = self.key.encode()
            out += b'\x0a' + varint(len(k)) + k
        if self.seq:
            out += b'\x10' + varint(self.seq)
        if self.payload:
            out += b'\x1a' + varint(len(self.payload)) + self.payload
        return out


# ---- the server ---------------------------------------------------------------------------------

class Server:
    def __init__(self, cfg):
        self.cfg = cfg
        self.serving = True
        self.shutdown_at = None            # loop time when shutdown began
        self.health_changed = asyncio.Event()
        self.streams = set()

    def log(self, level, msg):
        if LEVELS.index(self.cfg['log-level']) >= LEVELS.index(level):
            print('%s: %s' % (PROG, msg), file=sys.stderr, flush=True)

    def begin_shutdown(self):
        if self.shutdown_at is not None:
            return
        self.shutdown_at = asyncio.get_running_loop().time()
        self.serving = False
        self.health_changed.set()
        for s in list(self.streams):
            s.kick()
        self.log('info', 'shutting down (grace %gs)' % (self.cfg['grace'] / 1e9))

    def grace_left(self):
        if self.shutdown_at is None:
            return None
        return self.shutdown_at + self.cfg['grace'] / 1e9 - asyncio.get_running_loop().time()

    # Health ------------------------------------------------------------------------------------

    KNOWN = ('', 'bidistream.v1.Pipeline', 'grpc.health.v1.Health')

    def service(self, raw):
        try:
            s = decode(raw).get(1, b'')
            return s.decode() if isinstance(s, bytes) else None
        except (ValueError, UnicodeDecodeError):
            return None

    async def check(self, raw, context):
        name = self.service(raw)
        if name is None:
            await context.abort(grpc.StatusCode.INTERNAL, 'malformed HealthCheckRequest')
        if name not in self.KNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, 'unknown service %r' % name)
        return b'\x08' + (b'\x01' if self.serving else b'\x02')

    async def watch(self, raw, context):
        name = self.service(raw)
        if name is None:
            await context.abort(grpc.StatusCode.INTERNAL, 'malformed HealthCheckRequest')
        last = None
        while True:
            now = 3 if name not in self.KNOWN else (1 if self.serving else 2)
            if now != last:
                last = now
                yield b'\x08' + bytes([now])
            if now != 1:
                await asyncio.Future()  # no change comes after NOT_SERVING; the stop cancels us
            await self.health_changed.wait()

    # Process -----------------------------------------------------------------------------------

    async def process(self, requests, context):
        if self.shutdown_at is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, 'bidistream: shutdown in progress')
        s = Stream(self, context)
        self.streams.add(s)
        try:
            async for r in s.run(requests):
                yield r
        finally:
            self.streams.discard(s)
        if s.ended[0] != grpc.StatusCode.OK:
            await context.abort(*s.ended)


class Stream:
    """One Process call: docs/SERVICE.md session, receiver and sender, on the loop."""

    def __init__(self, srv, context):
        self.srv, self.cfg, self.context = srv, srv.cfg, context
        self.keyed = self.cfg['inbound-ordering'] == 'keyed'
        self.waiting = collections.defaultdict(collections.deque)  # key -> frames waiting for their turn
        self.n_waiting = 0
        self.busy = set()                  # keys with a message at its turn (running or waiting a token)
        self.in_use = 0                    # execution tokens held
        self.token_queue = collections.deque()
        self.pending = 0                   # received, not yet finished
        self.replies = collections.deque()  # unwritten replies
        self.client_closed = False
        self.ended = None                  # (code, message) once decided; the first reason wins
        self.changed = asyncio.Event()
        self.tasks = set()
        self.pressure = 0                  # soft-allow-signal: times run over capacity

    def kick(self):
        self.changed.set()

    def end(self, code, msg):
        if self.ended is None:
            self.ended = (code, msg)
        self.kick()

    # Receiver ------------------------------------------------------------------------------------

    def room(self):
        """Whether another message may be read: the bounds on waiting messages."""
        c = self.cfg
        if c['inbound-ordering-capacity'] and self.n_waiting >= c['inbound-ordering-capacity']:
            return False
        if c['inbound-policy'] == 'queue' and c['inbound-queue-capacity'] and \
           len(self.token_queue) >= c['inbound-queue-capacity']:
            return False
        return True

    async def read(self, requests):
        try:
            async for raw in requests:
                if self.srv.shutdown_at is not None or self.ended:
                    continue  # Draining accepts no new messages
                try:
                    f = Frame(raw)
                except (ValueError, UnicodeDecodeError) as e:
                    self.end(grpc.StatusCode.INTERNAL, 'malformed bidistream.v1.Frame: %s' % e)
                    return
                self.admit(f)
                while not self.room() and not self.ended:
                    self.changed.clear()
                    await self.changed.wait()  # stop reading: gRPC flow control slows the client
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the call went away under us (cancel, deadline)
            self.end(grpc.StatusCode.CANCELLED, 'read failed: %r' % e)
            return
        self.client_closed = True
        self.kick()

    def admit(self, f):
        key = f.key if self.keyed else ''
        self.pending += 1
        if key in self.busy:
            self.waiting[key].append(f)
            self.n_waiting += 1
        else:
            self.busy.add(key)
            self.turn(key, f)

    def turn(self, key, f):
        """f's turn in its key came: take a token, or wait, or be refused."""
        c = self.cfg
        cap, policy = c['inbound-capacity'], c['inbound-policy']
        if cap == 0 or self.in_use < cap or policy.startswith('soft-allow'):
            if cap and self.in_use >= cap and policy == 'soft-allow-signal':
                self.pressure += 1
                self.srv.log('debug', 'inbound pressure: %d in use, capacity %d' % (self.in_use, cap))
            self.in_use += 1
            t = asyncio.get_running_loop().create_task(self.execute(key, f))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)
        elif policy == 'hard-reject':
            self.end(grpc.StatusCode.RESOURCE_EXHAUSTED, 'bidistream: inbound admission rejected')
        else:
            self.token_queue.append((key, f))

    async def execute(self, key, f):
        c = self.cfg
        failed = False
        for attempt in range(1 + c['max-attempts']):
            if attempt and c['backoff']:
                await asyncio.sleep(c['backoff'] / 1e9)
            # The reply is due work_us after execution starts; a timer, no blocking.
            await asyncio.sleep(f.work_us / 1e6)
            failed = f.fail
            if not failed:
                break
        if self.ended is None:
            if not failed:
                self.send(f.reply())
            elif c['failures-terminal']:
                self.end(grpc.StatusCode.INTERNAL,
                         'bidistream: terminal failure: Frame key=%r seq=%d failed (fail=true)' % (f.key, f.seq))
        self.release(key)

    def release(self, key):
        """The token and the key's turn, each exactly once."""
        self.in_use -= 1
        self.pending -= 1
        if self.token_queue and self.ended is None:
            k, nf = self.token_queue.popleft()  # the oldest waiter takes the token
            self.turn(k, nf)
        q = self.waiting.get(key)
        if q:
            self.n_waiting -= 1
            self.turn(key, q.popleft())
        else:
            self.busy.discard(key)
            self.waiting.pop(key, None)
        self.kick()

    # Sender --------------------------------------------------------------------------------------

    def send(self, reply):
        c = self.cfg
        bound = c['outbound-capacity']
        if bound and c['outbound-policy'] != 'soft-allow' and c['outbound-policy'] != 'soft-allow-signal':
            if c['outbound-policy'] == 'queue':
                bound = bound + c['outbound-queue-capacity'] if c['outbound-queue-capacity'] else 0
            if bound and len(self.replies) >= bound:
                if c['fail-fast']:
                    self.end(grpc.StatusCode.RESOURCE_EXHAUSTED, 'bidistream: outbound backpressure')
                return  # without fail-fast the reply is lost, the stream goes on
        self.replies.append(reply)
        self.kick()

    async def run(self, requests):
        """The call's reply stream; sets self.ended before it returns."""
        reader = asyncio.get_running_loop().create_task(self.read(requests))
        try:
            while True:
                if self.ended is not None:
                    return
                left = self.srv.grace_left()
                if self.replies and (left is None or self.cfg['drain-outbound']):
                    yield self.replies.popleft()
                    continue
                if left is not None:
                    drained = self.pending == 0 or not self.cfg['drain-inbound']
                    if drained or left <= 0:
                        self.end(grpc.StatusCode.UNAVAILABLE,
                                 'bidistream: shutdown in progress' if drained else 'bidistream: grace period over')
                        return
                elif self.client_closed and (self.pending == 0 or not self.cfg['drain-on-client-close']):
                    self.end(grpc.StatusCode.OK, '')
                    return
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=left if left is not None else None)
                except asyncio.TimeoutError:
                    pass
        finally:
            reader.cancel()
            for t in list(self.tasks):
                t.cancel()


async def serve(cfg):
    srv = Server(cfg)
    options = [('grpc.max_receive_message_length', cfg['max-message-bytes']),
               ('grpc.max_send_message_length', cfg['max-message-bytes']),
               ('grpc.so_reuseport', 0)]
    server = grpc.aio.server(options=options)
    ident = dict(request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler('bidistream.v1.Pipeline', {
            'Process': grpc.stream_stream_rpc_method_handler(srv.process, **ident)}),
        grpc.method_handlers_generic_handler('grpc.health.v1.Health', {
            'Check': grpc.unary_unary_rpc_method_handler(srv.check, **ident),
            'Watch': grpc.unary_stream_rpc_method_handler(srv.watch, **ident)}),
    ))
    host = cfg['listen'].rsplit(':', 1)[0]
    try:
        port = server.add_insecure_port(cfg['listen'])
    except RuntimeError as e:
        print('%s: listen %s: %s' % (PROG, cfg['listen'], e), file=sys.stderr)
        return 1
    if port == 0 and not cfg['listen'].endswith(':0'):
        print('%s: listen %s: cannot bind' % (PROG, cfg['listen']), file=sys.stderr)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    shards = cfg['shards'] or len(os.sched_getaffinity(0))
    print('%s: listening on %s:%d with %d shards (Python reference server, not bidistreamd)'
          % (PROG, host, port, shards), file=sys.stderr, flush=True)
    await stop.wait()
    # One SIGTERM starts the graceful shutdown; more (a supervisor's, a test's
    # stop()) must not cut it short or turn exit 0 into death by signal.
    loop.remove_signal_handler(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    srv.begin_shutdown()
    # Streams end themselves (drained, or the grace is over); then the rest goes.
    deadline = time.monotonic() + cfg['grace'] / 1e9 + 1
    while srv.streams and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await server.stop(0.5)
    srv.log('info', 'stopped')
    return 0


def main():
    try:
        cfg = parse_args(sys.argv[1:])
    except Usage as e:
        print('%s: %s' % (PROG, e), file=sys.stderr)
        return 2
    return asyncio.run(serve(cfg))


if __name__ == '__main__':
    sys.exit(main())
