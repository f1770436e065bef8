// Herald's logs as a log collector reads them. With `--log-format json` every
// line on stderr is one JSON object; start-up logs the effective
// configuration with the secrets given by flag and by environment redacted;
// at debug a stream's open and close are one line each (the close with its
// reason and duration); at info nothing is logged per event. The text format
// (the default) redacts the same way.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSecured, claims, sign } from './lib/auth.mjs';
import { openRaw, publish, sleep, waitFor, request } from './lib/server.mjs';

const FLAG_SECRET = 'flag-secret-for-the-log-test-0123456789';
const ENV_SECRET = 'env-secret-for-the-log-test-9876543210';
const API_KEY = 'api-key-for-the-log-test-abcdefghijklmnop';
const EVENTS = 20;
const servers = [];

after(async () => {
  for (const s of servers) await s.stop();
});

async function start(args) {
  const env = { HERALD_JWT_SECRET: ENV_SECRET, HERALD_API_KEYS: `${API_KEY};publish=*;admin` };
  // --jwt-secret as a flag wins over the environment's; the env's API key stays.
  const server = await startSecured(['--jwt-secret', FLAG_SECRET, ...args], { env: { ...env, RUST_LOG: '' } });
  servers.push(server);
  return server;
}

const lines = (server) => server.output().split('\n').filter((l) => l.trim() !== '' && !l.startsWith('herald listening on'));

function assertNoSecret(output) {
  for (const secret of [FLAG_SECRET, ENV_SECRET, API_KEY]) {
    assert.ok(!output.includes(secret), `a secret (${secret.slice(0, 12)}…) is in the log:\n${output}`);
  }
}

test('--log-format json: one JSON object a line, the configuration redacted, a line per stream at debug and none per event at info', { timeout: 60_000 }, async () => {
  const server = await start(['--log-format', 'json', '--log', 'info,herald_core::hub=debug']);
  const url = server.url;
  const token = await sign(FLAG_SECRET, 'HS256', claims('log-user'));
  const stream = await openRaw(url, `/v1/events?access_token=${token}`);
  assert.equal(stream.status, 200);
  await stream.firstData;

  const infoLines = () => lines(server).map((l) => JSON.parse(l)).filter((l) => l.level === 'INFO').length;
  const infoBefore = infoLines();
  for (let i = 0; i < EVENTS; i++) {
    const r = await publish(url, { users: ['log-user'], data: `e${i}` }, { headers: { authorization: `Bearer ${API_KEY}` } });
    assert.equal(r.status, 201, r.text);
  }
  await stream.waitEvents(EVENTS);
  await sleep(300);
  assert.equal(infoLines(), infoBefore, 'no info line per event');

  const kick = await request(url, '/v1/users/log-user/connections', { method: 'DELETE', headers: { authorization: `Bearer ${API_KEY}` } });
  assert.equal(kick.status, 200, kick.text);
  await stream.waitEnd();
  await waitFor(() => server.output().includes('stream closed'), 5_000, 'the stream close line');
  await server.stop();

  const parsed = lines(server).map((l, i) => {
    try {
      return JSON.parse(l);
    } catch (err) {
      throw new Error(`line ${i} is not JSON: ${l}`, { cause: err });
    }
  });
  for (const l of parsed) {
    assert.ok(l.timestamp && l.level && l.fields && l.target, `a log object has timestamp, level, fields, target: ${JSON.stringify(l)}`);
  }
  const config = parsed.find((l) => l.fields.message === 'effective configuration (secrets redacted)');
  assert.ok(config, 'start-up logs the effective configuration');
  const effective = JSON.parse(config.fields.config);
  assert.deepEqual(effective.jwt_secret, ['[redacted]']);
  assert.equal(effective.api_keys[0].key, '[redacted]');
  assert.deepEqual(effective.api_keys[0].publish, ['*'], 'what is not secret is shown');
  assert.equal(effective.log_format, 'json');
  assert.equal(config.fields.listen, '127.0.0.1:0', 'the address as configured');
  assertNoSecret(server.output());

  const opened = parsed.filter((l) => l.fields.message === 'stream opened');
  const closed = parsed.filter((l) => l.fields.message === 'stream closed');
  assert.equal(opened.length, 1, 'one open line for one stream');
  assert.equal(closed.length, 1, 'one close line for one stream');
  assert.equal(opened[0].level, 'DEBUG');
  assert.equal(opened[0].fields.user, 'log-user');
  assert.equal(closed[0].level, 'DEBUG');
  assert.equal(closed[0].fields.reason, 'kicked');
  assert.equal(closed[0].fields.conn, opened[0].fields.conn);
  assert.equal(typeof closed[0].fields.duration_ms, 'number');
  assert.ok(closed[0].fields.duration_ms >= 300, `the duration covers the stream's life (${closed[0].fields.duration_ms} ms)`);
  assert.equal(closed[0].fields.delivered, EVENTS);
});

test('the default text format is for people and redacts the same secrets', { timeout: 30_000 }, async () => {
  const server = await start([]);
  await server.stop();
  const out = server.output();
  assert.match(out, /INFO .*effective configuration \(secrets redacted\)/);
  assert.ok(!lines(server).some((l) => l.startsWith('{')), 'not JSON');
  assert.match(out, /\[redacted\]/);
  assertNoSecret(out);
});
