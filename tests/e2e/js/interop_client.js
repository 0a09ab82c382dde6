// interop_client.js — the gRPC interop client cases with @grpc/grpc-js, a
// second independent gRPC implementation (test_grpcjs.py runs it against
// bidistreamd over h2c and over TLS).
//
// The cases and what each checks are those of gRPC's
// doc/interop-test-descriptions.md; the service is Debian grpc-proto's
// grpc.testing.TestService, loaded with @grpc/proto-loader.
//
//   node interop_client.js --port N [--host H] [--ca FILE] [--cases a,b,...]
//
// Prints "ok CASE" or "FAIL CASE: why" per case, then "N passed, N failed";
// exits 1 if any failed. Every call has a deadline.
'use strict';

const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const fs = require('fs');

const args = {host: '127.0.0.1', port: 0, ca: null, cases: null};
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i].replace(/^--/, ''), v = process.argv[i + 1];
  if (!(k in args)) throw new Error('unknown flag --' + k);
  args[k] = v;
}

const def = loader.loadSync('grpc/testing/test.proto', {
  includeDirs: ['/usr/share/grpc-proto'], keepCase: true, longs: Number, enums: Number, defaults: true,
});
const testing = grpc.loadPackageDefinition(def).grpc.testing;
const creds = args.ca ? grpc.credentials.createSsl(fs.readFileSync(args.ca)) : grpc.credentials.createInsecure();
const target = args.host + ':' + args.port;
const stub = new testing.TestService(target, creds);
const unimplementedStub = new testing.UnimplementedService(target, creds);

const deadline = (s = 10) => new Date(Date.now() + s * 1000);
const zeros = (n) => Buffer.alloc(n);

function check(cond, why) {
  if (!cond) throw new Error(why);
}

function unary(method, req, md = new grpc.Metadata(), opts = {}) {
  return new Promise((resolve, reject) => {
    const call = stub[method](req, md, {deadline: deadline(), ...opts}, (err, resp) => {
      if (err) reject(err);
      else resolve({resp, call});
    });
    call.on('metadata', (m) => { call.headers = m; });
    call.on('status', (s) => { call.trailers = s.metadata; });
  });
}

// Resolves with the responses and the status of a stream call once it ends.
function collect(call) {
  return new Promise((resolve) => {
    const out = [];
    call.on('data', (d) => out.push(d));
    call.on('error', (err) => resolve({out, err}));
    call.on('status', (s) => { if (s.code === grpc.status.OK) resolve({out, err: null, status: s}); });
  });
}

const cases = {
  async empty_unary() {
    const {resp} = await unary('EmptyCall', {});
    check(resp && Object.keys(resp).length === 0, 'a non-empty Empty');
  },

  async large_unary() {
    const {resp} = await unary('UnaryCall', {response_size: 314159, payload: {body: zeros(271828)}});
    check(resp.payload.body.length === 314159, 'response of ' + resp.payload.body.length + ' bytes');
    check(resp.payload.body.every((b) => b === 0), 'response bytes are not zero');
  },

  async client_streaming() {
    const r = await new Promise((resolve, reject) => {
      const call = stub.StreamingInputCall(new grpc.Metadata(), {deadline: deadline()}, (e, resp) =>
        e ? reject(e) : resolve(resp));
      for (const n of [27182, 8, 1828, 45904]) call.write({payload: {body: zeros(n)}});
      call.end();
    });
    check(r.aggregated_payload_size === 74922, 'aggregated ' + r.aggregated_payload_size);
  },

  async server_streaming() {
    const sizes = [31415, 9, 2653, 58979];
    const {out, err} = await collect(stub.StreamingOutputCall(
      {response_parameters: sizes.map((size) => ({size}))}, {deadline: deadline()}));
    check(!err, String(err));
    check(out.length === 4 && out.every((o, i) => o.payload.body.length === sizes[i]), 'sizes ' +
      out.map((o) => o.payload.body.length));
  },

  async ping_pong() {
    const req = [27182, 8, 1828, 45904], resp = [31415, 9, 2653, 58979];
    const call = stub.FullDuplexCall({deadline: deadline()});
    const got = [];
    await new Promise((resolve, reject) => {
      let i = 0;
      const next = () => call.write({response_parameters: [{size: resp[i]}], payload: {body: zeros(req[i])}});
      call.on('data', (d) => {
        got.push(d.payload.body.length);
        if (++i < 4) next();
        else call.end();
      });
      call.on('error', reject);
      call.on('status', (s) => s.code === grpc.status.OK ? resolve() : reject(new Error(s.details)));
      next();
    });
    check(got.join() === resp.join(), 'sizes ' + got);
  },

  async empty_stream() {
    const call = stub.FullDuplexCall({deadline: deadline()});
    const p = collect(call);
    call.end();
    const {out, err} = await p;
    check(!err && out.length === 0, 'responses ' + out.length + ' ' + err);
  },

  async custom_metadata() {
    const md = new grpc.Metadata();
    md.set('x-grpc-test-echo-initial', 'test_initial_metadata_value');
    md.set('x-grpc-test-echo-trailing-bin', Buffer.from([0xab, 0xab, 0xab]));
    const {call} = await unary('UnaryCall', {response_size: 314159, payload: {body: zeros(271828)}}, md);
    await new Promise((r) => setImmediate(r));
    check(call.headers && call.headers.get('x-grpc-test-echo-initial')[0] === 'test_initial_metadata_value',
      'initial metadata not echoed (unary)');
    const t = call.trailers && call.trailers.get('x-grpc-test-echo-trailing-bin')[0];
    check(t && Buffer.compare(t, Buffer.from([0xab, 0xab, 0xab])) === 0, 'trailing metadata not echoed (unary)');
    const s = stub.FullDuplexCall(md, {deadline: deadline()});
    let headers = null, trailers = null;
    s.on('metadata', (m) => { headers = m; });
    const done = new Promise((resolve) => s.on('status', (st) => { trailers = st.metadata; resolve(st); }));
    s.on('data', () => {});
    s.write({response_parameters: [{size: 314159}], payload: {body: zeros(271828)}});
    s.end();
    const st = await done;
    check(st.code === grpc.status.OK, 'full duplex status ' + st.code);
    check(headers && headers.get('x-grpc-test-echo-initial')[0] === 'test_initial_metadata_value',
      'initial metadata not echoed (full duplex)');
    const tb = trailers.get('x-grpc-test-echo-trailing-bin')[0];
    check(tb && Buffer.compare(tb, Buffer.from([0xab, 0xab, 0xab])) === 0, 'trailing metadata not echoed (full duplex)');
  },

  async status_code_and_message() {
    const status = {code: 2, message: 'test status message'};
    try {
      await unary('UnaryCall', {response_status: status});
      check(false, 'unary succeeded');
    } catch (e) {
      check(e.code === 2 && e.details === 'test status message', 'unary: ' + e.code + ' ' + e.details);
    }
    const s = stub.FullDuplexCall({deadline: deadline()});
    const p = collect(s);
    s.write({response_status: status});
    s.end();
    const {err} = await p;
    check(err && err.code === 2 && err.details === 'test status message', 'full duplex: ' + err);
  },

  async special_status_message() {
    const msg = '\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n';
    try {
      await unary('UnaryCall', {response_status: {code: 2, message: msg}});
      check(false, 'succeeded');
    } catch (e) {
      check(e.code === 2 && e.details === msg, 'got ' + e.code + ' ' + JSON.stringify(e.details));
    }
  },

  async unimplemented_method() {
    try {
      await unary('UnimplementedCall', {});
      check(false, 'succeeded');
    } catch (e) {
      check(e.code === grpc.status.UNIMPLEMENTED, 'code ' + e.code);
    }
  },

  async unimplemented_service() {
    await new Promise((resolve, reject) => {
      unimplementedStub.UnimplementedCall({}, {deadline: deadline()}, (e) => {
        if (e && e.code === grpc.status.UNIMPLEMENTED) resolve();
        else reject(new Error('code ' + (e && e.code)));
      });
    });
  },

  async cancel_after_begin() {
    const call = stub.StreamingInputCall(new grpc.Metadata(), {deadline: deadline()}, () => {});
    const st = new Promise((resolve) => call.on('status', resolve));
    call.cancel();
    const s = await st;
    check(s.code === grpc.status.CANCELLED, 'code ' + s.code);
  },

  async cancel_after_first_response() {
    const call = stub.FullDuplexCall({deadline: deadline()});
    const st = new Promise((resolve) => call.on('status', resolve));
    call.on('error', () => {});
    await new Promise((resolve) => {
      call.once('data', resolve);
      call.write({response_parameters: [{size: 31415}], payload: {body: zeros(27182)}});
    });
    call.cancel();
    const s = await st;
    check(s.code === grpc.status.CANCELLED, 'code ' + s.code);
  },

  async timeout_on_sleeping_server() {
    const call = stub.FullDuplexCall({deadline: new Date(Date.now() + 1)});
    const p = collect(call);
    call.write({payload: {body: zeros(27182)}});
    const {err} = await p;
    check(err && err.code === grpc.status.DEADLINE_EXCEEDED, 'got ' + (err && err.code));
  },
};

async function main() {
  const names = args.cases ? args.cases.split(',') : Object.keys(cases);
  let passed = 0, failed = 0;
  for (const name of names) {
    if (!cases[name]) throw new Error('no case ' + name);
    try {
      await Promise.race([cases[name](), new Promise((_, rej) => setTimeout(() => rej(new Error('no end in 30 s')),
        30000).unref())]);
      console.log('ok ' + name);
      passed++;
    } catch (e) {
      console.log('FAIL ' + name + ': ' + (e && e.message || e));
      failed++;
    }
  }
  console.log(passed + ' passed, ' + failed + ' failed');
  stub.close();
  unimplementedStub.close();
  process.exit(failed ? 1 : 0);
}

main();
