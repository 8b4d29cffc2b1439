// Runs the real `proglog` binary for the Node tests: a fresh data directory, a free port on
// 127.0.0.1, an admin port of its own, and gRPC health SERVING before a test talks to it.
// The binary is $PROGLOG_BIN (scripts/node-tests builds it).
'use strict';

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { spawn, execFileSync } = require('node:child_process');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ROOT = path.join(__dirname, '..', '..');
const BIN = process.env.PROGLOG_BIN || path.join(ROOT, 'target', 'debug', 'proglog');
const START_TIMEOUT_MS = 20_000;

const health = grpc.loadPackageDefinition(
  protoLoader.loadSync('grpc/health/v1/health.proto', {
    includeDirs: [path.join(ROOT, 'proto', 'proto')],
    defaults: true,
    enums: String,
  }),
).grpc.health.v1;

/** Resolves with true when nothing listens on `port` of 127.0.0.1 and we could bind it. */
function portIsFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/**
 * A port below the kernel's ephemeral range (32768 and up here), so that no client's
 * connect can take it between our probe and the server's bind; varied by pid so parallel
 * suites rarely collide, and retried by the caller if the server cannot bind it.
 */
async function freePort() {
  for (let i = 0; i < 1000; i += 1) {
    const port = 20_000 + ((process.pid * 7919 + i * 104_729 + Date.now()) % 12_000);
    if (await portIsFree(port)) {
      return port;
    }
  }
  throw new Error('no free port');
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

class Server {
  /** Starts a server with `args` (extra flags); `tls` is how the harness checks health. */
  static async start(args = [], tls = undefined) {
    let last = '';
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const s = new Server(await freePort(), args, tls);
      if (await s.waitServing()) {
        return s;
      }
      last = s.log();
      await s.stop();
    }
    throw new Error(`proglog did not become SERVING; its log:\n${last}`);
  }

  constructor(port, args, tls) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'proglog-node-'));
    this.addr = `127.0.0.1:${port}`;
    this.tls = tls;
    this.logPath = path.join(this.dir, 'server.log');
    const log = fs.openSync(this.logPath, 'a');
    this.proc = spawn(
      BIN,
      ['--data-dir', path.join(this.dir, 'data'), '--listen', this.addr,
        '--shards', '2', '--admin-addr', '127.0.0.1:0', '--log-level', 'info', ...args],
      { stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.proc.once('exit', resolve));
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  credentials() {
    if (!this.tls) {
      return grpc.credentials.createInsecure();
    }
    const read = (f) => (f ? fs.readFileSync(f) : null);
    return grpc.credentials.createSsl(read(this.tls.caFile), read(this.tls.keyFile),
      read(this.tls.certFile));
  }

  async waitServing() {
    const client = new health.Health(this.addr, this.credentials());
    const until = Date.now() + START_TIMEOUT_MS;
    try {
      while (Date.now() < until && this.proc.exitCode === null) {
        const status = await new Promise((resolve) => {
          client.Check({ service: '' }, { deadline: new Date(Date.now() + 1000) },
            (err, resp) => resolve(err ? null : resp.status));
        });
        if (status === 'SERVING') {
          return true;
        }
        await sleep(50);
      }
      return false;
    } finally {
      client.close();
    }
  }

  /** http://host:port of /metrics, from the server's log. */
  adminUrl() {
    const m = /admin HTTP on (http:\/\/\S+)/.exec(this.log());
    if (!m) {
      throw new Error(`no admin address in the log:\n${this.log()}`);
    }
    return m[1];
  }

  /** The samples of /metrics by `name{labels}`. */
  async metrics() {
    const res = await fetch(`${this.adminUrl()}/metrics`);
    const text = await res.text();
    const out = new Map();
    for (const line of text.split('\n')) {
      if (line && !line.startsWith('#')) {
        const at = line.lastIndexOf(' ');
        out.set(line.slice(0, at), Number(line.slice(at + 1)));
      }
    }
    return out;
  }

  /** SIGTERM, then SIGKILL if it has not exited within 10 s; removes the directory. */
  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
      await this.exited;
      clearTimeout(timer);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A CA, a server certificate for 127.0.0.1 and client certificates for `cns`, by proglog. */
function makeCerts(cns) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'proglog-node-certs-'));
  execFileSync(BIN, ['cert', 'ca', '--dir', dir]);
  execFileSync(BIN, ['cert', 'server', '--dir', dir, 'localhost', '127.0.0.1']);
  for (const cn of cns) {
    execFileSync(BIN, ['cert', 'client', '--dir', dir, cn]);
  }
  return dir;
}

module.exports = { Server, makeCerts, sleep, ROOT, BIN };
