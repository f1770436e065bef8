// Helpers for Herald's process-level end-to-end tests.
//
// Every test file starts the real `herald` binary with `startHerald()` and
// stops it in an `after()` hook. Nothing here mocks the server.

import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import http from 'node:http';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventSource } from 'eventsource';
import { createParser } from 'eventsource-parser';

export { sleep, EventSource };

/** Path of the binary under test: $HERALD_BIN or target/release/herald. */
export function heraldBin() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  return fileURLToPath(new URL('../../../target/release/herald', import.meta.url));
}

const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/**
 * Starts `herald serve --dev --memory --listen 127.0.0.1:0 ...extraArgs` (no
 * `--dev` with `{dev: false}`, no `--memory` when extraArgs has `--data-dir`
 * or `--redis`,
 * no default `--listen` when it has one) and
 * waits (up to 20 s) for the `herald listening on http(s)://...` line on stdout
 * (https with `--tls-cert`/`--tls-key`).
 * Returns {url, pid, proc, stop(), output()}.
 */
export async function startHerald(extraArgs = [], { env = {}, startTimeoutMs = 20_000, dev = true } = {}) {
  const bin = heraldBin();
  if (!existsSync(bin)) {
    throw new Error(`herald binary not found at ${bin}: run \`cargo build --release -p herald\` or set HERALD_BIN`);
  }
  // In memory unless the test gives a data directory or Redis; port 0 unless it gives --listen.
  const storage = extraArgs.includes('--data-dir') || extraArgs.includes('--redis') ? [] : ['--memory'];
  const listen = extraArgs.includes('--listen') ? [] : ['--listen', '127.0.0.1:0'];
  const args = ['serve', ...(dev ? ['--dev'] : []), ...storage, ...listen, ...extraArgs];
  const proc = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', ...env },
  });
  running.add(proc);
  let log = '';
  const keep = (chunk) => {
    log += chunk.toString('utf8');
    if (log.length > 64 * 1024) log = log.slice(-64 * 1024); // bounded
  };
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    proc.once('exit', (code, signal) => {
      exited = { code, signal };
      running.delete(proc);
      resolve(exited);
    });
  });

  let stdoutBuf = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`herald did not print its listen line within ${startTimeoutMs} ms; args=${args.join(' ')}\n--- output ---\n${log}`));
    }, startTimeoutMs);
    const onData = (chunk) => {
      keep(chunk);
      stdoutBuf += chunk.toString('utf8');
      const m = /herald listening on (https?:\/\/[^\s]+)/.exec(stdoutBuf);
      if (m) {
        clearTimeout(timer);
        resolve(m[1].replace(/\/+$/, ''));
      }
      if (stdoutBuf.length > 64 * 1024) stdoutBuf = stdoutBuf.slice(-1024);
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', keep);
    proc.once('error', (err) => { clearTimeout(timer); reject(err); });
    exitPromise.then((e) => {
      clearTimeout(timer);
      reject(new Error(`herald exited before listening (code=${e.code}, signal=${e.signal}); args=${args.join(' ')}\n--- output ---\n${log}`));
    });
  }).catch(async (err) => {
    if (!exited) { proc.kill('SIGKILL'); await exitPromise; }
    throw err;
  });
  // Keep draining output so the child never blocks on a full pipe.
  proc.stdout.on('data', keep);

  // A timer that does not keep the test process alive.
  const idle = (ms) => new Promise((r) => setTimeout(r, ms, null).unref());

  async function stop() {
    if (exited) return exited;
    proc.kill('SIGTERM');
    const res = await Promise.race([exitPromise, idle(5_000)]);
    if (res) return res;
    proc.kill('SIGKILL');
    return Promise.race([exitPromise, idle(5_000)]);
  }

  return { url, pid: proc.pid, proc, stop, output: () => log, exited: () => exited };
}

/** A free TCP port on 127.0.0.1 (bound, then released) for a process a test starts. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** VmRSS of a process in KiB (Linux /proc). */
export function rssKiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]);
}

/** Generic HTTP request with fetch. Returns {status, headers, text, json}. */
export async function request(url, path, { method = 'GET', headers = {}, body, timeoutMs = 10_000 } = {}) {
  let res;
  try {
    res = await fetch(url + path, {
      method,
      headers,
      body,
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    const c = err.cause;
    throw new Error(`${method} ${path}: ${err.message}${c ? ` (cause: ${c.code ?? ''} ${c.message ?? c})` : ''}`, { cause: err });
  }
  const text = await res.text();
  let json;
  try { json = text.length ? JSON.parse(text) : undefined; } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

/** POST /v1/publish with a JSON body (object, array, or a raw string). */
export async function publish(url, body, { headers = {}, timeoutMs = 30_000 } = {}) {
  const raw = typeof body === 'string' ? body : JSON.stringify(body);
  return request(url, '/v1/publish', {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: raw,
    timeoutMs,
  });
}

/** Publishes and asserts 201; returns the id (or array of ids for a batch). */
export async function publishOk(url, body) {
  const r = await publish(url, body);
  if (r.status !== 201) {
    throw new Error(`publish expected 201, got ${r.status}: ${r.text} (body ${JSON.stringify(body).slice(0, 200)})`);
  }
  if (Array.isArray(body)) return r.json.map((x) => x.id);
  return r.json.id;
}

export async function getJson(url, path) {
  const r = await request(url, path);
  if (r.status !== 200) throw new Error(`GET ${path} expected 200, got ${r.status}: ${r.text}`);
  return r.json;
}

export const stats = (url) => getJson(url, '/v1/stats');

/**
 * Polls `fn` (async) until `pred(value)` holds, every `intervalMs`, for at
 * most `timeoutMs`. Returns the last value (the caller asserts on it).
 */
export async function pollUntil(fn, pred, { timeoutMs = 2_000, intervalMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let v = await fn();
  while (!pred(v) && Date.now() < deadline) {
    await sleep(intervalMs);
    v = await fn();
  }
  return v;
}

/** Waits until `pred()` is true (synchronous predicate), bounded in time. */
export async function waitFor(pred, timeoutMs, what = 'condition', intervalMs = 10) {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export function cmpId(a, b) {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

// ---------------------------------------------------------------------------
// EventSource (npm `eventsource`) helpers

/**
 * Opens an EventSource to /v1/events?query and records every event of the
 * given types (and `open`/`error`) in `es.received` ({type, id, data}).
 */
export function openES(url, query, { types = ['message'], init } = {}) {
  const es = new EventSource(`${url}/v1/events?${query}`, init);
  es.received = [];
  es.opens = 0;
  es.errors = 0;
  for (const t of types) {
    es.addEventListener(t, (ev) => {
      es.received.push({ type: ev.type, id: ev.lastEventId, data: ev.data });
    });
  }
  es.addEventListener('open', () => { es.opens += 1; });
  es.addEventListener('error', () => { es.errors += 1; });
  return es;
}

/** Resolves when `es` has fired `open` at least `count` times. */
export async function waitOpen(es, timeoutMs = 10_000, count = 1) {
  await waitFor(() => es.opens >= count, timeoutMs, `EventSource ${es.url} to open`);
}

/** Waits until `es.received` holds at least n events; returns them. */
export async function collect(es, n, timeoutMs = 10_000) {
  await waitFor(() => es.received.length >= n, timeoutMs,
    `${n} events on ${es.url} (have ${es.received.length})`);
  return es.received.slice();
}

/** Waits until an event satisfying pred arrives on es; returns its index. */
export async function waitEvent(es, pred, timeoutMs = 10_000, what = 'event') {
  let idx = -1;
  await waitFor(() => (idx = es.received.findIndex(pred)) >= 0, timeoutMs, `${what} on ${es.url}`);
  return idx;
}

// ---------------------------------------------------------------------------
// Raw HTTP stream (node:http, no auto-reconnect)

/**
 * Opens GET {path} with node:http (its own socket, no keep-alive pool) and
 * parses the body with eventsource-parser. Returns a handle:
 * {status, headers, events[], comments[], retries[], text, ended, closed,
 *  waitEvents(n, ms), waitEnd(ms), close()}.
 * Resolves once the response head has arrived.
 */
export function openRaw(url, path, { headers = {}, timeoutMs = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    const h = {
      events: [], comments: [], retries: [], text: '', bytes: 0,
      ended: false, closed: false, aborted: false, firstData: null,
    };
    let gotFirst;
    h.firstData = new Promise((r) => { gotFirst = r; });
    const parser = createParser({
      onEvent: (ev) => h.events.push({ type: ev.event ?? 'message', id: ev.id, data: ev.data }),
      onComment: (c) => h.comments.push(c),
      onRetry: (r) => h.retries.push(r),
    });
    const req = http.get(url + path, { headers, agent: false }, (res) => {
      clearTimeout(timer);
      h.status = res.statusCode;
      h.headers = res.headers;
      h.res = res;
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        h.bytes += chunk.length;
        if (h.text.length < 1_000_000) h.text += chunk;
        parser.feed(chunk);
        gotFirst();
      });
      res.on('end', () => { h.ended = true; });
      res.on('aborted', () => { h.aborted = true; });
      res.on('error', () => { h.aborted = true; });
      res.on('close', () => { h.closed = true; gotFirst(); });
      resolve(h);
    });
    const timer = setTimeout(() => {
      req.destroy(new Error(`no response head for GET ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('error', (err) => { clearTimeout(timer); h.closed = true; reject(err); });
    h.req = req;
    h.waitEvents = async (n, ms = 10_000) => {
      await waitFor(() => h.events.length >= n, ms, `${n} events on GET ${path} (have ${h.events.length})`);
      return h.events.slice();
    };
    h.waitEnd = async (ms = 5_000) => {
      await waitFor(() => h.closed, ms, `end of GET ${path}`);
    };
    h.close = () => {
      try { req.destroy(); } catch { /* ignore */ }
      try { h.res?.destroy(); } catch { /* ignore */ }
    };
  });
}

// ---------------------------------------------------------------------------
// Raw TCP (exact bytes)

/**
 * Incremental HTTP/1.1 chunked-transfer decoder. feed(Buffer) returns the
 * decoded payload bytes (Buffer); `done` becomes true at the last chunk.
 */
export function createDechunker() {
  let buf = Buffer.alloc(0);
  let need = -1; // bytes left in current chunk data; -1 = expecting size line
  let crlfAfterData = false;
  const d = {
    done: false,
    error: null,
    feed(chunk) {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const out = [];
      for (;;) {
        if (d.done || d.error) break;
        if (crlfAfterData) {
          if (buf.length < 2) break;
          if (buf[0] !== 13 || buf[1] !== 10) { d.error = new Error('chunk data not followed by CRLF'); break; }
          buf = buf.subarray(2);
          crlfAfterData = false;
          continue;
        }
        if (need < 0) {
          const i = buf.indexOf('\r\n');
          if (i < 0) break;
          const line = buf.subarray(0, i).toString('latin1');
          const size = parseInt(line.split(';')[0].trim(), 16);
          if (!Number.isFinite(size) || size < 0) { d.error = new Error(`bad chunk size line ${JSON.stringify(line)}`); break; }
          buf = buf.subarray(i + 2);
          if (size === 0) { d.done = true; break; }
          need = size;
          continue;
        }
        if (buf.length === 0) break;
        const take = Math.min(need, buf.length);
        out.push(buf.subarray(0, take));
        buf = buf.subarray(take);
        need -= take;
        if (need === 0) { need = -1; crlfAfterData = true; }
      }
      return out.length === 1 ? out[0] : Buffer.concat(out);
    },
  };
  return d;
}

/**
 * Raw TCP SSE client: sends `GET {path} HTTP/1.1` by hand.
 * Handle: {head (string, up to and including CRLFCRLF), body (Buffer, de-chunked
 * if chunked), events[], socket, waitHead(ms), waitBody(pred, ms), close()}.
 * With `pauseAfterHead`, the socket is paused as soon as the head is read.
 */
export function rawTcpSse(url, path, { extraHeaders = '', pauseAfterHead = false, onEvent, keepBody = true } = {}) {
  const u = new URL(url);
  const socket = net.connect({ host: u.hostname, port: Number(u.port) });
  const h = {
    socket, head: null, bodyChunks: [], bodyLen: 0, events: [], comments: [], closed: false, chunked: false,
  };
  const parser = createParser({
    onEvent: (ev) => {
      const e = { type: ev.event ?? 'message', id: ev.id, data: ev.data };
      if (onEvent) onEvent(e); else h.events.push(e);
    },
    onComment: (c) => h.comments.push(c),
  });
  const decoder = new TextDecoder('utf-8');
  let headBuf = Buffer.alloc(0);
  const dechunk = createDechunker();
  const onBody = (b) => {
    if (!b.length) return;
    h.bodyLen += b.length;
    if (keepBody) h.bodyChunks.push(b);
    parser.feed(decoder.decode(b, { stream: true }));
  };
  socket.on('data', (chunk) => {
    if (h.head === null) {
      headBuf = Buffer.concat([headBuf, chunk]);
      const i = headBuf.indexOf('\r\n\r\n');
      if (i < 0) return;
      h.head = headBuf.subarray(0, i + 4).toString('latin1');
      h.chunked = /\r\ntransfer-encoding:\s*chunked\r\n/i.test(h.head);
      const rest = headBuf.subarray(i + 4);
      headBuf = null;
      if (pauseAfterHead) socket.pause();
      onBody(h.chunked ? dechunk.feed(rest) : rest);
      return;
    }
    onBody(h.chunked ? dechunk.feed(chunk) : chunk);
  });
  socket.on('close', () => { h.closed = true; });
  socket.on('error', (err) => { h.error = err; });
  socket.on('connect', () => {
    socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n${extraHeaders}\r\n`);
  });
  h.body = () => Buffer.concat(h.bodyChunks);
  h.dechunker = dechunk;
  h.waitHead = (ms = 10_000) => waitFor(() => h.head !== null || h.closed, ms, `response head of GET ${path}`);
  h.waitBody = (pred, ms = 10_000, what = 'body') => waitFor(() => pred(h), ms, `${what} on GET ${path}`);
  h.close = () => socket.destroy();
  return h;
}
