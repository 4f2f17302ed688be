// The wire language lives in one package (@taskpass/contract, docs/decisions.md "One room for the
// wire contract"). These checks read the sources: a second copy of a wire constant, an import of
// the verifier by the agent, or a dependency of the contract on another package fails here.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

function sources(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(join(root, dir))) {
    const p = join(dir, name);
    if (statSync(join(root, p)).isDirectory()) sources(p, out);
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}
const read = (p: string) => readFileSync(join(root, p), 'utf8');
// Code only: comments may name a key or quote the grammar.
const code = (src: string) => src.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(?<![:'"`])\/\/.*$/gm, '');
const imports = (src: string) => [...src.matchAll(/from '([^']+)'/g)].map((m) => m[1]!);

test('the contract depends on nothing but node: built-ins', () => {
  const pkg = JSON.parse(read('contract/package.json'));
  assert.deepEqual(pkg.dependencies ?? {}, {});
  for (const f of sources('contract/src')) {
    for (const spec of imports(read(f))) {
      assert.ok(spec.startsWith('node:') || spec.startsWith('./'), `${f} imports ${spec}`);
    }
  }
});

test('broker, verifier and agent plugin import the contract; the agent does not import the verifier', () => {
  for (const pkg of ['broker', 'verifier', 'agent-plugin']) {
    const json = JSON.parse(read(`${pkg}/package.json`));
    assert.equal(json.dependencies['@taskpass/contract'], '0.1.0', `${pkg}/package.json`);
  }
  assert.equal(JSON.parse(read('agent-plugin/package.json')).dependencies['@taskpass/verifier'], undefined);
  for (const f of sources('agent-plugin/src')) {
    for (const spec of imports(read(f))) {
      assert.ok(!spec.startsWith('@taskpass/verifier'), `${f} imports ${spec}`);
    }
  }
});

// Each pattern is a definition that must exist only in contract/src.
const WIRE_DEFINITIONS: [string, RegExp][] = [
  ['a _meta key', /['"]dev\.taskpass\/[a-z]+['"]/],
  ['the feed version header', /['"]taskpass-feed-version['"]/],
  ['a feed event name', /['"](snapshot-page|heartbeat)['"]/],
  ['the action classes', /['"]read['"]\s*(\||,)\s*['"]write['"]\s*(\||,)\s*['"]admin['"]/],
  ['the resource character set', /0123456789\._~:@\+=-['"]|\/\^\[A-Za-z0-9\._~:@\+=-\]/],
  [
    'a certificate thumbprint',
    /\.raw\b[^;]*;[^;]*createHash\(['"]sha256['"]\)|createHash\(['"]sha256['"]\)[^;]*\.raw\b/,
  ],
  ['the Revocation type', /export (interface|type) Revocation\b/],
  ['the Action type', /export type Action\b/],
  ['the CeilingEntry type', /export interface CeilingEntry\b/],
  ['the authorization detail type', /export type AuthorizationDetail\b/],
];

test('no package but the contract defines a piece of the wire language', () => {
  const offenders: string[] = [];
  for (const dir of ['broker/src', 'verifier/src', 'agent-plugin/src', 'spiffe/src']) {
    for (const f of sources(dir)) {
      const src = code(read(f));
      for (const [what, re] of WIRE_DEFINITIONS) {
        if (re.test(src)) offenders.push(`${relative('.', f)}: ${what}`);
      }
    }
  }
  assert.deepEqual(offenders, []);
});
