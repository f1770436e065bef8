// Reconnection and resume: an EventSource that the server cuts off every ~2 s
// loses nothing and sees nothing twice; resume from garbage or too-old ids
// starts with a `herald.gap` event and never answers 4xx.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, publishOk, openES, waitOpen, openRaw, sleep, waitFor,
} from './lib/server.mjs';

describe('reconnect through server-side stream closes', () => {
  let server;
  let es;

  before(async () => {
    server = await startHerald(['--max-connection-lifetime-secs', '2', '--retry-ms', '200', '--heartbeat-secs', '300']);
  });
  after(async () => {
    es?.close();
    if (server) await server.stop();
  });

  test('300 events over ~8 s arrive exactly once and in order across reconnects', { timeout: 60_000 }, async () => {
    es = openES(server.url, 'user=9001&topic=rc', { types: ['message', 'herald.gap'] });
    await waitOpen(es);

    const published = [];
    const N = 300;
    const SPACING_MS = 28; // event i goes out at ~i * 28 ms: ~8.4 s, over 3 connection lifetimes
    const t0 = Date.now();
    for (let i = 0; i < N; i++) {
      const wait = t0 + i * SPACING_MS - Date.now();
      if (wait > 0) await sleep(wait);
      // Alternate between the personal topic and a plain topic.
      const body = i % 2 ? { users: ['9001'], data: `ev-${i}` } : { topics: ['rc'], data: `ev-${i}` };
      const id = await publishOk(server.url, body);
      published.push({ type: 'message', id, data: `ev-${i}` });
    }
    await waitFor(() => es.received.length >= N, 20_000,
      `all ${N} events (have ${es.received.length}, opens ${es.opens})`);
    await sleep(500); // let any duplicate show up
    es.close();

    assert.ok(es.opens >= 3, `expected at least 2 reconnects (3 opens), saw ${es.opens} opens`);
    assert.deepEqual(es.received, published);
  });
});

describe('resume after a gap', () => {
  let server;
  const streams = [];
  const allIds = []; // ids published to topic g, in order
  const RETAIN = 10;

  async function resume({ header, query }) {
    const headers = header !== undefined ? { 'last-event-id': header } : {};
    const q = query !== undefined ? `&lastEventId=${encodeURIComponent(query)}` : '';
    const h = await openRaw(server.url, `/v1/events?topic=g${q}`, { headers });
    streams.push(h);
    return h;
  }

  // After the expected events, a fresh marker must be the very next event: no
  // duplicates, no extra events.
  async function assertThenLive(h, countBefore) {
    const id = await publishOk(server.url, { topics: ['g'], data: `marker-${allIds.length}` });
    allIds.push(id);
    await h.waitEvents(countBefore + 1, 10_000);
    await sleep(200);
    assert.equal(h.events.length, countBefore + 1, 'no extra events after the marker');
    assert.deepEqual(h.events[countBefore], { type: 'message', id, data: `marker-${allIds.length - 1}` });
  }

  function assertStreamHead(h) {
    assert.equal(h.status, 200);
    assert.match(h.headers['content-type'], /^text\/event-stream/);
  }

  function assertGap(ev, lastEventId) {
    assert.equal(ev.type, 'herald.gap');
    assert.equal(ev.id, undefined, 'herald.gap carries no id line');
    const data = JSON.parse(ev.data);
    if (lastEventId.length <= 128) {
      assert.equal(data.last_event_id, lastEventId);
    } else {
      // An untrusted id of any length: the server may echo a bounded prefix.
      assert.equal(typeof data.last_event_id, 'string');
      assert.ok(lastEventId.startsWith(data.last_event_id), 'echoed last_event_id is a prefix of what was sent');
      assert.ok(data.last_event_id.length <= lastEventId.length);
    }
    const available = allIds.slice(-RETAIN);
    assert.equal(data.oldest_available, available[0]);
  }

  const expectedAvailable = () => allIds.slice(-RETAIN).map((id) => ({ type: 'message', id }));
  const strip = (evs) => evs.map(({ type, id }) => ({ type, id }));

  before(async () => {
    server = await startHerald(['--retention-events', String(RETAIN), '--heartbeat-secs', '300']);
    const batch = [];
    for (let i = 0; i < 50; i++) batch.push({ topics: ['g'], data: `g-${i}` });
    allIds.push(...await publishOk(server.url, batch));
  });
  after(async () => {
    for (const h of streams) h.close();
    if (server) await server.stop();
  });

  test('too-old Last-Event-ID header: herald.gap, then the last 10 events', { timeout: 20_000 }, async () => {
    const from = allIds[0];
    const h = await resume({ header: from });
    assertStreamHead(h);
    const evs = await h.waitEvents(1 + RETAIN);
    assertGap(evs[0], from);
    assert.deepEqual(strip(evs.slice(1)), expectedAvailable());
    await assertThenLive(h, 1 + RETAIN);
    h.close();
  });

  test('garbage Last-Event-ID header: 200, herald.gap, then everything retained', { timeout: 20_000 }, async () => {
    for (const garbage of ['garbage', 'not-an-id;DROP TABLE', '-1', '12abc', 'x'.repeat(2000)]) {
      const h = await resume({ header: garbage });
      assertStreamHead(h);
      const evs = await h.waitEvents(1 + RETAIN);
      assertGap(evs[0], garbage);
      assert.deepEqual(strip(evs.slice(1)), expectedAvailable(), `after garbage ${garbage.slice(0, 30)}`);
      await assertThenLive(h, 1 + RETAIN);
      h.close();
    }
  });

  test('unknown future Last-Event-ID: 200, herald.gap, then everything retained', { timeout: 20_000 }, async () => {
    const future = '99999999999999999999999999999999';
    const h = await resume({ header: future });
    assertStreamHead(h);
    const evs = await h.waitEvents(1 + RETAIN);
    assertGap(evs[0], future);
    assert.deepEqual(strip(evs.slice(1)), expectedAvailable());
    h.close();
  });

  test('recent Last-Event-ID: exactly the later events, no gap', { timeout: 20_000 }, async () => {
    const avail = allIds.slice(-RETAIN);
    const from = avail[4];
    const h = await resume({ header: from });
    assertStreamHead(h);
    const evs = await h.waitEvents(RETAIN - 5);
    assert.deepEqual(strip(evs), avail.slice(5).map((id) => ({ type: 'message', id })));
    await assertThenLive(h, RETAIN - 5);
    h.close();
  });

  test('?lastEventId= query form behaves like the header', { timeout: 20_000 }, async () => {
    const old = allIds[0];
    const h1 = await resume({ query: old });
    assertStreamHead(h1);
    const evs1 = await h1.waitEvents(1 + RETAIN);
    assertGap(evs1[0], old);
    assert.deepEqual(strip(evs1.slice(1)), expectedAvailable());
    h1.close();

    const avail = allIds.slice(-RETAIN);
    const h2 = await resume({ query: avail[6] });
    assertStreamHead(h2);
    const evs2 = await h2.waitEvents(RETAIN - 7);
    assert.deepEqual(strip(evs2), avail.slice(7).map((id) => ({ type: 'message', id })));
    await assertThenLive(h2, RETAIN - 7);
    h2.close();

    const h3 = await resume({ query: 'garbage' });
    assertStreamHead(h3);
    const evs3 = await h3.waitEvents(1 + RETAIN);
    assertGap(evs3[0], 'garbage');
    h3.close();
  });

  test('the Last-Event-ID header wins over ?lastEventId=', { timeout: 20_000 }, async () => {
    const avail = allIds.slice(-RETAIN);
    const h = await resume({ header: avail[7], query: allIds[0] });
    assertStreamHead(h);
    const evs = await h.waitEvents(RETAIN - 8);
    assert.deepEqual(strip(evs), avail.slice(8).map((id) => ({ type: 'message', id })));
    await assertThenLive(h, RETAIN - 8);
    h.close();
  });
});
