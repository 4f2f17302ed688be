// The Workload API client: one gRPC channel, fetch (first message) and watch (every message)
// calls. Each message is the full state (SPIFFE_Workload_API.md §4.3): it is parsed into a fresh
// object and replaces what the caller held; nothing is merged.
import {
  type CallOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  Client as GrpcClient,
  credentials,
  Metadata,
  type ServiceError,
  status,
} from '@grpc/grpc-js';
import { JwtBundle, JwtBundleSet } from '../bundle/jwt.ts';
import { X509Bundle, X509BundleSet } from '../bundle/x509.ts';
import { SpiffeError } from '../errors.ts';
import { SpiffeId, TrustDomain } from '../id.ts';
import { JwtSvid, parseInsecureJwtSvid } from '../svid/jwt.ts';
import { X509Svid } from '../svid/x509.ts';
import { resolveWorkloadApiAddress } from './address.ts';
import {
  type Empty,
  type RawJwtBundlesResponse,
  type RawStruct,
  type RawValue,
  type RawX509BundlesResponse,
  type RawX509SvidResponse,
  SECURITY_HEADER,
  type WorkloadApiMethodName,
  type WorkloadApiMethods,
  workloadApiService,
} from './proto.ts';
import {
  type BackoffStrategy,
  linearBackoff,
  toSpiffeError,
  type Watcher,
  type WorkloadApiLogger,
  watchLoop,
} from './watcher.ts';

export type { Backoff, BackoffStrategy, Watcher, WorkloadApiLogger } from './watcher.ts';
export { linearBackoff } from './watcher.ts';

/** The X.509 state the Workload API serves: the workload's SVIDs and the bundles to verify peers. */
export interface X509Context {
  /** At least one; `svids[0]` is the default identity. Hints are unique (first one kept). */
  readonly svids: readonly X509Svid[];
  /** The SVIDs' own trust domain bundle(s) plus federated bundles. */
  readonly bundles: X509BundleSet;
}

export interface WorkloadApiClientOptions {
  /** `unix:///path`, `unix:/path` or `tcp://IP:port`. Default: `SPIFFE_ENDPOINT_SOCKET`. */
  address?: string;
  logger?: WorkloadApiLogger;
  /** Reconnect delays for watches. Default: {@link linearBackoff} (1s, 2s, … 30s). */
  backoff?: BackoffStrategy;
}

export interface FetchJwtSvidParams {
  /** At least one audience (JWT-SVID.md recommends exactly one). */
  audience: string | readonly string[];
  /** Which of the workload's identities; default: the agent's default one. */
  subject?: SpiffeId | string;
}

/** Per-call options. */
export interface CallSignalOptions {
  /** Cancels the call (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
}

type StreamMethod = 'FetchX509SVID' | 'FetchX509Bundles' | 'FetchJWTBundles';
type StreamResponse<M extends StreamMethod> = WorkloadApiMethods[M] extends {
  responseDeserialize(b: Buffer): infer R;
}
  ? R
  : never;

function trustDomainFromKey(key: string, what: string): TrustDomain {
  try {
    // SPIRE keys bundles by "spiffe://td", some servers by the bare "td"; accept both.
    return TrustDomain.fromIdOrName(key);
  } catch (e) {
    throw new SpiffeError(
      'ERR_SPIFFE_WORKLOAD_API',
      `${what}: invalid trust domain key ${JSON.stringify(key)}`,
      {
        cause: e,
      },
    );
  }
}

/** @internal Parses an X509SVIDResponse; undefined when it has no SVIDs (discarded, §4.5). */
export function parseX509Context(raw: RawX509SvidResponse): X509Context | undefined {
  if (raw.svids.length === 0) return undefined;
  const svids: X509Svid[] = [];
  const hints = new Set<string>();
  const bundles = new X509BundleSet();
  for (const s of raw.svids) {
    // Hints are unique (§5.2.1); on duplicates the first one wins, as in go-spiffe and SPIRE.
    if (s.hint !== '' && hints.has(s.hint)) continue;
    if (s.hint !== '') hints.add(s.hint);
    if (s.spiffe_id === '') {
      throw new SpiffeError('ERR_SPIFFE_WORKLOAD_API', 'FetchX509SVID: an SVID has no spiffe_id');
    }
    const svid = X509Svid.parseDer(s.x509_svid, s.x509_svid_key, { hint: s.hint, expectedId: s.spiffe_id });
    svids.push(svid);
    const td = svid.id.trustDomain;
    if (!bundles.has(td)) {
      const bundle = X509Bundle.fromDer(td, s.bundle);
      if (bundle.authorities.length === 0) {
        throw new SpiffeError('ERR_SPIFFE_WORKLOAD_API', `FetchX509SVID: no bundle for ${td.name}`);
      }
      bundles.add(bundle);
    }
  }
  // Absent federated bundles are a redaction: whatever was federated before is simply not carried over.
  for (const [key, der] of Object.entries(raw.federated_bundles)) {
    const td = trustDomainFromKey(key, 'FetchX509SVID');
    if (bundles.has(td) || der.length === 0) continue; // own trust domain's bundle comes with the SVID
    bundles.add(X509Bundle.fromDer(td, der));
  }
  return Object.freeze({ svids: Object.freeze(svids), bundles });
}

/** @internal Parses an X509BundlesResponse; undefined when it has no bundles. */
export function parseX509Bundles(raw: RawX509BundlesResponse): X509BundleSet | undefined {
  const set = new X509BundleSet();
  for (const [key, der] of Object.entries(raw.bundles)) {
    if (der.length === 0) continue;
    set.add(X509Bundle.fromDer(trustDomainFromKey(key, 'FetchX509Bundles'), der));
  }
  return set.size === 0 ? undefined : set;
}

/** @internal Parses a JWTBundlesResponse (standard JWKS per trust domain); undefined when empty. */
export function parseJwtBundles(raw: RawJwtBundlesResponse): JwtBundleSet | undefined {
  const set = new JwtBundleSet();
  for (const [key, jwks] of Object.entries(raw.bundles)) {
    if (jwks.length === 0) continue;
    set.add(JwtBundle.fromJwks(trustDomainFromKey(key, 'FetchJWTBundles'), jwks));
  }
  return set.size === 0 ? undefined : set;
}

function valueToJson(v: RawValue): unknown {
  // With `oneofs: true` proto-loader names the set member in `kind`; fall back to probing.
  const kind =
    v.kind ??
    (['stringValue', 'numberValue', 'boolValue', 'structValue', 'listValue', 'nullValue'] as const).find(
      (k) => v[k] !== undefined && v[k] !== null,
    );
  switch (kind) {
    case 'stringValue':
      return v.stringValue;
    case 'numberValue':
      return v.numberValue;
    case 'boolValue':
      return v.boolValue;
    case 'structValue':
      return v.structValue ? structToJson(v.structValue) : {};
    case 'listValue':
      return (v.listValue?.values ?? []).map(valueToJson);
    default:
      return null;
  }
}

/**
 * Converts a decoded `google.protobuf.Struct` to plain JSON (`{ fields: { aud: { listValue … } } }`
 * → `{ aud: [...] }`).
 *
 * @example
 * ```ts
 * structToJson({ fields: { exp: { numberValue: 1700000000, kind: 'numberValue' } } }); // { exp: 1700000000 }
 * ```
 */
export function structToJson(s: RawStruct | null | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(s?.fields ?? {})) out[k] = valueToJson(v);
  return out;
}

/**
 * A client for the SPIFFE Workload API (SPIRE agent or any compliant endpoint). Every call carries
 * the `workload.spiffe.io: true` header; the channel uses no TLS (the endpoint is local, §3.1).
 * Fetch calls take the first complete message; watch calls follow the stream, reconnecting with
 * backoff, until their signal aborts or the client closes.
 *
 * @example
 * ```ts
 * const client = new WorkloadApiClient(); // SPIFFE_ENDPOINT_SOCKET
 * const { svids, bundles } = await client.fetchX509Context();
 * const jwt = await client.fetchJwtSvid({ audience: ['https://broker.example.org'] });
 * client.close();
 * ```
 */
export class WorkloadApiClient {
  /** The address as given (option or SPIFFE_ENDPOINT_SOCKET). */
  readonly address: string;
  readonly #grpc: GrpcClient;
  readonly #service = workloadApiService();
  readonly #logger: WorkloadApiLogger | undefined;
  readonly #backoff: BackoffStrategy;
  /** Aborted by close(): cancels every open call and stops every watch. */
  readonly #closing = new AbortController();

  /** @throws SpiffeError `ERR_SPIFFE_INVALID_ADDRESS` */
  constructor(opts: WorkloadApiClientOptions = {}) {
    const { address, target } = resolveWorkloadApiAddress(opts.address);
    this.address = address;
    this.#logger = opts.logger;
    this.#backoff = opts.backoff ?? linearBackoff();
    this.#grpc = new GrpcClient(target, credentials.createInsecure());
  }

  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.#closing.signal.aborted;
  }

  #metadata(): Metadata {
    // A fresh Metadata per call: grpc-js may mutate what it is given.
    const md = new Metadata();
    md.set(SECURITY_HEADER, 'true');
    return md;
  }

  #closedError(): SpiffeError {
    return new SpiffeError('ERR_SPIFFE_CLOSED', 'the Workload API client is closed');
  }

  #openStream<M extends StreamMethod>(
    method: M,
    options: CallOptions = {},
  ): ClientReadableStream<StreamResponse<M>> {
    const def = this.#service[method];
    return this.#grpc.makeServerStreamRequest<Empty, StreamResponse<M>>(
      def.path,
      def.requestSerialize,
      def.responseDeserialize as (b: Buffer) => StreamResponse<M>,
      {},
      this.#metadata(),
      options,
    );
  }

  /**
   * Links the client's close and an optional user signal into one per-call signal, and unlinks
   * both when the call is done so long-lived signals don't collect listeners.
   */
  #link(signal: AbortSignal | undefined): { signal: AbortSignal; unlink(): void } {
    const ac = new AbortController();
    const onClose = () =>
      ac.abort(new SpiffeError('ERR_SPIFFE_CLOSED', 'the Workload API client was closed'));
    const onUser = () => ac.abort(signal?.reason);
    if (signal?.aborted) ac.abort(signal.reason);
    this.#closing.signal.addEventListener('abort', onClose, { once: true });
    signal?.addEventListener('abort', onUser, { once: true });
    return {
      signal: ac.signal,
      unlink: () => {
        this.#closing.signal.removeEventListener('abort', onClose);
        signal?.removeEventListener('abort', onUser);
      },
    };
  }

  /** Opens a stream and settles with its first usable message, then cancels the stream. */
  #fetchFirst<M extends StreamMethod, T>(
    method: M,
    parse: (raw: StreamResponse<M>) => T | undefined,
    opts: CallSignalOptions,
  ): Promise<T> {
    if (this.closed) return Promise.reject(this.#closedError());
    const link = this.#link(opts.signal);
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const call = this.#openStream(method);
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        link.unlink();
        link.signal.removeEventListener('abort', onAbort);
        call.cancel();
        fn();
      };
      const onAbort = () => settle(() => reject(link.signal.reason));
      if (link.signal.aborted) {
        onAbort();
        return;
      }
      link.signal.addEventListener('abort', onAbort, { once: true });
      call.on('data', (raw: StreamResponse<M>) => {
        if (settled) return;
        let value: T | undefined;
        try {
          value = parse(raw);
        } catch (e) {
          settle(() => reject(e));
          return;
        }
        if (value !== undefined) {
          const v = value;
          settle(() => resolve(v));
        }
      });
      call.on('error', (e: ServiceError) => settle(() => reject(toSpiffeError(e, method))));
      call.on('end', () =>
        settle(() =>
          reject(
            new SpiffeError(
              'ERR_SPIFFE_WORKLOAD_API',
              `${method}: the stream ended without a usable message`,
            ),
          ),
        ),
      );
    });
  }

  #watch<M extends StreamMethod, T>(
    method: M,
    parse: (raw: StreamResponse<M>) => T | undefined,
    watcher: Watcher<T>,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    if (this.closed) return Promise.reject(this.#closedError());
    const link = this.#link(signal);
    return watchLoop({
      what: method,
      open: () => this.#openStream(method),
      parse,
      watcher,
      backoff: this.#backoff(),
      signal: link.signal,
      logger: this.#logger,
    }).finally(link.unlink);
  }

  #unary<Req, Res>(
    method: WorkloadApiMethodName,
    request: Req,
    signal: AbortSignal | undefined,
  ): Promise<Res> {
    if (this.closed) return Promise.reject(this.#closedError());
    const def = this.#service[method] as unknown as {
      path: string;
      requestSerialize(r: Req): Buffer;
      responseDeserialize(b: Buffer): Res;
    };
    const link = this.#link(signal);
    return new Promise<Res>((resolve, reject) => {
      let call: ClientUnaryCall | undefined;
      const onAbort = () => {
        call?.cancel();
        reject(link.signal.reason);
      };
      call = this.#grpc.makeUnaryRequest<Req, Res>(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        request,
        this.#metadata(),
        {},
        (err, res) => {
          link.unlink();
          link.signal.removeEventListener('abort', onAbort);
          if (link.signal.aborted) return; // already rejected by onAbort
          if (err) reject(err);
          else if (res === undefined)
            reject(new SpiffeError('ERR_SPIFFE_WORKLOAD_API', `${method}: empty response`));
          else resolve(res);
        },
      );
      if (link.signal.aborted) onAbort();
      else link.signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * The current X.509 context: all SVIDs (`[0]` is the default) and the bundles to verify peers.
   *
   * @example
   * ```ts
   * const { svids, bundles } = await client.fetchX509Context();
   * ```
   * @throws SpiffeError `ERR_SPIFFE_NO_IDENTITY` (PermissionDenied), `ERR_SPIFFE_WORKLOAD_API`,
   *   `ERR_SPIFFE_INVALID_X509_SVID`, `ERR_SPIFFE_CLOSED`
   */
  fetchX509Context(opts: CallSignalOptions = {}): Promise<X509Context> {
    return this.#fetchFirst('FetchX509SVID', parseX509Context, opts);
  }

  /**
   * The default X.509-SVID (`svids[0]`).
   *
   * @example
   * ```ts
   * const svid = await client.fetchX509Svid();
   * ```
   */
  async fetchX509Svid(opts: CallSignalOptions = {}): Promise<X509Svid> {
    return (await this.fetchX509Context(opts)).svids[0]!;
  }

  /**
   * Follows the X.509 context: `onUpdate` gets each new full state, `onError` each failure
   * (`ERR_SPIFFE_NO_IDENTITY` on PermissionDenied). Reconnects with backoff; resolves when `signal`
   * aborts or the client closes; rejects on InvalidArgument/Unimplemented.
   *
   * @example
   * ```ts
   * const ac = new AbortController();
   * void client.watchX509Context({ onUpdate: (ctx) => use(ctx), onError: (e) => log.warn(e) }, ac.signal);
   * ```
   */
  watchX509Context(watcher: Watcher<X509Context>, signal?: AbortSignal): Promise<void> {
    return this.#watch('FetchX509SVID', parseX509Context, watcher, signal);
  }

  /**
   * The X.509 bundles of every trust domain the workload may verify.
   *
   * @example
   * ```ts
   * const bundle = (await client.fetchX509Bundles()).get(TrustDomain.parse('example.org'));
   * ```
   */
  fetchX509Bundles(opts: CallSignalOptions = {}): Promise<X509BundleSet> {
    return this.#fetchFirst('FetchX509Bundles', parseX509Bundles, opts);
  }

  /** Follows the X.509 bundles (same contract as {@link watchX509Context}). */
  watchX509Bundles(watcher: Watcher<X509BundleSet>, signal?: AbortSignal): Promise<void> {
    return this.#watch('FetchX509Bundles', parseX509Bundles, watcher, signal);
  }

  /**
   * The JWT bundles (standard JWKS per trust domain).
   *
   * @example
   * ```ts
   * const svid = await parseAndValidateJwtSvid(token, await client.fetchJwtBundles(), audience);
   * ```
   */
  fetchJwtBundles(opts: CallSignalOptions = {}): Promise<JwtBundleSet> {
    return this.#fetchFirst('FetchJWTBundles', parseJwtBundles, opts);
  }

  /** Follows the JWT bundles (same contract as {@link watchX509Context}). */
  watchJwtBundles(watcher: Watcher<JwtBundleSet>, signal?: AbortSignal): Promise<void> {
    return this.#watch('FetchJWTBundles', parseJwtBundles, watcher, signal);
  }

  /**
   * All JWT-SVIDs the agent issues for `audience` (one per identity, or just `subject`'s).
   *
   * @example
   * ```ts
   * const svids = await client.fetchJwtSvids({ audience: ['https://broker.example.org'] });
   * ```
   */
  async fetchJwtSvids(params: FetchJwtSvidParams & CallSignalOptions): Promise<JwtSvid[]> {
    const audience = typeof params.audience === 'string' ? [params.audience] : [...params.audience];
    if (audience.length === 0 || audience.some((a) => typeof a !== 'string' || a === '')) {
      throw new SpiffeError('ERR_SPIFFE_JWT_AUDIENCE', 'fetchJwtSvid needs at least one non-empty audience');
    }
    const subject =
      params.subject === undefined
        ? undefined
        : typeof params.subject === 'string'
          ? SpiffeId.parse(params.subject)
          : params.subject;
    let res: { svids: { spiffe_id: string; svid: string; hint: string }[] };
    try {
      res = await this.#unary(
        'FetchJWTSVID',
        { audience, spiffe_id: subject?.toString() ?? '' },
        params.signal,
      );
    } catch (e) {
      throw e instanceof Error && typeof (e as Partial<ServiceError>).code === 'number'
        ? toSpiffeError(e as ServiceError, 'FetchJWTSVID')
        : e;
    }
    if (res.svids.length === 0) {
      throw new SpiffeError('ERR_SPIFFE_WORKLOAD_API', 'FetchJWTSVID: the response has no JWT-SVIDs');
    }
    const out: JwtSvid[] = [];
    const hints = new Set<string>();
    for (const s of res.svids) {
      if (s.hint !== '' && hints.has(s.hint)) continue;
      if (s.hint !== '') hints.add(s.hint);
      const svid = parseInsecureJwtSvid(s.svid, audience, { hint: s.hint });
      if (s.spiffe_id !== '' && s.spiffe_id !== svid.id.toString()) {
        throw new SpiffeError(
          'ERR_SPIFFE_WORKLOAD_API',
          `FetchJWTSVID: spiffe_id ${s.spiffe_id} does not match the token's sub ${svid.id.toString()}`,
        );
      }
      if (subject && !subject.equals(svid.id)) {
        throw new SpiffeError(
          'ERR_SPIFFE_WORKLOAD_API',
          `FetchJWTSVID: asked for ${subject.toString()}, got ${svid.id.toString()}`,
        );
      }
      out.push(svid);
    }
    return out;
  }

  /**
   * A JWT-SVID for `audience` (the default identity's, or `subject`'s). Parsed without signature
   * verification: it comes straight from the local agent.
   *
   * @example
   * ```ts
   * const { token } = await client.fetchJwtSvid({ audience: ['https://broker.example.org'] });
   * ```
   * @throws SpiffeError `ERR_SPIFFE_NO_IDENTITY`, `ERR_SPIFFE_WORKLOAD_API`, `ERR_SPIFFE_JWT_AUDIENCE`
   */
  async fetchJwtSvid(params: FetchJwtSvidParams & CallSignalOptions): Promise<JwtSvid> {
    return (await this.fetchJwtSvids(params))[0]!;
  }

  /**
   * Asks the agent to validate `token` for `audience`. The claims come back as plain JSON.
   *
   * @example
   * ```ts
   * const svid = await client.validateJwtSvid(token, 'https://broker.example.org');
   * svid.claims.aud; // ['https://broker.example.org']
   * ```
   * @throws SpiffeError `ERR_SPIFFE_INVALID_JWT_SVID` (the agent refused the token),
   *   `ERR_SPIFFE_NO_IDENTITY`, `ERR_SPIFFE_WORKLOAD_API`
   */
  async validateJwtSvid(token: string, audience: string, opts: CallSignalOptions = {}): Promise<JwtSvid> {
    if (typeof audience !== 'string' || audience === '') {
      throw new SpiffeError('ERR_SPIFFE_JWT_AUDIENCE', 'validateJwtSvid needs a non-empty audience');
    }
    let res: { spiffe_id: string; claims: RawStruct | null };
    try {
      res = await this.#unary('ValidateJWTSVID', { audience, svid: token }, opts.signal);
    } catch (e) {
      if (e instanceof Error && typeof (e as Partial<ServiceError>).code === 'number') {
        const se = e as ServiceError;
        // SPIRE answers every validation failure with InvalidArgument.
        if (se.code === status.INVALID_ARGUMENT) {
          throw new SpiffeError(
            'ERR_SPIFFE_INVALID_JWT_SVID',
            `ValidateJWTSVID: ${se.details || se.message}`,
            {
              cause: se,
            },
          );
        }
        throw toSpiffeError(se, 'ValidateJWTSVID');
      }
      throw e;
    }
    let id: SpiffeId;
    try {
      id = SpiffeId.parse(res.spiffe_id);
    } catch (e) {
      throw new SpiffeError(
        'ERR_SPIFFE_WORKLOAD_API',
        'ValidateJWTSVID: the response has no valid spiffe_id',
        {
          cause: e,
        },
      );
    }
    const claims = structToJson(res.claims);
    const aud = claims.aud;
    const audOk = typeof aud === 'string' || (Array.isArray(aud) && aud.every((a) => typeof a === 'string'));
    if (!audOk || typeof claims.exp !== 'number') {
      throw new SpiffeError('ERR_SPIFFE_WORKLOAD_API', 'ValidateJWTSVID: the claims lack aud or exp');
    }
    return new JwtSvid(token, id, claims);
  }

  /**
   * Cancels every open call and watch and closes the channel. Idempotent.
   *
   * @example
   * ```ts
   * client.close();
   * ```
   */
  close(): void {
    if (this.closed) return;
    this.#closing.abort();
    this.#grpc.close();
  }
}
