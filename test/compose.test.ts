// Keeps docker-compose.yml, Dockerfile, deploy/ and policies/ consistent with each other and with the
// broker's own configuration schema. No Docker and no SPIRE: it reads the files only.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, posix, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { compilePattern, loadConfig, loadPolicyDir } from '@taskpass/broker';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const read = (p: string): string => readFileSync(join(root, p), 'utf8');

interface Service {
  image?: string;
  build?: { context: string; target?: string };
  command?: string[];
  labels?: Record<string, string>;
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  networks?: { default?: { aliases?: string[] } };
  profiles?: string[];
}
interface Compose {
  services: Record<string, Service>;
  volumes: Record<string, unknown>;
}

const compose = parseYaml(read('docker-compose.yml'), { merge: true }) as Compose;
const services = compose.services;
const svc = (name: string): Service => {
  const s = services[name];
  assert.ok(s, `service ${name} is defined`);
  return s;
};

/** `source:target[:mode]` of a service's volumes. */
function mounts(s: Service): { source: string; target: string; mode?: string }[] {
  return (s.volumes ?? []).map((v) => {
    const [source, target, mode] = v.split(':');
    assert.ok(source && target, `volume ${v} has a source and a target`);
    return { source, target, ...(mode ? { mode } : {}) };
  });
}

/** The service path that maps `containerPath` to a volume or host path, if any. */
function mountFor(
  s: Service,
  containerPath: string,
): { source: string; target: string; mode?: string } | undefined {
  return mounts(s).find((m) => containerPath === m.target || containerPath.startsWith(`${m.target}/`));
}

/** HCL `key = "value"` lookups (the configurations are flat enough for this). */
function hcl(text: string, key: string): string {
  const m = new RegExp(`^\\s*${key}\\s*=\\s*"([^"]*)"`, 'm').exec(text);
  assert.ok(m, `${key} is set`);
  return m[1]!;
}

interface Entry {
  entryId: string;
  spiffeId: string;
  workload: string;
}
const entries: Entry[] = [
  ...read('deploy/spire/register.sh').matchAll(/^entry\s+(\S+)\s+(spiffe:\/\/\S+)\s+(\S+)/gm),
].map((m) => ({ entryId: m[1]!, spiffeId: m[2]!, workload: m[3]! }));
const idOf = (workload: string): string => {
  const e = entries.find((x) => x.workload === workload);
  assert.ok(e, `register.sh registers the ${workload} workload`);
  return e.spiffeId;
};

const brokerConfig = loadConfig({ file: join(root, 'deploy/broker/broker.yaml'), env: {} });

test('every depends_on target exists, with a valid condition and a healthcheck when waited on', () => {
  for (const [name, s] of Object.entries(services)) {
    assert.ok(s.image || s.build, `${name} has an image or a build`);
    for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
      assert.ok(services[dep], `${name} depends on ${dep}, which exists`);
      assert.ok(
        ['service_started', 'service_healthy', 'service_completed_successfully'].includes(condition),
        `${name} -> ${dep}: condition ${condition}`,
      );
      if (condition === 'service_healthy') assert.ok(services[dep]!.healthcheck, `${dep} has a healthcheck`);
      assert.ok(!services[dep]!.profiles, `${name} does not depend on ${dep}, which is only in a profile`);
    }
  }
});

test('mounted host paths exist, named volumes are declared, published ports do not clash', () => {
  const published = new Map<string, string>();
  for (const [name, s] of Object.entries(services)) {
    for (const m of mounts(s)) {
      if (m.source.startsWith('./')) {
        assert.ok(existsSync(join(root, m.source)), `${name}: ${m.source} exists`);
      } else if (!m.source.startsWith('/')) {
        assert.ok(m.source in compose.volumes, `${name}: volume ${m.source} is declared`);
      }
    }
    for (const p of s.ports ?? []) {
      const host = p.split(':').slice(0, -1).join(':');
      assert.ok(!published.has(host), `host port ${host} of ${name} is also used by ${published.get(host)}`);
      published.set(host, name);
    }
    // Entry points of ours that the services run (examples/ belongs to the demo and is not checked).
    for (const arg of s.command ?? []) {
      if (/^(broker|deploy)\/.*\.ts$/.test(arg))
        assert.ok(existsSync(join(root, arg)), `${name}: ${arg} exists`);
    }
    // Scripts the healthchecks run from the image (/app is the repository).
    for (const arg of s.healthcheck?.test ?? []) {
      if (arg.startsWith('/app/')) assert.ok(existsSync(join(root, arg.slice(5))), `${name}: ${arg} exists`);
    }
  }
});

test('the Dockerfile installs every workspace', () => {
  const dockerfile = read('Dockerfile');
  const { workspaces } = JSON.parse(read('package.json')) as { workspaces: string[] };
  for (const ws of workspaces) {
    assert.match(
      dockerfile,
      new RegExp(`^COPY ${ws}/package\\.json ${ws}/$`, 'm'),
      `Dockerfile copies ${ws}`,
    );
  }
  for (const s of Object.values(services)) {
    if (s.build?.target) assert.match(dockerfile, new RegExp(`^FROM \\S+ AS ${s.build.target}$`, 'm'));
  }
  assert.match(dockerfile, /--from=ghcr\.io\/spiffe\/spire-server:1\.13\.3 /);
  assert.equal(svc('spire-server').image, 'ghcr.io/spiffe/spire-server:1.13.3');
  assert.equal(svc('spire-agent').image, 'ghcr.io/spiffe/spire-agent:1.13.3');
});

test('SPIRE server, setup and agent share sockets, bootstrap files and trust domain', () => {
  const server = read('deploy/spire/server.conf');
  const agent = read('deploy/spire/agent.conf');
  assert.equal(hcl(server, 'trust_domain'), brokerConfig.trustDomain);
  assert.equal(hcl(agent, 'trust_domain'), brokerConfig.trustDomain);
  for (const e of entries) assert.ok(e.spiffeId.startsWith(`spiffe://${brokerConfig.trustDomain}/`));

  const serverSocket = hcl(server, 'socket_path');
  const setup = svc('spire-setup');
  assert.equal(setup.environment?.SPIRE_SERVER_SOCKET, serverSocket);
  assert.equal(mountFor(svc('spire-server'), serverSocket)?.source, mountFor(setup, serverSocket)?.source);
  assert.equal(mountFor(svc('spire-server'), hcl(server, 'data_dir'))?.target, hcl(server, 'data_dir'));

  const agentSvc = svc('spire-agent');
  assert.equal(hcl(agent, 'server_address'), 'spire-server');
  assert.equal(hcl(agent, 'server_port'), hcl(server, 'bind_port'));
  const bootstrap = setup.environment?.BOOTSTRAP_DIR;
  assert.equal(hcl(agent, 'trust_bundle_path'), `${bootstrap}/bundle.pem`);
  assert.equal(hcl(agent, 'join_token_file'), `${bootstrap}/join-token`);
  assert.equal(mountFor(agentSvc, bootstrap!)?.source, mountFor(setup, bootstrap!)?.source);
  assert.ok(mountFor(agentSvc, '/var/run/docker.sock'), 'the docker attestor reaches the Docker daemon');
  assert.equal((agentSvc as { pid?: string }).pid, 'host', 'the docker attestor sees workload PIDs');

  // Every workload with an entry mounts the agent's socket and points SPIFFE_ENDPOINT_SOCKET at it.
  const agentSocket = hcl(agent, 'socket_path');
  const socketVolume = mountFor(agentSvc, agentSocket)?.source;
  assert.ok(socketVolume);
  for (const e of entries) {
    const matching = Object.entries(services).filter(
      ([, s]) => s.labels?.['org.taskpass.workload'] === e.workload,
    );
    assert.equal(matching.length, 1, `exactly one service carries org.taskpass.workload=${e.workload}`);
    const [name, s] = matching[0]!;
    assert.equal(mountFor(s, agentSocket)?.source, socketVolume, `${name} mounts the agent socket`);
    assert.equal(
      s.environment?.SPIFFE_ENDPOINT_SOCKET,
      `unix://${agentSocket}`,
      `${name} SPIFFE_ENDPOINT_SOCKET`,
    );
  }
  assert.equal(new Set(entries.map((e) => e.entryId)).size, entries.length, 'entry IDs are unique');
});

test('deploy/broker/broker.yaml passes the broker schema and matches the compose services', () => {
  const broker = svc('broker');
  assert.deepEqual(broker.command, [
    'broker/src/cli.ts',
    'serve',
    '--config',
    '/app/deploy/broker/broker.yaml',
  ]);
  assert.equal(mountFor(broker, '/app/deploy/broker/broker.yaml')?.source, './deploy/broker/broker.yaml');
  assert.equal(mountFor(broker, brokerConfig.policiesDir)?.source, './policies');
  assert.equal(brokerConfig.workloadApi.address, broker.environment?.SPIFFE_ENDPOINT_SOCKET);
  assert.equal(brokerConfig.tls.mode, 'spiffe');

  // Signing keys at rest: the KEK file the broker reads is the one kek-setup writes, first.
  const kekFile = brokerConfig.keys.kekFile ?? '';
  assert.ok(kekFile && !brokerConfig.keys.allowPlaintext, 'the compose broker encrypts its signing keys');
  const kekDir = kekFile.slice(0, kekFile.lastIndexOf('/'));
  const setup = svc('kek-setup');
  assert.deepEqual(setup.command?.slice(-2), ['--out', kekFile]);
  assert.equal(mountFor(broker, kekDir)?.source, mountFor(setup, kekDir)?.source);
  assert.equal(mountFor(broker, kekDir)?.mode, 'ro');
  assert.ok(broker.depends_on?.['kek-setup']);
  // A named volume takes its owner from the image: the unprivileged user must own the mount point.
  assert.match(read('Dockerfile'), new RegExp(`chown node:node .*${kekDir}( |$)`, 'm'));

  // The multi-replica setup: Redis, reachable as a compose service.
  const redisUrl = brokerConfig.store.redis?.url;
  assert.ok(redisUrl, 'the compose broker uses the Redis store');
  assert.ok(!brokerConfig.store.sqlite);
  assert.ok(services[new URL(redisUrl).hostname], 'the Redis host is a compose service');
  assert.ok(broker.depends_on?.[new URL(redisUrl).hostname]);

  // Issuer host is the broker's network alias; its port is the one the broker listens on.
  const issuer = new URL(brokerConfig.issuer);
  assert.ok(broker.networks?.default?.aliases?.includes(issuer.hostname));
  assert.equal(Number(issuer.port), brokerConfig.listen.port);
  assert.ok(broker.ports?.includes(`${brokerConfig.listen.port}:${brokerConfig.listen.port}`));
  for (const name of ['tickets', 'agent', 'admin']) {
    const u = new URL(svc(name).environment?.TASKPASS_BROKER_URL ?? '');
    assert.equal(u.hostname, 'broker', `${name} reaches the broker`);
    assert.equal(Number(u.port), brokerConfig.listen.port, `${name} uses the broker's port`);
  }
  for (const name of ['tickets', 'agent'])
    assert.equal(svc(name).environment?.TASKPASS_BROKER_ID, idOf('broker'));
  assert.equal(svc('tickets').environment?.TASKPASS_BROKER_ISSUER, brokerConfig.issuer);

  // Admin tools and the agent are who the broker thinks they are.
  assert.deepEqual(brokerConfig.admins, [idOf('admin')]);
  const agentId = idOf('agent');
  assert.ok(
    brokerConfig.agents.ids.some((p) => {
      const c = compilePattern(p, 'agent');
      return c.ok && c.pattern.match(agentId);
    }),
    `${agentId} counts as an agent for the broker`,
  );

  // The user tokens of the demo IdP are trusted, fetched from the idp service.
  const idp = svc('idp');
  const trusted = brokerConfig.users.trustedIssuers.find((t) => t.issuer === idp.environment?.IDP_ISSUER);
  assert.ok(trusted, 'the IdP issuer is trusted');
  const jwks = new URL(trusted.jwksUri ?? '');
  assert.equal(jwks.hostname, 'idp');
  assert.equal(jwks.port, idp.environment?.IDP_PORT);
  assert.ok(idp.networks?.default?.aliases?.includes(new URL(trusted.issuer).hostname));
  assert.deepEqual([trusted.audience].flat(), [idp.environment?.USER_TOKEN_AUDIENCE]);
  // The idp service writes the user token where the agent service reads it.
  const tokenFile = idp.environment?.USER_TOKEN_FILE ?? '';
  assert.equal(svc('agent').environment?.USER_TOKEN_FILE, tokenFile);
  assert.equal(mountFor(idp, tokenFile)?.source, mountFor(svc('agent'), tokenFile)?.source);
  assert.match(read('Dockerfile'), new RegExp(`chown node:node .*${posix.dirname(tokenFile)}( |$)`, 'm'));
});

test('the agent service may use the tickets service under the shipped policies', async () => {
  const r = await loadPolicyDir(join(root, 'policies'));
  assert.ok(r.ok, 'policies/ loads');
  const agentId = idOf('agent');
  const tickets = svc('tickets');
  const agent = svc('agent');
  const audience = tickets.environment?.TICKETS_AUDIENCE;
  assert.equal(agent.environment?.TICKETS_AUDIENCE, audience);
  assert.equal(agent.environment?.TICKETS_SPIFFE_ID, idOf('tickets'));
  const ticketsUrl = new URL(agent.environment?.TICKETS_MCP_URL ?? '');
  assert.equal(ticketsUrl.hostname, 'tickets');
  assert.equal(ticketsUrl.port, tickets.environment?.TICKETS_PORT);
  assert.ok(tickets.ports?.includes(`${ticketsUrl.port}:${ticketsUrl.port}`));
  assert.ok(tickets.networks?.default?.aliases?.includes(new URL(audience ?? '').hostname));

  // Some template covers the agent on exactly this audience, and for a user of the compose IdP.
  const covering = r.set.templates.filter((t) =>
    t.agents.some((p) => {
      const c = compilePattern(p, 'agent');
      return c.ok && c.pattern.match(agentId);
    }),
  );
  assert.ok(covering.length > 0, `a template in policies/ allows ${agentId}`);
  assert.ok(
    covering.some((t) => t.audience === audience),
    `a template allows ${agentId} on ${audience}`,
  );
  const alice = {
    iss: svc('idp').environment?.IDP_ISSUER ?? '',
    sub: 'alice',
    claims: { groups: ['support'] },
  };
  const d = r.set.decide({
    agent: agentId,
    user: alice,
    audience: audience ?? '',
    tool: 'get_ticket',
    action: 'read',
    resource: 'tickets/T-1001',
    history: [],
  });
  assert.ok(d.allow, `a support user's agent reads a ticket: ${d.allow ? '' : d.code}`);
});

test('register.sh selectors are the labels the compose services carry', () => {
  const script = read('deploy/spire/register.sh');
  assert.match(script, /docker\) selector="docker:label:org\.taskpass\.workload:\$name"/);
  // Posix paths in the compose file (the containers are Linux whatever the host).
  for (const s of Object.values(services)) {
    for (const m of mounts(s)) assert.ok(posix.isAbsolute(m.target), `${m.target} is absolute`);
  }
});
