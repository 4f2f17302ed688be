import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { compilePattern, parseSpiffeId, validateResource } from '../src/policy/pattern.ts';

const res = (p: string) => {
  const r = compilePattern(p, 'resource');
  if (!r.ok) throw new Error(r.reason);
  return r.pattern;
};
const agentPat = (p: string) => {
  const r = compilePattern(p, 'agent');
  if (!r.ok) throw new Error(r.reason);
  return r.pattern;
};
const alice = { sub: 'alice', claims: { tenant: 'acme', team: 'a/*', dots: '..', star: '*', brace: '{x}' } };

describe('validateResource', () => {
  test('accepts the grammar', () => {
    for (const s of ['tickets', 'tickets/T-1', 'a.b/c~d/e:f@g+h=i-j', 'x/..y/y..', `a/${'b'.repeat(510)}`]) {
      assert.equal(validateResource(s).ok, true, s);
    }
  });
  test('rejects escapes, encodings, look-alikes and over-long input', () => {
    const bad = [
      '',
      '/tickets',
      'tickets/',
      'tickets//1',
      '.',
      '..',
      'tickets/../admin',
      'tickets/1/../../x',
      'tickets/./1',
      'tickets%2F..',
      'tickets%2e%2e',
      'tickets\\..\\admin',
      'tickets/1 ',
      'tickets/1\n',
      'tickets/1\u0000',
      'tickets\u2215admin', // DIVISION SLASH
      'tickets\uff0fadmin', // FULLWIDTH SOLIDUS
      'tickets/\u0131', // dotless i
      'tickets/Т-1', // Cyrillic Te
      'tickets/*',
      'tickets/{user.sub}',
      'a'.repeat(513),
      `tickets/${'é'.repeat(300)}`,
    ];
    for (const s of bad) {
      const r = validateResource(s);
      assert.equal(r.ok, false, JSON.stringify(s));
      if (!r.ok) assert.equal(r.code, 'TASKPASS_INVALID_RESOURCE');
    }
  });
  test('exactly 512 bytes is fine, 513 is not', () => {
    assert.equal(validateResource('a'.repeat(512)).ok, true);
    assert.equal(validateResource('a'.repeat(513)).ok, false);
  });
  test('non-string input is rejected, not thrown on', () => {
    assert.equal(validateResource(undefined as unknown as string).ok, false);
  });
});

describe('resource patterns', () => {
  test('literal, *, prefix* and final **', () => {
    assert.equal(res('tickets').match('tickets'), true);
    assert.equal(res('tickets').match('tickets/1'), false);
    assert.equal(res('tickets/*').match('tickets/1'), true);
    assert.equal(res('tickets/*').match('tickets'), false);
    assert.equal(res('tickets/*').match('tickets/1/2'), false);
    assert.equal(res('tickets/T-*').match('tickets/T-1'), true);
    assert.equal(res('tickets/T-*').match('tickets/T-'), false, 'prefix* needs at least one more character');
    assert.equal(res('tickets/T-*').match('tickets/X-1'), false);
    assert.equal(res('tickets/**').match('tickets/1'), true);
    assert.equal(res('tickets/**').match('tickets/1/2/3'), true);
    assert.equal(res('tickets/**').match('tickets'), false, '** is one or more segments');
    assert.equal(res('*/x').match('a/x'), true);
    assert.equal(res('**').match('anything/at/all'), true);
  });
  test('escape attempts never match', () => {
    const p = res('tickets/**');
    for (const s of [
      'tickets/../admin',
      'tickets/1/../../x',
      'tickets%2F..',
      'tickets/./x',
      'tickets\u2215x',
    ]) {
      assert.equal(p.match(s), false, s);
    }
    assert.equal(res('tickets/*').match('tickets/..'), false);
    assert.equal(res('tickets/*').match('tickets/.'), false);
  });
  test('user placeholders substitute verified single-segment values only', () => {
    assert.equal(res('users/{user.sub}/**').match('users/alice/notes/1', { user: alice }), true);
    assert.equal(res('users/{user.sub}/**').match('users/bob/notes/1', { user: alice }), false);
    assert.equal(res('t/{user.tenant}-*').match('t/acme-1', { user: alice }), true);
    assert.equal(res('t/x{user.tenant}y').match('t/xacmey', { user: alice }), true);
    // Injection: claim values with '/', '*', '{', '..' make the pattern match nothing.
    assert.equal(res('t/{user.team}').match('t/a/b', { user: alice }), false);
    assert.equal(res('t/{user.team}').match('t/a/*', { user: alice }), false);
    assert.equal(res('t/{user.star}').match('t/anything', { user: alice }), false);
    assert.equal(res('t/{user.star}').match('t/*', { user: alice }), false);
    assert.equal(res('t/{user.dots}/x').match('t/../x', { user: alice }), false);
    assert.equal(res('t/{user.brace}').match('t/{x}', { user: alice }), false);
    // Missing claim, non-string claim, no user: no match.
    assert.equal(res('t/{user.nope}').match('t/x', { user: alice }), false);
    assert.equal(res('t/{user.n}').match('t/1', { user: { sub: 'a', claims: { n: 1 } } }), false);
    assert.equal(res('t/{user.sub}').match('t/alice'), false);
    // Prototype keys are not claims.
    assert.equal(res('t/{user.constructor}').match('t/Object', { user: alice }), false);
    // A dot prefix plus a dot value cannot spell "..".
    assert.equal(res('t/.{user.d}').match('t/..', { user: { sub: 's', claims: { d: '.' } } }), false);
  });
  test('a unicode or over-long claim value never matches', () => {
    const u = { sub: 'аlice', claims: { long: 'x'.repeat(600) } }; // Cyrillic а
    assert.equal(res('u/{user.sub}').match('u/alice', { user: u }), false);
    assert.equal(res('u/{user.long}').match(`u/${'x'.repeat(600)}`, { user: u }), false);
  });
  test('{agent.id} expands to the agent path, literally; {agent.name} to its last segment', () => {
    const agent = 'spiffe://taskpass.local/agents/support-bot';
    assert.equal(res('scratch/{agent.id}/**').match('scratch/agents/support-bot/x', { agent }), true);
    assert.equal(res('scratch/{agent.id}/**').match('scratch/agents/other/x', { agent }), false);
    assert.equal(res('scratch/{agent.id}').match('scratch/agents/support-bot', { agent }), true);
    assert.equal(res('scratch/{agent.id}').match('scratch/agents', { agent }), false);
    assert.equal(res('bots/{agent.name}').match('bots/support-bot', { agent }), true);
    assert.equal(res('bots/{agent.name}').match('bots/support-bot', {}), false);
    assert.equal(res('bots/{agent.id}').render({ agent }), 'bots/agents/support-bot');
  });
  test('render substitutes or gives up', () => {
    assert.equal(res('users/{user.sub}/*').render({ user: alice }), 'users/alice/*');
    assert.equal(res('users/{user.team}/*').render({ user: alice }), undefined);
    assert.equal(res('tickets/**').render(), 'tickets/**');
  });
  test('invalid patterns are rejected at compile time with a reason', () => {
    const bad: [string, RegExp][] = [
      ['', /empty/],
      ['a//b', /empty segment/],
      ['/a', /empty segment/],
      ['a/', /empty segment/],
      ['a/**/b', /final/],
      ['a/b**', /whole/],
      ['a/*b', /end of a segment/],
      ['a/{user.sub', /unterminated/],
      ['a/{env.HOME}', /unknown placeholder/],
      ['a/{user.}', /unknown placeholder/],
      ['a/{user.a/b}', /unterminated|unknown/],
      ['a/x{agent.id}', /whole segment/],
      ['a/../b', /"\." and "\.\."/],
      ['a/./b', /"\." and "\.\."/],
      ['a/%2F', /not allowed/],
      ['a/é', /not allowed/],
      ['a/(x|y)+', /not allowed/],
      ['x'.repeat(513), /longer/],
    ];
    for (const [p, re] of bad) {
      const r = compilePattern(p, 'resource');
      assert.equal(r.ok, false, p);
      if (!r.ok) assert.match(r.reason, re, p);
    }
  });
  test('matching is linear: long inputs are answered quickly', () => {
    const p = res('a/*/*/*/*/*/*/*/**');
    const long = Array.from({ length: 250 }, () => 'a').join('/');
    const t0 = performance.now();
    for (let i = 0; i < 2000; i++) p.match(long);
    assert.ok(performance.now() - t0 < 1000);
    assert.equal(p.match(long), true);
    // A hostile 1 MB string is rejected by length before any scanning.
    const t1 = performance.now();
    assert.equal(p.match('a/'.repeat(500_000)), false);
    assert.ok(performance.now() - t1 < 100);
  });
});

describe('agent patterns', () => {
  test('trust domain is a literal first segment; path uses the pattern language', () => {
    const p = agentPat('spiffe://taskpass.local/agents/support/*');
    assert.equal(p.match('spiffe://taskpass.local/agents/support/1'), true);
    assert.equal(p.match('spiffe://taskpass.local/agents/support'), false);
    assert.equal(p.match('spiffe://taskpass.local/agents/support/1/2'), false);
    assert.equal(p.match('spiffe://other.local/agents/support/1'), false);
    assert.equal(p.match('spiffe://taskpass.local.evil/agents/support/1'), false);
    assert.equal(p.match('SPIFFE://taskpass.local/agents/support/1'), false);
    assert.equal(p.match('spiffe://taskpass.local/agents/support/1?x'), false);
    assert.equal(p.match('spiffe://taskpass.local/agents/support/..'), false);
    assert.equal(p.match('spiffe://taskpass.local/agents/support/1/'), false);
    assert.equal(p.match('spiffe://user@taskpass.local/agents/support/1'), false);
    const all = agentPat('spiffe://taskpass.local/agents/**');
    assert.equal(all.match('spiffe://taskpass.local/agents/a/b/c'), true);
    assert.equal(all.match('spiffe://taskpass.local/agents'), false);
    assert.equal(
      agentPat('spiffe://taskpass.local/agents/bot-*').match('spiffe://taskpass.local/agents/bot-7'),
      true,
    );
  });
  test('invalid agent patterns', () => {
    for (const p of [
      'taskpass.local/agents/x',
      'spiffe://*/agents/x',
      'spiffe://Taskpass.local/agents/x',
      'spiffe://taskpass.local',
      'spiffe://taskpass.local/',
      'spiffe://taskpass.local/agents/{user.sub}',
      'spiffe://taskpass.local/agents/{agent.id}',
      'spiffe://taskpass.local/agents/a:b',
    ]) {
      assert.equal(compilePattern(p, 'agent').ok, false, p);
    }
  });
  test('parseSpiffeId', () => {
    assert.deepEqual(parseSpiffeId('spiffe://td/a/b'), { trustDomain: 'td', path: ['a', 'b'] });
    for (const s of [
      'spiffe://td',
      'spiffe://td/',
      'spiffe://td//a',
      'spiffe://TD/a',
      'spiffe://td/a b',
      'https://td/a',
    ]) {
      assert.equal(parseSpiffeId(s), undefined, s);
    }
    assert.equal(parseSpiffeId(`spiffe://td/${'a'.repeat(2100)}`), undefined);
    // Parsed once and shared: the same frozen value every time, and asked again, still refused.
    const a = parseSpiffeId('spiffe://td/agents/x')!;
    assert.equal(parseSpiffeId('spiffe://td/agents/x'), a);
    assert.ok(Object.isFrozen(a) && Object.isFrozen(a.path));
    assert.throws(() => (a.path as string[]).push('y'));
    assert.equal(parseSpiffeId('spiffe://TD/x'), undefined);
    assert.equal(parseSpiffeId('spiffe://TD/x'), undefined);
    // Past its bound the memo starts over; answers stay the same.
    for (let i = 0; i < 1100; i++) parseSpiffeId(`spiffe://td/agents/n${i}`);
    assert.deepEqual(parseSpiffeId('spiffe://td/agents/x'), { trustDomain: 'td', path: ['agents', 'x'] });
  });
});
