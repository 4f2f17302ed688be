// scripts/go-tools.mjs: one build of a cached Go tool at a time (SPIRE, OPA, Vault, the Go MCP
// server). A second `npm test` or demo waits for the first one's build; a lock left by a build that
// died is taken over.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
// @ts-expect-error: a plain .mjs script without types
import { buildLock } from '../scripts/go-tools.mjs';

type Release = () => void;
const take = buildLock as (file: string, label: string, log: (s: string) => void) => Promise<Release>;

test('a second taker waits until the first releases, and says whom it waits for', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'taskpass-lock-')), 'building.lock');
  const release = await take(file, 'X', () => undefined);
  assert.equal(readFileSync(file, 'utf8'), String(process.pid));
  const said: string[] = [];
  const second: { release?: Release } = {};
  const waiting = take(file, 'X', (s) => said.push(s)).then((r) => {
    second.release = r;
  });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(second.release, undefined, 'still waiting while the first holds the lock');
  assert.match(said.join(''), new RegExp(`pid ${process.pid}\\) is building X; waiting`));
  release();
  await waiting;
  const taken = second.release as Release | undefined; // set by the callback meanwhile
  assert.ok(taken && existsSync(file), 'taken once released');
  taken();
  assert.ok(!existsSync(file));
});

test('a lock whose process is gone is taken over at once', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'taskpass-lock-')), 'building.lock');
  const child = spawn(process.execPath, ['-e', '']);
  const dead = child.pid!;
  await new Promise((r) => child.on('exit', r));
  writeFileSync(file, String(dead));
  const release = await take(file, 'X', () => undefined);
  assert.equal(readFileSync(file, 'utf8'), String(process.pid));
  release();
});
