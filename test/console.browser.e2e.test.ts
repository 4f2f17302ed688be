// The console in a real browser (issue #10, docs/console.md): headless Chromium from Debian's
// `chromium` package, driven by playwright-core, against the demo stack on real SPIRE (SQLite store,
// ./policies, the demo IdP's login page). People sign in the way they would: the console sends them
// to the IdP, they press their name, and come back with a session cookie.
//
// - Bob (a support lead) opens the approval link the waiting agent was given, sees the refund with
//   its arguments, approves it, and the agent's call goes through;
// - Olivia (admin) revokes an open task from its page, and the MCP server refuses its leftover token;
// - Alice (no admin or viewer claim) is refused the admin pages; a POST without the CSRF token is
//   refused, from the page itself;
// - markup and a right-to-left override in a task's purpose and a call's arguments show as text.
//
// Screenshots of every page visited go to artifacts/console/ (or $TASKPASS_ARTIFACTS/console).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  type ApprovalMode,
  argsSha256,
  type BrokerClient,
  type Task,
  TaskpassApprovalRequiredError,
  taskpassFetch,
} from '@taskpass/agent-plugin';
import { type Browser, chromium, type Locator, type Page } from 'playwright-core';
import { type Agent, fetch as undiciFetch } from 'undici';
import { ALICE, type Stack, startStack } from '../examples/stack.ts';
import { rawToolCall } from './support/mcp-raw.ts';
import { pollUntil } from '../harness/poll.ts';
import { agentSide } from './support/workloads.ts';

/** The system browser (Debian's chromium); `.ci/run` installs it when it is missing. */
const CHROMIUM = process.env.TASKPASS_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(
  process.env.TASKPASS_ARTIFACTS ?? join(import.meta.dirname, '..', 'artifacts'),
  'console',
);
/** Markup and a right-to-left override (U+202E): what an agent might put in a purpose or argument. */
const EVIL = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2"> \u202Egnp.exe';

describe('the console in headless Chromium (real SPIRE, demo IdP, ticket desk)', () => {
  let stack: Stack;
  let browser: Browser;
  let asAgent: Agent;
  let broker: BrokerClient;
  let origin: string;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    assert.ok(
      existsSync(CHROMIUM),
      `no browser at ${CHROMIUM}: install Debian's chromium (apt-get install -y chromium) or set TASKPASS_CHROMIUM`,
    );
    await mkdir(ARTIFACTS, { recursive: true });
    stack = await startStack({ brokerLogLevel: 'warn' });
    origin = new URL(stack.urls.console).origin;
    const agent = await agentSide(stack);
    cleanups.push(() => agent.close());
    ({ toDesk: asAgent, broker } = agent);
    // Flags as the machine notes say: no background networking (this network is closed), a fresh
    // profile per launch (playwright's default), no sandbox (CI runs as root).
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    cleanups.push(() => browser.close());
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await stack?.stop();
  });

  // --- helpers ------------------------------------------------------------------------------------

  /** What a page did that it should not have: scripts run, errors thrown, CSP violations. */
  const incidents = new Map<Page, string[]>();

  /**
   * A person in a browser of their own (own cookies): opens `path` on the console, is sent to the
   * IdP's login page, presses "Sign in as <name>", and lands back on `path`.
   */
  async function signIn(name: string, path: string): Promise<Page> {
    const context = await browser.newContext();
    cleanups.push(() => context.close());
    const page = await context.newPage();
    const seen: string[] = [];
    incidents.set(page, seen);
    page.on('pageerror', (e) => seen.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') seen.push(`console error: ${m.text()} (${m.location().url})`);
    });
    // The revoke form asks "Revoke task …?" with window.confirm: the person says yes.
    page.on('dialog', (d) => void d.accept());
    await page.goto(`${origin}${path}`);
    assert.match(
      await page.title(),
      /Demo IdP/,
      'a console page without a session sends the person to sign in',
    );
    await page.getByRole('button', { name: `Sign in as ${name}` }).click();
    await page
      .waitForURL((u) => u.origin === origin && u.pathname === path, { timeout: 10_000 })
      .catch(async (e) => {
        throw new Error(
          `${name} did not land on ${path}: at ${page.url()}: ${(await page.content()).slice(0, 600)}`,
          {
            cause: e,
          },
        );
      });
    return page;
  }

  async function shot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
  }

  /** What the page's `window.pwned` is: set only if agent-supplied markup ran. */
  const pwned = (page: Page) => page.evaluate('window.pwned');
  /** A node's text (the DOM's textContent). */
  const text = async (l: Locator) => (await l.textContent()) ?? '';

  const openTask = async (purpose: string): Promise<Task> =>
    broker.openTask({ purpose, userToken: await stack.userToken(ALICE), ttlSeconds: 300 });

  /** An MCP client (SDK 1.x) on the ticket desk with taskpassFetch over the agent's mTLS connection. */
  async function mcpClient(task: Task, approval: ApprovalMode): Promise<Client> {
    const transport = new StreamableHTTPClientTransport(new URL(stack.urls.mcp), {
      fetch: taskpassFetch(task, {
        audience: stack.audience,
        approval,
        fetch: async (url, init) =>
          (await undiciFetch(url, { ...(init as object), dispatcher: asAgent })) as unknown as Response,
      }),
    });
    const client = new Client({ name: 'support-bot', version: '1.0.0' });
    cleanups.push(() => client.close());
    await client.connect(transport);
    await client.listTools(); // the plugin learns each tool's resource and action from the list
    return client;
  }

  // --- the stories ------------------------------------------------------------------------------

  test('an approver signs in from the approval link, sees the refund in full, approves, and the waiting call goes through', async () => {
    await using task = await openTask('refund the damaged parcel of T-1001');
    let asked!: (e: TaskpassApprovalRequiredError) => void;
    const approvalAsked = new Promise<TaskpassApprovalRequiredError>((r) => {
      asked = r;
    });
    const client = await mcpClient(task, { wait: true, onApprovalRequired: (e) => asked(e) });
    await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1001' } });
    // The agent's call waits (long poll) until a person decides.
    const refund = client.callTool({
      name: 'issue_refund',
      arguments: { ticket_id: 'T-1001', amount: 129.9 },
    });
    const e = await approvalAsked;
    const link = new URL(e.approvalUrl);
    assert.equal(link.origin, origin, 'the approval link opens the console');

    const bob = await signIn('Bob', link.pathname);
    const block = bob.locator(`#approval-${e.approvalId}`);
    await block.waitFor();
    const shown = await text(block);
    for (const want of [
      'pending',
      'issue_refund',
      'tickets/T-1001',
      'write',
      'alice',
      'refund the damaged parcel of T-1001',
    ]) {
      assert.ok(shown.includes(want), `the approval page shows ${want}:\n${shown}`);
    }
    assert.deepEqual(JSON.parse(await text(block.locator('pre.arguments'))), {
      ticket_id: 'T-1001',
      amount: 129.9,
    });
    await shot(bob, 'approval-pending');

    await block.locator('input[name="comment"]').fill('Parcel damage confirmed on the photos.');
    await block.getByRole('button', { name: 'Approve' }).click();
    await bob.locator('p.decision').waitFor(); // the form's POST answers with the page again
    assert.equal(
      await text(bob.locator('p.decision')),
      'Approved by bob: Parcel damage confirmed on the photos.',
    );
    // Approved — or already used, when the waiting agent was quicker than this page's redirect.
    assert.match(await text(block.locator('h2')), /· (approved|used)$/);
    await shot(bob, 'approval-approved');

    // The agent's waiting call went through, and the ticket desk saw Bob's approval in the token.
    const r = await refund;
    assert.ok(!r.isError, JSON.stringify(r));
    const out = JSON.parse((r.content as { text: string }[])[0]!.text) as {
      caller: { user: string; approval?: { id: string; approver: { sub: string } } };
    };
    assert.equal(out.caller.user, 'alice');
    assert.equal(out.caller.approval?.id, e.approvalId);
    assert.equal(out.caller.approval?.approver.sub, 'bob');
    assert.deepEqual(incidents.get(bob), []);
  });

  test('an admin revokes an open task from its page; the MCP server refuses its leftover token', async () => {
    await using task = await openTask('look up T-1002 for a customer call');
    // A token the agent holds but has not used yet.
    const leftover = await task.token({
      audience: stack.audience,
      tool: 'get_ticket',
      resource: 'tickets/T-1002',
      action: 'read',
    });
    const olivia = await signIn('Olivia', `/console/tasks/${task.id}`);
    const status = olivia.locator('dl dd').first();
    assert.equal(await text(status), 'open');
    // The timeline already shows the issued token.
    await olivia.locator('td', { hasText: 'tickets/T-1002' }).first().waitFor();
    await shot(olivia, 'task-open');

    await olivia.getByRole('link', { name: 'Revoke this task…' }).click();
    await olivia.waitForURL(`${origin}/console/tasks/${task.id}/revoke`);
    await shot(olivia, 'task-revoke-confirm');
    await olivia.locator('input[name="reason"]').fill('the customer call ended');
    await olivia.getByRole('button', { name: 'Revoke' }).click(); // confirm() is accepted
    await olivia.waitForURL(`${origin}/console/tasks/${task.id}`);
    assert.equal(await text(olivia.locator('dl dd').first()), 'revoked');
    await olivia.locator('td', { hasText: 'task.revoked' }).first().waitFor();
    await shot(olivia, 'task-revoked');

    // The revocation reaches the desk over the feed: the leftover token is refused.
    const refused = await pollUntil('the desk refuses the revoked task’s token', 5_000, 20, async () => {
      const r = await rawToolCall(asAgent, stack.urls.mcp, leftover.accessToken, 'get_ticket', {
        ticket_id: 'T-1002',
      });
      return r.status === 401 ? r : undefined;
    });
    assert.equal(refused.code, 'TASKPASS_VERIFY_REVOKED');
    assert.deepEqual(incidents.get(olivia), []);
  });

  test('a person without the admin or viewer claim is refused the admin pages; a POST without the CSRF token is refused', async () => {
    const alice = await signIn('Alice', '/console/approvals');
    await shot(alice, 'approvals-empty-alice');
    assert.equal(await alice.locator('header a[href="/console/tasks"]').count(), 0, 'no admin links for her');
    for (const path of ['/console/tasks', '/console/templates', '/console/tokens']) {
      const res = await alice.goto(`${origin}${path}`);
      assert.equal(res?.status(), 403, path);
      assert.match(await text(alice.locator('main')), /TASKPASS_CONSOLE_FORBIDDEN/, path);
    }
    await shot(alice, 'forbidden-alice');

    // From an admin's own page: the same form POST without its _csrf field, and an API call without
    // the X-CSRF-Token header, are refused before anything happens.
    await using task = await openTask('a task nobody may revoke without the CSRF token');
    const olivia = await signIn('Olivia', `/console/tasks/${task.id}/revoke`);
    const refused = await olivia.evaluate(async (id) => {
      const noField = await fetch(`/console/tasks/${id}/revoke`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'reason=forged',
      });
      const noHeader = await fetch(`/console/api/tasks/${id}/revoke`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      });
      return [
        { status: noField.status, body: await noField.json() },
        { status: noHeader.status, body: await noHeader.json() },
      ];
    }, task.id);
    for (const r of refused) {
      assert.equal(r.status, 403);
      assert.equal((r.body as { code?: string }).code, 'TASKPASS_CONSOLE_CSRF');
    }
    await olivia.goto(`${origin}/console/tasks/${task.id}`);
    assert.equal(await text(olivia.locator('dl dd').first()), 'open', 'the task is still open');
  });

  test('markup and a right-to-left override in a purpose and in arguments render as text, never run', async () => {
    // A resource cannot carry them: the broker refuses such a resource at its boundary
    // (TASKPASS_INVALID_RESOURCE), so they reach the console through purposes and arguments.
    await using task = await openTask(`refund ${EVIL}`);
    await task.token({
      audience: stack.audience,
      tool: 'get_ticket',
      resource: 'tickets/T-1001',
      action: 'read',
    });
    const args = { ticket_id: 'T-1001', amount: 150, note: EVIL };
    const e = await task
      .token({
        audience: stack.audience,
        tool: 'issue_refund',
        resource: 'tickets/T-1001',
        action: 'write',
        argsSha256: argsSha256(args),
        arguments: args,
      })
      .then(
        () => assert.fail('a refund above 100 needs approval'),
        (err: unknown) => {
          assert.ok(err instanceof TaskpassApprovalRequiredError, String(err));
          return err;
        },
      );

    const olivia = await signIn('Olivia', `/console/tasks/${task.id}`);
    const purpose = await text(olivia.locator('dd.purpose'));
    assert.ok(purpose.startsWith('refund <script>window.pwned=1</script><img src=x'), purpose);
    // The override is shown as a visible marker, not applied.
    assert.ok(!purpose.includes('\u202E'), 'no raw right-to-left override on the page');
    assert.equal(await text(olivia.locator('dd.purpose .bidi')), '\\u202E');
    assert.equal(await olivia.locator('main script, main img').count(), 0, 'no element from agent text');
    await shot(olivia, 'task-hostile-purpose');
    await olivia.goto(`${origin}/console/tasks`);
    assert.ok((await text(olivia.locator('main'))).includes('<script>window.pwned=1</script>'));
    await shot(olivia, 'tasks');

    const bob = await signIn('Bob', `/console/approvals/${e.approvalId}`);
    const shownArgs = await text(bob.locator('pre.arguments'));
    assert.ok(shownArgs.includes('"note": "<script>window.pwned=1</script>'), shownArgs);
    assert.equal(await bob.locator('main script, main img').count(), 0);
    await shot(bob, 'approval-hostile-arguments');
    for (const page of [olivia, bob]) {
      assert.equal(await pwned(page), undefined, 'no agent-supplied script ran');
      assert.deepEqual(incidents.get(page), []);
    }
  });

  test('every other page renders for an admin: now, templates, token explain', async () => {
    const olivia = await signIn('Olivia', '/console/');
    await olivia.locator('svg.chart').first().waitFor();
    await shot(olivia, 'now');
    await olivia.goto(`${origin}/console/templates`);
    assert.match(await text(olivia.locator('main')), /tickets-refunds/);
    await shot(olivia, 'templates');
    await olivia.goto(`${origin}/console/tokens`);
    await using task = await openTask('explain a token');
    const t = await task.token({
      audience: stack.audience,
      tool: 'get_ticket',
      resource: 'tickets/T-1002',
      action: 'read',
    });
    await olivia.locator('textarea[name="token"]').fill(t.accessToken);
    await olivia.getByRole('button', { name: 'Explain' }).click();
    await olivia.waitForURL(`${origin}/console/tokens`);
    const explained = await text(olivia.locator('main'));
    assert.match(explained, /get_ticket/);
    assert.match(explained, /tickets\/T-1002/);
    await shot(olivia, 'token-explain');
    assert.deepEqual(incidents.get(olivia), []);
  });
});
