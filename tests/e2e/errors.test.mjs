// Error answers: status, JSON `{"error":{"code","message"}}`, and the routes
// that must never answer 4xx. Plus the CORS preflight.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, publish, request, openRaw } from './lib/server.mjs';

const MAX_BODY = 4096;
const MAX_DATA = 1024;
let server;

before(async () => {
  server = await startHerald([
    '--max-body-bytes', String(MAX_BODY), '--max-data-bytes', String(MAX_DATA), '--heartbeat-secs', '300',
  ]);
});
after(async () => {
  if (server) await server.stop();
});

function assertError(r, status, code, what) {
  const ctx = `${what}: got ${r.status} ${r.text.slice(0, 300)}`;
  assert.equal(r.status, status, ctx);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/, ctx);
  assert.ok(r.json && typeof r.json === 'object' && r.json.error, `error object expected; ${ctx}`);
  assert.equal(r.json.error.code, code, ctx);
  assert.equal(typeof r.json.error.message, 'string', ctx);
  assert.ok(r.json.error.message.trim().length > 0, `message must be non-empty; ${ctx}`);
}

const publishCases = [
  ['bad_json: not JSON', '{not json', 400, 'bad_json'],
  ['bad_json: truncated', '{"topics":["a"],"data":"x"', 400, 'bad_json'],
  ['bad_json: empty body', '', 400, 'bad_json'],
  ['invalid_field: topics is a string', { topics: 'news', data: 'x' }, 400, 'invalid_field'],
  ['invalid_field: retry is a string', { topics: ['news'], data: 'x', retry: 'soon' }, 400, 'invalid_field'],
  ['invalid_field: broadcast is a string', { broadcast: 'yes', data: 'x' }, 400, 'invalid_field'],
  ['invalid_field: unknown field', { topics: ['news'], data: 'x', bogus: 1 }, 400, 'invalid_field'],
  ['invalid_topic: empty topic', { topics: [''], data: 'x' }, 400, 'invalid_topic'],
  ['invalid_topic: control character', { topics: ['a\u0001b'], data: 'x' }, 400, 'invalid_topic'],
  ['invalid_topic: longer than 256 bytes', { topics: ['t'.repeat(257)], data: 'x' }, 400, 'invalid_topic'],
  ['invalid_event_type: LF', { topics: ['news'], event: 'a\nb', data: 'x' }, 400, 'invalid_event_type'],
  ['invalid_event_type: CR', { topics: ['news'], event: 'a\rb', data: 'x' }, 400, 'invalid_event_type'],
  ['reserved_event_type: herald.gap', { topics: ['news'], event: 'herald.gap', data: 'x' }, 400, 'reserved_event_type'],
  ['reserved_event_type: herald.custom', { topics: ['news'], event: 'herald.custom', data: 'x' }, 400, 'reserved_event_type'],
  ['missing_target: no target', { data: 'x' }, 400, 'missing_target'],
  ['missing_target: broadcast false', { broadcast: false, data: 'x' }, 400, 'missing_target'],
  ['missing_target: inside a batch', [{ topics: ['news'], data: 'ok' }, { data: 'x' }], 400, 'missing_target'],
  ['empty_batch', [], 400, 'empty_batch'],
  ['body_too_large', { topics: ['news'], data: 'x'.repeat(MAX_BODY + 100) }, 413, 'body_too_large'],
  ['data_too_large: one event', { topics: ['news'], data: 'x'.repeat(MAX_DATA + 1) }, 413, 'data_too_large'],
  ['data_too_large: JSON data', { topics: ['news'], data: { s: 'x'.repeat(MAX_DATA) } }, 413, 'data_too_large'],
  ['data_too_large: in a batch', [{ topics: ['news'], data: 'ok' }, { topics: ['news'], data: 'y'.repeat(MAX_DATA + 1) }], 413, 'data_too_large'],
];

for (const [name, body, status, code] of publishCases) {
  test(`POST /v1/publish ${name} -> ${status} ${code}`, { timeout: 10_000 }, async () => {
    const r = await publish(server.url, body);
    assertError(r, status, code, name);
  });
}

test('a rejected batch stores nothing', { timeout: 10_000 }, async () => {
  const h = await openRaw(server.url, '/v1/events?topic=batchcheck');
  try {
    const r = await publish(server.url, [{ topics: ['batchcheck'], data: 'first' }, { topics: [''], data: 'bad' }]);
    assertError(r, 400, 'invalid_topic', 'batch with a bad second event');
    const r2 = await publish(server.url, { topics: ['batchcheck'], data: 'marker' });
    assert.equal(r2.status, 201);
    const evs = await h.waitEvents(1);
    assert.deepEqual(evs.map((e) => e.data), ['marker']);
  } finally {
    h.close();
  }
});

test('data exactly at --max-data-bytes is accepted', { timeout: 10_000 }, async () => {
  const r = await publish(server.url, { topics: ['news'], data: 'x'.repeat(MAX_DATA) });
  assert.equal(r.status, 201, r.text);
});

test('idempotency key: second publish answers 200 with the same id', { timeout: 10_000 }, async () => {
  const body = { topics: ['news'], data: 'once', idempotency_key: 'k-errors-1' };
  const r1 = await publish(server.url, body);
  assert.equal(r1.status, 201, r1.text);
  const r2 = await publish(server.url, body);
  assert.equal(r2.status, 200, r2.text);
  assert.equal(r2.json.id, r1.json.id);
});

test('404 not_found on unknown routes', { timeout: 10_000 }, async () => {
  for (const path of ['/v1/nope', '/nope', '/v2/events', '/v1/publish/extra']) {
    const r = await request(server.url, path);
    assertError(r, 404, 'not_found', `GET ${path}`);
  }
  const r = await request(server.url, '/v1/nope', { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
  assertError(r, 404, 'not_found', 'POST /v1/nope');
});

test('405 method_not_allowed on a wrong method', { timeout: 10_000 }, async () => {
  const cases = [
    ['GET', '/v1/publish'],
    ['PUT', '/v1/publish'],
    ['DELETE', '/v1/events'],
    ['POST', '/v1/events'],
    ['POST', '/v1/stats'],
  ];
  for (const [method, path] of cases) {
    const r = await request(server.url, path, { method });
    assertError(r, 405, 'method_not_allowed', `${method} ${path}`);
  }
});

test('405 answers carry an Allow header (RFC 9110)', { timeout: 10_000 }, async () => {
  const r1 = await request(server.url, '/v1/publish', { method: 'GET' });
  assert.equal(r1.status, 405);
  assert.match(r1.headers.get('allow') ?? '', /POST/, 'Allow on GET /v1/publish');
  const r2 = await request(server.url, '/v1/events', { method: 'DELETE' });
  assert.equal(r2.status, 405);
  assert.match(r2.headers.get('allow') ?? '', /GET/, 'Allow on DELETE /v1/events');
});

test('GET /v1/events with neither user nor topic -> 400 missing_topic', { timeout: 10_000 }, async () => {
  const r = await request(server.url, '/v1/events');
  assertError(r, 400, 'missing_topic', 'GET /v1/events');
  const r2 = await request(server.url, '/v1/events?types=a');
  assertError(r2, 400, 'missing_topic', 'GET /v1/events?types=a');
});

test('GET /v1/events with a garbage Last-Event-ID is 200 (never 4xx)', { timeout: 10_000 }, async () => {
  for (const id of ['garbage', '', ' ', '-5', '1e9', '0x10', '%FF%FE', 'x'.repeat(8000)]) {
    const h = await openRaw(server.url, '/v1/events?user=7777', { headers: { 'last-event-id': id } });
    try {
      assert.equal(h.status, 200, `Last-Event-ID ${JSON.stringify(id.slice(0, 20))}`);
      assert.match(h.headers['content-type'], /^text\/event-stream/);
    } finally {
      h.close();
    }
  }
  const h = await openRaw(server.url, '/v1/events?user=7777&lastEventId=garbage');
  try {
    assert.equal(h.status, 200, '?lastEventId=garbage');
  } finally {
    h.close();
  }
});

// The default, `*`, lets any page read answers but never with the visitor's
// cookies: a page on another site must not ride a herald_token cookie.
test('default CORS (*) answers any origin without credentials, preflight included', { timeout: 10_000 }, async () => {
  for (const origin of ['https://evil.example', 'null']) {
    const r = await request(server.url, '/v1/publish', {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization,content-type',
      },
    });
    assert.ok(r.status >= 200 && r.status < 300, `preflight status ${r.status}`);
    assert.equal(r.headers.get('access-control-allow-origin'), '*', origin);
    assert.equal(r.headers.get('access-control-allow-credentials'), null, origin);
  }
  const h = await openRaw(server.url, '/v1/events?user=7777', { headers: { origin: 'https://evil.example' } });
  try {
    assert.equal(h.status, 200);
    assert.equal(h.headers['access-control-allow-origin'], '*');
    assert.equal(h.headers['access-control-allow-credentials'], undefined);
  } finally {
    h.close();
  }
});

test('a named CORS origin is echoed with credentials; others are not allowed', { timeout: 20_000 }, async () => {
  const named = await startHerald(['--allowed-origin', 'https://app.example.com']);
  try {
    const origin = 'https://app.example.com';
    const r = await request(named.url, '/v1/events?user=7777', {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'GET',
        'access-control-request-headers': 'authorization,last-event-id',
      },
    });
    assert.ok(r.status >= 200 && r.status < 300, `preflight status ${r.status}`);
    const allowHeaders = (r.headers.get('access-control-allow-headers') ?? '').toLowerCase()
      .split(',').map((s) => s.trim());
    assert.ok(allowHeaders.includes('authorization'), `allow-headers: ${allowHeaders}`);
    assert.ok(allowHeaders.includes('last-event-id'), `allow-headers: ${allowHeaders}`);
    assert.equal(r.headers.get('access-control-allow-origin'), origin);
    assert.equal(r.headers.get('access-control-allow-credentials'), 'true');
    const methods = (r.headers.get('access-control-allow-methods') ?? '').toUpperCase();
    assert.match(methods, /GET/);

    const h = await openRaw(named.url, '/v1/events?user=7777', { headers: { origin } });
    try {
      assert.equal(h.status, 200);
      assert.equal(h.headers['access-control-allow-origin'], origin);
      assert.equal(h.headers['access-control-allow-credentials'], 'true');
    } finally {
      h.close();
    }
    for (const other of ['https://evil.example', 'null']) {
      const o = await openRaw(named.url, '/v1/events?user=7777', { headers: { origin: other } });
      try {
        assert.equal(o.headers['access-control-allow-origin'], undefined, other);
        assert.equal(o.headers['access-control-allow-credentials'], undefined, other);
      } finally {
        o.close();
      }
    }
  } finally {
    await named.stop();
  }
});
