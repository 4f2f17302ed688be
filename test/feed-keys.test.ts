// Key rotation reaches a subscribed verifier through the feed (issue #7, finding 10): the real
// SigningKeys, hub and feed routes, and the real verifier with its default JWKS cache (10 min) and
// refetch cooldown (30 s). Before, a key that started signing within the cooldown of the
// verifier's last JWKS fetch was refused with TASKPASS_VERIFY_UNKNOWN_KID.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { createVerifier, RevocationFeedClient } from '@taskpass/verifier';
import Fastify from 'fastify';
import { SignJWT } from 'jose';
import { Agent } from 'undici';
import {
  AesGcmKeyWrapper,
  generateKek,
  RevocationHub,
  revocationRoutes,
  SigningKeys,
  SqliteStore,
} from '@taskpass/broker';

const ISSUER = 'https://broker.taskpass.test';
const AUDIENCE = 'https://tickets.taskpass.test/mcp';

async function until(f: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('a verifier on the feed loads a rotated-in key before it signs, with no unknown kid', async () => {
  const store = new SqliteStore({ path: ':memory:' });
  await store.init();
  const T0 = Date.now();
  let keyClock = T0;
  const keys = await SigningKeys.open(store, {
    rotateEverySec: 1000,
    prepublishSec: 100,
    maxTokenTtlSec: 60,
    now: () => keyClock,
    autoStart: false,
    wrapper: new AesGcmKeyWrapper(generateKek('test-kek')),
  });
  const hub = new RevocationHub({ store, heartbeatMs: 60_000, keys });
  const app = Fastify();
  let jwksFetches = 0;
  app.get('/.well-known/jwks.json', async () => {
    jwksFetches++;
    return keys.jwks();
  });
  await app.register(revocationRoutes, { hub });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  const dispatcher = new Agent();
  const feed = new RevocationFeedClient({ brokerUrl: url, dispatcher });
  try {
    await feed.ready(5000);
    const v = createVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      jwksUri: `${url}/.well-known/jwks.json`,
      dispatcher,
      tools: { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } },
      revocation: feed,
    });
    const call = { tool: 'get_ticket', args: { ticket_id: 'T-1' } };
    const token = () => {
      const { kid, privateKey } = keys.current();
      const iat = Math.floor(Date.now() / 1000);
      return new SignJWT({
        client_id: 'spiffe://taskpass.test/agent',
        act: { sub: 'spiffe://taskpass.test/agent' },
        txn: 'task-1',
        authorization_details: [
          { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/T-1', action: 'read' },
        ],
      })
        .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid })
        .setIssuer(ISSUER)
        .setAudience(AUDIENCE)
        .setSubject('alice')
        .setJti(randomUUID())
        .setIssuedAt(iat)
        .setExpirationTime(iat + 60)
        .sign(privateKey);
    };
    const k1 = keys.current().kid;
    await v.verifyCall(await token(), call);
    assert.equal(jwksFetches, 1);

    // The successor is published (not signing yet); the feed says so and the verifier refetches.
    keyClock = T0 + 900_000;
    await keys.rotateIfDue();
    assert.equal(keys.kids().length, 2);
    await until(() => jwksFetches === 2);

    // It signs from its activeFrom: the verifier already holds it.
    keyClock = T0 + 1_000_000;
    assert.notEqual(keys.current().kid, k1);
    await v.verifyCall(await token(), call);
    assert.equal(jwksFetches, 2, 'no refetch was needed at the first token of the new key');
  } finally {
    await feed.close();
    await dispatcher.destroy();
    await app.close();
    await hub.close();
    await keys.close();
    await store.close();
  }
});
