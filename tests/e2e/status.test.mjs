// `herald status`: one screen of a running server from its admin API (the
// stats stream the dashboard reads): counts, rates over the last second,
// delivery lag, busiest topics, online users; a clear message and a non-zero
// exit when the server cannot be reached or refuses the token.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startHerald, openES, waitOpen, publishOk, sleep } from './lib/server.mjs';
import { startSecured, runHerald, sign, claims } from './lib/auth.mjs';

const SECRET = 'status-test-secret-0123456789ab';
let server;

before(async () => { server = await startHerald(); });
after(async () => { await server?.stop(); });

/** A loopback port nothing listens on (bound, then released). */
async function closedPort() {
  const probe = net.createServer();
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const { port } = probe.address();
  await new Promise((r) => probe.close(r));
  return port;
}

/** The number on the screen line that starts with `label`. */
function figure(stdout, label) {
  const line = stdout.split('\n').find((l) => l.trim().startsWith(label));
  assert.ok(line, `a "${label}" line in:\n${stdout}`);
  return Number(line.trim().slice(label.length).trim().split(/\s+/)[0].replace(/,/g, ''));
}

test('status shows the connections, users, topics and the rates of the last second', { timeout: 60_000 }, async (t) => {
  const streams = ['alice', 'bob', 'bob'].map((u) => openES(server.url, `user=${u}&topic=group/sales`));
  t.after(() => streams.forEach((es) => es.close()));
  await Promise.all(streams.map((es) => waitOpen(es)));

  // Publishes run while status takes its two samples (bounded: 300 at most, 15 s).
  let publishing = true;
  const load = (async () => {
    const end = Date.now() + 15_000;
    for (let i = 0; publishing && i < 300 && Date.now() < end; i++) {
      await publishOk(server.url, { topics: ['group/sales'], data: String(i) });
      await sleep(10);
    }
  })();
  const status = await runHerald(['status', '--url', server.url]);
  publishing = false;
  await load;

  assert.equal(status.code, 0, status.stderr);
  const out = status.stdout;
  assert.match(out, new RegExp(`^Herald at ${server.url}, up `));
  assert.equal(figure(out, 'connections'), 3);
  assert.equal(figure(out, 'users online'), 2);
  assert.ok(figure(out, 'published/s') > 0, `a rate while publishing:\n${out}`);
  assert.ok(figure(out, 'delivered/s') >= figure(out, 'published/s'), out);
  assert.ok(Number.isFinite(figure(out, 'delivery lag')), out);
  assert.match(out, /Busiest topics[^\n]*\n {2}group\/sales +3\n/, out);
  assert.match(out, /Online users[^\n]*\n {2}alice +1\n {2}bob +2\n/, out);
});

test('status with the server down exits 1 and says it cannot reach it', { timeout: 30_000 }, async () => {
  const url = `http://127.0.0.1:${await closedPort()}`;
  const r = await runHerald(['status', '--url', url]);
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, new RegExp(`cannot reach ${url}`));
  assert.match(r.stderr, /refused/i);
  assert.equal(r.stdout, '', 'no half screen');
});

test('token mode: status needs an admin token and says so', { timeout: 60_000 }, async (t) => {
  const secured = await startSecured(['--jwt-secret', SECRET]);
  t.after(() => secured.stop());
  const none = await runHerald(['status', '--url', secured.url]);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /401 Unauthorized token_missing/);
  assert.match(none.stderr, /--token/);

  const plain = await runHerald(['status', '--url', secured.url, '--token', await sign(SECRET, 'HS256', claims('7777'))]);
  assert.equal(plain.code, 1);
  assert.match(plain.stderr, /403 Forbidden admin_required/);

  const admin = await sign(SECRET, 'HS256', claims('ops', { 'herald.admin': true }));
  const ok = await runHerald(['status', '--url', secured.url], { env: { HERALD_TOKEN: admin } });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(figure(ok.stdout, 'connections'), 0);
  assert.match(ok.stdout, /nobody is connected/);
});
