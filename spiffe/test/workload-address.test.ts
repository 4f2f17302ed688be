// Workload API address parsing (SPIFFE_Workload_Endpoint.md §4), cases after go-spiffe's addr tests.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  grpcTargetFromAddress,
  resolveWorkloadApiAddress,
  WorkloadApiClient,
} from '../src/workload/index.ts';

test('valid unix and tcp addresses convert to grpc-js targets', () => {
  const cases: [string, string][] = [
    ['unix:///tmp/agent.sock', 'unix:/tmp/agent.sock'],
    ['unix:/tmp/agent.sock', 'unix:/tmp/agent.sock'],
    ['unix:///run/spire/sockets/agent.sock', 'unix:/run/spire/sockets/agent.sock'],
    ['unix:///tmp/with%20space.sock', 'unix:/tmp/with space.sock'],
    ['tcp://127.0.0.1:8000', 'ipv4:127.0.0.1:8000'],
    ['tcp://10.0.0.1:65535', 'ipv4:10.0.0.1:65535'],
    ['tcp://[::1]:8000', 'ipv6:[::1]:8000'],
  ];
  for (const [addr, target] of cases) assert.equal(grpcTargetFromAddress(addr), target, addr);
});

test('invalid addresses are refused with ERR_SPIFFE_INVALID_ADDRESS', () => {
  const bad = [
    '',
    '/tmp/agent.sock', // no scheme
    'agent.sock',
    'http://127.0.0.1:8000',
    'unix:tmp/agent.sock', // opaque / relative
    'unix://',
    'unix:///',
    'unix://host/tmp/agent.sock', // authority
    'unix://user@/tmp/agent.sock',
    'unix:///tmp/agent.sock?x=1',
    'unix:///tmp/agent.sock#frag',
    'unix:///tmp/bad%zz.sock',
    'unix:///tmp/bad%00.sock',
    'unix:///tmp/bad space.sock',
    'tcp:127.0.0.1:8000',
    'tcp://localhost:8000', // host must be an IP
    'tcp://example.org:8000',
    'tcp://127.0.0.1', // no port
    'tcp://127.0.0.1:', // empty port
    'tcp://127.0.0.1:0',
    'tcp://127.0.0.1:65536',
    'tcp://127.0.0.1:80a',
    'tcp://127.0.0.1:8000/foo', // path
    'tcp://127.0.0.1:8000?x=1',
    'tcp://127.0.0.1:8000#f',
    'tcp://user@127.0.0.1:8000',
    'tcp://::1:8000', // IPv6 without brackets
    'tcp://[::1]', // no port
    'tcp://[fe80::1%eth0]:8000',
    'tcp://[127.0.0.1]:8000',
  ];
  for (const addr of bad) {
    assert.throws(() => grpcTargetFromAddress(addr), { code: 'ERR_SPIFFE_INVALID_ADDRESS' }, addr);
  }
});

test('an explicit address wins over SPIFFE_ENDPOINT_SOCKET; neither is an error', () => {
  const env = { SPIFFE_ENDPOINT_SOCKET: 'unix:///from/env.sock' };
  assert.deepEqual(resolveWorkloadApiAddress(undefined, env), {
    address: 'unix:///from/env.sock',
    target: 'unix:/from/env.sock',
  });
  assert.equal(resolveWorkloadApiAddress('tcp://127.0.0.1:1', env).target, 'ipv4:127.0.0.1:1');
  assert.throws(() => resolveWorkloadApiAddress(undefined, {}), { code: 'ERR_SPIFFE_INVALID_ADDRESS' });
  assert.throws(() => resolveWorkloadApiAddress(undefined, { SPIFFE_ENDPOINT_SOCKET: '' }), {
    code: 'ERR_SPIFFE_INVALID_ADDRESS',
  });
  assert.throws(() => resolveWorkloadApiAddress(undefined, { SPIFFE_ENDPOINT_SOCKET: 'tcp://localhost:1' }), {
    code: 'ERR_SPIFFE_INVALID_ADDRESS',
  });
});

test('the client constructor validates the address before any call', () => {
  assert.throws(() => new WorkloadApiClient({ address: 'tcp://localhost:8000' }), {
    code: 'ERR_SPIFFE_INVALID_ADDRESS',
  });
  const saved = process.env.SPIFFE_ENDPOINT_SOCKET;
  try {
    delete process.env.SPIFFE_ENDPOINT_SOCKET;
    assert.throws(() => new WorkloadApiClient(), { code: 'ERR_SPIFFE_INVALID_ADDRESS' });
    process.env.SPIFFE_ENDPOINT_SOCKET = 'unix:///tmp/taskpass-none.sock';
    const client = new WorkloadApiClient();
    assert.equal(client.address, 'unix:///tmp/taskpass-none.sock');
    client.close();
  } finally {
    if (saved === undefined) delete process.env.SPIFFE_ENDPOINT_SOCKET;
    else process.env.SPIFFE_ENDPOINT_SOCKET = saved;
  }
});
