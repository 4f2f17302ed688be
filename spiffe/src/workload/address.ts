// Workload API endpoint addresses (SPIFFE_Workload_Endpoint.md §4): an explicit address wins, else
// SPIFFE_ENDPOINT_SOCKET. Validation is strict so a typo fails at start-up, not as a mysterious
// UNAVAILABLE on the first call.
import { isIPv4, isIPv6 } from 'node:net';
import { SpiffeError } from '../errors.ts';

/** The environment variable that names the Workload API endpoint. */
export const SPIFFE_ENDPOINT_SOCKET = 'SPIFFE_ENDPOINT_SOCKET';

/** RFC 3986 path characters (pchar and '/'), percent-escapes allowed. */
const URI_PATH = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$/;

function invalid(addr: string, why: string): SpiffeError {
  return new SpiffeError(
    'ERR_SPIFFE_INVALID_ADDRESS',
    `invalid Workload API address ${JSON.stringify(addr)}: ${why}`,
  );
}

function unixTarget(addr: string, rest: string): string {
  if (rest.includes('?')) throw invalid(addr, 'a unix socket URI must not have a query');
  if (rest.includes('#')) throw invalid(addr, 'a unix socket URI must not have a fragment');
  if (!URI_PATH.test(rest)) throw invalid(addr, 'the path has characters a URI does not allow');
  let path: string;
  try {
    path = decodeURIComponent(rest);
  } catch {
    throw invalid(addr, 'the path has a bad percent-escape');
  }
  if (path.includes('\0')) throw invalid(addr, 'the path contains NUL');
  if (!path.startsWith('/') || path === '/') throw invalid(addr, 'a unix socket path must be absolute');
  return `unix:${path}`;
}

function tcpTarget(addr: string, authority: string): string {
  if (authority.includes('/')) throw invalid(addr, 'a tcp URI must not have a path');
  if (authority.includes('?')) throw invalid(addr, 'a tcp URI must not have a query');
  if (authority.includes('#')) throw invalid(addr, 'a tcp URI must not have a fragment');
  if (authority.includes('@')) throw invalid(addr, 'a tcp URI must not have user info');
  let host: string;
  let port: string;
  if (authority.startsWith('[')) {
    const end = authority.indexOf(']');
    if (end < 0 || authority[end + 1] !== ':') throw invalid(addr, 'expected [IPv6]:port');
    host = authority.slice(1, end);
    port = authority.slice(end + 2);
    if (!isIPv6(host) || host.includes('%')) throw invalid(addr, 'the host must be an IP address');
  } else {
    const colon = authority.lastIndexOf(':');
    if (colon < 0) throw invalid(addr, 'a tcp URI must include a port');
    host = authority.slice(0, colon);
    port = authority.slice(colon + 1);
    if (!isIPv4(host)) throw invalid(addr, 'the host must be an IP address');
  }
  if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    throw invalid(addr, 'the port must be 1-65535');
  }
  // Explicit ipv4:/ipv6: targets keep grpc-js from trying a DNS lookup on an address literal.
  return isIPv6(host) ? `ipv6:[${host}]:${Number(port)}` : `ipv4:${host}:${Number(port)}`;
}

/**
 * Validates a Workload API address and converts it to a grpc-js target. Accepted forms:
 * `unix:///absolute/path`, `unix:/absolute/path` and `tcp://<IP>:<port>` (an IP literal, no
 * host name, no path, query, fragment or user info).
 *
 * @example
 * ```ts
 * grpcTargetFromAddress('unix:///run/spire/agent.sock'); // 'unix:/run/spire/agent.sock'
 * grpcTargetFromAddress('tcp://127.0.0.1:8081');         // 'ipv4:127.0.0.1:8081'
 * ```
 * @throws SpiffeError `ERR_SPIFFE_INVALID_ADDRESS`
 */
export function grpcTargetFromAddress(addr: string): string {
  if (typeof addr !== 'string' || addr === '') throw invalid(String(addr), 'empty');
  const colon = addr.indexOf(':');
  const scheme = colon < 0 ? '' : addr.slice(0, colon).toLowerCase();
  const rest = addr.slice(colon + 1);
  if (scheme === 'unix') {
    if (rest.startsWith('//')) {
      // An authority is present; only the empty one (unix:///path) is allowed.
      const afterSlashes = rest.slice(2);
      if (!afterSlashes.startsWith('/')) throw invalid(addr, 'a unix socket URI must not have an authority');
      return unixTarget(addr, afterSlashes);
    }
    if (!rest.startsWith('/')) throw invalid(addr, 'a unix socket path must be absolute');
    return unixTarget(addr, rest);
  }
  if (scheme === 'tcp') {
    if (!rest.startsWith('//')) throw invalid(addr, 'expected tcp://<IP>:<port>');
    return tcpTarget(addr, rest.slice(2));
  }
  throw invalid(addr, 'the scheme must be "unix" or "tcp"');
}

/**
 * The address to use: `explicit` if given, else `SPIFFE_ENDPOINT_SOCKET`. Returns both the address
 * (for messages) and the grpc-js target.
 *
 * @example
 * ```ts
 * const { address, target } = resolveWorkloadApiAddress(); // from SPIFFE_ENDPOINT_SOCKET
 * ```
 * @throws SpiffeError `ERR_SPIFFE_INVALID_ADDRESS` when neither is set or the address is invalid.
 */
export function resolveWorkloadApiAddress(
  explicit?: string,
  env: NodeJS.ProcessEnv = process.env,
): { address: string; target: string } {
  const address = explicit ?? env[SPIFFE_ENDPOINT_SOCKET];
  if (address === undefined || address === '') {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_ADDRESS',
      `no Workload API address: pass one or set ${SPIFFE_ENDPOINT_SOCKET}`,
    );
  }
  return { address, target: grpcTargetFromAddress(address) };
}
