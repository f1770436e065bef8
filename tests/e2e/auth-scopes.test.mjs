// What a valid credential may do in token mode: which topics a token may
// subscribe to (herald.subscribe, its personal topic, public_topics), where
// it may publish (herald.publish; API keys' publish patterns), and who may
// use the admin routes (herald.admin; admin API keys). Real binary, no --dev.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { publish, request, openRaw, sleep } from './lib/server.mjs';
import {
  startSecured, trySubscribe, assertStreamOpened, assertAuthError, sign, claims, bearer,
} from './lib/auth.mjs';

const SECRET = 'scopes-secret-of-the-auth-tests-0123456789';
const ORDERS_KEY = 'orders-key-5f1c2a9e7d3b4c60';
const MULTI_KEY = 'multi-key-9a8b7c6d5e4f3a2b';
const ADMIN_KEY = 'admin-key-0c1d2e3f4a5b6c7d';

const dir = mkdtempSync(join(tmpdir(), 'herald-scopes-'));
const servers = [];
const streams = [];
let server;

before(async () => {
  server = await startSecured([
    '--jwt-secret', SECRET,
    '--public-topic', 'news', '--public-topic', 'public/*',
    '--api-key', `${ORDERS_KEY};publish=orders/*`,
    '--api-key', `${MULTI_KEY};publish=orders/*,news`,
    '--api-key', `${ADMIN_KEY};publish=*;admin`,
    '--heartbeat-secs', '300',
  ]);
  servers.push(server);
});

after(async () => {
  for (const h of streams) h.close();
  for (const s of servers) await s.stop();
  rmSync(dir, { recursive: true, force: true });
});

const token = (sub, extra) => sign(SECRET, 'HS256', claims(sub, extra));

/** Opens a stream that the test keeps (closed in after()); asserts it opened. */
async function keepStream(url, query, headers = {}) {
  const h = await openRaw(url, `/v1/events?${query}`, { headers });
  streams.push(h);
  await Promise.race([h.firstData, sleep(5_000)]);
  assert.equal(h.status, 200, `GET /v1/events?${query}: ${h.status} ${h.text}`);
  assert.ok(h.text.startsWith('retry:'), `stream preamble of ${query}: ${JSON.stringify(h.text.slice(0, 80))}`);
  return h;
}

/** Publishes with the admin key; returns the id. */
async function adminPublish(body) {
  const r = await publish(server.url, body, { headers: bearer(ADMIN_KEY) });
  assert.equal(r.status, 201, `publish with the admin API key: ${r.status} ${r.text}`);
  return r.json.id;
}

describe('subscribe: herald.subscribe, the personal topic and ?user=', () => {
  let t7777;
  before(async () => {
    t7777 = await token('7777', { 'herald.subscribe': ['orders/*', 'group/sales'] });
  });

  test('allowed subscriptions open', { timeout: 20_000 }, async () => {
    const allowed = [
      '', // the personal topic only
      'topic=user/7777',
      'user=7777',
      'user=7777&topic=orders/42',
      'topic=orders/42',
      'topic=orders/42/items',
      'topic=orders/4*',
      'topic=orders/*',
      'topic=group/sales',
      'topic=orders/1&topic=group/sales&topic=user/7777',
      'topic=news', // public, not in herald.subscribe
      'topic=public/room-1',
    ];
    for (const q of allowed) {
      assertStreamOpened(await trySubscribe(server.url, q, { token: t7777 }), `token 7777, ?${q}`);
    }
  });

  test("another user's personal topic -> 403 topic_not_allowed naming it", { timeout: 10_000 }, async () => {
    const r = await trySubscribe(server.url, 'topic=user/7778', { token: t7777 });
    assertAuthError(r, 'topic_not_allowed', 'token 7777, topic=user/7778', { message: /user\/7778/ });
  });

  test('?user= other than the token subject -> 403 topic_not_allowed', { timeout: 10_000 }, async () => {
    const r = await trySubscribe(server.url, 'user=7778', { token: t7777 });
    assertAuthError(r, 'topic_not_allowed', 'token 7777, user=7778', { message: /7778/ });
  });

  test('topics outside herald.subscribe -> 403 topic_not_allowed naming the topic', { timeout: 20_000 }, async () => {
    const refused = [
      ['topic=secret', /secret/],
      ['topic=orders', /orders/], // orders/* does not cover the bare prefix
      ['topic=orders*', /orders\*/], // a wider pattern than orders/*
      ['topic=*', /\*/],
      ['topic=group/sales2', /group\/sales2/],
      ['topic=group/*', /group\/\*/],
      ['topic=orders/42&topic=secret', /secret/], // every topic must be allowed
    ];
    for (const [q, re] of refused) {
      const r = await trySubscribe(server.url, q, { token: t7777 });
      assertAuthError(r, 'topic_not_allowed', `token 7777, ?${q}`, { message: re });
    }
  });

  test('herald.subscribe ["*"] may subscribe to *', { timeout: 10_000 }, async () => {
    const all = await token('9', { 'herald.subscribe': ['*'] });
    assertStreamOpened(await trySubscribe(server.url, 'topic=*', { token: all }), 'herald.subscribe ["*"], topic=*');
    assertStreamOpened(await trySubscribe(server.url, 'topic=anything/at/all', { token: all }), 'herald.subscribe ["*"], topic=anything/at/all');
  });

  test('the stream of a token gets its personal topic and not another user\'s', { timeout: 15_000 }, async () => {
    const t = await token('4242');
    const h = await keepStream(server.url, '', bearer(t));
    await adminPublish({ users: ['4243'], data: 'not for 4242' });
    const id = await adminPublish({ users: ['4242'], data: 'for 4242' });
    await h.waitEvents(1);
    await sleep(200);
    assert.deepEqual(h.events, [{ type: 'message', id, data: 'for 4242' }], 'only the event for user 4242');
  });
});

describe('subscribe: public topics', () => {
  test('anonymous subscribe to a public topic opens and receives what is published there', { timeout: 15_000 }, async () => {
    const h = await keepStream(server.url, 'topic=news');
    const id = await adminPublish({ topics: ['news'], data: 'extra! extra!' });
    await h.waitEvents(1);
    assert.deepEqual(h.events[0], { type: 'message', id, data: 'extra! extra!' });
  });

  test('anonymous subscribe to public patterns opens', { timeout: 10_000 }, async () => {
    for (const q of ['topic=public/room-1', 'topic=public/*', 'topic=news&topic=public/a']) {
      assertStreamOpened(await trySubscribe(server.url, q), `anonymous ?${q}`);
    }
  });

  test('anonymous subscribe to anything not public -> 401 token_missing', { timeout: 10_000 }, async () => {
    for (const q of ['topic=secret', 'topic=news&topic=secret', 'topic=*', 'topic=public', 'topic=newsroom', 'user=7777']) {
      assertAuthError(await trySubscribe(server.url, q), 'token_missing', `anonymous ?${q}`);
    }
  });
});

describe('publish: herald.publish', () => {
  test('a token limited to orders/* publishes to orders/1 and nowhere else', { timeout: 15_000 }, async () => {
    const t = await token('pub-orders', { 'herald.publish': ['orders/*'] });
    const h = bearer(t);
    const ok = await publish(server.url, { topics: ['orders/1'], data: 'x' }, { headers: h });
    assert.equal(ok.status, 201, `orders/1: ${ok.text}`);
    const ok2 = await publish(server.url, { topics: ['orders/1', 'orders/2/items'], data: 'x' }, { headers: h });
    assert.equal(ok2.status, 201, `orders/1 + orders/2/items: ${ok2.text}`);
    const cases = [
      [{ topics: ['news'], data: 'x' }, /news/, 'topics news'],
      [{ topics: ['orders'], data: 'x' }, /orders/, 'topics orders (the bare prefix)'],
      [{ topics: ['orders/1', 'news'], data: 'x' }, /news/, 'topics orders/1 and news'],
      [{ users: ['7777'], data: 'x' }, /7777/, 'users 7777'],
      [{ broadcast: true, data: 'x' }, /broadcast/i, 'broadcast'],
      [{ topics: ['orders/1'], broadcast: true, data: 'x' }, /broadcast/i, 'orders/1 plus broadcast'],
    ];
    for (const [body, re, what] of cases) {
      const r = await publish(server.url, body, { headers: h });
      assertAuthError(r, 'publish_not_allowed', `token orders/*: ${what}`, { message: re });
    }
    const plain = await request(server.url, '/v1/publish?topic=news', {
      method: 'POST', headers: { ...h, 'content-type': 'text/plain' }, body: 'hello',
    });
    assertAuthError(plain, 'publish_not_allowed', 'token orders/*: text/plain to news', { message: /news/ });
  });

  test('a batch with one refused target is refused whole and stores nothing', { timeout: 15_000 }, async () => {
    const sub = await token('watcher', { 'herald.subscribe': ['orders/*'] });
    const h = await keepStream(server.url, 'topic=orders/batch', bearer(sub));
    const t = await token('pub-orders', { 'herald.publish': ['orders/*'] });
    const r = await publish(server.url, [
      { topics: ['orders/batch'], data: 'first, allowed' },
      { topics: ['news'], data: 'second, not allowed' },
    ], { headers: bearer(t) });
    assertAuthError(r, 'publish_not_allowed', 'batch orders/batch + news', { message: /news/ });
    const marker = await publish(server.url, { topics: ['orders/batch'], data: 'marker' }, { headers: bearer(t) });
    assert.equal(marker.status, 201, marker.text);
    await h.waitEvents(1);
    await sleep(200);
    assert.deepEqual(h.events, [{ type: 'message', id: marker.json.id, data: 'marker' }], 'nothing of the refused batch');
  });

  test('user/* allows any users but not broadcast; * allows everything', { timeout: 15_000 }, async () => {
    const users = bearer(await token('pub-users', { 'herald.publish': ['user/*'] }));
    assert.equal((await publish(server.url, { users: ['5', '6'], data: 'x' }, { headers: users })).status, 201);
    assertAuthError(await publish(server.url, { broadcast: true, data: 'x' }, { headers: users }),
      'publish_not_allowed', 'token user/*: broadcast', { message: /broadcast/i });
    assertAuthError(await publish(server.url, { topics: ['news'], data: 'x' }, { headers: users }),
      'publish_not_allowed', 'token user/*: news', { message: /news/ });

    const all = bearer(await token('pub-all', { 'herald.publish': ['*'] }));
    for (const body of [{ broadcast: true, data: 'x' }, { users: ['5'], data: 'x' }, { topics: ['news', 'orders/1', 'x/y'], data: 'x' }]) {
      const r = await publish(server.url, body, { headers: all });
      assert.equal(r.status, 201, `token *: ${JSON.stringify(body)}: ${r.status} ${r.text}`);
    }
  });
});

describe('admin routes', () => {
  const routes = [
    ['GET', '/v1/stats'],
    ['GET', '/v1/users'],
    ['GET', '/v1/users/7777'],
    ['GET', '/v1/topics/orders%2F42'],
    ['DELETE', '/v1/users/7777/connections'],
  ];

  test('herald.admin true -> 200 on every admin route', { timeout: 10_000 }, async () => {
    const h = bearer(await token('root', { 'herald.admin': true }));
    for (const [method, path] of routes) {
      const r = await request(server.url, path, { method, headers: h });
      assert.equal(r.status, 200, `${method} ${path} with herald.admin: ${r.status} ${r.text}`);
    }
  });

  test('without herald.admin -> 403 admin_required; with no credentials -> 401 token_missing', { timeout: 10_000 }, async () => {
    const h = bearer(await token('7777', { 'herald.publish': ['*'], 'herald.subscribe': ['*'] }));
    for (const [method, path] of routes) {
      assertAuthError(await request(server.url, path, { method, headers: h }), 'admin_required', `${method} ${path} without herald.admin`);
      assertAuthError(await request(server.url, path, { method }), 'token_missing', `${method} ${path} without credentials`);
    }
  });
});

describe('API keys', () => {
  test('a key with publish=orders/* publishes there only and is not admin', { timeout: 10_000 }, async () => {
    const h = bearer(ORDERS_KEY);
    assert.equal((await publish(server.url, { topics: ['orders/7'], data: 'x' }, { headers: h })).status, 201);
    assertAuthError(await publish(server.url, { topics: ['news'], data: 'x' }, { headers: h }),
      'publish_not_allowed', 'orders key: news', { message: /news/ });
    assertAuthError(await publish(server.url, { users: ['7777'], data: 'x' }, { headers: h }),
      'publish_not_allowed', 'orders key: users', { message: /7777/ });
    assertAuthError(await publish(server.url, { broadcast: true, data: 'x' }, { headers: h }),
      'publish_not_allowed', 'orders key: broadcast', { message: /broadcast/i });
    assertAuthError(await request(server.url, '/v1/stats', { headers: h }), 'admin_required', 'orders key: GET /v1/stats');
  });

  test('a key with several publish patterns', { timeout: 10_000 }, async () => {
    const h = bearer(MULTI_KEY);
    assert.equal((await publish(server.url, { topics: ['news', 'orders/9'], data: 'x' }, { headers: h })).status, 201);
    assertAuthError(await publish(server.url, { topics: ['sports'], data: 'x' }, { headers: h }),
      'publish_not_allowed', 'multi key: sports', { message: /sports/ });
  });

  test('an admin key with publish=* may publish anywhere and use the admin routes', { timeout: 10_000 }, async () => {
    const h = bearer(ADMIN_KEY);
    for (const body of [{ broadcast: true, data: 'x' }, { users: ['1'], data: 'x' }, { topics: ['anything'], data: 'x' }]) {
      assert.equal((await publish(server.url, body, { headers: h })).status, 201, JSON.stringify(body));
    }
    for (const path of ['/v1/stats', '/v1/users', '/v1/users/1', '/v1/topics/anything']) {
      const r = await request(server.url, path, { headers: h });
      assert.equal(r.status, 200, `${path} with the admin key: ${r.status} ${r.text}`);
    }
    const stats = await request(server.url, '/v1/stats', { headers: h });
    assert.equal(typeof stats.json.connections, 'number', stats.text);
  });

  test('an unknown API key -> 401 token_invalid', { timeout: 10_000 }, async () => {
    const h = bearer('no-such-key-0123456789abcdef');
    assertAuthError(await publish(server.url, { topics: ['news'], data: 'x' }, { headers: h }),
      'token_invalid', 'publish with an unknown key');
    assertAuthError(await request(server.url, '/v1/stats', { headers: h }), 'token_invalid', 'GET /v1/stats with an unknown key');
    // A prefix of a real key is not that key.
    assertAuthError(await publish(server.url, { topics: ['news'], data: 'x' }, { headers: bearer(ADMIN_KEY.slice(0, -1)) }),
      'token_invalid', 'publish with the admin key less its last character');
  });
});

describe('the same settings from a TOML file', () => {
  test('public_topics and [[api_keys]] tables', { timeout: 15_000 }, async () => {
    const cfg = join(dir, 'tables.toml');
    writeFileSync(cfg, [
      'public_topics = ["lobby", "rooms/*"]',
      '',
      '[[api_keys]]',
      'key = "toml-admin-key-3c2b1a0f9e8d"',
      'publish = ["*"]',
      'admin = true',
      '',
      '[[api_keys]]',
      'key = "toml-lobby-key-7e6d5c4b3a29"',
      'publish = ["lobby"]',
      '',
    ].join('\n'));
    const s = await startSecured(['--config', cfg, '--jwt-secret', SECRET, '--heartbeat-secs', '300']);
    servers.push(s);
    assertStreamOpened(await trySubscribe(s.url, 'topic=lobby'), 'anonymous lobby (public_topics in TOML)');
    assertStreamOpened(await trySubscribe(s.url, 'topic=rooms/1'), 'anonymous rooms/1');
    assertAuthError(await trySubscribe(s.url, 'topic=kitchen'), 'token_missing', 'anonymous kitchen');
    const lobby = bearer('toml-lobby-key-7e6d5c4b3a29');
    assert.equal((await publish(s.url, { topics: ['lobby'], data: 'x' }, { headers: lobby })).status, 201);
    assertAuthError(await publish(s.url, { topics: ['rooms/1'], data: 'x' }, { headers: lobby }),
      'publish_not_allowed', 'lobby key: rooms/1', { message: /rooms\/1/ });
    assertAuthError(await request(s.url, '/v1/stats', { headers: lobby }), 'admin_required', 'lobby key: stats');
    const admin = bearer('toml-admin-key-3c2b1a0f9e8d');
    assert.equal((await publish(s.url, { broadcast: true, data: 'x' }, { headers: admin })).status, 201);
    assert.equal((await request(s.url, '/v1/stats', { headers: admin })).status, 200);
  });

  test('api_keys as strings', { timeout: 15_000 }, async () => {
    const cfg = join(dir, 'strings.toml');
    writeFileSync(cfg, 'api_keys = ["toml-str-key-1a2b3c4d5e6f;publish=orders/*;admin", "toml-str-pub-6f5e4d3c2b1a;publish=news"]\n');
    const s = await startSecured(['--config', cfg, '--heartbeat-secs', '300']);
    servers.push(s);
    const adm = bearer('toml-str-key-1a2b3c4d5e6f');
    assert.equal((await publish(s.url, { topics: ['orders/3'], data: 'x' }, { headers: adm })).status, 201);
    assertAuthError(await publish(s.url, { topics: ['news'], data: 'x' }, { headers: adm }),
      'publish_not_allowed', 'string key orders/*: news', { message: /news/ });
    assert.equal((await request(s.url, '/v1/stats', { headers: adm })).status, 200);
    const pub = bearer('toml-str-pub-6f5e4d3c2b1a');
    assert.equal((await publish(s.url, { topics: ['news'], data: 'x' }, { headers: pub })).status, 201);
    assertAuthError(await request(s.url, '/v1/stats', { headers: pub }), 'admin_required', 'string key without admin: stats');
  });
});
