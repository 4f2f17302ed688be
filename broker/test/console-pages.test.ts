// The console's pages (docs/console.md "Pages"): server-rendered HTML over the console API, the one
// escaping helper, bidi controls shown, forms with a _csrf field, roles per page.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CONSOLE_CSP } from '../src/console/app.ts';
import { AGENT, IDP, TICKETS } from './app-support.ts';

import { b, type Browser, get, openTask, refund, signIn, token, web } from './console-support.ts';

import { escapeText, html, raw } from '../src/console/html.ts';

const form = (who: Browser | undefined, url: string, fields: Record<string, string>) =>
  web.inject({
    method: 'POST',
    url,
    headers: {
      ...(who ? { cookie: who.cookie } : {}),
      'content-type': 'application/x-www-form-urlencoded',
    },
    payload: new URLSearchParams(fields).toString(),
  });

test('html`…` escapes every interpolation, keeps raw() fragments, shows bidi controls', () => {
  const evil = '<img src=x onerror=alert(1)>"\'&\u202Etxt.exe';
  const out = html`<p title="${evil}">${evil}${raw('<b>ok</b>')}${[1, html`<i>${'<'}</i>`]}${null}</p>`.value;
  assert.ok(!out.includes('<img'));
  assert.ok(!out.includes('\u202E'), 'no raw bidi control reaches the page');
  assert.match(out, /^<p title="&lt;img src=x onerror=alert\(1\)&gt;&quot;&#39;&amp;\\u202Etxt.exe">/);
  assert.match(out, /<span class="bidi"[^>]*>\\u202E<\/span>txt\.exe<b>ok<\/b>1<i>&lt;<\/i><\/p>$/);
  for (const c of ['\u200F', '\u2066', '\u2069', '\u061C'])
    assert.doesNotMatch(escapeText(`a${c}b`), /[\u061C\u200E\u200F\u2066-\u2069]/u);
});

test('pages need a session: GET goes to sign-in and back, a form POST is refused; static files and CSP', async () => {
  const r = await get(undefined, '/console/tasks');
  assert.equal(r.statusCode, 303);
  assert.equal(r.headers.location, '/console/auth/login?return=%2Fconsole%2Ftasks');
  assert.equal((await form(undefined, '/console/tokens', { token: 'x'.repeat(20) })).statusCode, 401);
  const js = await get(undefined, '/console/static/console.js');
  assert.equal(js.statusCode, 200);
  assert.match(String(js.headers['content-type']), /^text\/javascript/);
  assert.match(js.body, /new EventSource\('\/console\/api\/events'\)/);
  const olivia = await signIn('olivia');
  const now = await get(olivia, '/console/');
  assert.equal(now.statusCode, 200, now.body);
  assert.equal(now.headers['content-security-policy'], CONSOLE_CSP);
  assert.match(now.body, /<script type="module" src="\/console\/static\/console\.js"><\/script>/);
  // Nothing inline: the only script is the module, no style attributes or elements.
  assert.equal(now.body.match(/<script/g)?.length, 1);
  assert.doesNotMatch(now.body, /style=|<style/);
  assert.match(now.body, /open tasks/);
  assert.match(now.body, /<svg class="chart"/);
});

test('a purpose and resource holding <script> and U+202E render as visible text on every page', async () => {
  const purpose = 'refund <script>window.pwned=1</script> \u202Egnp.exe';
  const task = await openTask(purpose);
  const resource = 'tickets/<script>alert(1)</script>\u202E1-T';
  // Resources never carry markup: the broker refuses them at its boundary (before any record).
  const t = await token(task, { ...refund(10), resource });
  assert.equal(t.json().code, 'TASKPASS_INVALID_RESOURCE');
  await b.services.recorder.flush();
  const olivia = await signIn('olivia');
  for (const url of [`/console/tasks/${task}`, '/console/tasks']) {
    const page = await get(olivia, url);
    assert.equal(page.statusCode, 200, page.body);
    assert.ok(!page.body.includes('<script>'), `${url}: no agent markup`);
    assert.ok(!page.body.includes('\u202E'), `${url}: no raw right-to-left override`);
    assert.ok(
      page.body.includes('refund &lt;script&gt;window.pwned=1&lt;/script&gt; <span class="bidi"'),
      url,
    );
  }
});

test('revoke from the task page: a confirmation step, a form POST needs _csrf, viewers are refused', async () => {
  const task = await openTask();
  const olivia = await signIn('olivia');
  const page = (await get(olivia, `/console/tasks/${task}`)).body;
  assert.match(page, new RegExp(`href="/console/tasks/${task}/revoke"`));
  const confirm = await get(olivia, `/console/tasks/${task}/revoke`);
  assert.equal(confirm.statusCode, 200);
  assert.match(confirm.body, new RegExp(`<input type="hidden" name="_csrf" value="${olivia.csrf}">`));

  const forged = await form(olivia, `/console/tasks/${task}/revoke`, { reason: 'forged' });
  assert.equal(forged.statusCode, 403);
  assert.equal(forged.json().code, 'TASKPASS_CONSOLE_CSRF');
  const wrong = await form(olivia, `/console/tasks/${task}/revoke`, { _csrf: 'A'.repeat(43) });
  assert.equal(wrong.json().code, 'TASKPASS_CONSOLE_CSRF');
  assert.equal((await get(olivia, `/console/api/tasks/${task}`)).json().task.status, 'open');

  // Bob is a viewer: he sees the task but neither the revoke step nor the action.
  const bob = await signIn('bob');
  assert.doesNotMatch((await get(bob, `/console/tasks/${task}`)).body, /Revoke this task/);
  assert.equal((await get(bob, `/console/tasks/${task}/revoke`)).statusCode, 403);
  const byBob = await form(bob, `/console/tasks/${task}/revoke`, { _csrf: bob.csrf });
  assert.equal(byBob.statusCode, 403);
  assert.match(byBob.body, /TASKPASS_CONSOLE_FORBIDDEN/);
  assert.equal((await get(olivia, `/console/api/tasks/${task}`)).json().task.status, 'open');

  const done = await form(olivia, `/console/tasks/${task}/revoke`, { _csrf: olivia.csrf, reason: 'leaked' });
  assert.equal(done.statusCode, 303, done.body);
  assert.equal(done.headers.location, `/console/tasks/${task}`);
  assert.equal((await get(olivia, `/console/api/tasks/${task}`)).json().task.status, 'revoked');
});

test('a signed-in person without the viewer or admin claim is refused the admin pages', async () => {
  const alice = await signIn('alice');
  const home = await get(alice, '/console/');
  assert.equal(home.statusCode, 303);
  assert.equal(home.headers.location, '/console/approvals');
  for (const url of ['/console/tasks', '/console/templates', '/console/tokens']) {
    const r = await get(alice, url);
    assert.equal(r.statusCode, 403, url);
    assert.match(r.body, /TASKPASS_CONSOLE_FORBIDDEN/, url);
  }
  const nav = (await get(alice, '/console/approvals')).body;
  assert.doesNotMatch(nav, /href="\/console\/tasks"/);
  assert.match(nav, /Nothing waits for you/);
});

test('approve through the approval page form: the call in full, then the decision with a comment', async () => {
  const task = await openTask();
  const asked = await token(task, refund(250));
  const id = asked.json().approval_id as string;
  const bob = await signIn('bob');
  const list = await get(bob, '/console/approvals');
  assert.match(list.body, new RegExp(`href="/console/approvals/${id}"`));
  const page = await get(bob, `/console/approvals/${id}`);
  assert.equal(page.statusCode, 200, page.body);
  assert.match(page.body, /issue_refund/);
  assert.match(page.body, /&quot;amount&quot;: 250/);
  assert.match(page.body, /refund a double charge/);
  const noCsrf = await form(bob, `/console/approvals/${id}/decision`, { decision: 'approve' });
  assert.equal(noCsrf.json().code, 'TASKPASS_CONSOLE_CSRF');
  const ok = await form(bob, `/console/approvals/${id}/decision`, {
    _csrf: bob.csrf,
    decision: 'approve',
    comment: 'fine <b>by me</b>',
  });
  assert.equal(ok.statusCode, 303, ok.body);
  const after = await get(bob, `/console/approvals/${id}`);
  assert.match(after.body, /· approved<\/h2>/);
  assert.match(after.body, /<p class="decision">Approved by bob: fine &lt;b&gt;by me&lt;\/b&gt;<\/p>/);
  assert.equal((await token(task, refund(250))).statusCode, 200);
});

test('templates and token explain: forms POST, the token never in a URL', async () => {
  const olivia = await signIn('olivia');
  const t = await get(olivia, '/console/templates');
  assert.equal(t.statusCode, 200, t.body);
  assert.match(t.body, /refunds/);
  const whatIf = await form(olivia, '/console/templates', {
    _csrf: olivia.csrf,
    form: 'what-if',
    agent: AGENT,
    user_iss: IDP,
    user_sub: 'alice',
    user_claims: '{"groups":["support"]}',
    audience: TICKETS,
    tool: 'issue_refund',
    action: 'write',
    resource: 'tickets/T-1',
    arguments: '{"ticket_id":"T-1","amount":250}',
  });
  assert.equal(whatIf.statusCode, 200, whatIf.body);
  assert.match(whatIf.body, /What if: /);
  const explainPage = (await get(olivia, '/console/tokens')).body;
  assert.match(explainPage, /<form method="post" action="\/console\/tokens">/);
  const task = await openTask();
  const minted = await token(task, refund(10));
  assert.equal(minted.statusCode, 200, minted.body);
  const ex = await form(olivia, '/console/tokens', { _csrf: olivia.csrf, token: minted.json().access_token });
  assert.equal(ex.statusCode, 200, ex.body);
  assert.match(ex.body, /Signature valid/);
  assert.match(ex.body, /Not revoked/);
  assert.ok(!ex.body.includes(minted.json().access_token), 'the page does not echo the token');
});
