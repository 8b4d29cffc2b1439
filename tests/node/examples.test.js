// The Node.js example (examples/node) against the real server: example.js as a user runs it,
// plaintext and under mutual TLS with the book's ACL, and client.js's calls one by one.
'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { test, after } = require('node:test');
const { Server, makeCerts, ROOT } = require('./harness');
const client = require('../../examples/node/client');

const EXAMPLE = path.join(ROOT, 'examples', 'node', 'example.js');

function runExample(args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [EXAMPLE, ...args], { timeout: 60_000 },
      (err, stdout, stderr) => resolve({ code: err ? err.code || 1 : 0, stdout, stderr }));
  });
}

const servers = [];
after(async () => Promise.all(servers.map((s) => s.stop())));

test('example.js produces, consumes, streams and tails', async (t) => {
  const s = await Server.start();
  servers.push(s);
  const r = await runExample(['--addr', s.addr, '--records', '500', '--window', '64']);
  t.diagnostic(`example.js output:\n${r.stdout}`);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.deepEqual(lines, [
    'Produce: offset 0',
    'Consume: offset 0 value "hello from node"',
    'ProduceStream: 500 records acknowledged, offsets 1..500 in order (window 64)',
    'ConsumeStream: 504 records from offset 0, the last 3 produced while tailing '
      + '(last: offset 503 "live 2"); cancelled',
    'Consume past the end: OUT_OF_RANGE: offset out of range: 504',
  ]);
  const m = await s.metrics();
  assert.equal(
    m.get('proglog_rpc_requests_total{method="/log.v1.Log/ConsumeStream",code="CANCELLED"}'), 1);
});

test('example.js over mutual TLS, as an ACL subject', async () => {
  const certs = makeCerts(['root', 'nobody']);
  const tls = (cn) => ({
    caFile: path.join(certs, 'ca.pem'),
    certFile: path.join(certs, `${cn}-client.pem`),
    keyFile: path.join(certs, `${cn}-client-key.pem`),
  });
  const s = await Server.start([
    '--server-tls-cert-file', path.join(certs, 'server.pem'),
    '--server-tls-key-file', path.join(certs, 'server-key.pem'),
    '--server-tls-ca-file', path.join(certs, 'ca.pem'),
    '--acl-model-file', path.join(ROOT, 'tests', 'fixtures', 'model.conf'),
    '--acl-policy-file', path.join(ROOT, 'tests', 'fixtures', 'policy.csv'),
  ], tls('root'));
  servers.push(s);
  const flags = (cn) => ['--addr', s.addr, '--tls-ca-file', tls(cn).caFile,
    '--tls-cert-file', tls(cn).certFile, '--tls-key-file', tls(cn).keyFile, '--records', '10'];
  const ok = await runExample(flags('root'));
  assert.equal(ok.code, 0, ok.stderr);
  const denied = await runExample(flags('nobody'));
  assert.notEqual(denied.code, 0);
  assert.match(denied.stderr, /PERMISSION_DENIED: nobody not permitted to produce to \*/);
});

test('a refused ProduceStream reports acknowledged records and those not stored', async () => {
  const s = await Server.start(['--max-record-bytes', '32KiB', '--max-message-bytes', '64KiB']);
  servers.push(s);
  const c = client.connect(s.addr);
  try {
    const big = 'x'.repeat(100_000);
    await assert.rejects(client.produceStream(c, ['a', 'b', big, 'c'], { window: 1 }), (err) => {
      assert.equal(err.code, client.grpc.status.RESOURCE_EXHAUSTED, err.message);
      assert.deepEqual(err.acknowledged, ['0', '1']);
      assert.deepEqual(err.notStored, [big]);
      assert.deepEqual(err.unknown, []);
      return true;
    });
  } finally {
    c.close();
  }
});
