#!/usr/bin/env node
// Builds spire-server and spire-agent from the Go module in tools/spire into a versioned cache
// outside the checkout, and reuses that build while the pinned version and go.sum are unchanged.
//
//   node scripts/build-spire.mjs          build if needed, print the bin directory on stdout
//   node scripts/build-spire.mjs --force  rebuild even when cached
//
// Cache root: $TASKPASS_CACHE_DIR, else $XDG_CACHE_HOME/taskpass, else ~/.cache/taskpass.
// Progress goes to stderr so callers can capture the bin path from stdout.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const moduleDir = join(root, 'tools', 'spire');
const TOOLS = ['spire-server', 'spire-agent'];

export function spireVersion() {
  const gomod = readFileSync(join(moduleDir, 'go.mod'), 'utf8');
  const m = gomod.match(/github\.com\/spiffe\/spire (v\d+\.\d+\.\d+)/);
  if (!m) throw new Error('tools/spire/go.mod does not pin github.com/spiffe/spire');
  return m[1];
}

export function spireCacheDir() {
  const base =
    process.env.TASKPASS_CACHE_DIR ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'taskpass');
  // The key covers go.sum too: a changed dependency graph is a different build.
  const sum = createHash('sha256')
    .update(readFileSync(join(moduleDir, 'go.sum')))
    .digest('hex')
    .slice(0, 12);
  return join(base, `spire-${spireVersion()}-${sum}`);
}

/** Returns the directory holding spire-server and spire-agent, building them if needed. */
export async function ensureSpire({ force = false, log = (s) => process.stderr.write(s) } = {}) {
  const dir = spireCacheDir();
  const bin = join(dir, 'bin');
  const stamp = join(dir, 'BUILT');
  if (!force && existsSync(stamp) && TOOLS.every((t) => existsSync(join(bin, t)))) return bin;

  const go = spawnSync('go', ['version'], { encoding: 'utf8' });
  if (go.status !== 0)
    throw new Error('Go is required to build SPIRE (https://go.dev/dl); `go version` failed');
  log(`Building SPIRE ${spireVersion()} (${go.stdout.trim()}) into ${dir}\n`);
  log('The first build compiles ~2,300 Go packages and takes a few minutes; later runs reuse it.\n');

  const tmp = `${bin}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const started = Date.now();
  let built = 0;
  let last = '';
  const tick = setInterval(() => {
    const s = Math.round((Date.now() - started) / 1000);
    log(`  … ${s}s, ${built} packages compiled${last ? ` (last: ${last})` : ''}\n`);
  }, 10_000);
  try {
    await new Promise((res, rej) => {
      const child = spawn(
        'go',
        [
          'build',
          '-v',
          '-trimpath',
          '-o',
          tmp + '/',
          ...TOOLS.map((t) => `github.com/spiffe/spire/cmd/${t}`),
        ],
        {
          cwd: moduleDir,
          // cgo is mandatory: SPIRE's sqlite datastore is mattn/go-sqlite3.
          // GOFLAGS=-mod=mod is not used: go.sum in the repo is the source of truth.
          env: { ...process.env, CGO_ENABLED: '1', GOFLAGS: process.env.GOFLAGS ?? '' },
          stdio: ['ignore', 'inherit', 'pipe'],
        },
      );
      let errTail = '';
      child.stderr.on('data', (d) => {
        for (const line of d.toString().split('\n')) {
          if (!line) continue;
          if (/^[\w.-]+(\/[\w.@~+-]+)*$/.test(line)) {
            built++;
            last = line.length > 60 ? `…${line.slice(-57)}` : line;
          } else {
            errTail = (errTail + line + '\n').slice(-4000);
          }
        }
      });
      child.on('error', rej);
      child.on('exit', (code) =>
        code === 0 ? res() : rej(new Error(`go build failed (exit ${code}):\n${errTail}`)),
      );
    });
  } finally {
    clearInterval(tick);
  }
  rmSync(bin, { recursive: true, force: true });
  renameSync(tmp, bin);
  writeFileSync(stamp, `${spireVersion()} built ${new Date().toISOString()}\n`);
  log(`SPIRE ${spireVersion()} built in ${Math.round((Date.now() - started) / 1000)}s → ${bin}\n`);
  return bin;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  ensureSpire({ force: process.argv.includes('--force') }).then(
    (bin) => process.stdout.write(`${bin}\n`),
    (err) => {
      process.stderr.write(`error: ${err.message}\n`);
      process.exit(1);
    },
  );
}
