// Real Redis processes for the cluster tests: `redis-server` (Debian's, 7.0)
// and `redis-sentinel` on free ports in temporary directories, a TCP
// balancer that spreads connections over Herald nodes and routes around a
// dead one, and a TCP relay that can stop forwarding (a wedged connection).
// Nothing here imitates Redis or Herald: these are the real processes and
// plain sockets between them.

import { spawn, execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './server.mjs';

const REDIS_SERVER = '/usr/bin/redis-server';
const REDIS_SENTINEL = '/usr/bin/redis-sentinel';
const REDIS_CLI = '/usr/bin/redis-cli';

const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

function requireRedis() {
  for (const bin of [REDIS_SERVER, REDIS_SENTINEL, REDIS_CLI]) {
    if (!existsSync(bin)) {
      throw new Error(`${bin} is missing: scripts/test installs redis-server and redis-sentinel (apt-get install redis-server redis-sentinel)`);
    }
  }
}

/** Runs `redis-cli -p port args...`; resolves to its trimmed stdout. */
export function redisCli(port, ...args) {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(port), ...args.map(String)],
      { timeout: 10_000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`redis-cli -p ${port} ${args.join(' ')}: ${err.message} ${stderr}`));
        else resolve(stdout.trim());
      });
  });
}

async function waitPing(port, proc, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`${what} exited at start-up:\n${proc.log()}`);
    }
    const answer = await redisCli(port, 'PING').catch(() => '');
    if (answer === 'PONG') return;
    if (Date.now() > deadline) throw new Error(`${what} on port ${port} did not answer PING within ${timeoutMs} ms:\n${proc.log()}`);
    await sleep(50);
  }
}

function spawnLogged(bin, args, cwd) {
  const proc = spawn(bin, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  let log = '';
  const keep = (chunk) => {
    log += chunk.toString('utf8');
    if (log.length > 32 * 1024) log = log.slice(-32 * 1024);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  proc.log = () => log;
  proc.exited = new Promise((resolve) => proc.once('exit', (code, signal) => {
    running.delete(proc);
    resolve({ code, signal });
  }));
  return proc;
}

/**
 * Starts `redis-server` on a free port (or `port`) with its data in a fresh
 * temporary directory (or `dir`). `aof: 'always' | 'everysec' | false`
 * (default false: no persistence at all); `replicaOf: port` makes it a
 * replica of that local server.
 *
 * Returns { port, url, dir, cli(...args), kill(signal), stop(), restart({ empty }) }:
 * `restart` starts a new process on the same port, with the same data
 * (`empty: true` deletes the data first: a Redis that lost everything).
 */
export async function startRedis({ port, dir, aof = false, replicaOf, extraArgs = [] } = {}) {
  requireRedis();
  const ownDir = !dir;
  dir = dir ?? mkdtempSync(join(tmpdir(), 'herald-redis-'));
  port = port ?? await freePort();
  let proc = null;

  const args = () => [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--save', '', '--daemonize', 'no', '--protected-mode', 'no',
    ...(aof ? ['--appendonly', 'yes', '--appendfsync', aof] : ['--appendonly', 'no']),
    ...(replicaOf ? ['--replicaof', '127.0.0.1', String(replicaOf)] : []),
    ...extraArgs,
  ];

  async function launch() {
    proc = spawnLogged(REDIS_SERVER, args(), dir);
    await waitPing(port, proc, `redis-server (port ${port})`);
  }

  async function kill(signal = 'SIGKILL') {
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill(signal);
    await Promise.race([proc.exited, sleep(10_000)]);
  }

  await launch();
  return {
    port,
    dir,
    url: `redis://127.0.0.1:${port}`,
    pid: () => proc?.pid,
    log: () => proc?.log() ?? '',
    cli: (...a) => redisCli(port, ...a),
    kill,
    async restart({ empty = false } = {}) {
      await kill();
      if (empty) {
        rmSync(dir, { recursive: true, force: true });
        mkdirSync(dir, { recursive: true });
      }
      await launch();
    },
    async stop() {
      await kill('SIGTERM');
      await kill();
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Starts `redis-sentinel` watching the primary on `primaryPort` under the
 * name `service` (quorum `quorum`, failover after `downAfterMs`).
 * Returns { port, stop(), primary() } where primary() asks this sentinel
 * which port it believes the primary is on.
 */
export async function startSentinel({ primaryPort, service = 'herald', quorum = 2, downAfterMs = 1000 } = {}) {
  requireRedis();
  const dir = mkdtempSync(join(tmpdir(), 'herald-sentinel-'));
  const port = await freePort();
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(conf, [
    `port ${port}`,
    'bind 127.0.0.1',
    'protected-mode no',
    `dir ${dir}`,
    `sentinel monitor ${service} 127.0.0.1 ${primaryPort} ${quorum}`,
    `sentinel down-after-milliseconds ${service} ${downAfterMs}`,
    `sentinel failover-timeout ${service} 5000`,
    `sentinel parallel-syncs ${service} 1`,
    '',
  ].join('\n'));
  const proc = spawnLogged(REDIS_SENTINEL, [conf], dir);
  await waitPing(port, proc, `redis-sentinel (port ${port})`);
  return {
    port,
    log: () => proc.log(),
    async primary() {
      const out = await redisCli(port, 'SENTINEL', 'get-master-addr-by-name', service);
      const [, p] = out.split('\n');
      return Number(p);
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await Promise.race([proc.exited, sleep(5_000)]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP balancer on a free port: each new client connection goes to the next
 * backend (round robin) that accepts a connection; a backend that refuses is
 * skipped. When a backend dies, its proxied connections close, and the
 * clients' reconnects land on the others — what a load balancer in front of
 * a cluster does. Returns { port, url, connections(), stop() }.
 */
export async function startBalancer(backendUrls) {
  const backends = backendUrls.map((u) => {
    const { hostname, port } = new URL(u);
    return { host: hostname, port: Number(port) };
  });
  let next = 0;
  const sockets = new Set();
  const perBackend = backends.map(() => 0);

  function connectSomewhere(tries, done) {
    if (tries >= backends.length) { done(null); return; }
    const i = next++ % backends.length;
    const b = backends[i];
    const upstream = net.connect(b.port, b.host);
    upstream.once('connect', () => { perBackend[i] += 1; done(upstream); });
    upstream.once('error', () => { upstream.destroy(); connectSomewhere(tries + 1, done); });
  }

  const server = net.createServer((client) => {
    sockets.add(client);
    client.pause();
    client.on('error', () => {});
    client.once('close', () => sockets.delete(client));
    connectSomewhere(0, (upstream) => {
      if (!upstream) { client.destroy(); return; }
      sockets.add(upstream);
      upstream.on('error', () => {});
      upstream.once('close', () => { sockets.delete(upstream); client.destroy(); });
      client.once('close', () => upstream.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    connections: () => perBackend.slice(),
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * A TCP relay on a free port to `targetPort`. `freeze()` stops forwarding in
 * both directions on every connection open now, without closing any (a
 * wedged connection: the peer waits forever); connections made afterwards
 * are relayed normally. Returns { port, url, open(), freeze(), stop() }.
 */
export async function startRelay(targetPort) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    client.on('error', () => {});
    const upstream = net.connect(targetPort, '127.0.0.1');
    upstream.on('error', () => {});
    const pair = { client, upstream, frozen: false };
    pairs.add(pair);
    const forward = (from, to) => from.on('data', (chunk) => { if (!pair.frozen) to.write(chunk); });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => { pairs.delete(pair); client.destroy(); upstream.destroy(); };
    client.once('close', end);
    upstream.once('close', end);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    open: () => [...pairs].filter((p) => !p.frozen).length,
    freeze() { for (const p of pairs) p.frozen = true; },
    async stop() {
      for (const p of pairs) { p.client.destroy(); p.upstream.destroy(); }
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
