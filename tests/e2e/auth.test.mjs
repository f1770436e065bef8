// Token checks of the real binary in token mode (no --dev): which JWTs open
// a stream and which are refused, with what status, error code, message and
// WWW-Authenticate challenge; where a token is read from (header, query,
// cookie); what a token without publish or admin claims may not do.
// Tokens are minted here with npm `jose`; the keys are made by the test.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { publish, request } from './lib/server.mjs';
import {
  startSecured, trySubscribe, assertStreamOpened, assertAuthError, sign, claims, nowSecs,
  keyPair, algNoneToken, withPayload, bearer, headerOf, jose,
} from './lib/auth.mjs';

const SECRET_A = 'first-secret-of-the-auth-tests-0123456789';
const SECRET_B = 'second-secret-while-rotating-9876543210';
const AUDIENCE = 'herald-tests';
const ISSUER = 'https://issuer.herald.test';

const dir = mkdtempSync(join(tmpdir(), 'herald-auth-'));
const servers = [];
let multi; // secrets A and B, RSA, EC P-256, EC P-384 and Ed25519 public keys, leeway 0
let pubOnly; // only an RSA public key, leeway 0
let secretOnly; // only SECRET_A, with audience and issuer, default leeway (30 s)
const keys = {};

before(async () => {
  for (const [name, alg] of [
    ['rsa', 'RS256'], ['ec256', 'ES256'], ['ec384', 'ES384'], ['ed', 'EdDSA'],
    ['rsaOther', 'RS256'], ['ec256Other', 'ES256'], ['ec384Other', 'ES384'], ['edOther', 'EdDSA'],
  ]) {
    keys[name] = await keyPair(dir, name, alg);
  }
  multi = await startSecured([
    '--jwt-secret', SECRET_A, '--jwt-secret', SECRET_B,
    '--jwt-public-key', keys.rsa.pubFile, '--jwt-public-key', keys.ec256.pubFile,
    '--jwt-public-key', keys.ec384.pubFile, '--jwt-public-key', keys.ed.pubFile,
    '--jwt-leeway-secs', '0', '--heartbeat-secs', '300',
  ]);
  servers.push(multi);
  pubOnly = await startSecured(['--jwt-public-key', keys.rsa.pubFile, '--jwt-leeway-secs', '0', '--heartbeat-secs', '300']);
  servers.push(pubOnly);
  secretOnly = await startSecured([
    '--jwt-secret', SECRET_A, '--jwt-audience', AUDIENCE, '--jwt-issuer', ISSUER, '--heartbeat-secs', '300',
  ]);
  servers.push(secretOnly);
});

after(async () => {
  for (const s of servers) await s.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function opens(server, token, what, query = '') {
  const r = await trySubscribe(server.url, query, { token });
  assertStreamOpened(r, what);
}

async function refused(server, token, code, message, what, query = '') {
  const r = await trySubscribe(server.url, query, { token });
  assertAuthError(r, code, what, { message });
}

describe('valid tokens open a stream', () => {
  const cases = [
    ['HS256 with the first secret', () => sign(SECRET_A, 'HS256', claims())],
    ['HS256 with the second secret (rotation)', () => sign(SECRET_B, 'HS256', claims())],
    ['HS384', () => sign(SECRET_B, 'HS384', claims())],
    ['HS512', () => sign(SECRET_A, 'HS512', claims())],
    ['RS256', () => sign(keys.rsa.privateKey, 'RS256', claims())],
    ['RS384', () => sign(keys.rsa.privateKey, 'RS384', claims())],
    ['RS512', () => sign(keys.rsa.privateKey, 'RS512', claims())],
    ['PS256', () => sign(keys.rsa.privateKey, 'PS256', claims())],
    ['PS512', () => sign(keys.rsa.privateKey, 'PS512', claims())],
    ['ES256 (P-256)', () => sign(keys.ec256.privateKey, 'ES256', claims())],
    ['ES384 (P-384)', () => sign(keys.ec384.privateKey, 'ES384', claims())],
    ['EdDSA (Ed25519)', () => sign(keys.ed.privateKey, 'EdDSA', claims())],
  ];
  for (const [name, mint] of cases) {
    test(name, { timeout: 10_000 }, async () => {
      await opens(multi, await mint(), name);
    });
  }

  test('audience and issuer are not checked when not configured', { timeout: 10_000 }, async () => {
    await opens(multi, await sign(SECRET_A, 'HS256', claims('7777', { aud: 'someone-else', iss: 'https://elsewhere.test' })),
      'token with aud and iss, server without jwt_audience/jwt_issuer');
  });

  test('a token that expires in 2 s is still valid now (leeway 0)', { timeout: 10_000 }, async () => {
    await opens(multi, await sign(SECRET_A, 'HS256', claims('7777', { exp: nowSecs() + 2 })), 'exp = now + 2');
  });
});

describe('refused tokens', () => {
  test('expired -> 401 token_expired', { timeout: 10_000 }, async () => {
    await refused(multi, await sign(SECRET_A, 'HS256', claims('7777', { exp: nowSecs() - 5 })),
      'token_expired', /expired/i, 'HS256 exp = now - 5');
    await refused(multi, await sign(keys.ec256.privateKey, 'ES256', claims('7777', { exp: nowSecs() - 5 })),
      'token_expired', /expired/i, 'ES256 exp = now - 5');
  });

  test('not yet valid (nbf beyond the leeway) -> 401 token_invalid', { timeout: 10_000 }, async () => {
    await refused(multi, await sign(SECRET_A, 'HS256', claims('7777', { nbf: nowSecs() + 60 })),
      'token_invalid', /not yet valid/i, 'nbf = now + 60, leeway 0');
  });

  test('signed with another secret -> 401 token_invalid (signature)', { timeout: 10_000 }, async () => {
    await refused(multi, await sign('not-a-configured-secret-0123456789', 'HS256', claims()),
      'token_invalid', /signature/i, 'HS256 with an unknown secret');
    await refused(multi, await sign('not-a-configured-secret-0123456789', 'HS512', claims()),
      'token_invalid', /signature/i, 'HS512 with an unknown secret');
  });

  test('signed with a key that is not configured -> 401 token_invalid (signature)', { timeout: 20_000 }, async () => {
    const cases = [
      ['RS256', keys.rsaOther], ['PS256', keys.rsaOther], ['ES256', keys.ec256Other],
      ['ES384', keys.ec384Other], ['EdDSA', keys.edOther],
    ];
    for (const [alg, pair] of cases) {
      await refused(multi, await sign(pair.privateKey, alg, claims()), 'token_invalid', /signature/i, `${alg} with an unknown key`);
    }
  });

  test('alg "none" -> 401 token_invalid', { timeout: 10_000 }, async () => {
    await refused(multi, algNoneToken(claims()), 'token_invalid', /none/i, 'unsigned token, alg none');
  });

  test('tampered payload -> 401 token_invalid (signature)', { timeout: 10_000 }, async () => {
    const hs = await sign(SECRET_A, 'HS256', claims('7777'));
    await refused(multi, withPayload(hs, claims('1')), 'token_invalid', /signature/i, 'HS256 with sub swapped');
    const rs = await sign(keys.rsa.privateKey, 'RS256', claims('7777'));
    await refused(multi, withPayload(rs, claims('7777', { 'herald.admin': true })), 'token_invalid', /signature/i,
      'RS256 with herald.admin added');
  });

  test('no exp -> 401 token_invalid naming exp', { timeout: 10_000 }, async () => {
    await refused(multi, await sign(SECRET_A, 'HS256', claims('7777', { exp: undefined })),
      'token_invalid', /\bexp\b/, 'HS256 without exp');
  });

  test('malformed token -> 401 token_invalid (malformed)', { timeout: 10_000 }, async () => {
    const b = (s) => Buffer.from(s).toString('base64url');
    await refused(multi, `${b('{"alg":"HS256","typ":"JWT"')}.${b('{"sub":"7777"}')}.c2ln`,
      'token_invalid', /malformed/i, 'header is not JSON');
    // Correctly signed, so only the payload is wrong.
    const notJson = await new jose.CompactSign(new TextEncoder().encode('not json at all'))
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).sign(new TextEncoder().encode(SECRET_A));
    await refused(multi, notJson, 'token_invalid', /malformed/i, 'payload is not JSON (signature valid)');
  });

  test('a claim of the wrong type -> 401 token_invalid naming the claim', { timeout: 10_000 }, async () => {
    await refused(multi, await sign(SECRET_A, 'HS256', claims('7777', { sub: 7777 })),
      'token_invalid', /\bsub\b/, 'sub is a number');
    await refused(multi, await sign(SECRET_A, 'HS256', claims('7777', { 'herald.subscribe': 'orders/*' })),
      'token_invalid', /herald\.subscribe/, 'herald.subscribe is a string');
    await refused(multi, await sign(SECRET_A, 'HS256', claims('7777', { 'herald.admin': 'yes' })),
      'token_invalid', /herald\.admin/, 'herald.admin is a string');
  });

  test('an HMAC token against a server with only a public key -> 401 token_invalid (algorithm)', { timeout: 10_000 }, async () => {
    await refused(pubOnly, await sign(SECRET_A, 'HS256', claims()), 'token_invalid', /algorithm/i,
      'HS256 token, only jwt_public_key configured');
  });

  test('the RSA public key PEM used as an HMAC secret -> 401 token_invalid (algorithm)', { timeout: 10_000 }, async () => {
    // The classic key-confusion attack: the public key is public, so an HS256
    // token signed with its PEM text must not pass as if it were a secret.
    await refused(pubOnly, await sign(keys.rsa.pubPem, 'HS256', claims('7777', { 'herald.admin': true })),
      'token_invalid', /algorithm/i, 'HS256 signed with the SPKI PEM bytes');
    const r = await request(pubOnly.url, '/v1/stats', {
      headers: bearer(await sign(keys.rsa.pubPem, 'HS256', claims('7777', { 'herald.admin': true }))),
    });
    assertAuthError(r, 'token_invalid', 'GET /v1/stats with the PEM-as-secret admin token', { message: /algorithm/i });
  });

  test('a key type that is not configured -> 401 token_invalid (algorithm)', { timeout: 10_000 }, async () => {
    await refused(pubOnly, await sign(keys.ec256.privateKey, 'ES256', claims()), 'token_invalid', /algorithm/i,
      'ES256 token, only an RSA key configured');
    await refused(secretOnly, await sign(keys.rsa.privateKey, 'RS256', claims('7777', { aud: AUDIENCE, iss: ISSUER })),
      'token_invalid', /algorithm/i, 'RS256 token, only jwt_secret configured');
  });

  test('the public-key-only server still takes its own RS256 tokens', { timeout: 10_000 }, async () => {
    await opens(pubOnly, await sign(keys.rsa.privateKey, 'RS256', claims()), 'RS256 on the public-key-only server');
  });
});

describe('audience, issuer and the default leeway', () => {
  const ok = (extra = {}) => claims('7777', { aud: AUDIENCE, iss: ISSUER, ...extra });

  test('the configured audience and issuer are accepted (aud as a string or an array)', { timeout: 10_000 }, async () => {
    await opens(secretOnly, await sign(SECRET_A, 'HS256', ok()), 'aud and iss as configured');
    await opens(secretOnly, await sign(SECRET_A, 'HS256', ok({ aud: ['other', AUDIENCE] })), 'aud array holding the audience');
  });

  test('another audience -> 401 token_invalid (audience)', { timeout: 10_000 }, async () => {
    await refused(secretOnly, await sign(SECRET_A, 'HS256', ok({ aud: 'another-service' })),
      'token_invalid', /audience/i, 'aud = another-service');
  });

  test('another issuer -> 401 token_invalid (issuer)', { timeout: 10_000 }, async () => {
    await refused(secretOnly, await sign(SECRET_A, 'HS256', ok({ iss: 'https://evil.test' })),
      'token_invalid', /issuer/i, 'iss = https://evil.test');
  });

  test('default leeway of 30 s applies to exp and nbf', { timeout: 10_000 }, async () => {
    await opens(secretOnly, await sign(SECRET_A, 'HS256', ok({ exp: nowSecs() - 10 })), 'exp 10 s ago, within the leeway');
    await opens(secretOnly, await sign(SECRET_A, 'HS256', ok({ nbf: nowSecs() + 10 })), 'nbf in 10 s, within the leeway');
    await refused(secretOnly, await sign(SECRET_A, 'HS256', ok({ exp: nowSecs() - 90 })),
      'token_expired', /expired/i, 'exp 90 s ago');
    await refused(secretOnly, await sign(SECRET_A, 'HS256', ok({ nbf: nowSecs() + 90 })),
      'token_invalid', /not yet valid/i, 'nbf in 90 s');
  });
});

describe('where the token is read from', () => {
  const sub = () => claims('7777', { 'herald.subscribe': ['orders/*'] });

  test('Authorization header, access_token query parameter and herald_token cookie all authorize a subscribe', { timeout: 10_000 }, async () => {
    const token = await sign(SECRET_A, 'HS256', sub());
    const anonymous = await trySubscribe(multi.url, 'topic=orders/42');
    assertAuthError(anonymous, 'token_missing', 'topic=orders/42 without a token');
    for (const via of ['header', 'query', 'cookie']) {
      const r = await trySubscribe(multi.url, 'topic=orders/42', { token, via });
      assertStreamOpened(r, `token in the ${via}`);
    }
    const h = await trySubscribe(multi.url, 'topic=orders/42', {
      headers: { cookie: `theme=dark; herald_token=${token}; lang=fr` },
    });
    assertStreamOpened(h, 'herald_token among other cookies');
  });

  test('a bad token is refused from each source', { timeout: 10_000 }, async () => {
    const expired = await sign(SECRET_A, 'HS256', claims('7777', { exp: nowSecs() - 5 }));
    const forged = await sign('not-a-configured-secret-0123456789', 'HS256', sub());
    for (const via of ['header', 'query', 'cookie']) {
      assertAuthError(await trySubscribe(multi.url, '', { token: expired, via }), 'token_expired', `expired token in the ${via}`,
        { message: /expired/i });
      assertAuthError(await trySubscribe(multi.url, '', { token: forged, via }), 'token_invalid', `forged token in the ${via}`,
        { message: /signature/i });
    }
  });

  test('the Authorization header comes first', { timeout: 10_000 }, async () => {
    const token = await sign(SECRET_A, 'HS256', sub());
    const forged = await sign('not-a-configured-secret-0123456789', 'HS256', sub());
    const r = await trySubscribe(multi.url, `topic=orders/42&access_token=${forged}`, {
      headers: { authorization: `Bearer ${token}`, cookie: `herald_token=${forged}` },
    });
    assertStreamOpened(r, 'valid header, forged query parameter and cookie');
  });

  test('the cookie does not authorize publish or admin routes', { timeout: 10_000 }, async () => {
    const token = await sign(SECRET_A, 'HS256', claims('pub', { 'herald.publish': ['*'], 'herald.admin': true }));
    const body = { topics: ['orders/1'], data: 'by cookie' };
    const byCookie = await publish(multi.url, body, { headers: { cookie: `herald_token=${token}` } });
    assertAuthError(byCookie, 'token_missing', 'publish with the token only in the herald_token cookie');
    const byHeader = await publish(multi.url, body, { headers: bearer(token) });
    assert.equal(byHeader.status, 201, `the same token in the header publishes: ${byHeader.status} ${byHeader.text}`);
    const stats = await request(multi.url, '/v1/stats', { headers: { cookie: `herald_token=${token}` } });
    assertAuthError(stats, 'token_missing', 'GET /v1/stats with the token only in the cookie');
    const statsHeader = await request(multi.url, '/v1/stats', { headers: bearer(token) });
    assert.equal(statsHeader.status, 200, `GET /v1/stats with the admin token in the header: ${statsHeader.text}`);
  });
});

describe('what a token without publish or admin claims may not do', () => {
  test('publish without herald.publish -> 403 publish_not_allowed', { timeout: 10_000 }, async () => {
    const token = await sign(SECRET_A, 'HS256', claims('7777', { 'herald.subscribe': ['news'] }));
    const r = await publish(multi.url, { topics: ['news'], data: 'x' }, { headers: bearer(token) });
    assertAuthError(r, 'publish_not_allowed', 'publish to news, no herald.publish', { message: /news/ });
  });

  test('publish without any token -> 401 token_missing', { timeout: 10_000 }, async () => {
    const r = await publish(multi.url, { topics: ['news'], data: 'x' });
    assertAuthError(r, 'token_missing', 'publish without credentials');
  });

  test('admin route without herald.admin -> 403 admin_required; without a token -> 401 token_missing', { timeout: 10_000 }, async () => {
    const plain = await sign(SECRET_A, 'HS256', claims('7777', { 'herald.publish': ['*'] }));
    const notAdmin = await sign(SECRET_A, 'HS256', claims('7777', { 'herald.admin': false }));
    for (const token of [plain, notAdmin]) {
      const r = await request(multi.url, '/v1/stats', { headers: bearer(token) });
      assertAuthError(r, 'admin_required', 'GET /v1/stats without herald.admin true');
    }
    const none = await request(multi.url, '/v1/stats');
    assertAuthError(none, 'token_missing', 'GET /v1/stats without credentials');
    assert.equal(headerOf(none, 'www-authenticate')?.includes('error='), false);
  });
});
