// Reverse proxies in front of Herald, started from the files in deploy/ as a
// person would install them, on free ports and in a temporary directory
// (no root paths: nginx gets a prefix, Caddy its own data and config
// directories). Used by tests/e2e/deploy-*.test.mjs.

import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import {
  openRaw, publish, publishOk, request, sleep, waitFor, cmpId, EventSource, freePort,
} from './server.mjs';

export const DEPLOY_DIR = fileURLToPath(new URL('../../../deploy/', import.meta.url));
export const NGINX = '/usr/sbin/nginx';
export const CADDY = '/usr/bin/caddy';

const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

// A timer that does not keep the test process alive.
const idle = (ms) => new Promise((r) => setTimeout(r, ms, null).unref());

/** A port nobody listens on right now (the OS picks it). */
/**
 * Replaces `from` (a string that must occur exactly once) with `to`, so a
 * change to the deploy file's shape fails loudly instead of testing
 * something else.
 */
export function replaceOnce(text, from, to, file) {
  const at = text.indexOf(from);
  if (at < 0 || text.indexOf(from, at + 1) >= 0) {
    throw new Error(`${file}: expected exactly one ${JSON.stringify(from)}`);
  }
  return text.slice(0, at) + to + text.slice(at + from.length);
}

/** Starts `command args` and waits until `url` answers HTTP; returns {proc, stop(), output()}. */
async function startAndWait(command, args, { env, url, what, timeoutMs = 15_000 }) {
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  running.add(proc);
  let log = '';
  const keep = (c) => { log = (log + c).slice(-64 * 1024); };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => proc.once('exit', (code, signal) => {
    exited = { code, signal };
    running.delete(proc);
    resolve(exited);
  }));
  async function stop() {
    if (exited) return exited;
    proc.kill('SIGTERM');
    if (await Promise.race([exitPromise, idle(5_000)])) return exited;
    proc.kill('SIGKILL');
    return Promise.race([exitPromise, idle(5_000)]);
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited) throw new Error(`${what} exited (code=${exited.code}, signal=${exited.signal}) before answering\n--- output ---\n${log}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      break;
    } catch { /* not yet */ }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${what} did not answer on ${url} within ${timeoutMs} ms\n--- output ---\n${log}`);
    }
    await sleep(100);
  }
  return { proc, stop, output: () => log };
}

/**
 * Lays out nginx as deploy/nginx's comments say to install it —
 * `snippets/herald-sse-proxy.conf` and `conf.d/herald.conf` next to the main
 * config — in a temporary prefix. herald.conf (or `site`, another file of
 * deploy/nginx) is used as it is, except for its upstream addresses
 * (Herald's free port, or with `nodes` the cluster's example addresses
 * become the nodes' ports) and listen port (nginx's).
 * Returns {dir, conf, port, url}.
 */
export async function layOutNginx(heraldUrl, { snippet, site: siteFile = 'herald.conf', nodes } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-nginx-'));
  mkdirSync(join(dir, 'snippets'));
  mkdirSync(join(dir, 'conf.d'));
  mkdirSync(join(dir, 'temp'));
  if (snippet !== undefined) writeFileSync(join(dir, 'snippets', 'herald-sse-proxy.conf'), snippet);
  else copyFileSync(join(DEPLOY_DIR, 'nginx', 'sse-proxy.conf'), join(dir, 'snippets', 'herald-sse-proxy.conf'));
  const port = await freePort();
  const herald = new URL(heraldUrl);
  const file = `deploy/nginx/${siteFile}`;
  let site = readFileSync(join(DEPLOY_DIR, 'nginx', siteFile), 'utf8');
  if (nodes) {
    // The cluster's upstream: its example addresses become the nodes' ports.
    nodes.forEach((url, i) => {
      site = replaceOnce(site, `server 10.0.0.${i + 1}:8080`, `server 127.0.0.1:${new URL(url).port}`, file);
    });
  } else {
    site = replaceOnce(site, 'server 127.0.0.1:8080;', `server 127.0.0.1:${herald.port};`, file);
  }
  site = replaceOnce(site, 'listen 80;', `listen 127.0.0.1:${port};`, file);
  writeFileSync(join(dir, 'conf.d', 'herald.conf'), site);
  // The main config: what /etc/nginx/nginx.conf would be, with every path
  // in the temporary prefix (Debian's build puts temp files in /var/lib/nginx),
  // and one process, so a test that dies cannot leave a worker behind.
  const temp = join(dir, 'temp');
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, `
daemon off;
master_process off;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log stderr warn;
${process.getuid?.() === 0 ? 'user root;' : ''}
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path ${temp}/body;
    proxy_temp_path ${temp}/proxy;
    fastcgi_temp_path ${temp}/fastcgi;
    uwsgi_temp_path ${temp}/uwsgi;
    scgi_temp_path ${temp}/scgi;
    include conf.d/*.conf;
}
`);
  return { dir, conf, port, url: `http://127.0.0.1:${port}` };
}

/** `nginx -t` on a laid-out config: {status, output}. */
export function nginxTest(layout) {
  const r = spawnSync(NGINX, ['-t', '-p', layout.dir, '-c', layout.conf, '-e', 'stderr'], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** Runs nginx on a laid-out config until stop(); waits until it proxies /healthz. */
export async function startNginx(layout) {
  const nginx = await startAndWait(NGINX, ['-p', layout.dir, '-c', layout.conf, '-e', 'stderr'], {
    url: `${layout.url}/healthz`, what: 'nginx',
  });
  return {
    ...nginx,
    url: layout.url,
    stop: async () => {
      const r = await nginx.stop();
      rmSync(layout.dir, { recursive: true, force: true });
      return r;
    },
  };
}

export const noNginx = !existsSync(NGINX) && `no ${NGINX}`;
export const noCaddy = !existsSync(CADDY) && `no ${CADDY} (Debian package caddy)`;

// ---------------------------------------------------------------------------
// What a proxy in front of Herald must do, checked the same way for each.

/**
 * Opens a stream through the proxy, then publishes `rounds` events one at a
 * time (through the proxy too) and times each from the moment its publish
 * is sent to the moment its bytes arrive on the stream. Returns
 * {status, contentType, latenciesMs}; an event that does not arrive within
 * 5 s fails the call. A buffering or compressing proxy holds events
 * until its buffer fills or the stream ends, which is what this catches.
 */
export async function timeEventsThroughProxy(proxyUrl, { user, rounds = 5, headers = {} }) {
  // What a browser's EventSource sends: offering compression is what makes
  // a proxy that compresses event streams hold them back.
  const stream = await openRaw(proxyUrl, `/v1/events?user=${encodeURIComponent(user)}`, {
    headers: { accept: 'text/event-stream', 'cache-control': 'no-cache', 'accept-encoding': 'gzip, deflate, br', ...headers },
  });
  try {
    const arrivals = [];
    stream.res.on('data', (chunk) => arrivals.push({ at: performance.now(), text: String(chunk) }));
    // The preamble (`retry:` and `:ok`) is the stream's first bytes: once
    // it is through, the stream is open end to end.
    await waitFor(() => stream.text.includes(':ok'), 10_000, 'the stream preamble through the proxy');
    const latenciesMs = [];
    for (let i = 0; i < rounds; i += 1) {
      const marker = `proxy-round-${i}-${Math.random().toString(36).slice(2)}`;
      const sentAt = performance.now();
      const r = await publish(proxyUrl, { users: [user], data: marker }, { headers });
      if (r.status !== 201) throw new Error(`publish through the proxy: ${r.status} ${r.text}`);
      await waitFor(() => arrivals.some((a) => a.text.includes(marker)), 5_000, `event ${i} through the proxy`, 1);
      latenciesMs.push(arrivals.find((a) => a.text.includes(marker)).at - sentAt);
    }
    return { status: stream.status, contentType: stream.headers['content-type'], latenciesMs };
  } finally {
    stream.close();
  }
}

/** The median of some numbers. */
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Resume through the proxy (Herald started with a long `--retry-ms`, so a
 * reconnecting client is surely away when the missed event is published):
 * a raw stream sending `Last-Event-ID` gets exactly the events after it;
 * a real EventSource whose stream is ended (kicked through the proxy)
 * reconnects by itself with `Last-Event-ID` and gets the event published
 * while it was away, once.
 */
export async function checkResumeThroughProxy(proxyUrl, heraldUrl, name) {
  const topic = `deploy/${name}`;
  const ids = [];
  for (const n of [1, 2, 3]) ids.push(await publishOk(heraldUrl, { topics: [topic], data: `e${n}` }));
  const resumed = await openRaw(proxyUrl, `/v1/events?topic=${encodeURIComponent(topic)}`, { headers: { 'Last-Event-ID': ids[0] } });
  try {
    const got = await resumed.waitEvents(2);
    assert.deepEqual(got.map((e) => [e.id, e.data]), [[ids[1], 'e2'], [ids[2], 'e3']], `resumed through ${name}`);
  } finally {
    resumed.close();
  }

  const user = `${name}-resume`;
  const es = new EventSource(`${proxyUrl}/v1/events?user=${user}`);
  const got = [];
  let opens = 0;
  let errors = 0;
  es.addEventListener('message', (e) => got.push({ id: e.lastEventId, data: e.data }));
  es.addEventListener('open', () => { opens += 1; });
  es.addEventListener('error', () => { errors += 1; });
  try {
    await waitFor(() => opens === 1, 10_000, `the EventSource to open through ${name}`);
    await publishOk(heraldUrl, { users: [user], data: 'before' });
    await waitFor(() => got.length === 1, 10_000, 'the first event');
    const kick = await request(proxyUrl, `/v1/users/${user}/connections`, { method: 'DELETE' });
    assert.equal(kick.status, 200, kick.text);
    await waitFor(() => errors >= 1, 10_000, 'the stream to end');
    await publishOk(heraldUrl, { users: [user], data: 'while away' });
    assert.equal(opens, 1, 'published while the client was away');
    await waitFor(() => got.length >= 2 && opens === 2, 15_000, 'the reconnect and the missed event');
    assert.deepEqual(got.map((e) => e.data), ['before', 'while away'], `reconnected through ${name}`);
    assert.equal(cmpId(got[0].id, got[1].id), -1);
  } finally {
    es.close();
  }
}

/**
 * Lays out Caddy with deploy/Caddyfile in a temporary directory: the file as
 * it is, except for the site address (plain HTTP on a free loopback port,
 * where the real file names a domain and gets a certificate), Herald's
 * address, and global options that keep Caddy's admin port and data in the
 * directory. Returns {dir, file, port, url, env}.
 */
export async function layOutCaddy(heraldUrl) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-caddy-'));
  const port = await freePort();
  const herald = new URL(heraldUrl);
  let site = readFileSync(join(DEPLOY_DIR, 'Caddyfile'), 'utf8');
  site = replaceOnce(site, 'herald.example.com {', `http://127.0.0.1:${port} {`, 'deploy/Caddyfile');
  site = replaceOnce(site, 'reverse_proxy 127.0.0.1:8080 {', `reverse_proxy 127.0.0.1:${herald.port} {`, 'deploy/Caddyfile');
  const file = join(dir, 'Caddyfile');
  writeFileSync(file, `{\n\tadmin off\n\tauto_https off\n\tstorage file_system ${join(dir, 'data')}\n}\n\n${site}`);
  const env = { HOME: dir, XDG_DATA_HOME: join(dir, 'data'), XDG_CONFIG_HOME: join(dir, 'config') };
  return { dir, file, port, url: `http://127.0.0.1:${port}`, env };
}

/** `caddy validate` on a Caddyfile: {status, output}. */
export function caddyValidate(file, env) {
  const r = spawnSync(CADDY, ['validate', '--config', file, '--adapter', 'caddyfile'], {
    encoding: 'utf8', timeout: 20_000, env: { ...process.env, ...env },
  });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** Runs Caddy on a laid-out Caddyfile until stop(); waits until it proxies /healthz. */
export async function startCaddy(layout) {
  const caddy = await startAndWait(CADDY, ['run', '--config', layout.file, '--adapter', 'caddyfile'], {
    env: layout.env, url: `${layout.url}/healthz`, what: 'caddy',
  });
  return {
    ...caddy,
    url: layout.url,
    stop: async () => {
      const r = await caddy.stop();
      rmSync(layout.dir, { recursive: true, force: true });
      return r;
    },
  };
}
