// A token that expires while its stream is open: the stream gets one
// `herald.expired` event (no id: line, JSON data with reason and
// expired_at) at exp (leeway 0) and is then ended by the server; the old
// token is refused from then on; a client that comes back with a fresh token
// and its Last-Event-ID gets exactly what it missed. Checked on the wire
// (node:http) and with npm `eventsource`, whose `fetch` option sends the
// current token on every (re)connection.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { publish, openRaw, sleep, waitFor, EventSource } from './lib/server.mjs';
import {
  startSecured, trySubscribe, assertAuthError, sign, claims, nowSecs, bearer,
} from './lib/auth.mjs';

const SECRET = 'expiry-secret-of-the-auth-tests-0123456789';
const PUB_KEY = 'expiry-publisher-key-0a1b2c3d4e5f';
const TOPIC = 'feed';
let server;
let es;
const streams = [];

before(async () => {
  server = await startSecured([
    '--jwt-secret', SECRET, '--jwt-leeway-secs', '0', '--retry-ms', '1000', '--heartbeat-secs', '300',
    '--api-key', `${PUB_KEY};publish=*`,
  ]);
});
after(async () => {
  es?.close();
  for (const h of streams) h.close();
  if (server) await server.stop();
});

async function pub(data) {
  const r = await publish(server.url, { topics: [TOPIC], data }, { headers: bearer(PUB_KEY) });
  assert.equal(r.status, 201, `publish ${data}: ${r.status} ${r.text}`);
  return { type: 'message', id: r.json.id, data };
}

test('expiry mid-stream: herald.expired, end of stream, resume with a fresh token loses and repeats nothing', { timeout: 30_000 }, async () => {
  const exp = nowSecs() + 3;
  const shortLived = await sign(SECRET, 'HS256', claims('7777', { exp, 'herald.subscribe': [TOPIC] }));
  let current = shortLived;

  // 1. An EventSource that sends whatever token is current on each connection.
  // Its reconnection waits for `gate`, so the test publishes the missed
  // events while it is surely away, whatever retry the server asks for.
  const requests = [];
  let release;
  const gate = new Promise((r) => { release = r; });
  es = new EventSource(`${server.url}/v1/events?topic=${TOPIC}`, {
    fetch: async (input, init) => {
      requests.push({ lastEventId: init.headers?.['Last-Event-ID'], token: current });
      if (requests.length > 1) await gate;
      return fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${current}` } });
    },
  });
  const received = [];
  let opens = 0;
  let expiredSeen = 0;
  es.addEventListener('open', () => { opens += 1; });
  es.addEventListener('message', (ev) => received.push({ type: 'message', id: ev.lastEventId, data: ev.data }));
  es.addEventListener('herald.expired', () => { expiredSeen += 1; });

  // 2. The same token on a raw stream, to see the exact frames.
  const raw = await openRaw(server.url, `/v1/events?topic=${TOPIC}`, { headers: bearer(shortLived) });
  streams.push(raw);
  assert.equal(raw.status, 200, `stream with the short-lived token: ${raw.status} ${raw.text}`);
  await raw.firstData;
  await waitFor(() => opens >= 1, 5_000, 'the EventSource to open');

  // 3. Events while the token is valid.
  const published = [];
  for (let i = 0; i < 5; i++) published.push(await pub(`before-${i}`));
  await raw.waitEvents(5, 5_000);
  assert.ok(Date.now() < exp * 1000, 'the events before expiry were published before exp (the test machine is too slow otherwise)');

  // 4. At exp the raw stream gets herald.expired and is ended by the server.
  await waitFor(() => raw.events.some((e) => e.type === 'herald.expired'), exp * 1000 - Date.now() + 3_000,
    `herald.expired on the raw stream (have ${JSON.stringify(raw.events.map((e) => e.type))})`);
  const expiredAt = Date.now();
  assert.ok(expiredAt >= exp * 1000 - 500, `herald.expired came ${exp * 1000 - expiredAt} ms before exp`);
  await raw.waitEnd(3_000).catch(() => assert.fail('the server did not end the stream within 3 s of herald.expired'));
  assert.ok(raw.ended, 'the server ends the stream cleanly (terminating chunk), not by a reset');
  const expiredEvents = raw.events.filter((e) => e.type === 'herald.expired');
  assert.equal(expiredEvents.length, 1, 'exactly one herald.expired');
  const ev = expiredEvents[0];
  assert.equal(ev.id, undefined, 'herald.expired carries no id: line');
  const frame = raw.text.split(/\n\n/).find((f) => /^event: ?herald\.expired$/m.test(f));
  assert.ok(frame, `a herald.expired frame on the wire: ${JSON.stringify(raw.text.slice(-400))}`);
  assert.doesNotMatch(frame, /^id:/m, `no id: line in the herald.expired frame: ${JSON.stringify(frame)}`);
  let data;
  assert.doesNotThrow(() => { data = JSON.parse(ev.data); }, `herald.expired data is JSON: ${ev.data}`);
  assert.equal(typeof data.reason, 'string', `reason: ${ev.data}`);
  assert.ok(data.reason.length > 0, `reason is non-empty: ${ev.data}`);
  assert.ok(data.expired_at !== undefined && data.expired_at !== null, `expired_at: ${ev.data}`);
  if (typeof data.expired_at === 'number') {
    // Seconds like exp (or milliseconds).
    const ms = data.expired_at > 1e11 ? data.expired_at : data.expired_at * 1000;
    assert.ok(Math.abs(ms - exp * 1000) <= 1000, `expired_at is the token's exp ${exp}: ${ev.data}`);
  } else {
    assert.equal(typeof data.expired_at, 'string', `expired_at is a number or a string: ${ev.data}`);
    const asNum = Number(data.expired_at);
    const ms = Number.isFinite(asNum) ? asNum * 1000 : Date.parse(data.expired_at);
    assert.ok(Math.abs(ms - exp * 1000) <= 1000, `expired_at ${data.expired_at} is the token's exp ${exp}`);
  }
  assert.deepEqual(raw.events.filter((e) => e.type !== 'herald.expired'), published, 'the raw stream had every event before expiry');
  assert.equal(raw.events[raw.events.length - 1].type, 'herald.expired', 'herald.expired is the last event of the stream');

  // 5. The expired token no longer opens a stream.
  assertAuthError(await trySubscribe(server.url, `topic=${TOPIC}`, { token: shortLived }), 'token_expired',
    'a new stream with the expired token', { message: /expired/i });

  // 6. Events while the clients are away, before they come back.
  await waitFor(() => expiredSeen >= 1, 3_000, 'herald.expired on the EventSource');
  current = await sign(SECRET, 'HS256', claims('7777', { 'herald.subscribe': [TOPIC] }));
  const missed = [];
  for (let i = 0; i < 5; i++) missed.push(await pub(`missed-${i}`));
  published.push(...missed);
  assert.equal(opens, 1, 'the EventSource had not reconnected yet when the missed events were published');
  assert.notEqual(es.readyState, EventSource.OPEN, 'the EventSource was disconnected while the missed events were published');
  release();

  // 7. A manual resume with the fresh token in the URL and lastEventId.
  const lastBefore = raw.events.filter((e) => e.type === 'message').at(-1).id;
  const resumed = await openRaw(server.url,
    `/v1/events?topic=${TOPIC}&access_token=${encodeURIComponent(current)}&lastEventId=${encodeURIComponent(lastBefore)}`);
  streams.push(resumed);
  assert.equal(resumed.status, 200, `resume with a fresh token in access_token: ${resumed.status} ${resumed.text}`);

  // 8. The EventSource reconnects by itself with the fresh token and Last-Event-ID.
  await waitFor(() => opens >= 2, 5_000, `the EventSource to reconnect (opens ${opens}, requests ${requests.length})`);
  const after = [];
  for (let i = 0; i < 5; i++) after.push(await pub(`after-${i}`));
  published.push(...after);

  await waitFor(() => received.length >= published.length, 10_000,
    `${published.length} events on the EventSource (have ${received.length})`);
  await resumed.waitEvents(missed.length + after.length, 10_000);
  await sleep(300); // let a duplicate show up
  assert.deepEqual(received, published, 'the EventSource saw every event exactly once, in order');
  assert.deepEqual(resumed.events, [...missed, ...after], 'the manual resume got exactly the missed events, then live ones');
  assert.equal(expiredSeen, 1, 'one herald.expired on the EventSource');
  assert.equal(requests.length, 2, `two connections of the EventSource: ${JSON.stringify(requests.map((r) => r.lastEventId))}`);
  assert.equal(requests[1].lastEventId, lastBefore, 'the reconnection sent the id of the last event before expiry');
  assert.equal(requests[1].token, current, 'the reconnection sent the fresh token');
  es.close();
});
