// A proglog client for Node.js with @grpc/grpc-js and @grpc/proto-loader: loading the API
// from the .proto files, connecting (plaintext, TLS, mutual TLS), and the four ways to move
// records: unary Produce and Consume, a pipelined ProduceStream, and a tailing ConsumeStream
// that the caller cancels. example.js runs each once; tests/node runs them against the real
// server. The client guide (docs/clients.md) says which status codes to expect and what to
// do with each.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** The repository's .proto files; PROGLOG_PROTO_DIR overrides (e.g. in a copy of this). */
const PROTO_DIR = process.env.PROGLOG_PROTO_DIR || path.join(__dirname, '..', '..', 'proto', 'proto');

/** Loads `log.v1` from log/v1/log.proto. */
function loadApi(protoDir = PROTO_DIR) {
  const def = protoLoader.loadSync('log/v1/log.proto', {
    includeDirs: [protoDir],
    // Offsets are uint64: as strings they survive values past 2^53, which numbers do not.
    longs: String,
    // Fields the server left at their default (offset 0, an empty topic) are still present.
    defaults: true,
    keepCase: true,
  });
  return grpc.loadPackageDefinition(def).log.v1;
}

/**
 * A `log.v1.Log` client. `tls`: undefined for plaintext, or `{ caFile, certFile, keyFile,
 * serverName }` (certFile and keyFile for mutual TLS; serverName to check the server
 * certificate for a name other than the one dialled).
 */
function connect(addr, tls, api = loadApi()) {
  const options = {
    // A PING every 60 s, 20 s for its answer: a dead server or a silently dropped
    // connection is noticed even on a quiet tail. proglog accepts PINGs at any rate.
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
    // The server's default limit; larger messages are refused with RESOURCE_EXHAUSTED.
    'grpc.max_receive_message_length': 4 * 1024 * 1024,
  };
  let creds = grpc.credentials.createInsecure();
  if (tls && tls.caFile) {
    const read = (f) => (f ? fs.readFileSync(f) : null);
    creds = grpc.credentials.createSsl(read(tls.caFile), read(tls.keyFile), read(tls.certFile));
    if (tls.serverName) {
      options['grpc.ssl_target_name_override'] = tls.serverName;
    }
  }
  return new api.Log(addr, creds, options);
}

/** A deadline `ms` from now, as grpc-js takes it. */
function deadline(ms) {
  return new Date(Date.now() + ms);
}

/** Appends one record; resolves with its offset (a string). */
function produce(client, value, { topic = '', timeoutMs = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    client.Produce(
      { record: { value: Buffer.from(value) }, topic },
      { deadline: deadline(timeoutMs) },
      (err, resp) => (err ? reject(err) : resolve(resp.offset)),
    );
  });
}

/** Reads the record at `offset`; rejects with OUT_OF_RANGE past the end of the log. */
function consume(client, offset, { topic = '', timeoutMs = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    client.Consume(
      { offset: String(offset), topic },
      { deadline: deadline(timeoutMs) },
      (err, resp) => (err ? reject(err) : resolve(resp.record)),
    );
  });
}

/**
 * Appends `values` over one ProduceStream with up to `window` records in flight: requests are
 * written without waiting for earlier answers, and the server answers in request order, so
 * the i-th response is the offset of the i-th value. Resolves with the offsets. If the stream
 * fails, the error carries `acknowledged` (offsets received), and the values sent but not
 * answered: in `notStored` when the server refused the stream (a code in REFUSED: it handles
 * the requests in order and ends the stream at the refused one, so none of them was
 * stored), else in `unknown` (they may or may not be in the log: do not resend them
 * blindly).
 */
/** Codes with which the server refuses a request before storing it (docs/clients.md). */
const REFUSED = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.DATA_LOSS,
]);

function produceStream(client, values, { topic = '', window = 256 } = {}) {
  return new Promise((resolve, reject) => {
    const call = client.ProduceStream();
    const offsets = [];
    let sent = 0;
    let failed = false;
    let waitingForDrain = false;
    let ended = false;
    const pump = () => {
      while (!waitingForDrain && sent < values.length && sent - offsets.length < window) {
        const ok = call.write({ record: { value: Buffer.from(values[sent]) }, topic });
        sent += 1;
        if (!ok) {
          // The message is queued, but the stream's buffer is full: wait for it to drain.
          waitingForDrain = true;
          call.once('drain', () => {
            waitingForDrain = false;
            pump();
          });
        }
      }
      if (sent === values.length && !ended) {
        ended = true;
        call.end(); // half-close: the server answers what it has, then ends with OK
      }
    };
    call.on('data', (resp) => {
      offsets.push(resp.offset);
      if (sent < values.length) {
        pump();
      }
    });
    call.on('error', (err) => {
      failed = true;
      err.acknowledged = offsets;
      const unanswered = values.slice(offsets.length, sent);
      const refused = REFUSED.has(err.code);
      err.notStored = refused ? unanswered : [];
      err.unknown = refused ? [] : unanswered;
      reject(err);
    });
    call.on('end', () => {
      if (!failed) {
        resolve(offsets);
      }
    });
    pump();
  });
}

/**
 * Tails the log from `offset` with one ConsumeStream: `onRecord` gets each stored record and
 * then each new one as it becomes readable. Returns `{ cancel, done }`: `cancel()` ends the
 * tail (the server sees the stream reset and counts the call CANCELLED), `done` resolves once
 * it has ended by cancel and rejects on any other end.
 */
function tail(client, offset, onRecord, { topic = '' } = {}) {
  const call = client.ConsumeStream({ offset: String(offset), topic });
  const done = new Promise((resolve, reject) => {
    call.on('data', (resp) => onRecord(resp.record));
    call.on('error', (err) => (err.code === grpc.status.CANCELLED ? resolve() : reject(err)));
    // A tail ends only when cancelled or on error; the server ending it OK is unexpected.
    call.on('end', () => reject(new Error('the server ended the tail')));
  });
  return { cancel: () => call.cancel(), done };
}

module.exports = { loadApi, connect, deadline, produce, consume, produceStream, tail, grpc };
