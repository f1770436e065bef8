// The connection budget, against the real binary: subscribers flooding the
// server cannot lock out publishers and health checks, the stream caps
// (total and per client address) are never overshot and answer `200` +
// `retry:` and close, and a stream client that keeps sending costs little.
//
// Loopback only; client sockets are spread over 127.0.0.x source addresses
// and, for the large flood, over child processes (each may hold only so
// many sockets). Every loop here is bounded in count and time.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fork, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import http from 'node:http';
import net from 'node:net';
import { startHerald, stats, sleep } from './lib/server.mjs';

const FLOOD = fileURLToPath(new URL('./lib/subscribe-flood.mjs', import.meta.url));

/** Runs `count` subscribe attempts in a child; resolves with its tally once
 * every attempt is classified, and a `release()` that closes its streams. */
function flood(url, count, { concurrency = 400, timeoutMs = 20_000, addresses = ['127.0.0.2'] } = {}) {
  const child = fork(FLOOD, [url, String(count), String(concurrency), String(timeoutMs), addresses.join(',')], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const tally = new Promise((resolve, reject) => {
    const bound = setTimeout(() => reject(new Error(`flood of ${count} not classified within 60 s`)), 60_000);
    child.once('message', (m) => { clearTimeout(bound); resolve(m); });
    child.once('exit', (code) => { clearTimeout(bound); reject(new Error(`flood child exited (${code}) before reporting`)); });
  });
  const release = async () => {
    if (child.connected) child.disconnect();
    await Promise.race([exited, sleep(5_000)]);
    child.kill('SIGKILL');
  };
  return { tally, release };
}

/** One request on a connection of its own (so it has to be accepted, as a
 * new publisher's is); resolves with the status, rejects past `timeoutMs`. */
function freshRequest(url, path, { method = 'GET', body, timeoutMs = 2_000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url + path, {
      method,
      agent: false,
      timeout: timeoutMs,
      headers: body ? { 'content-type': 'application/json', connection: 'close' } : { connection: 'close' },
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** The turned-away counters of /v1/stats (on a connection of its own). */
async function statsNow(url) {
  return stats(url);
}

test('21,000 subscribers against the defaults: health and publishes keep answering, the excess is told to come back', { timeout: 120_000 }, async () => {
  const server = await startHerald();
  const flooders = [];
  try {
    // Health and publish polls every 200 ms, each on a new connection, for
    // as long as the flood lasts (bounded: at most 90 s of polls).
    let flooding = true;
    const polls = [];
    const poller = (async () => {
      for (let i = 0; flooding && i < 450; i++) {
        const started = Date.now();
        const outcome = (p) => p.then((status) => ({ status }), (err) => ({ err: err.message }));
        const [health, publish] = await Promise.all([
          outcome(freshRequest(server.url, '/healthz')),
          outcome(freshRequest(server.url, '/v1/publish', {
            method: 'POST',
            body: JSON.stringify({ topics: ['flood'], data: `poll ${i}` }),
          })),
        ]);
        polls.push({ health, publish, ms: Date.now() - started });
        await sleep(200);
      }
    })();

    const addresses = (first) => Array.from({ length: 8 }, (_, k) => `127.0.0.${first + k}`);
    flooders.push(flood(server.url, 10_500, { concurrency: 300, timeoutMs: 30_000, addresses: addresses(10) }));
    flooders.push(flood(server.url, 10_500, { concurrency: 300, timeoutMs: 30_000, addresses: addresses(20) }));
    const tallies = await Promise.all(flooders.map((f) => f.tally));
    // Keep polling a little while every stream is held.
    await sleep(1_000);
    flooding = false;
    await poller;

    const total = tallies.reduce((t, x) => ({
      open: t.open + x.open, refused: t.refused + x.refused, failed: t.failed + x.failed,
      causes: { ...t.causes, ...x.causes },
    }), { open: 0, refused: 0, failed: 0, causes: {} });
    const s = await statsNow(server.url);
    const summary = JSON.stringify({ total, max_connections: s.max_connections, fd_limit: s.fd_limit, polls: polls.length });

    const slowest = Math.max(...polls.map((p) => p.ms));
    console.log(`flood: ${summary}; slowest poll ${slowest} ms`);
    assert.ok(polls.length >= 5, `the flood was polled during it: ${summary}`);
    const bad = polls.filter((p) => p.health.status !== 200 || !(p.publish.status >= 200 && p.publish.status < 300));
    assert.deepEqual(bad, [], `every health check and publish answered within 2 s during the flood: ${summary}`);

    assert.equal(total.open + total.refused + total.failed, 21_000, summary);
    assert.equal(total.failed, 0, `no subscriber failed; each was admitted or told to come back: ${summary}`);
    assert.ok(total.refused > 0, `over the budget, subscribers were turned away: ${summary}`);
    assert.ok(s.max_connections < s.fd_limit, `the stream cap is below the fd limit: ${summary}`);
    assert.ok(s.connections <= s.max_connections, `open streams within the cap: ${summary}`);
    assert.equal(s.connections, total.open, summary);
    assert.equal(s.streams_turned_away.max_connections, total.refused, summary);
    assert.match(server.output(), /open-file limit.*fd_limit=\d+/, 'the fd limit is logged');
  } finally {
    await Promise.all(flooders.map((f) => f.release()));
    await server.stop();
  }
});

test('--max-connections 100 and 400 concurrent subscribes: at most 100 open, the rest 200 + retry', { timeout: 60_000 }, async () => {
  const server = await startHerald(['--max-connections', '100']);
  const f = flood(server.url, 400, { concurrency: 400, addresses: ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5'] });
  try {
    const t = await f.tally;
    const s = await stats(server.url);
    const summary = JSON.stringify({ t, connections: s.connections, turned_away: s.streams_turned_away });
    assert.ok(s.connections <= 100, `never more than the cap: ${summary}`);
    assert.equal(s.max_connections, 100, summary);
    assert.ok(t.open <= 100, summary);
    assert.equal(t.failed, 0, summary);
    assert.equal(t.open + t.refused, 400, summary);
    assert.equal(s.streams_turned_away.max_connections, t.refused, `each refusal counted once: ${summary}`);
  } finally {
    await f.release();
    await server.stop();
  }
});

test('--max-connections-per-ip 5: a sixth stream from one address is told to come back, another address is admitted', { timeout: 60_000 }, async () => {
  const server = await startHerald(['--max-connections-per-ip', '5']);
  // One after the other: the sixth is opened once the five are.
  const five = flood(server.url, 5, { addresses: ['127.0.0.2'] });
  let sixth = null;
  let other = null;
  try {
    assert.deepEqual(await five.tally, { done: true, open: 5, refused: 0, failed: 0, causes: {} });
    sixth = flood(server.url, 1, { addresses: ['127.0.0.2'] });
    other = flood(server.url, 1, { addresses: ['127.0.0.3'] });
    assert.deepEqual(await sixth.tally.then(({ open, refused }) => ({ open, refused })), { open: 0, refused: 1 },
      'the sixth from 127.0.0.2 gets 200 + retry and is closed');
    assert.deepEqual(await other.tally.then(({ open, refused }) => ({ open, refused })), { open: 1, refused: 0 },
      '127.0.0.3 has its own count');
    const s = await stats(server.url);
    assert.equal(s.connections, 6);
    assert.equal(s.streams_turned_away.max_connections_per_ip, 1);
    assert.equal(s.streams_turned_away.max_connections, 0);
  } finally {
    await Promise.all([five, sixth, other].filter(Boolean).map((f) => f.release()));
    await server.stop();
  }
});

/** utime + stime of a process, in seconds (Linux /proc). */
function cpuSeconds(pid, ticksPerSecond) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start at state.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
}

test('two stream clients that keep sending after their GET cost the server little CPU', { timeout: 60_000 }, async () => {
  const server = await startHerald();
  const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  const { hostname, port } = new URL(server.url);
  const WINDOW_MS = 3_000;
  const garbage = Buffer.alloc(16 << 10, 'x');
  const chatterer = () => new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port) });
    let sent = 0;
    let opened = false;
    let stop = false;
    let closedByServer = false;
    const done = () => { stop = true; socket.destroy(); resolve({ opened, sent, closedByServer }); };
    const timer = setTimeout(done, WINDOW_MS);
    const pump = () => {
      // Write while the socket takes it; resume when it drains.
      while (!stop && socket.write(garbage)) sent += garbage.length;
    };
    socket.on('connect', () => socket.write(`GET /v1/events?topic=chatty HTTP/1.1\r\nHost: ${hostname}\r\n\r\n`));
    socket.on('data', (chunk) => {
      if (!opened && chunk.toString('latin1').startsWith('HTTP/1.1 200')) { opened = true; pump(); }
    });
    socket.on('drain', () => { sent += garbage.length; pump(); });
    socket.on('error', () => {});
    socket.on('close', () => {
      if (stop) return;
      clearTimeout(timer);
      closedByServer = true;
      done();
    });
  });
  try {
    const before = cpuSeconds(server.pid, ticks);
    const started = Date.now();
    const clients = await Promise.all([chatterer(), chatterer()]);
    // Whatever the server still has to do with what was sent counts too.
    await sleep(300);
    const used = cpuSeconds(server.pid, ticks) - before;
    const share = used / ((Date.now() - started) / 1000);
    console.log(`server CPU ${(share * 100).toFixed(1)} %`);
    assert.ok(clients.every((c) => c.opened), `both streams opened: ${JSON.stringify(clients)}`);
    assert.ok(share < 0.3, `server CPU ${(share * 100).toFixed(0)} % of one core (limit 30 %): ${JSON.stringify(clients)}`);
    // A stream client has nothing to say: past a bound it is disconnected.
    assert.ok(clients.every((c) => c.closedByServer && c.sent > 16 << 10), `the server closed both past its 16 KiB bound: ${JSON.stringify(clients)}`);
    assert.equal(await freshRequest(server.url, '/healthz'), 200);
  } finally {
    await server.stop();
  }
});
