#!/usr/bin/env node
// Runs every client call of client.js once against a proglog server and prints what happened:
//
//   node example.js --addr 127.0.0.1:8400
//   node example.js --addr 127.0.0.1:8400 --tls-ca-file certs/ca.pem \
//       --tls-cert-file certs/root-client.pem --tls-key-file certs/root-client-key.pem
//
// 1. Produce one record, 2. Consume it back, 3. a ProduceStream of --records records with
// --window in flight, 4. a ConsumeStream tail that sees records produced while it runs, then
// is cancelled, 5. Consume past the end (OUT_OF_RANGE, how a client finds the end).
'use strict';

const { parseArgs } = require('node:util');
const { connect, produce, consume, produceStream, tail, grpc } = require('./client');

const { values: args } = parseArgs({
  options: {
    addr: { type: 'string', default: '127.0.0.1:8400' },
    topic: { type: 'string', default: '' },
    records: { type: 'string', default: '1000' },
    window: { type: 'string', default: '128' },
    'tls-ca-file': { type: 'string' },
    'tls-cert-file': { type: 'string' },
    'tls-key-file': { type: 'string' },
    'tls-server-name': { type: 'string' },
  },
});

/** Resolves once `check()` is true, polling; rejects after `ms`. */
async function waitFor(check, ms, what) {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function main() {
  const client = connect(args.addr, {
    caFile: args['tls-ca-file'],
    certFile: args['tls-cert-file'],
    keyFile: args['tls-key-file'],
    serverName: args['tls-server-name'],
  });
  const topic = args.topic;
  const n = Number(args.records);

  const first = await produce(client, 'hello from node', { topic });
  console.log(`Produce: offset ${first}`);
  const rec = await consume(client, first, { topic });
  console.log(`Consume: offset ${rec.offset} value ${JSON.stringify(rec.value.toString())}`);

  const values = Array.from({ length: n }, (_, i) => `streamed ${i}`);
  const offsets = await produceStream(client, values, { topic, window: Number(args.window) });
  const inOrder = offsets.every((o, i) => i === 0 || BigInt(o) === BigInt(offsets[i - 1]) + 1n);
  console.log(
    `ProduceStream: ${offsets.length} records acknowledged, offsets ${offsets[0]}..${offsets.at(-1)}` +
      `${inOrder ? ' in order' : ' NOT in order'} (window ${args.window})`,
  );

  // The tail starts at the first record: it gets everything stored, then what comes next.
  const seen = [];
  const t = tail(client, first, (r) => seen.push(r), { topic });
  const stored = offsets.length + 1;
  await waitFor(() => seen.length >= stored, 30_000, 'the stored records');
  const live = [];
  for (let i = 0; i < 3; i += 1) {
    live.push(await produce(client, `live ${i}`, { topic }));
  }
  await waitFor(() => seen.length >= stored + live.length, 30_000, 'the live records');
  t.cancel();
  await t.done;
  const last = seen.at(-1);
  console.log(
    `ConsumeStream: ${seen.length} records from offset ${first}, the last ${live.length} produced ` +
      `while tailing (last: offset ${last.offset} ${JSON.stringify(last.value.toString())}); cancelled`,
  );

  const end = (BigInt(last.offset) + 1n).toString();
  try {
    await consume(client, end, { topic });
    throw new Error(`offset ${end} should be past the end`);
  } catch (err) {
    if (err.code !== grpc.status.OUT_OF_RANGE) {
      throw err;
    }
    console.log(`Consume past the end: OUT_OF_RANGE: ${err.details}`);
  }
  client.close();
}

main().catch((err) => {
  const code = err.code === undefined ? '' : `${grpc.status[err.code]}: `;
  console.error(`example: ${code}${err.details || err.message}`);
  process.exit(1);
});
