// The console's pages (docs/console.md "Pages"): server-rendered HTML over the console's own JSON
// API. Each page asks the API (by inject, with the person's own cookie) so that roles, approver
// checks and validation live in one place, api.ts; the pages only render, with the one escaping
// helper (html.ts). Forms POST with the session's CSRF token in a `_csrf` field, checked here
// before anything is done, then the action goes to the API like the module's fetches would.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { parse } from './app.ts';
import { type Html, html, raw } from './html.ts';
import type { ConsoleSession, ConsoleSessions } from './session.ts';
import { CONSOLE_CSS, CONSOLE_JS } from './static.ts';

type Json = Record<string, unknown>;
interface ApiAnswer {
  status: number;
  body: Json;
}

const Id = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_-]+$/);
const IdParams = z.strictObject({ id: Id });

const NAV = [
  ['/console/', 'Now', 'viewer'],
  ['/console/tasks', 'Tasks', 'viewer'],
  ['/console/approvals', 'Approvals', 'any'],
  ['/console/templates', 'Templates', 'viewer'],
  ['/console/tokens', 'Token explain', 'viewer'],
] as const;

const str = (v: unknown): string => (v === undefined || v === null ? '' : String(v));
const when = (sec: unknown): string =>
  typeof sec === 'number' ? new Date(sec * 1000).toISOString().replace('.000Z', 'Z') : '';
const whenMs = (ms: unknown): string =>
  typeof ms === 'number' ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : '';
const q = (params: Record<string, string | undefined>): string => {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : '';
};

/** The page around a body: header with navigation, who is signed in, sign-out. */
function layout(s: ConsoleSession, path: string, title: string, body: Html, live = false): string {
  const name = str(s.identity.claims.name) || s.identity.sub;
  const nav = NAV.filter(([, , role]) => role === 'any' || s.roles.viewer).map(
    ([href, label]) =>
      html`<a href="${href}"${path === href ? raw(' aria-current="page"') : ''}>${label}</a>`,
  );
  const role = s.roles.admin ? 'admin' : s.roles.viewer ? 'viewer' : 'approver';
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>${title} · Taskpass console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/static/console.css">
<script type="module" src="/console/static/console.js"></script></head>
<body data-live="${live ? '1' : '0'}">
<header><strong>Taskpass</strong>${nav}
<span class="who">${name} (${role})
<form method="post" action="/console/auth/logout"><input type="hidden" name="_csrf" value="${s.csrf}"><button>Sign out</button></form></span></header>
<main><h1>${title}</h1>
${body}</main></body></html>`.value;
}

const csrfField = (s: ConsoleSession): Html => html`<input type="hidden" name="_csrf" value="${s.csrf}">`;

const errorBox = (a: ApiAnswer): Html =>
  html`<p class="error" role="alert"><strong>${str(a.body.code)}</strong>: ${str(a.body.message)}</p>`;

/** A bar chart of the last hour, per minute, drawn as SVG elements (no inline style). */
function chart(perMinute: readonly { at: number; counts: Record<string, number> }[], at: number): Html {
  const W = 600;
  const H = 80;
  const start = at - 3_600_000;
  const bars = perMinute.map((m) => {
    const issued = m.counts.issued ?? 0;
    const denied = Object.entries(m.counts)
      .filter(([k]) => k !== 'issued')
      .reduce((n, [, v]) => n + v, 0);
    return { x: Math.floor(((m.at - start) / 3_600_000) * 60), issued, denied };
  });
  const max = Math.max(1, ...bars.map((b) => b.issued + b.denied));
  const bw = W / 60;
  const rects = bars
    .filter((b) => b.x >= 0 && b.x < 60)
    .map((b) => {
      const hi = Math.round((b.issued / max) * H);
      const hd = Math.round((b.denied / max) * H);
      return html`<rect x="${b.x * bw}" y="${H - hi - hd}" width="${bw - 1}" height="${hi}"><title>${b.issued} issued</title></rect><rect class="denied" x="${b.x * bw}" y="${H - hd}" width="${bw - 1}" height="${hd}"><title>${b.denied} denied</title></rect>`;
    });
  return html`<figure class="chart"><svg class="chart" role="img" aria-label="tokens issued and denied per minute, last hour" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}"><line class="axis" x1="0" y1="${H - 0.5}" x2="${W}" y2="${H - 0.5}"></line>${rects}</svg>
<figcaption>Tokens per minute over the last hour (60 min ago → now; the tallest bar is ${max}). Blue: issued, red: denied.</figcaption></figure>`;
}

function nowPage(n: Json): Html {
  const denials = Object.entries((n.denials_by_code ?? {}) as Record<string, number>);
  const feed = (n.feed ?? { subscribers: [] }) as { seq: number; subscribers: Json[] };
  return html`<div class="cards">
<div class="card"><div class="n" data-k="open_tasks">${str(n.open_tasks)}</div>open tasks</div>
<div class="card"><div class="n">${str(n.tokens_per_second)}</div>tokens/s (last minute)</div>
<div class="card"><div class="n">${str(n.tokens_last_hour)}</div>tokens in the last hour</div>
<div class="card"><div class="n">${str(n.approvals_waiting)}</div><a href="/console/approvals">approvals waiting</a></div>
<div class="card"><div class="n">${feed.subscribers.length}</div>feed subscribers (seq ${feed.seq})</div></div>
<h2>Last hour</h2>${chart((n.per_minute ?? []) as never, Number(n.at))}
<h2>Denials by code (last hour)</h2>
${denials.length ? html`<table><tr><th>Code</th><th>Count</th></tr>${denials.map(([c, k]) => html`<tr><td>${c}</td><td>${k}</td></tr>`)}</table>` : html`<p>None.</p>`}
<h2>Feed subscribers</h2>
${feed.subscribers.length ? html`<table><tr><th>Verifier</th><th>Seq</th><th>Lag</th><th>Buffered bytes</th></tr>${feed.subscribers.map((x) => html`<tr><td>${str(x.subscriber) || '(anonymous)'}</td><td>${str(x.seq)}</td><td>${str(x.lag)}</td><td>${str(x.buffered_bytes)}</td></tr>`)}</table>` : html`<p>None.</p>`}`;
}

function tasksPage(list: Json[], f: Record<string, string | undefined>): Html {
  const statuses = ['', 'open', 'completed', 'failed', 'cancelled', 'revoked'];
  return html`<form method="get" action="/console/tasks">
<label>Agent <input name="agent" value="${f.agent ?? ''}"></label>
<label>User <input name="user" value="${f.user ?? ''}"></label>
<label>Status <select name="status">${statuses.map((st) => html`<option value="${st}"${f.status === st ? raw(' selected') : ''}>${st || 'any'}</option>`)}</select></label>
<button>Filter</button></form>
<table><tr><th>Task</th><th>Status</th><th>Agent</th><th>User</th><th>Purpose</th><th>Opened</th><th>Calls</th></tr>
${list.map((t) => html`<tr><td><a href="/console/tasks/${str(t.task_id)}">${str(t.task_id)}</a></td><td>${str(t.status)}</td><td>${str(t.agent)}</td><td>${str(t.sub)}</td><td class="purpose">${str(t.purpose)}</td><td>${when(t.created_at)}</td><td>${str(t.calls)}</td></tr>`)}
</table>${list.length ? '' : html`<p>No tasks.</p>`}`;
}

const DENIED_EVENTS = /denied|refused/;
function taskPage(id: string, d: Json, s: ConsoleSession): Html {
  const t = d.task as Json | null;
  const timeline = (d.timeline ?? []) as Json[];
  const issued = (d.issued ?? []) as Json[];
  const head = t
    ? html`<dl><dt>Status</dt><dd>${str(t.status)}</dd><dt>Agent</dt><dd>${str(t.agent)}</dd><dt>User</dt><dd>${str(t.sub)}</dd><dt>Purpose</dt><dd class="purpose">${str(t.purpose)}</dd><dt>Opened</dt><dd>${when(t.created_at)}</dd><dt>Expires</dt><dd>${when(t.expires_at)}</dd></dl>`
    : html`<p>This task has been swept from the store; its timeline remains.</p>`;
  const revoke =
    t && t.status === 'open' && s.roles.admin
      ? html`<p><a href="/console/tasks/${id}/revoke">Revoke this task…</a></p>`
      : '';
  return html`${head}${revoke}
<h2>Timeline</h2>
<table><tr><th>#</th><th>At</th><th>Event</th><th>Outcome</th><th>Tool</th><th>Resource</th><th>Action</th><th>Template</th><th>Code</th><th>Reason</th><th>Approval</th></tr>
${timeline.map((r) => {
  const failed = /failed$/.test(str(r.event));
  const denied = failed || DENIED_EVENTS.test(str(r.event)) || str(r.code) !== '';
  // Lease events (docs/vault.md) name a Vault path where calls name a resource.
  return html`<tr><td>${str(r.seq)}</td><td>${whenMs(r.at)}</td><td>${str(r.event)}</td><td class="${denied ? 'denied' : 'allowed'}">${failed ? 'failed' : denied ? 'denied' : 'allowed'}</td><td>${str(r.tool)}</td><td class="resource">${str(r.resource ?? r.path)}</td><td>${str(r.action)}</td><td>${str(r.template)}</td><td>${str(r.code)}</td><td>${str(r.reason)}</td><td>${str(r.approval)}${r.approver ? html` by ${str(r.approver)}` : ''}</td></tr>`;
})}</table>
<h2>Tokens issued (${issued.length})</h2>
<table><tr><th>Token id</th><th>Tool</th><th>Resource</th><th>Action</th><th>Issued</th><th>Expires</th><th>State</th></tr>
${issued.map((i) => html`<tr><td>${str(i.jti)}</td><td>${str(i.tool)}</td><td class="resource">${str(i.resource)}</td><td>${str(i.action)}</td><td>${when(i.issuedAt)}</td><td>${when(i.expiresAt)}</td><td class="${str(i.state)}">${str(i.state)}</td></tr>`)}</table>`;
}

function approvalBlock(a: Json, s: ConsoleSession, full: boolean): Html {
  const r = (a.request ?? {}) as Json;
  const task = (r.task ?? {}) as Json;
  const decision = a.decision as Json | undefined;
  const form =
    a.status === 'pending'
      ? html`<form method="post" action="/console/approvals/${str(a.id)}/decision">${csrfField(s)}
<label>Comment <input name="comment" maxlength="1024"></label>
<button name="decision" value="approve">Approve</button> <button name="decision" value="deny">Deny</button></form>`
      : '';
  return html`<section class="approval" id="approval-${str(a.id)}"><h2>${full ? 'Approval' : html`<a href="/console/approvals/${str(a.id)}">Approval ${str(a.id)}</a>`} · ${str(a.status)}</h2>
<dl><dt>Agent</dt><dd>${str(r.agent)}</dd><dt>User</dt><dd>${str(r.user)}</dd><dt>Task</dt><dd>${str(task.id)}</dd><dt>Task purpose</dt><dd class="purpose">${str(task.purpose)}</dd>
<dt>MCP server</dt><dd>${str(r.audience)}</dd><dt>Tool</dt><dd>${str(r.tool)}</dd><dt>Resource</dt><dd class="resource">${str(r.resource)}</dd><dt>Action</dt><dd>${str(r.action)}</dd>
<dt>Template</dt><dd>${str(r.template)}</dd><dt>Arguments</dt><dd><pre class="arguments">${JSON.stringify(r.arguments ?? null, null, 2)}</pre></dd>
<dt>Expires</dt><dd>${when(a.expires_at)}</dd></dl>
${decision ? html`<p class="decision">${decision.decision === 'approve' ? 'Approved' : 'Denied'} by ${str((decision.approver as Json)?.sub)}${decision.comment ? html`: ${str(decision.comment)}` : ''}</p>` : ''}
${form}</section>`;
}

const TEXT = z.string().max(16384);
const RevokeForm = z.strictObject({ _csrf: z.string(), reason: z.string().max(1024).optional() });
const DecideForm = z.strictObject({
  _csrf: z.string(),
  decision: z.enum(['approve', 'deny']),
  comment: z.string().max(1024).optional(),
});
const CeilingForm = z.strictObject({
  _csrf: z.string(),
  form: z.literal('ceiling'),
  agent: TEXT,
  user_iss: TEXT.optional(),
  user_sub: TEXT.optional(),
  user_claims: TEXT.optional(),
});
const WhatIfForm = z.strictObject({
  _csrf: z.string(),
  form: z.literal('what-if'),
  agent: TEXT,
  user_iss: TEXT.optional(),
  user_sub: TEXT.optional(),
  user_claims: TEXT.optional(),
  audience: TEXT,
  tool: TEXT,
  action: TEXT,
  resource: TEXT,
  arguments: TEXT.optional(),
});
const ExplainForm = z.strictObject({ _csrf: z.string(), token: z.string().max(16384) });

/** A JSON form field, or the answer of a bad request. */
function jsonField(
  v: string | undefined,
  name: string,
): { ok: true; v: unknown } | { ok: false; a: ApiAnswer } {
  if (!v?.trim()) return { ok: true, v: undefined };
  try {
    return { ok: true, v: JSON.parse(v) };
  } catch {
    return {
      ok: false,
      a: { status: 400, body: { code: 'TASKPASS_BAD_REQUEST', message: `${name}: not JSON` } },
    };
  }
}

function templatesPage(t: Json, s: ConsoleSession, result?: Html): Html {
  const list = (t.templates ?? []) as Json[];
  const last = t.last_reload as Json | null;
  const errors = (last?.errors ?? []) as unknown[];
  const userFields = html`<label>User issuer <input name="user_iss"></label><label>User sub <input name="user_sub"></label><label>User claims (JSON) <input name="user_claims"></label>`;
  return html`${result ?? ''}
<h2>Loaded templates (${list.length})</h2>
<table><tr><th>Template</th><th>Owner</th><th>Audience</th><th>Agents</th><th>Tools</th></tr>
${list.map((x) => html`<tr><td>${str(x.id)}</td><td>${str(x.owner)}</td><td>${str(x.audience)}</td><td>${((x.agents ?? []) as string[]).join(', ')}</td><td>${((x.tools ?? []) as Json[]).map((y) => html`${str(y.tool)} (${str(y.action)}) ${((y.resources ?? []) as string[]).join(', ')}<br>`)}</td></tr>`)}</table>
<h2>Last reload</h2>
${last ? html`<p class="${last.ok ? 'ok' : 'error'}">${last.ok ? 'loaded' : 'rejected'} at ${whenMs(last.at)}${last.files ? html` from ${((last.files ?? []) as string[]).join(', ')}` : ''}</p>${errors.length ? html`<pre>${JSON.stringify(errors, null, 2)}</pre>` : ''}` : html`<p>No reload since the broker started.</p>`}
${((t.warnings ?? []) as unknown[]).length ? html`<h2>Warnings</h2><pre>${JSON.stringify(t.warnings, null, 2)}</pre>` : ''}
<h2>An agent's ceiling for a user</h2>
<form method="post" action="/console/templates">${csrfField(s)}<input type="hidden" name="form" value="ceiling">
<label>Agent (SPIFFE ID) <input name="agent" required></label>${userFields}<button>Show ceiling</button></form>
<h2>What if…</h2>
<form method="post" action="/console/templates">${csrfField(s)}<input type="hidden" name="form" value="what-if">
<label>Agent <input name="agent" required></label>${userFields}
<label>Audience <input name="audience" required></label><label>Tool <input name="tool" required></label>
<label>Action <input name="action" required></label><label>Resource <input name="resource" required></label>
<label>Arguments (JSON) <input name="arguments"></label><button>Decide</button></form>`;
}

function explainPage(s: ConsoleSession, result?: ApiAnswer): Html {
  let out: Html | string = '';
  if (result && result.status >= 400) out = errorBox(result);
  else if (result) {
    const e = result.body;
    const sig = e.signature as Json;
    const rev = e.revoked as Json;
    out = html`<section class="explained"><h2>This token</h2><ul>${((e.explanation ?? []) as string[]).map((l) => html`<li>${l}</li>`)}</ul>
<p class="${sig.valid ? 'ok' : 'error'}">Signature ${sig.valid ? 'valid' : html`invalid (${str(sig.why)})`}, key ${str(sig.kid)}</p>
<p class="${rev.token || rev.task ? 'error' : 'ok'}">${rev.token ? 'The token is revoked. ' : ''}${rev.task ? 'Its task is revoked. ' : ''}${rev.token || rev.task ? '' : 'Not revoked. '}${e.expired ? 'Expired.' : ''}</p>
<h3>Claims</h3><pre>${JSON.stringify(e.claims, null, 2)}</pre><h3>Header</h3><pre>${JSON.stringify(e.header, null, 2)}</pre></section>`;
  }
  return html`<form method="post" action="/console/tokens">${csrfField(s)}
<label for="token">Token (sent in the request body, never in a URL)</label>
<textarea id="token" name="token" required autocomplete="off" spellcheck="false"></textarea><button>Explain</button></form>${out}`;
}

export interface PagesDeps {
  /** The console's root instance: pages ask its API by inject. */
  root: FastifyInstance;
  sessions: ConsoleSessions;
}

export async function consolePages(app: FastifyInstance, d: PagesDeps): Promise<void> {
  const { root, sessions } = d;

  app.get('/console/static/console.js', async (_req, reply) =>
    reply.type('text/javascript; charset=utf-8').header('cache-control', 'no-cache').send(CONSOLE_JS),
  );
  app.get('/console/static/console.css', async (_req, reply) =>
    reply.type('text/css; charset=utf-8').header('cache-control', 'no-cache').send(CONSOLE_CSS),
  );

  /** The page's session: none → sign in and come back (GET) or 401 (POST); POST needs `_csrf`. */
  const pageSession = async (
    req: FastifyRequest,
    reply: FastifyReply,
  ): Promise<ConsoleSession | undefined> => {
    const s = await sessions.current(req);
    if (!s) {
      const path = req.url.split('?')[0] as string;
      if (req.method === 'GET') {
        await reply.redirect(
          `/console/auth/login${q({ return: /^\/console[A-Za-z0-9/_.~%-]*$/.test(path) ? path : undefined })}`,
          303,
        );
      } else {
        await reply
          .code(401)
          .type('text/html; charset=utf-8')
          .send('<!doctype html><title>Sign in</title><p><a href="/console/auth/login">Sign in</a></p>');
      }
      return undefined;
    }
    if (req.method === 'POST') sessions.checkCsrf(req, s);
    return s;
  };

  /** Asks the console API as this person (their cookie; the CSRF token already checked). */
  const api = async (
    req: FastifyRequest,
    s: ConsoleSession,
    method: 'GET' | 'POST',
    url: string,
    payload?: Json,
  ): Promise<ApiAnswer> => {
    const r = await root.inject({
      method,
      url,
      headers: {
        cookie: req.headers.cookie ?? '',
        ...(method === 'POST' ? { 'x-csrf-token': s.csrf, 'content-type': 'application/json' } : {}),
      },
      ...(payload ? { payload: JSON.stringify(payload) } : method === 'POST' ? { payload: '{}' } : {}),
    });
    return { status: r.statusCode, body: r.json() as Json };
  };

  const send = (reply: FastifyReply, status: number, page: string) =>
    reply.code(status).type('text/html; charset=utf-8').send(page);
  /** Renders the API's data, or its refusal with its status (403 for a page not for this role). */
  const show = (
    reply: FastifyReply,
    s: ConsoleSession,
    path: string,
    title: string,
    a: ApiAnswer,
    body: (b: Json) => Html,
    live = false,
  ) =>
    a.status >= 400
      ? send(reply, a.status, layout(s, path, title, errorBox(a)))
      : send(reply, 200, layout(s, path, title, body(a.body), live));

  app.get('/console/', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    // A person who may only approve lands on their approvals.
    if (!s.roles.viewer) return reply.redirect('/console/approvals', 303);
    return show(reply, s, '/console/', 'Now', await api(req, s, 'GET', '/console/api/now'), nowPage, true);
  });

  const TaskFilter = z.strictObject({
    agent: z.string().max(2048).optional(),
    user: z.string().max(255).optional(),
    status: z.enum(['', 'open', 'completed', 'failed', 'cancelled', 'revoked']).optional(),
  });
  app.get('/console/tasks', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const f = parse(TaskFilter, req.query);
    const a = await api(req, s, 'GET', `/console/api/tasks${q({ ...f, limit: '200' })}`);
    return show(reply, s, '/console/tasks', 'Tasks', a, (b) => tasksPage((b.tasks ?? []) as Json[], f), true);
  });

  app.get('/console/tasks/:id', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const { id } = parse(IdParams, req.params);
    const a = await api(req, s, 'GET', `/console/api/tasks/${id}`);
    return show(reply, s, '/console/tasks', `Task ${id}`, a, (b) => taskPage(id, b, s), true);
  });

  // Revoking is two steps: this confirmation page, then its form's POST.
  app.get('/console/tasks/:id/revoke', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const { id } = parse(IdParams, req.params);
    if (!s.roles.admin) {
      return show(
        reply,
        s,
        '/console/tasks',
        'Revoke',
        {
          status: 403,
          body: { code: 'TASKPASS_CONSOLE_FORBIDDEN', message: 'this action is for console admins' },
        },
        () => html``,
      );
    }
    return send(
      reply,
      200,
      layout(
        s,
        '/console/tasks',
        `Revoke task ${id}?`,
        html`<p>Every token of this task stops working at every verifier on the feed. This cannot be undone.</p>
<form method="post" action="/console/tasks/${id}/revoke" data-confirm="Revoke task ${id}?">${csrfField(s)}
<label>Reason <input name="reason" maxlength="1024"></label><button>Revoke</button> <a href="/console/tasks/${id}">Cancel</a></form>`,
      ),
    );
  });

  app.post('/console/tasks/:id/revoke', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const { id } = parse(IdParams, req.params);
    const f = parse(RevokeForm, req.body);
    const a = await api(
      req,
      s,
      'POST',
      `/console/api/tasks/${id}/revoke`,
      f.reason ? { reason: f.reason } : {},
    );
    if (a.status >= 400) return show(reply, s, '/console/tasks', 'Revoke', a, () => html``);
    return reply.redirect(`/console/tasks/${id}`, 303);
  });

  app.get('/console/approvals', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const a = await api(req, s, 'GET', '/console/api/approvals');
    return show(
      reply,
      s,
      '/console/approvals',
      'Approvals',
      a,
      (b) => {
        const list = (b.approvals ?? []) as Json[];
        return list.length
          ? html`${list.map((x) => approvalBlock(x, s, false))}`
          : html`<p>Nothing waits for you.</p>`;
      },
      true,
    );
  });

  app.get('/console/approvals/:id', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const { id } = parse(IdParams, req.params);
    const a = await api(req, s, 'GET', `/console/api/approvals/${id}`);
    return show(reply, s, '/console/approvals', `Approval ${id}`, a, (b) => approvalBlock(b, s, true), true);
  });

  app.post('/console/approvals/:id/decision', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const { id } = parse(IdParams, req.params);
    const f = parse(DecideForm, req.body);
    const a = await api(req, s, 'POST', `/console/api/approvals/${id}/decision`, {
      decision: f.decision,
      ...(f.comment ? { comment: f.comment } : {}),
    });
    if (a.status >= 400) return show(reply, s, '/console/approvals', `Approval ${id}`, a, () => html``);
    return reply.redirect(`/console/approvals/${id}`, 303);
  });

  app.get('/console/templates', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const a = await api(req, s, 'GET', '/console/api/templates');
    return show(reply, s, '/console/templates', 'Templates', a, (b) => templatesPage(b, s));
  });

  app.post('/console/templates', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const f = parse(z.discriminatedUnion('form', [CeilingForm, WhatIfForm]), req.body);
    const claims = jsonField(f.user_claims, 'user claims');
    const args =
      f.form === 'what-if' ? jsonField(f.arguments, 'arguments') : { ok: true as const, v: undefined };
    let result: ApiAnswer;
    if (!claims.ok) result = claims.a;
    else if (!args.ok) result = args.a;
    else {
      const user = f.user_sub
        ? { iss: f.user_iss ?? '', sub: f.user_sub, claims: claims.v ?? {} }
        : undefined;
      result =
        f.form === 'ceiling'
          ? await api(req, s, 'POST', '/console/api/templates/ceiling', {
              agent: f.agent,
              ...(user ? { user } : {}),
            })
          : await api(req, s, 'POST', '/console/api/templates/what-if', {
              agent: f.agent,
              ...(user ? { user } : {}),
              audience: f.audience,
              tool: f.tool,
              action: f.action,
              resource: f.resource,
              ...(args.v !== undefined ? { arguments: args.v } : {}),
            });
    }
    const box =
      result.status >= 400
        ? errorBox(result)
        : f.form === 'ceiling'
          ? html`<section class="result"><h2>Ceiling of ${f.agent}</h2><p>${result.body.admits ? 'admitted' : 'not admitted'}</p><pre>${JSON.stringify(result.body.ceiling, null, 2)}</pre></section>`
          : html`<section class="result"><h2>What if: ${str(result.body.decision)}</h2><p>Template: ${str(result.body.template) || '(none)'}</p><p>${str(result.body.reason)}</p></section>`;
    const t = await api(req, s, 'GET', '/console/api/templates');
    return show(reply, s, '/console/templates', 'Templates', t, (b) => templatesPage(b, s, box));
  });

  app.get('/console/tokens', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    if (!s.roles.viewer) {
      return show(
        reply,
        s,
        '/console/tokens',
        'Token explain',
        {
          status: 403,
          body: {
            code: 'TASKPASS_CONSOLE_FORBIDDEN',
            message: 'this page is for console admins and viewers',
          },
        },
        () => html``,
      );
    }
    return send(reply, 200, layout(s, '/console/tokens', 'Token explain', explainPage(s)));
  });

  app.post('/console/tokens', async (req, reply) => {
    const s = await pageSession(req, reply);
    if (!s) return reply;
    const f = parse(ExplainForm, req.body);
    const a = await api(req, s, 'POST', '/console/api/tokens/explain', { token: f.token.trim() });
    if (a.status === 403) return show(reply, s, '/console/tokens', 'Token explain', a, () => html``);
    return send(
      reply,
      a.status >= 400 ? a.status : 200,
      layout(s, '/console/tokens', 'Token explain', explainPage(s, a)),
    );
  });
}
