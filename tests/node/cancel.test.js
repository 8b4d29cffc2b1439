// What the server reports when grpc-js clients cancel under load: unary calls with deadlines
// of a few milliseconds or cancelled after as long, against durable produces, and streams
// cancelled mid-way. Every call the
// server saw must be counted OK, CANCELLED or DEADLINE_EXCEEDED in /metrics, never
// UNAVAILABLE (a server fault), which is what a client's RST_STREAM racing the server's
// answer used to produce.
'use strict';

const assert = require('node:assert/strict');
const { test, after } = require('node:test');
const { Server, sleep } = require('./harness');
const client = require('../../examples/node/client');

const { grpc } = client;
const CONNECTIONS = 4;
const CALLERS = 32;
const CALLS = 25;

let server;
after(async () => server && server.stop());

/**
 * One caller: CALLS produces in a row, waits cycling through 1..40 ms. Even calls carry that
 * as their deadline; odd ones have none and the caller cancels them when it passes, so the
 * server has no timer of its own and its answer races the client's RST_STREAM.
 */
async function caller(c, seed) {
  let gaveUp = 0;
  for (let i = 0; i < CALLS; i += 1) {
    const ms = 1 + ((seed * 3 + i * 7) % 40);
    const withDeadline = i % 2 === 0;
    try {
      await new Promise((resolve, reject) => {
        const opts = withDeadline ? { deadline: client.deadline(ms) } : {};
        const call = c.Produce({ record: { value: Buffer.from('x'.repeat(100)) } }, opts,
          (err, resp) => (err ? reject(err) : resolve(resp)));
        if (!withDeadline) {
          setTimeout(() => call.cancel(), ms);
        }
      });
    } catch (err) {
      const want = withDeadline ? grpc.status.DEADLINE_EXCEEDED : grpc.status.CANCELLED;
      if (err.code !== want) {
        throw err;
      }
      gaveUp += 1;
    }
  }
  return gaveUp;
}

/** A ProduceStream the client cancels while answers are still coming. */
async function cancelledStream(c) {
  const call = c.ProduceStream();
  const ended = new Promise((resolve) => call.on('error', resolve).on('end', resolve));
  call.on('data', () => {});
  for (let i = 0; i < 200; i += 1) {
    call.write({ record: { value: Buffer.from(`s${i}`) } });
  }
  await sleep(2);
  call.cancel();
  await ended;
}

test('cancelled grpc-js calls are CANCELLED or DEADLINE_EXCEEDED, never UNAVAILABLE', async (t) => {
  server = await Server.start();
  const api = client.loadApi();
  let made = 0;
  let gaveUp = 0;
  // Until some calls were given up on their deadline (bounded): on a machine fast enough to answer
  // every call in time the test would prove nothing.
  for (let round = 0; round < 10 && gaveUp < 50; round += 1) {
    // Channels of their own: grpc-js would otherwise share one connection per target.
    const clients = Array.from({ length: CONNECTIONS }, () =>
      new api.Log(server.addr, grpc.credentials.createInsecure(),
        { 'grpc.use_local_subchannel_pool': 1 }));
    const work = [];
    clients.forEach((c, k) => {
      for (let j = 0; j < CALLERS; j += 1) {
        work.push(caller(c, round + k * CALLERS + j));
      }
      work.push(cancelledStream(c));
    });
    const results = await Promise.all(work);
    gaveUp += results.reduce((a, b) => a + (b || 0), 0);
    made += CONNECTIONS * CALLERS * CALLS;
    clients.forEach((c) => c.close());
  }
  assert.ok(gaveUp > 0, `no call was given up on in ${made}`);

  // Once no call is open, every call the server saw has its one count.
  const series = (method, code) =>
    `proglog_rpc_requests_total{method="/log.v1.Log/${method}",code="${code}"}`;
  const count = (m, method, code) => m.get(series(method, code)) || 0;
  const sum = (m, prefix) =>
    [...m].filter(([k]) => k.startsWith(prefix)).reduce((a, [, v]) => a + v, 0);
  let m;
  const until = Date.now() + 30_000;
  for (;;) {
    m = await server.metrics();
    if (sum(m, 'proglog_rpc_streams_open') === 0 && sum(m, 'proglog_connections_open') === 0) {
      break;
    }
    assert.ok(Date.now() < until, 'calls still open on the server');
    await sleep(20);
  }
  const produce = (code) => count(m, 'Produce', code);
  const total = sum(m, 'proglog_rpc_requests_total{method="/log.v1.Log/Produce"');
  t.diagnostic(`${made} produces, ${gaveUp} given up by the client; server: `
    + `OK ${produce('OK')}, CANCELLED ${produce('CANCELLED')}, `
    + `DEADLINE_EXCEEDED ${produce('DEADLINE_EXCEEDED')}, UNAVAILABLE ${produce('UNAVAILABLE')}`);
  assert.equal(produce('OK') + produce('CANCELLED') + produce('DEADLINE_EXCEEDED'), total);
  assert.ok(total <= made);
  assert.ok(produce('OK') >= made - gaveUp);
  const streams = sum(m, 'proglog_rpc_requests_total{method="/log.v1.Log/ProduceStream"');
  assert.equal(count(m, 'ProduceStream', 'CANCELLED') + count(m, 'ProduceStream', 'OK'), streams);
  assert.doesNotMatch(server.log(), /unexpected frame type|too_many_resets/);
});
