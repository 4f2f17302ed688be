// The packages as a consumer gets them from npm: every publishable workspace is built (`tsc -b`),
// packed (`npm pack`), checked with publint and @arethetypeswrong/cli, and installed from its
// tarball into a scratch project outside the repository (os.tmpdir()), together with both MCP SDK
// generations from the registry. There, with plain `node` (no tsx, no `taskpass:source` condition)
// and only the installed packages (test/consumer/src), `tsc` type-checks the consumer (strict,
// nodenext), the `taskpass` bin answers, the installed broker serves on real SPIRE, and agents on
// both MCP client generations call MCP servers on both server generations through it — one call
// allowed, one denied, one without a token.
//
// The tarballs are installed with --ignore-scripts, so better-sqlite3 (the broker's native SQLite
// store) is not compiled from source in every run — that would take longer than the rest of this
// test. The consumer pins the repository's better-sqlite3 version and takes its compiled addon from
// the repository's node_modules (same version, same Node): everything else runs from the tarballs.
//
// A new workspace package is picked up by itself (every non-private workspace is packed); a new
// MCP server or client variant is one entry in SERVERS or AGENTS plus its file in test/consumer/src.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { generateKek } from '@taskpass/broker';
import { type SpireHarness, startSpire } from '../harness/spire.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const readJson = (p: string) => JSON.parse(readFileSync(p, 'utf8'));
const rootPkg = readJson(join(root, 'package.json'));

/** Every workspace that is published (not `private`), in build order as package.json lists them. */
const PUBLISHED: { dir: string; name: string }[] = (rootPkg.workspaces as string[])
  .map((dir) => ({ dir, pkg: readJson(join(root, dir, 'package.json')) }))
  .filter(({ pkg }) => pkg.private !== true)
  .map(({ dir, pkg }) => ({ dir, name: pkg.name as string }));

/** A version range the repository itself uses for a third-party package. */
function rangeOf(name: string): string {
  for (const dir of ['.', ...(rootPkg.workspaces as string[])]) {
    const pkg = readJson(join(root, dir, 'package.json'));
    const v = pkg.dependencies?.[name] ?? pkg.devDependencies?.[name];
    if (v) return v;
  }
  throw new Error(`no workspace depends on ${name}`);
}

/** The MCP servers and agents (files of test/consumer/src compiled to dist/); each agent calls each server. */
const SERVERS = [
  {
    name: 'server on SDK 1.x (node:https)',
    entry: 'dist/sdk1-server.js',
    sdk: '@modelcontextprotocol/sdk',
    major: 1,
  },
  {
    name: 'server on SDK 2.x (/node)',
    entry: 'dist/sdk2-node-server.js',
    sdk: '@modelcontextprotocol/node',
    major: 2,
  },
  {
    name: 'server on SDK 2.x (/express)',
    entry: 'dist/sdk2-express-server.js',
    sdk: '@modelcontextprotocol/express',
    major: 2,
  },
];
const AGENTS = [
  { name: 'agent on SDK 1.x', entry: 'dist/agent-sdk1.js', sdk: '@modelcontextprotocol/sdk', major: 1 },
  { name: 'agent on SDK 2.x', entry: 'dist/agent-sdk2.js', sdk: '@modelcontextprotocol/client', major: 2 },
];

/** What the consumer project installs from the registry besides the tarballs. */
const CONSUMER_DEPS: Record<string, string> = Object.fromEntries(
  [
    '@modelcontextprotocol/sdk',
    '@modelcontextprotocol/server',
    '@modelcontextprotocol/node',
    '@modelcontextprotocol/express',
    '@modelcontextprotocol/client',
    'express',
    'undici',
    'zod',
  ].map((name) => [name, rangeOf(name)]),
);
/** The repository's better-sqlite3, whose compiled addon the consumer reuses (see the top). */
const SQLITE_DIR = join(root, 'node_modules', 'better-sqlite3');
const SQLITE_VERSION = readJson(join(SQLITE_DIR, 'package.json')).version as string;
const CONSUMER_DEV_DEPS: Record<string, string> = {
  typescript: rangeOf('typescript'),
  '@types/node': rangeOf('@types/node'),
  // The consumer's tsc checks every .d.ts (skipLibCheck: false, so ours are checked too); the MCP
  // SDK 1.x's own declarations then need express's types (and DOM's HeadersInit, see tsconfig).
  '@types/express': rangeOf('@types/express'),
};

const TD = 'taskpass.local';
const ISSUER = 'https://broker.taskpass.local:8443';
const AUDIENCE = 'https://notes.taskpass.local/mcp';
const IDS = {
  broker: `spiffe://${TD}/broker`,
  server: `spiffe://${TD}/notes`,
  agent: `spiffe://${TD}/agents/notes-bot`,
};

// Plain node for every process the consumer runs: nothing of the test runner's loader or conditions.
const plainEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NODE_OPTIONS;
  return env;
};

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = plainEnv()) {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} (in ${cwd}) failed:\n${out.slice(-4000)}`);
  return r.stdout;
}

/** Starts a long-running child and resolves with it and the first stdout line `matches` accepts. */
function startChild(
  what: string,
  args: string[],
  cwd: string,
  env: NodeJS.ProcessEnv,
  matches: (line: Record<string, unknown>) => boolean,
): Promise<{ child: ChildProcess; line: Record<string, unknown> }> {
  const child = spawn(process.execPath, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  return new Promise((resolvePromise, reject) => {
    const fail = (why: string) => {
      child.kill('SIGKILL');
      reject(new Error(`${what} ${why}\nstdout: ${out.slice(-3000)}\nstderr: ${err.slice(-3000)}`));
    };
    const timer = setTimeout(() => fail('did not start within 60 s'), 60_000);
    child.stderr?.on('data', (d) => {
      err += d;
    });
    child.stdout?.on('data', (d) => {
      out += d;
      for (const l of out.split('\n')) {
        try {
          const j = JSON.parse(l);
          if (j && typeof j === 'object' && matches(j)) {
            clearTimeout(timer);
            resolvePromise({ child, line: j });
            return;
          }
        } catch {}
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      fail(`exited with ${code}`);
    });
  });
}

describe('packages as installed from npm (plain node, outside the repository)', () => {
  const work = mkdtempSync(join(tmpdir(), 'taskpass-packages-'));
  const packDir = join(work, 'tarballs');
  const consumer = join(work, 'consumer');
  const tarballs = new Map<string, string>();
  const children: ChildProcess[] = [];
  after(() => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    rmSync(work, { recursive: true, force: true });
  });

  test('every published package builds and packs with dist/ (JS, .d.ts, maps), its exports and bin', () => {
    run(
      process.execPath,
      [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-b', 'tsconfig.build.json'],
      root,
    );
    mkdirSync(packDir);
    const packed = JSON.parse(
      run(
        'npm',
        ['pack', '--json', '--pack-destination', packDir, ...PUBLISHED.map((p) => `--workspace=${p.dir}`)],
        root,
      ),
    ) as { name: string; filename: string; files: { path: string }[] }[];
    assert.deepEqual(packed.map((p) => p.name).sort(), PUBLISHED.map((p) => p.name).sort());
    for (const p of packed) {
      tarballs.set(p.name, join(packDir, p.filename));
      const files = new Set(p.files.map((f) => f.path));
      const pkg = readJson(join(root, PUBLISHED.find((x) => x.name === p.name)?.dir ?? '', 'package.json'));
      const targets = [
        ...Object.values(pkg.exports as Record<string, Record<string, string>>).flatMap((e) => [
          e.types,
          e.default,
        ]),
        ...Object.values((pkg.bin ?? {}) as Record<string, string>),
      ];
      for (const t of targets) {
        assert.ok(t, `${p.name}: an export without types/default`);
        const path = t.replace(/^\.\//, '');
        assert.ok(files.has(path), `${p.name}: ${path} is not in the tarball`);
        if (path.endsWith('.js')) assert.ok(files.has(`${path}.map`), `${p.name}: ${path}.map is missing`);
      }
      assert.ok(
        ![...files].some((f) => f.includes('/test/') || f.endsWith('.tsbuildinfo')),
        `${p.name}: stray files`,
      );
    }
    // The Workload API's protocol is read at run time from the package (spiffe/src/workload/proto.ts).
    const spiffe = packed.find((p) => p.name === '@taskpass/spiffe');
    assert.ok(spiffe?.files.some((f) => f.path === 'proto/workload.proto'));
  });

  test('publint (strict) and @arethetypeswrong/cli (ESM-only profile) pass on every tarball', () => {
    assert.equal(tarballs.size, PUBLISHED.length);
    const bin = join(root, 'node_modules', '.bin');
    for (const [name, tgz] of tarballs) {
      const lint = run(join(bin, 'publint'), ['--strict', tgz], work);
      assert.match(lint, /All good/, `${name}: publint\n${lint}`);
      run(join(bin, 'attw'), ['--profile', 'esm-only', '--format', 'ascii', tgz], work);
    }
  });

  test('a consumer project installs the tarballs and both MCP SDK generations from the registry; tsc checks it (strict, nodenext)', () => {
    assert.equal(tarballs.size, PUBLISHED.length);
    mkdirSync(consumer);
    cpSync(join(root, 'test', 'consumer', 'src'), join(consumer, 'src'), { recursive: true });
    cpSync(join(root, 'test', 'consumer', 'tsconfig.json'), join(consumer, 'tsconfig.json'));
    const dependencies: Record<string, string> = { ...CONSUMER_DEPS };
    for (const [name, tgz] of tarballs) dependencies[name] = `file:${tgz}`;
    writeFileSync(
      join(consumer, 'package.json'),
      JSON.stringify(
        {
          name: 'consumer',
          private: true,
          type: 'module',
          dependencies,
          devDependencies: CONSUMER_DEV_DEPS,
          overrides: { 'better-sqlite3': SQLITE_VERSION },
        },
        null,
        2,
      ),
    );
    // --ignore-scripts: see the top of this file (better-sqlite3); nothing the consumer runs needs one.
    run('npm', ['install', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=error'], consumer);
    for (const s of [...SERVERS, ...AGENTS]) {
      const v = readJson(join(consumer, 'node_modules', s.sdk, 'package.json')).version as string;
      assert.equal(Number(v.split('.')[0]), s.major, `${s.name}: installed ${s.sdk}@${v}`);
    }
    const sqlite = join(consumer, 'node_modules', 'better-sqlite3');
    assert.equal(readJson(join(sqlite, 'package.json')).version, SQLITE_VERSION);
    cpSync(
      join(SQLITE_DIR, 'build', 'Release', 'better_sqlite3.node'),
      join(sqlite, 'build', 'Release', 'better_sqlite3.node'),
    );
    run(process.execPath, [join(consumer, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], consumer);
    for (const s of [...SERVERS, ...AGENTS]) assert.ok(existsSync(join(consumer, s.entry)), s.entry);
  });

  test('the taskpass bin of the installed broker runs with plain node (npx taskpass --help)', () => {
    const out = run('npx', ['--no-install', 'taskpass', '--help'], consumer);
    assert.match(out, /usage:\n\s+taskpass serve/);
  });

  test('the installed @taskpass/proxy runs with plain node, on its own bin and through taskpass', () => {
    const host = JSON.parse(
      run('npx', ['--no-install', 'taskpass', 'proxy', '--print-config', 'claude-desktop'], consumer),
    );
    assert.deepEqual(host.mcpServers?.taskpass?.args?.slice(0, 2), ['proxy', '--config']);
    const guard = run('npx', ['--no-install', 'taskpass-proxy', 'guard', '--print-config'], consumer);
    assert.match(guard, /upstream/);
  });

  test('the root entries load without gRPC; the Workload API is @taskpass/spiffe/workload', () => {
    // A resolve hook refuses @grpc/*; the subpath's failure shows the hook is in force.
    const hook = `export async function resolve(s, c, next) {
      if (s.startsWith('@grpc/')) throw new Error('gRPC requested: ' + s);
      return next(s, c);
    }`;
    const register = `import { register } from 'node:module'; register(${JSON.stringify(
      `data:text/javascript,${encodeURIComponent(hook)}`,
    )});`;
    const load = (entries: string[]) =>
      spawnSync(
        process.execPath,
        [
          '--import',
          `data:text/javascript,${encodeURIComponent(register)}`,
          '--input-type=module',
          '-e',
          entries.map((e) => `await import(${JSON.stringify(e)});`).join(''),
        ],
        { cwd: consumer, env: plainEnv(), encoding: 'utf8' },
      );
    const light = load(['@taskpass/spiffe', '@taskpass/verifier', '@taskpass/agent-plugin']);
    assert.equal(light.status, 0, light.stderr);
    const workload = load(['@taskpass/spiffe/workload']);
    assert.notEqual(workload.status, 0);
    assert.match(workload.stderr, /gRPC requested: @grpc\/grpc-js/);
  });

  describe('an agent calls MCP servers through a broker on real SPIRE', () => {
    let spire: SpireHarness;
    let brokerUrl: string;

    before(async () => {
      assert.ok(existsSync(join(consumer, 'node_modules')), 'the consumer project was not installed');
      spire = await startSpire({ trustDomain: TD, logLevel: 'INFO' });
      // One uid runs everything: each process picks its identity by hint. The broker's entry sorts
      // first so its SVID is also the default.
      await spire.createEntry({ spiffeId: IDS.broker, hint: 'broker', entryId: 'pkg-1-broker' });
      await spire.createEntry({ spiffeId: IDS.server, hint: 'server', entryId: 'pkg-2-server' });
      await spire.createEntry({ spiffeId: IDS.agent, hint: 'agent', entryId: 'pkg-3-agent' });
      await Promise.all(Object.values(IDS).map((id) => spire.waitForIdentity(id)));

      const policies = join(work, 'policies');
      mkdirSync(policies);
      writeFileSync(
        join(policies, 'notes-reader.yaml'),
        [
          'id: notes-reader',
          'owner: packages-test@taskpass.local',
          'description: The notes bot reads notes on its own (delete_note is in no template).',
          `agents: [${IDS.agent}]`,
          'delegation: forbidden',
          `audience: ${AUDIENCE}`,
          'ttl: 60s',
          'max_task_ttl: 5m',
          'tools:',
          '  - tool: read_note',
          '    action: read',
          '    resources: ["notes/*"]',
          '',
        ].join('\n'),
      );
      const config = join(work, 'broker.json');
      writeFileSync(
        config,
        JSON.stringify({
          issuer: ISSUER,
          listen: { host: '127.0.0.1', port: 0 },
          tls: { mode: 'spiffe' },
          workloadApi: { address: spire.address, hint: 'broker' },
          trustDomain: TD,
          agents: { ids: [`spiffe://${TD}/agents/**`] },
          policiesDir: policies,
          store: { sqlite: { path: join(work, 'broker.db') } },
          feed: { heartbeatMs: 2000, auth: 'workloads' },
          keys: { kek: generateKek('packages-test') },
          logLevel: 'info',
        }),
      );
      const installed = join(consumer, 'node_modules', '@taskpass', 'broker');
      const bin = join(installed, readJson(join(installed, 'package.json')).bin.taskpass);
      const broker = await startChild(
        'the installed broker (taskpass serve)',
        [bin, 'serve', '--config', config],
        consumer,
        // The test runner silences the repository's broker logs; this one's listening line is needed.
        plainEnv({ TASKPASS_LOG_LEVEL: 'info' }),
        (l) => l.msg === 'taskpass broker listening',
      );
      children.push(broker.child);
      brokerUrl = String(broker.line.url);
    });
    after(() => spire?.stop());

    for (const server of SERVERS) {
      test(`${server.name}, called by each agent: allowed, denied by the broker, refused without a token`, async () => {
        const common = {
          SPIFFE_ENDPOINT_SOCKET: spire.address,
          BROKER_URL: brokerUrl,
          BROKER_ISSUER: ISSUER,
          BROKER_ID: IDS.broker,
          AUDIENCE,
        };
        const mcp = await startChild(
          server.name,
          [server.entry],
          consumer,
          plainEnv({ ...common, HINT: 'server' }),
          (l) => typeof l.mcpUrl === 'string',
        );
        children.push(mcp.child);
        try {
          for (const agent of AGENTS) {
            const out = run(
              process.execPath,
              [agent.entry],
              consumer,
              plainEnv({ ...common, HINT: 'agent', SERVER_ID: IDS.server, MCP_URL: String(mcp.line.mcpUrl) }),
            );
            const r = JSON.parse(out.trim().split('\n').pop() ?? '{}');
            const what = `${agent.name}: ${JSON.stringify(r)}`;
            assert.equal(r.agent, IDS.agent, what);
            assert.equal(r.allowed?.isError, false, what);
            // The handler saw the caller the verifier established: the agent, on its own (no user).
            assert.deepEqual(
              JSON.parse(r.allowed.content[0].text),
              { note_id: 'n-1', user: IDS.agent, agent: IDS.agent },
              what,
            );
            assert.equal(r.denied?.status, 403, what);
            assert.equal(r.denied.code, 'TASKPASS_DENIED_TOOL', what);
            assert.equal(r.noToken?.status, 401, what);
            assert.equal(r.noToken.challenge, 'Bearer', what);
          }
        } finally {
          mcp.child.kill('SIGTERM');
        }
      });
    }
  });
});
