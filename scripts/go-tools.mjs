// Builds a Go module of tools/ into a versioned cache outside the checkout and reuses that build
// while its key is unchanged: <cache>/<name>-<version>-<hash of go.sum and the keyed files>.
// build-spire.mjs (SPIRE) and build-notes-go.mjs (the guard's Go MCP test server) are callers.
//
// Cache root: $TASKPASS_CACHE_DIR, else $XDG_CACHE_HOME/taskpass, else ~/.cache/taskpass.
// Progress goes to stderr (through `log`) so callers can print the bin path on stdout.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/** The cache root shared by every Go tool. */
export function toolsCacheRoot() {
  return (
    process.env.TASKPASS_CACHE_DIR ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'taskpass')
  );
}

/** The version a go.mod pins for a module path, e.g. `v1.13.3`. */
export function pinnedVersion(moduleDir, modulePath) {
  const gomod = readFileSync(join(moduleDir, 'go.mod'), 'utf8');
  const escaped = modulePath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  const m = gomod.match(new RegExp(`${escaped} (v\\d+\\.\\d+\\.\\d+)`));
  if (!m) throw new Error(`${join(moduleDir, 'go.mod')} does not pin ${modulePath}`);
  return m[1];
}

/**
 * The cache directory of one build. The key covers go.sum (a changed dependency graph is a
 * different build) and `keyFiles` (the module's own sources, when they live in the repository).
 */
export function goToolCacheDir({ name, version, moduleDir, keyFiles = [] }) {
  const h = createHash('sha256');
  h.update(readFileSync(join(moduleDir, 'go.sum')));
  for (const f of keyFiles) h.update(readFileSync(join(moduleDir, f)));
  return join(toolsCacheRoot(), `${name}-${version}-${h.digest('hex').slice(0, 12)}`);
}

/**
 * Returns the bin directory holding `binaries`, building `packages` with `go build` if needed.
 *
 * @param {object} o
 * @param {string} o.name        cache name and what progress lines call it, e.g. `spire`
 * @param {string} o.label       human name, e.g. `SPIRE v1.13.3`
 * @param {string} o.version     pinned version, part of the cache key
 * @param {string} o.moduleDir   the Go module directory (go.mod, go.sum)
 * @param {string[]} o.packages  what `go build` gets (import paths or `.`)
 * @param {string[]} o.binaries  the files expected in the bin directory
 * @param {string[]} [o.keyFiles]  more files of the module that key the cache
 * @param {Record<string,string>} [o.env]  extra environment of the build
 * @param {string} [o.note]      a line printed before a fresh build (how long it takes)
 * @param {boolean} [o.force]    rebuild even when cached
 * @param {(s: string) => void} [o.log]
 */
export async function ensureGoTool(o) {
  const log = o.log ?? ((s) => process.stderr.write(s));
  const dir = goToolCacheDir(o);
  const bin = join(dir, 'bin');
  const stamp = join(dir, 'BUILT');
  const cached = () => existsSync(stamp) && o.binaries.every((t) => existsSync(join(bin, t)));
  if (!o.force && cached()) return bin;
  // One build at a time per cache entry: a second `npm test` or demo started meanwhile waits for
  // the first one's build instead of compiling the same packages again beside it.
  const release = await buildLock(join(dir, 'building.lock'), o.label, log);
  try {
    if (!o.force && cached()) return bin;
    return await build(o, { log, dir, bin, stamp });
  } finally {
    release();
  }
}

const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
};

/** Takes `file` exclusively (waiting while a live process holds it); returns its release. */
export async function buildLock(file, label, log) {
  mkdirSync(dirname(file), { recursive: true });
  let waitingFor = 0;
  for (;;) {
    try {
      const fd = openSync(file, 'wx');
      writeFileSync(fd, String(process.pid));
      closeSync(fd);
      return () => rmSync(file, { force: true });
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue; // released meanwhile
    }
    const holder = Number.parseInt(text, 10);
    if (text === '') {
      await new Promise((r) => setTimeout(r, 200)); // taken a moment ago, pid not written yet
      continue;
    }
    if (!Number.isInteger(holder) || !alive(holder)) {
      rmSync(file, { force: true }); // left by a build that died
      continue;
    }
    if (holder !== waitingFor) {
      waitingFor = holder;
      log(`Another process (pid ${holder}) is building ${label}; waiting for it…\n`);
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function build(o, { log, dir, bin, stamp }) {
  const go = spawnSync('go', ['version'], { encoding: 'utf8' });
  if (go.status !== 0)
    throw new Error(`Go is required to build ${o.label} (https://go.dev/dl); \`go version\` failed`);
  log(`Building ${o.label} (${go.stdout.trim()}) into ${dir}\n`);
  if (o.note) log(`${o.note}\n`);

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
      const outArgs = o.binaries.length === 1 ? join(tmp, o.binaries[0]) : `${tmp}/`;
      const child = spawn('go', ['build', '-v', '-trimpath', '-o', outArgs, ...o.packages], {
        cwd: o.moduleDir,
        env: { ...process.env, ...o.env },
        stdio: ['ignore', 'inherit', 'pipe'],
      });
      let errTail = '';
      child.stderr.on('data', (d) => {
        for (const line of d.toString().split('\n')) {
          if (!line) continue;
          if (/^[\w.-]+(\/[\w.@~+-]+)*$/.test(line)) {
            built++;
            last = line.length > 60 ? `…${line.slice(-57)}` : line;
          } else {
            errTail = `${errTail}${line}\n`.slice(-4000);
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
  writeFileSync(stamp, `${o.label} built ${new Date().toISOString()}\n`);
  log(`${o.label} built in ${Math.round((Date.now() - started) / 1000)}s → ${bin}\n`);
  return bin;
}
