// A fake SPIFFE Workload API for unit tests: a real grpc-js server on a temporary unix socket,
// serving whatever state the test sets. Like go-spiffe's fakeworkloadapi, every setter pushes the
// new state to every open stream (that is how rotation and redaction are tested), a `null` state
// answers PermissionDenied, and requests without the security header get InvalidArgument.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Metadata,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
  status,
} from '@grpc/grpc-js';
import {
  type Empty,
  type RawJwtSvidRequest,
  type RawJwtSvidResponse,
  type RawStruct,
  type RawValidateJwtSvidRequest,
  type RawValidateJwtSvidResponse,
  type RawValue,
  SECURITY_HEADER,
  type WorkloadApiMethodName,
  workloadApiService,
} from '../workload/proto.ts';
import type { TestX509Svid } from './ca.ts';

/** One X.509-SVID as the Workload API carries it (field names follow the proto). */
export interface FakeX509Svid {
  spiffeId: string;
  /** Concatenated DER, leaf first. */
  x509Svid: Uint8Array;
  /** PKCS#8 DER. */
  x509SvidKey: Uint8Array;
  /** Concatenated DER CA certificates of the SVID's trust domain. */
  bundle: Uint8Array;
  hint?: string;
}

/** An X509SVIDResponse. `svids` may mix raw entries and what {@link TestCa} mints. */
export interface FakeX509SvidResponse {
  svids: (FakeX509Svid | TestX509Svid)[];
  /** Keyed by `spiffe://td` or bare `td` (the fake sends the keys exactly as given). */
  federatedBundles?: Record<string, Uint8Array>;
  crl?: Uint8Array[];
}

/** One JWT-SVID the FetchJWTSVID handler returns. */
export interface FakeJwtSvid {
  spiffeId: string;
  svid: string;
  hint?: string;
}

export type FakeJwtSvidHandler = (req: {
  audience: string[];
  /** '' when the client did not ask for a specific identity. */
  spiffeId: string;
}) => FakeJwtSvid[] | Promise<FakeJwtSvid[]>;

export type FakeValidateHandler = (req: {
  audience: string;
  svid: string;
}) =>
  | { spiffeId: string; claims: Record<string, unknown> }
  | Promise<{ spiffeId: string; claims: Record<string, unknown> }>;

/**
 * A gRPC status a handler can throw to fail its call (see {@link fakeStatus}).
 *
 * @example
 * ```ts
 * fake.setValidateHandler(() => { throw new FakeStatusError(grpc.status.PERMISSION_DENIED, 'no identity'); });
 * ```
 */
export class FakeStatusError extends Error {
  readonly code: number;
  constructor(code: number, details: string) {
    super(details);
    this.code = code;
  }
}

/**
 * Makes an error that fails the handler's call with `code`.
 *
 * @example
 * ```ts
 * fake.setValidateHandler(() => { throw fakeStatus(grpc.status.INVALID_ARGUMENT, 'bad token'); });
 * ```
 */
export function fakeStatus(code: number, details: string): FakeStatusError {
  return new FakeStatusError(code, details);
}

export type FakeRpc = WorkloadApiMethodName;

type StreamRpc = 'FetchX509SVID' | 'FetchX509Bundles' | 'FetchJWTBundles';
type AnyStream = ServerWritableStream<Empty, unknown>;

interface InjectedError {
  code: number;
  details: string;
  /** Remaining calls to fail; Infinity for "until cleared". */
  remaining: number;
}

const RPCS: readonly FakeRpc[] = [
  'FetchX509SVID',
  'FetchX509Bundles',
  'FetchJWTSVID',
  'FetchJWTBundles',
  'ValidateJWTSVID',
  'FetchWITSVID',
  'FetchWITBundles',
];

function isTestSvid(s: FakeX509Svid | TestX509Svid): s is TestX509Svid {
  return 'certsDer' in s;
}

function toValue(v: unknown): RawValue {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (typeof v === 'object') return { structValue: toStruct(v as Record<string, unknown>) };
  return { stringValue: String(v) };
}

function toStruct(o: Record<string, unknown>): RawStruct {
  const fields: Record<string, RawValue> = {};
  for (const [k, v] of Object.entries(o)) fields[k] = toValue(v);
  return { fields };
}

function jwksBytes(v: Uint8Array | string | object): Buffer {
  if (v instanceof Uint8Array) return Buffer.from(v);
  return Buffer.from(typeof v === 'string' ? v : JSON.stringify(v));
}

/**
 * A Workload API server for tests.
 *
 * @example
 * ```ts
 * const ca = await TestCa.create('example.org');
 * const fake = await FakeWorkloadApi.start();
 * fake.setX509Svids({ svids: [await ca.createX509Svid('spiffe://example.org/web')] });
 * const client = new WorkloadApiClient({ address: fake.address });
 * // ... rotate: fake.setX509Svids({ svids: [await ca.createX509Svid('spiffe://example.org/web')] });
 * client.close();
 * await fake.stop();
 * ```
 */
export class FakeWorkloadApi {
  /** `unix:///…/workload.sock` (or `tcp://127.0.0.1:<port>`). */
  readonly address: string;
  readonly #server: Server;
  readonly #dir: string | undefined;
  readonly #streams = new Map<StreamRpc, Set<AnyStream>>([
    ['FetchX509SVID', new Set()],
    ['FetchX509Bundles', new Set()],
    ['FetchJWTBundles', new Set()],
  ]);
  readonly #state = new Map<StreamRpc, unknown>();
  readonly #errors = new Map<FakeRpc, InjectedError>();
  #jwtSvidHandler: FakeJwtSvidHandler | undefined;
  #validateHandler: FakeValidateHandler | undefined;
  #stopped = false;
  /** Calls received per RPC (including refused ones). */
  readonly calls: Record<FakeRpc, number> = Object.fromEntries(RPCS.map((r) => [r, 0])) as Record<
    FakeRpc,
    number
  >;
  /** Calls refused for a missing security header. */
  headerlessCalls = 0;
  /** The most recent FetchJWTSVID request. */
  lastJwtSvidRequest: { audience: string[]; spiffeId: string } | undefined;

  private constructor(server: Server, address: string, dir: string | undefined) {
    this.#server = server;
    this.address = address;
    this.#dir = dir;
  }

  /**
   * Starts a server on a fresh socket under `os.tmpdir()` (kept short: unix socket paths are
   * limited to 108 bytes), or on `127.0.0.1:<random port>` with `{ tcp: true }`.
   */
  static async start(opts: { tcp?: boolean } = {}): Promise<FakeWorkloadApi> {
    const server = new Server();
    let fake: FakeWorkloadApi | undefined;
    const self = () => {
      if (!fake) throw new Error('FakeWorkloadApi not started');
      return fake;
    };
    server.addService(workloadApiService(), {
      FetchX509SVID: (call: AnyStream) => self().#onStream('FetchX509SVID', call),
      FetchX509Bundles: (call: AnyStream) => self().#onStream('FetchX509Bundles', call),
      FetchJWTBundles: (call: AnyStream) => self().#onStream('FetchJWTBundles', call),
      FetchJWTSVID: (
        call: ServerUnaryCall<RawJwtSvidRequest, RawJwtSvidResponse>,
        cb: sendUnaryData<RawJwtSvidResponse>,
      ) => void self().#onJwtSvid(call, cb),
      ValidateJWTSVID: (
        call: ServerUnaryCall<RawValidateJwtSvidRequest, RawValidateJwtSvidResponse>,
        cb: sendUnaryData<RawValidateJwtSvidResponse>,
      ) => void self().#onValidate(call, cb),
      FetchWITSVID: (call: AnyStream) =>
        self().#refuse('FetchWITSVID', call, status.UNIMPLEMENTED, 'WIT-SVIDs'),
      FetchWITBundles: (call: AnyStream) =>
        self().#refuse('FetchWITBundles', call, status.UNIMPLEMENTED, 'WIT bundles'),
    });
    let dir: string | undefined;
    let target: string;
    if (opts.tcp) {
      target = '127.0.0.1:0';
    } else {
      dir = mkdtempSync(join(tmpdir(), 'tpwl-'));
      target = `unix:${join(dir, 'workload.sock')}`;
    }
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(target, ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    const address = opts.tcp ? `tcp://127.0.0.1:${port}` : `unix://${join(dir!, 'workload.sock')}`;
    fake = new FakeWorkloadApi(server, address, dir);
    return fake;
  }

  /** Streams currently open for `rpc`. */
  openStreams(rpc: StreamRpc): number {
    return this.#streams.get(rpc)!.size;
  }

  /** Sets the FetchX509SVID state and pushes it to open streams; `null` → PermissionDenied. */
  setX509Svids(resp: FakeX509SvidResponse | null): void {
    this.#set('FetchX509SVID', resp === null ? null : this.#x509SvidMessage(resp));
  }

  /** Sets the FetchX509Bundles state (DER per trust domain key); `null` → PermissionDenied. */
  setX509Bundles(bundles: Record<string, Uint8Array> | null): void {
    this.#set(
      'FetchX509Bundles',
      bundles === null
        ? null
        : {
            crl: [],
            bundles: Object.fromEntries(Object.entries(bundles).map(([k, v]) => [k, Buffer.from(v)])),
          },
    );
  }

  /** Sets the FetchJWTBundles state (JWKS per trust domain key); `null` → PermissionDenied. */
  setJwtBundles(bundles: Record<string, Uint8Array | string | object> | null): void {
    this.#set(
      'FetchJWTBundles',
      bundles === null
        ? null
        : { bundles: Object.fromEntries(Object.entries(bundles).map(([k, v]) => [k, jwksBytes(v)])) },
    );
  }

  /** Answers FetchJWTSVID; without a handler the fake says PermissionDenied. */
  setJwtSvidHandler(handler: FakeJwtSvidHandler | undefined): void {
    this.#jwtSvidHandler = handler;
  }

  /** Answers ValidateJWTSVID; without a handler the fake says PermissionDenied. */
  setValidateHandler(handler: FakeValidateHandler | undefined): void {
    this.#validateHandler = handler;
  }

  /**
   * Fails the next `times` calls (default: all, until cleared with `null`) of `rpc` with `code`.
   * Streams already open are not affected; use {@link endStreams} for those.
   */
  setError(rpc: FakeRpc, code: number | null, opts: { details?: string; times?: number } = {}): void {
    if (code === null) this.#errors.delete(rpc);
    else
      this.#errors.set(rpc, { code, details: opts.details ?? 'injected', remaining: opts.times ?? Infinity });
  }

  /** Ends every open stream of `rpc` with `code` (default UNAVAILABLE), as a restarting agent would. */
  endStreams(rpc: StreamRpc, code: number = status.UNAVAILABLE, details = 'stream ended by the fake'): void {
    const streams = this.#streams.get(rpc)!;
    for (const call of [...streams]) this.#fail(rpc, call, code, details);
  }

  /** Stops the server (cancelling open streams) and removes the socket directory. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const set of this.#streams.values()) set.clear();
    this.#server.forceShutdown();
    if (this.#dir) rmSync(this.#dir, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  #x509SvidMessage(resp: FakeX509SvidResponse): unknown {
    return {
      svids: resp.svids.map((s) =>
        isTestSvid(s)
          ? {
              spiffe_id: s.id.toString(),
              x509_svid: Buffer.from(s.certsDer),
              x509_svid_key: Buffer.from(s.keyDer),
              bundle: Buffer.from(s.bundleDer),
              hint: s.hint ?? '',
            }
          : {
              spiffe_id: s.spiffeId,
              x509_svid: Buffer.from(s.x509Svid),
              x509_svid_key: Buffer.from(s.x509SvidKey),
              bundle: Buffer.from(s.bundle),
              hint: s.hint ?? '',
            },
      ),
      crl: (resp.crl ?? []).map((c) => Buffer.from(c)),
      federated_bundles: Object.fromEntries(
        Object.entries(resp.federatedBundles ?? {}).map(([k, v]) => [k, Buffer.from(v)]),
      ),
    };
  }

  #set(rpc: StreamRpc, message: unknown): void {
    this.#state.set(rpc, message);
    for (const call of [...this.#streams.get(rpc)!]) {
      if (message === null) this.#fail(rpc, call, status.PERMISSION_DENIED, 'no identity issued');
      else call.write(message);
    }
  }

  #fail(rpc: StreamRpc | FakeRpc, call: AnyStream, code: number, details: string): void {
    this.#streams.get(rpc as StreamRpc)?.delete(call);
    call.emit('error', { code, details, metadata: new Metadata() });
  }

  /** Header check and injected errors, shared by every RPC. Returns the status to fail with, if any. */
  #gate(rpc: FakeRpc, metadata: Metadata): { code: number; details: string } | undefined {
    this.calls[rpc]++;
    const header = metadata.get(SECURITY_HEADER);
    if (header.length !== 1 || header[0] !== 'true') {
      this.headerlessCalls++;
      // SPIRE's wording (pkg/agent/endpoints/middleware.go).
      return { code: status.INVALID_ARGUMENT, details: 'security header missing from request' };
    }
    const injected = this.#errors.get(rpc);
    if (injected) {
      if (--injected.remaining <= 0) this.#errors.delete(rpc);
      return { code: injected.code, details: injected.details };
    }
    return undefined;
  }

  #refuse(rpc: FakeRpc, call: AnyStream, code: number, what: string): void {
    const refused = this.#gate(rpc, call.metadata);
    if (refused) this.#fail(rpc, call, refused.code, refused.details);
    else this.#fail(rpc, call, code, `${what} are not implemented`);
  }

  #onStream(rpc: StreamRpc, call: AnyStream): void {
    const refused = this.#gate(rpc, call.metadata);
    if (refused) {
      this.#fail(rpc, call, refused.code, refused.details);
      return;
    }
    const state = this.#state.get(rpc) ?? null;
    if (state === null) {
      this.#fail(rpc, call, status.PERMISSION_DENIED, 'no identity issued');
      return;
    }
    const streams = this.#streams.get(rpc)!;
    streams.add(call);
    call.on('cancelled', () => streams.delete(call));
    call.on('close', () => streams.delete(call));
    call.write(state);
  }

  async #onJwtSvid(
    call: ServerUnaryCall<RawJwtSvidRequest, RawJwtSvidResponse>,
    cb: sendUnaryData<RawJwtSvidResponse>,
  ): Promise<void> {
    const refused = this.#gate('FetchJWTSVID', call.metadata);
    if (refused) return cb(refused);
    const req = { audience: [...call.request.audience], spiffeId: call.request.spiffe_id };
    this.lastJwtSvidRequest = req;
    if (req.audience.length === 0)
      return cb({ code: status.INVALID_ARGUMENT, details: 'audience must be specified' });
    if (!this.#jwtSvidHandler) return cb({ code: status.PERMISSION_DENIED, details: 'no identity issued' });
    try {
      const svids = await this.#jwtSvidHandler(req);
      cb(null, { svids: svids.map((s) => ({ spiffe_id: s.spiffeId, svid: s.svid, hint: s.hint ?? '' })) });
    } catch (e) {
      cb(
        e instanceof FakeStatusError
          ? { code: e.code, details: e.message }
          : { code: status.INTERNAL, details: String(e) },
      );
    }
  }

  async #onValidate(
    call: ServerUnaryCall<RawValidateJwtSvidRequest, RawValidateJwtSvidResponse>,
    cb: sendUnaryData<RawValidateJwtSvidResponse>,
  ): Promise<void> {
    const refused = this.#gate('ValidateJWTSVID', call.metadata);
    if (refused) return cb(refused);
    if (call.request.audience === '')
      return cb({ code: status.INVALID_ARGUMENT, details: 'audience must be specified' });
    if (call.request.svid === '')
      return cb({ code: status.INVALID_ARGUMENT, details: 'svid must be specified' });
    if (!this.#validateHandler) return cb({ code: status.PERMISSION_DENIED, details: 'no identity issued' });
    try {
      const res = await this.#validateHandler({ audience: call.request.audience, svid: call.request.svid });
      cb(null, { spiffe_id: res.spiffeId, claims: toStruct(res.claims) });
    } catch (e) {
      cb(
        e instanceof FakeStatusError
          ? { code: e.code, details: e.message }
          : { code: status.INTERNAL, details: String(e) },
      );
    }
  }
}
