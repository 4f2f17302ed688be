// `taskpass approvals …` against a fake broker (node:http, and node:https serving an X.509-SVID of
// the spiffe test CA) answering the approval routes of issue #9 the way the broker will.
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { FakeWorkloadApi, TestCa } from '@taskpass/spiffe/testing';
import type { ApprovalView } from '@taskpass/contract';
import { runCli } from '../src/cli.ts';

const TOKEN = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJsZWFkLTEifQ.c2lnbmF0dXJl';
const ID = 'apr_AAAAAAAAAAAAAAAAAAAAAA';
const OTHER = 'apr_BBBBBBBBBBBBBBBBBBBBBB';

function view(id: string): ApprovalView {
  return {
    id,
    status: 'pending',
    created_at: 1_800_000_000,
    expires_at: 1_800_000_600,
    approval_url: `https://broker.test/approvals/${id}`,
    request: {
      agent: 'spiffe://taskpass.local/agents/support',
      user: 'alice',
      task: { id: 'tsk_1', purpose: 'refund order o-1' },
      audience: 'https://shop.test/mcp',
      tool: 'refund',
      resource: 'orders/o-1',
      action: 'write',
      args_sha256: 'q1w2e3',
      arguments: { order: 'o-1', amount: 500 },
      template: 'shop-refunds',
    },
  };
}

interface Seen {
  method: string;
  url: string;
  authorization: string | undefined;
  body: unknown;
  clientCert: boolean;
}

/** The approval routes: the approver's bearer required; the first decision wins. */
function fakeBroker() {
  const approvals = new Map([ID, OTHER].map((id) => [id, view(id)]));
  const seen: Seen[] = [];
  const handler = async (req: IncomingMessage, res: ServerResponse) => {
    let text = '';
    for await (const c of req) text += c;
    const peer = (req.socket as Partial<TLSSocket>).getPeerCertificate?.();
    seen.push({
      method: req.method ?? '',
      url: req.url ?? '',
      authorization: req.headers.authorization,
      body: text ? JSON.parse(text) : undefined,
      clientCert: peer !== undefined && Object.keys(peer).length > 0,
    });
    const answer = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${TOKEN}`) {
      return answer(401, { code: 'TASKPASS_USER_TOKEN_INVALID', message: 'not a trusted approver token' });
    }
    const u = new URL(req.url ?? '/', 'http://x');
    if (req.method === 'GET' && u.pathname === '/v1/approvals') {
      const status = u.searchParams.get('status');
      return answer(200, { approvals: [...approvals.values()].filter((v) => v.status === status) });
    }
    const m = /^\/v1\/approvals\/([^/]+)(\/decision)?$/.exec(u.pathname);
    const v = m ? approvals.get(m[1]!) : undefined;
    if (!v) return answer(404, { code: 'TASKPASS_APPROVAL_NOT_FOUND', message: 'No such approval.' });
    if (req.method === 'GET' && !m![2]) return answer(200, v);
    if (req.method === 'POST' && m![2]) {
      if (v.status !== 'pending')
        return answer(409, { code: 'TASKPASS_APPROVAL_DECIDED', message: 'already decided' });
      const d = JSON.parse(text) as { decision: 'approve' | 'deny'; comment?: string };
      v.status = d.decision === 'approve' ? 'approved' : 'denied';
      v.decision = {
        decision: d.decision,
        approver: { iss: 'https://idp.test', sub: 'lead-1' },
        decided_at: 1_800_000_100,
        ...(d.comment ? { comment: d.comment } : {}),
      };
      return answer(200, v);
    }
    return answer(404, { code: 'TASKPASS_NOT_FOUND', message: 'no route' });
  };
  return { approvals, seen, handler };
}

function io(env: NodeJS.ProcessEnv = {}) {
  const out: string[] = [];
  const err: string[] = [];
  return {
    io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s), env },
    out,
    err,
    all: () => [...out, ...err].join('\n'),
  };
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

let dir: string;
let tokenFile: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'taskpass-cli-approvals-'));
  tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe('over http to a loopback test broker', () => {
  let broker: ReturnType<typeof fakeBroker>;
  let server: Server;
  let url: string;
  before(async () => {
    broker = fakeBroker();
    server = createServer((req, res) => void broker.handler(req, res));
    url = `http://127.0.0.1:${await listen(server)}`;
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = io(env);
    return runCli(['approvals', ...args], r.io).then((code) => ({ code, ...r }));
  };

  test('list: pending approvals as a table, or JSON; the token from the file is the Bearer', async () => {
    const t = await run(['list', '--broker', url, '--token-file', tokenFile]);
    assert.equal(t.code, 0, t.all());
    assert.equal(t.out[0], 'APPROVAL\tSTATUS\tEXPIRES\tUSER\tAGENT\tCALL\tTEMPLATE');
    assert.equal(
      t.out[1],
      `${ID}\tpending\t2027-01-15T08:10:00.000Z\talice\tspiffe://taskpass.local/agents/support\twrite refund on orders/o-1\tshop-refunds`,
    );
    assert.equal(t.out.length, 3);
    assert.equal(broker.seen.at(-1)?.url, '/v1/approvals?status=pending');
    assert.equal(broker.seen.at(-1)?.authorization, `Bearer ${TOKEN}`);
    const j = await run(['list', '--json', '--status', 'approved'], {
      TASKPASS_BROKER_URL: url,
      TASKPASS_APPROVER_TOKEN: TOKEN,
    });
    assert.equal(j.code, 0, j.all());
    assert.deepEqual(JSON.parse(j.out.join('\n')), []);
    assert.equal(broker.seen.at(-1)?.url, '/v1/approvals?status=approved');
  });

  test('show: what is asked, arguments included, readable by a person', async () => {
    const t = await run(['show', ID, '--broker', url, '--token-file', tokenFile]);
    assert.equal(t.code, 0, t.all());
    const text = t.out.join('\n');
    assert.match(text, new RegExp(`^approval ${ID}: pending`));
    assert.match(text, /for user +alice/);
    assert.match(text, /task +tsk_1: refund order o-1/);
    assert.match(text, /call +write refund on orders\/o-1 at https:\/\/shop\.test\/mcp/);
    assert.match(text, /"amount": 500/);
    assert.match(text, /args sha256 q1w2e3/);
    assert.match(text, /expires at +2027-01-15T08:10:00\.000Z/);
    const j = await run(['show', ID, '--json', '--broker', url, '--token-file', tokenFile]);
    assert.deepEqual(JSON.parse(j.out.join('\n')), broker.approvals.get(ID));
  });

  test('approve with a comment, then a second decision is refused with the broker code (exit 1)', async () => {
    const t = await run([
      'approve',
      ID,
      '--comment',
      'ok, customer is known',
      '--broker',
      url,
      '--token-file',
      tokenFile,
    ]);
    assert.equal(t.code, 0, t.all());
    assert.deepEqual(t.out, [`approved ${ID}: write refund on orders/o-1 for alice`]);
    const post = broker.seen.at(-1)!;
    assert.equal(post.method, 'POST');
    assert.equal(post.url, `/v1/approvals/${ID}/decision`);
    assert.deepEqual(post.body, { decision: 'approve', comment: 'ok, customer is known' });
    assert.equal(broker.approvals.get(ID)?.status, 'approved');

    const again = await run(['deny', ID, '--broker', url, '--token-file', tokenFile]);
    assert.equal(again.code, 1);
    assert.match(again.err.join('\n'), /broker answered 409: TASKPASS_APPROVAL_DECIDED/);
    assert.equal(broker.approvals.get(ID)?.status, 'approved');

    const show = await run(['show', ID, '--broker', url, '--token-file', tokenFile]);
    assert.match(show.out.join('\n'), /decided +approve by lead-1 \(https:\/\/idp\.test\)/);
    assert.match(show.out.join('\n'), /comment +ok, customer is known/);
  });

  test('deny without a comment sends only the decision', async () => {
    const t = await run(['deny', OTHER, '--json', '--broker', url, '--token-file', tokenFile]);
    assert.equal(t.code, 0, t.all());
    assert.deepEqual(broker.seen.at(-1)?.body, { decision: 'deny' });
    assert.equal(JSON.parse(t.out.join('\n')).status, 'denied');
  });

  test('refusals: exit 1 with the broker code, and the token never shows', async () => {
    const bad = await run(['list', '--broker', url], { TASKPASS_APPROVER_TOKEN: 'someone-elses' });
    assert.equal(bad.code, 1);
    assert.match(bad.err.join('\n'), /broker answered 401: TASKPASS_USER_TOKEN_INVALID/);
    const missing = await run([
      'show',
      'apr_ZZZZZZZZZZZZZZZZZZZZZZ',
      '--broker',
      url,
      '--token-file',
      tokenFile,
    ]);
    assert.equal(missing.code, 1);
    assert.match(missing.err.join('\n'), /404: TASKPASS_APPROVAL_NOT_FOUND/);
    for (const r of [bad, missing]) assert.ok(!r.all().includes(TOKEN) && !r.all().includes('someone-elses'));
  });

  test('usage errors exit 2 before anything is sent; there is no flag for the token itself', async () => {
    const n = broker.seen.length;
    const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
      [[], {}, /usage:/],
      [
        ['frobnicate', '--broker', url, '--token-file', tokenFile],
        {},
        /unknown command: approvals frobnicate/,
      ],
      [['approve', '--broker', url, '--token-file', tokenFile], {}, /approvals approve <approval-id>/],
      [['approve', '../admin', '--broker', url, '--token-file', tokenFile], {}, /not an approval id/],
      [['list', '--token', TOKEN, '--broker', url], {}, /Unknown option '--token'/],
      [['list', '--broker', url], {}, /your user token is required/],
      [['list', '--broker', url, '--token-file', join(dir, 'nope')], {}, /cannot read --token-file: ENOENT/],
      [['list', '--token-file', tokenFile], {}, /--broker <url>/],
      [
        ['list', '--broker', 'http://broker.example:8080', '--token-file', tokenFile],
        {},
        /plain http is allowed only to a loopback/,
      ],
      [
        ['list', '--status', 'whatever', '--broker', url, '--token-file', tokenFile],
        {},
        /--status must be one of/,
      ],
      [
        ['deny', ID, '--comment', 'x'.repeat(1001), '--broker', url, '--token-file', tokenFile],
        {},
        /--comment must be 1 to 1000/,
      ],
      [['list', '--broker', url], { TASKPASS_APPROVER_TOKEN: 'two\nlines' }, /not a single token/],
    ];
    for (const [args, env, message] of cases) {
      const r = await run(args, env);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.all()}`);
      assert.match(r.all(), message);
      assert.ok(!r.all().includes(TOKEN), 'the token is never echoed');
    }
    assert.equal(broker.seen.length, n);
    const help = await run(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.out.join('\n'), /--token-file <path>/);
  });
});

describe('over https: the broker authenticated by SPIFFE ID, no client certificate', () => {
  let ca: TestCa;
  let caFile: string;
  const servers: Server[] = [];

  async function httpsBroker(spiffeId: string, signer: TestCa = ca) {
    const svid = await signer.createX509Svid(spiffeId);
    const broker = fakeBroker();
    const server = createHttpsServer(
      {
        key: createPrivateKey({ key: Buffer.from(svid.keyDer), format: 'der', type: 'pkcs8' }).export({
          format: 'pem',
          type: 'pkcs8',
        }),
        cert: svid.certificates.map((c) => c.toString()).join(''),
        requestCert: true,
        rejectUnauthorized: false,
      },
      (req, res) => void broker.handler(req, res),
    );
    servers.push(server);
    return { broker, url: `https://127.0.0.1:${await listen(server)}` };
  }

  before(async () => {
    ca = await TestCa.create('taskpass.local');
    caFile = join(dir, 'bundle.pem');
    writeFileSync(caFile, ca.certificate.toString());
  });
  after(() => {
    for (const s of servers) {
      s.closeAllConnections();
      s.close();
    }
  });

  test('--ca: the trust domain comes from the CA, the broker must be spiffe://<td>/broker', async () => {
    const { broker, url } = await httpsBroker('spiffe://taskpass.local/broker');
    const r = io({ TASKPASS_APPROVER_TOKEN: TOKEN });
    assert.equal(await runCli(['approvals', 'list', '--broker', url, '--ca', caFile], r.io), 0, r.all());
    assert.match(r.out[1] ?? '', new RegExp(`^${ID}\\t`));
    assert.equal(broker.seen.at(-1)?.clientCert, false);

    const impostor = await httpsBroker('spiffe://taskpass.local/agents/support');
    const i = io({ TASKPASS_APPROVER_TOKEN: TOKEN });
    assert.equal(await runCli(['approvals', 'list', '--broker', impostor.url, '--ca', caFile], i.io), 1);
    assert.equal(impostor.broker.seen.length, 0, 'the token never reached the impostor');
    // ... unless the operator names that ID as the broker.
    const named = io({ TASKPASS_APPROVER_TOKEN: TOKEN, TASKPASS_CA_FILE: caFile });
    const args = [
      'approvals',
      'list',
      '--broker',
      impostor.url,
      '--broker-id',
      'spiffe://taskpass.local/agents/support',
    ];
    assert.equal(await runCli(args, named.io), 0, named.all());

    const otherCa = await TestCa.create('elsewhere.test');
    const foreign = await httpsBroker('spiffe://taskpass.local/broker', otherCa);
    const f = io({ TASKPASS_APPROVER_TOKEN: TOKEN });
    assert.equal(await runCli(['approvals', 'list', '--broker', foreign.url, '--ca', caFile], f.io), 1);
    assert.equal(foreign.broker.seen.length, 0);
  });

  test('without --ca: the bundle from the Workload API', async () => {
    const fake = await FakeWorkloadApi.start();
    try {
      fake.setX509Bundles({ 'spiffe://taskpass.local': ca.x509BundleDer() });
      fake.setJwtBundles({ 'spiffe://taskpass.local': ca.jwtBundleJwks() });
      const { broker, url } = await httpsBroker('spiffe://taskpass.local/broker');
      const r = io({ TASKPASS_APPROVER_TOKEN: TOKEN, SPIFFE_ENDPOINT_SOCKET: fake.address });
      assert.equal(await runCli(['approvals', 'show', ID, '--broker', url], r.io), 0, r.all());
      assert.match(r.out[0] ?? '', new RegExp(`^approval ${ID}: pending`));
      assert.equal(broker.seen.at(-1)?.clientCert, false);
    } finally {
      await fake.stop();
    }
  });
});
