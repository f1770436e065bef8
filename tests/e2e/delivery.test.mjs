// Delivery semantics seen through the npm `eventsource` client: unicast, group,
// broadcast, patterns, at-most-once per connection, type filters, JSON data.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, publishOk, openES, waitOpen, waitEvent, collect,
} from './lib/server.mjs';

const TYPES = ['message', 'a', 'b', 'marker'];
let server;
const clients = [];

function sub(query, types = TYPES) {
  const es = openES(server.url, query, { types });
  clients.push(es);
  return es;
}

function closeAll() {
  while (clients.length) clients.pop().close();
}

before(async () => {
  server = await startHerald(['--heartbeat-secs', '300']);
});

after(async () => {
  closeAll();
  if (server) await server.stop();
});

test('unicast reaches only the addressed user', { timeout: 20_000 }, async () => {
  const u7777 = sub('user=7777');
  const u7778 = sub('user=7778');
  await Promise.all([waitOpen(u7777), waitOpen(u7778)]);

  const uniId = await publishOk(server.url, { users: ['7777'], data: 'for 7777 only' });
  const markerId = await publishOk(server.url, { users: ['7778'], event: 'marker', data: 'marker-7778' });

  const i = await waitEvent(u7777, (e) => e.data === 'for 7777 only', 10_000, 'the unicast');
  assert.deepEqual(u7777.received[i], { type: 'message', id: uniId, data: 'for 7777 only' });

  // The marker was published after the unicast: once 7778 has the marker, it
  // would already have the unicast if it had been (wrongly) delivered.
  await waitEvent(u7778, (e) => e.data === 'marker-7778', 10_000, 'the marker');
  assert.deepEqual(u7778.received, [{ type: 'marker', id: markerId, data: 'marker-7778' }]);
  assert.ok(!u7777.received.some((e) => e.data === 'marker-7778'), '7777 must not see 7778\'s marker');
  closeAll();
});

test('group event reaches every member and no non-member', { timeout: 20_000 }, async () => {
  const members = ['101', '102', '103'].map((u) => sub(`user=${u}&topic=group/sales`));
  const outsider = sub('user=104&topic=group/support');
  await Promise.all([...members, outsider].map((es) => waitOpen(es)));

  const gid = await publishOk(server.url, { topics: ['group/sales'], event: 'a', data: 'sales meeting' });
  const mid = await publishOk(server.url, { users: ['104'], event: 'marker', data: 'marker-104' });

  for (const m of members) {
    await waitEvent(m, (e) => e.id === gid, 10_000, 'the group event');
    assert.deepEqual(m.received, [{ type: 'a', id: gid, data: 'sales meeting' }]);
  }
  await waitEvent(outsider, (e) => e.id === mid, 10_000, 'the marker');
  assert.deepEqual(outsider.received, [{ type: 'marker', id: mid, data: 'marker-104' }]);
  closeAll();
});

test('broadcast reaches every open connection, whatever it subscribed to', { timeout: 20_000 }, async () => {
  const conns = [
    sub('user=201'),
    sub('topic=news'),
    sub('topic=orders/*'),
    sub('user=202&topic=group/sales&topic=news'),
    sub('topic=*&types=a,b'),
  ];
  await Promise.all(conns.map((es) => waitOpen(es)));

  const bid = await publishOk(server.url, { broadcast: true, event: 'a', data: 'to everyone' });
  for (const es of conns) {
    await waitEvent(es, (e) => e.id === bid, 10_000, 'the broadcast');
    assert.deepEqual(es.received, [{ type: 'a', id: bid, data: 'to everyone' }], `on ${es.url}`);
  }
  closeAll();
});

test('pattern orders/* receives orders/42 and deeper, not other topics', { timeout: 20_000 }, async () => {
  const es = sub('topic=orders/*');
  await waitOpen(es);

  const id1 = await publishOk(server.url, { topics: ['orders/42'], data: 'order 42' });
  await publishOk(server.url, { topics: ['ordersX/1'], data: 'not an order' });
  await publishOk(server.url, { topics: ['invoices/42'], data: 'an invoice' });
  const id2 = await publishOk(server.url, { topics: ['orders/42/items'], data: 'order 42 items' });
  const mid = await publishOk(server.url, { topics: ['orders/end'], event: 'marker', data: 'end' });

  await waitEvent(es, (e) => e.id === mid, 10_000, 'the marker');
  assert.deepEqual(es.received, [
    { type: 'message', id: id1, data: 'order 42' },
    { type: 'message', id: id2, data: 'order 42 items' },
    { type: 'marker', id: mid, data: 'end' },
  ]);
  closeAll();
});

test('an event for several matching topics arrives once per connection', { timeout: 20_000 }, async () => {
  const es = sub('user=301&topic=dup/one&topic=dup/two&topic=dup/*');
  await waitOpen(es);

  const id = await publishOk(server.url, {
    topics: ['dup/one', 'dup/two'], users: ['301'], data: 'once',
  });
  const mid = await publishOk(server.url, { topics: ['dup/one'], event: 'marker', data: 'end' });

  await waitEvent(es, (e) => e.id === mid, 10_000, 'the marker');
  assert.deepEqual(es.received, [
    { type: 'message', id, data: 'once' },
    { type: 'marker', id: mid, data: 'end' },
  ]);
  closeAll();
});

test('types filter passes only the listed types; untyped events are "message"', { timeout: 20_000 }, async () => {
  const onlyA = sub('topic=typed&types=a');
  const onlyMessage = sub('topic=typed&types=message');
  const aAndMessage = sub('topic=typed&types=message,a');
  await Promise.all([onlyA, onlyMessage, aAndMessage].map((es) => waitOpen(es)));

  const ida = await publishOk(server.url, { topics: ['typed'], event: 'a', data: 'type a' });
  await publishOk(server.url, { topics: ['typed'], event: 'b', data: 'type b' });
  const idu = await publishOk(server.url, { topics: ['typed'], data: 'untyped' });
  const endA = await publishOk(server.url, { topics: ['typed'], event: 'a', data: 'end a' });
  const endU = await publishOk(server.url, { topics: ['typed'], data: 'end untyped' });

  await waitEvent(onlyA, (e) => e.id === endA, 10_000, 'the closing a event');
  await waitEvent(onlyMessage, (e) => e.id === endU, 10_000, 'the closing untyped event');
  await waitEvent(aAndMessage, (e) => e.id === endU, 10_000, 'the closing untyped event');

  assert.deepEqual(onlyA.received, [
    { type: 'a', id: ida, data: 'type a' },
    { type: 'a', id: endA, data: 'end a' },
  ]);
  assert.deepEqual(onlyMessage.received, [
    { type: 'message', id: idu, data: 'untyped' },
    { type: 'message', id: endU, data: 'end untyped' },
  ]);
  assert.deepEqual(aAndMessage.received, [
    { type: 'a', id: ida, data: 'type a' },
    { type: 'message', id: idu, data: 'untyped' },
    { type: 'a', id: endA, data: 'end a' },
    { type: 'message', id: endU, data: 'end untyped' },
  ]);
  closeAll();
});

test('JSON data (non-string) arrives as compact JSON text', { timeout: 20_000 }, async () => {
  const es = sub('topic=json');
  await waitOpen(es);

  const obj = { a: 1, b: [1, 2, { c: 'd e' }], n: null, t: true, u: 'grüße' };
  const id1 = await publishOk(server.url, { topics: ['json'], data: obj });
  const id2 = await publishOk(server.url, { topics: ['json'], data: [1, 'two', 3.5] });
  const id3 = await publishOk(server.url, { topics: ['json'], data: 42 });
  const id4 = await publishOk(server.url, { topics: ['json'], data: 'a string stays as is: {"x": 1}' });

  const got = await collect(es, 4, 10_000);
  assert.deepEqual(got, [
    { type: 'message', id: id1, data: JSON.stringify(obj) },
    { type: 'message', id: id2, data: '[1,"two",3.5]' },
    { type: 'message', id: id3, data: '42' },
    { type: 'message', id: id4, data: 'a string stays as is: {"x": 1}' },
  ]);
  closeAll();
});

test('ids are strictly increasing decimal strings', { timeout: 20_000 }, async () => {
  const ids = [];
  for (let i = 0; i < 20; i++) ids.push(await publishOk(server.url, { topics: ['nobody'], data: `x${i}` }));
  const batch = await publishOk(server.url, [1, 2, 3].map((i) => ({ topics: ['nobody'], data: `b${i}` })));
  ids.push(...batch);
  for (const id of ids) assert.match(id, /^[0-9]+$/);
  for (let i = 1; i < ids.length; i++) {
    assert.ok(BigInt(ids[i - 1]) < BigInt(ids[i]), `id ${ids[i]} must be > ${ids[i - 1]}`);
  }
});
