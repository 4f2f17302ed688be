// Vault end to end (issue #12, docs/vault.md) on a real Vault server (built by
// scripts/build-vault.mjs) and real SPIRE: the stack's broker signs with a Vault Transit key and
// logs in to Vault with its JWT-SVID (the JWT auth method trusts SPIRE's JWT bundle, the role is
// bound to the broker's SPIFFE ID). The ticket desk verifies those tokens as it verifies any.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type BrokerClient, BrokerError, type CallTokenRequest, type Task } from '@taskpass/agent-plugin';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectVault, mintTokenWith, parseConfig, TransitSigner, VaultClient } from '@taskpass/broker';
import pino from 'pino';
import { JwtSource, X509Source } from '@taskpass/spiffe/workload';
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  decodeProtectedHeader,
  exportJWK,
  importSPKI,
  jwtVerify,
} from 'jose';
import type { Agent } from 'undici';
import { type Stack, startStack } from '../examples/stack.ts';
import { rawToolCall } from './support/mcp-raw.ts';
import { pollUntil, sleep } from '../harness/poll.ts';
import { BROKER_ROLE, setUpBrokerVault, VAULT_AUDIENCE } from '../examples/vault-setup.ts';
import { type OwnVault, startVault } from '../harness/vault.ts';
import { agentSide } from './support/workloads.ts';

describe('Vault Transit signer (real Vault, real SPIRE)', () => {
  let vault: OwnVault;
  let stack: Stack;
  let asAgent: Agent;
  let broker: BrokerClient;
  let task: Task;
  const cleanups: (() => Promise<unknown>)[] = [];

  const readReq = (): CallTokenRequest => ({
    audience: stack.audience,
    tool: 'get_ticket',
    resource: 'tickets/T-1002',
    action: 'read',
  });
  /** A fresh token for a read (not the plugin's cache), and the ticket desk's answer to the call made with it. */
  const readCall = async () => {
    const t = await broker.callToken(task.id, readReq());
    const r = await rawToolCall(asAgent, stack.urls.mcp, t.accessToken, 'get_ticket', {
      ticket_id: 'T-1002',
    });
    return { token: t.accessToken, status: r.status, isError: r.result?.isError };
  };
  const refusedBySigner = (e: unknown) =>
    e instanceof BrokerError && e.code === 'TASKPASS_SIGNER_UNAVAILABLE' && e.status === 503;

  before(async () => {
    vault = await startVault();
    cleanups.push(() => vault.stop());
    stack = await startStack({
      brokerLogLevel: 'silent',
      brokerConfig: (spire) => setUpBrokerVault(vault, spire, 'spiffe://taskpass.local/broker'),
    });
    cleanups.push(() => stack.stop());
    const agent = await agentSide(stack);
    cleanups.push(() => agent.close());
    ({ toDesk: asAgent, broker } = agent);
    task = await broker.openTask({
      purpose: 'vault e2e',
      userToken: await stack.userToken(),
      ttlSeconds: 600,
    });
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });

  test('tokens signed by Transit verify at the ticket desk; kid is the thumbprint of the Transit key', async () => {
    const call = await readCall();
    assert.equal(call.status, 200);
    assert.notEqual(call.isError, true);
    const key = (await vault.api('GET', 'transit/keys/taskpass')) as {
      data: { type: string; keys: Record<string, { public_key: string }> };
    };
    assert.equal(key.data.type, 'ecdsa-p256');
    const kids = await Promise.all(
      Object.values(key.data.keys).map(async (v) =>
        calculateJwkThumbprint(await exportJWK(await importSPKI(v.public_key, 'ES256')), 'sha256'),
      ),
    );
    assert.ok(kids.includes(decodeProtectedHeader(call.token).kid as string));
  });

  /** The broker's /readyz once its Vault probe (cached for 1 s) has looked again. */
  const readiness = async () => {
    await sleep(1100);
    const r = await stack.broker.app.inject('/readyz');
    return { status: r.statusCode, vault: r.json().vault as { state: string } };
  };

  test('Vault sealed: issuance refused with TASKPASS_SIGNER_UNAVAILABLE (503) and not ready; unsealed: issued again', async () => {
    assert.deepEqual(await readiness(), { status: 200, vault: { state: 'up' } });
    await vault.seal();
    try {
      await assert.rejects(broker.callToken(task.id, readReq()), refusedBySigner);
      const ready = await readiness();
      assert.equal(ready.status, 503);
      assert.equal(ready.vault.state, 'sealed');
    } finally {
      await vault.unseal();
    }
    const call = await readCall();
    assert.equal(call.status, 200);
    assert.equal((await readiness()).status, 200);
  });

  test('Vault down: issuance refused and not ready; back up: issued again', async () => {
    await vault.kill();
    try {
      await assert.rejects(broker.callToken(task.id, readReq()), refusedBySigner);
      const ready = await readiness();
      assert.equal(ready.status, 503);
      assert.equal(ready.vault.state, 'down');
    } finally {
      await vault.restart();
    }
    const call = await readCall();
    assert.equal(call.status, 200);
    assert.equal((await readiness()).status, 200);
  });

  test('TLS cert auth: the broker logs in with its X.509-SVID; an SVID the role does not name is refused', async () => {
    const tlsVault = await startVault({ tls: true });
    cleanups.push(() => tlsVault.stop());
    const dir = mkdtempSync(join(tmpdir(), 'taskpass-vault-cert-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const caFile = join(dir, 'vault-ca.pem');
    writeFileSync(caFile, tlsVault.caPem ?? '');
    // The cert role trusts SPIRE's X.509 bundle and names one SPIFFE ID (a URI SAN).
    const bundle = await stack.spire.serverCli('bundle', 'show');
    await tlsVault.api('POST', 'sys/auth/cert', { type: 'cert' });
    await tlsVault.api('PUT', 'sys/policies/acl/reader', {
      policy: 'path "sys/mounts" { capabilities = ["read"] }',
    });
    const role = (name: string, id: string) =>
      tlsVault.api('POST', `auth/cert/certs/${name}`, {
        certificate: bundle,
        allowed_uri_sans: [id],
        token_policies: ['reader'],
        token_ttl: '5m',
      });
    await role('taskpass-broker', stack.ids.broker);
    await role('someone-else', 'spiffe://taskpass.local/elsewhere');
    // Vault 1.14's cert auth names the login by the certificate's CN, and an X.509-SVID has one only
    // when its entry has a DNS name (SPIRE makes the first one the CN): the broker's SVID for Vault
    // is such an entry (docs/vault.md).
    await stack.spire.createEntry({
      spiffeId: stack.ids.broker,
      hint: 'broker-vault',
      dnsNames: ['broker.taskpass.local'],
      entryId: 'taskpass-9-broker-vault',
      // Another selector set than the broker's own entry (SPIRE refuses a "similar entry").
      selectors: [`unix:uid:${process.getuid?.()}`, `unix:gid:${process.getgid?.()}`],
    });
    const svids = await X509Source.create({ address: stack.spire.address });
    try {
      await pollUntil('the broker-vault SVID', 20_000, 100, () =>
        svids.getX509Context().svids.some((v) => v.hint === 'broker-vault') ? true : undefined,
      );
    } finally {
      await svids.close();
    }
    const configFor = (name: string) =>
      parseConfig({
        issuer: stack.issuer,
        trustDomain: 'taskpass.local',
        workloadApi: { address: stack.spire.address, hint: 'broker-vault' },
        vault: { address: tlsVault.address, caFile, auth: { method: 'cert', name } },
      });
    const logger = pino({ level: 'silent' });
    const closers: (() => Promise<void> | void)[] = [];
    try {
      const client = await connectVault(configFor('taskpass-broker'), logger, closers);
      assert.equal(client.authenticated, true);
      const mounts = await client.read('sys/mounts');
      assert.ok(mounts.data && 'sys/' in mounts.data);
      await assert.rejects(connectVault(configFor('someone-else'), logger, closers), /HTTP 4\d\d/);
    } finally {
      for (const c of closers.reverse()) await c();
    }
  });

  test('Transit rotation with zero verification failures (JWKS cached by the verifier)', async () => {
    // A signer of its own on a key of its own, logged in as the broker (same uid: its JWT-SVID).
    const jwt = await JwtSource.create({ address: stack.spire.address });
    cleanups.push(async () => jwt.close());
    const client = await VaultClient.connect({
      address: vault.address,
      auth: {
        method: 'jwt',
        role: BROKER_ROLE,
        jwtSvid: async () =>
          (await jwt.fetchJwtSvid({ audience: VAULT_AUDIENCE, subject: stack.ids.broker })).token,
      },
    });
    cleanups.push(async () => client.close());
    const prepublishSec = 2;
    const signer = await TransitSigner.open(client, {
      key: 'taskpass-rotation',
      rotateEverySec: 5,
      prepublishSec,
      maxTokenTtlSec: 2,
      autoStart: false,
    });
    cleanups.push(() => signer.close());

    // The verifier keeps a JWKS for at most half the prepublish period (as jwksMaxAge ≤ prepublish).
    let cached = { jwks: signer.jwks(), at: Date.now() };
    const seen = new Set<string>();
    const failures: string[] = [];
    const until = Date.now() + 16_000;
    while (Date.now() < until) {
      await signer.rotateIfDue();
      if (Date.now() - cached.at >= (prepublishSec * 1000) / 2)
        cached = { jwks: signer.jwks(), at: Date.now() };
      const iat = Math.floor(Date.now() / 1000);
      const batch = await Promise.all(
        Array.from({ length: 20 }, () =>
          mintTokenWith(signer.current(), {
            issuer: 'https://broker.test',
            sub: 'alice',
            agent: stack.ids.agent,
            audience: stack.audience,
            iat,
            exp: iat + 2,
            taskId: 'tsk_rotation',
            detail: { type: 'mcp_session' },
            singleUse: false,
            template: 'rotation',
          }),
        ),
      );
      for (const { token } of batch) {
        seen.add(decodeProtectedHeader(token).kid as string);
        await jwtVerify(token, createLocalJWKSet(cached.jwks), { algorithms: ['ES256'] }).catch((e: Error) =>
          failures.push(e.message),
        );
      }
      await sleep(200);
    }
    assert.deepEqual(failures, []);
    assert.ok(seen.size >= 3, `tokens were signed by ${seen.size} Transit versions`);
    // Requests waiting together went as one batch_input.
    assert.ok(
      signer.batches.some((n) => n > 1),
      `batch sizes ${signer.batches.join(',')}`,
    );
  });
});
