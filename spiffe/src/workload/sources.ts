// Live sources: each keeps a watch open and caches the latest full state. A new message replaces
// the whole state object in one assignment, so a reader never sees half of an update. When the
// Workload API says PermissionDenied the state is dropped (SPIFFE_Workload_API.md §5.2.1): a
// workload whose identity was revoked must stop presenting it and stop trusting those bundles.
import { EventEmitter } from 'node:events';
import { type JwtBundle, JwtBundleSet, type JwtBundleSource } from '../bundle/jwt.ts';
import { type X509Bundle, X509BundleSet, type X509BundleSource } from '../bundle/x509.ts';
import { isSpiffeError, SpiffeError } from '../errors.ts';
import type { TrustDomain } from '../id.ts';
import type { JwtSvid } from '../svid/jwt.ts';
import type { X509Svid, X509SvidSource } from '../svid/x509.ts';
import {
  type CallSignalOptions,
  type FetchJwtSvidParams,
  WorkloadApiClient,
  type X509Context,
} from './client.ts';
import { type BackoffStrategy, FirstUpdateGate, type Watcher, type WorkloadApiLogger } from './watcher.ts';

/** Options shared by every source. */
export interface SourceOptions {
  /** Use this client (the source does not close it). Default: a new client the source owns. */
  client?: WorkloadApiClient;
  /** For the source's own client; default `SPIFFE_ENDPOINT_SOCKET`. */
  address?: string;
  logger?: WorkloadApiLogger;
  /** For the source's own client. */
  backoff?: BackoffStrategy;
  /**
   * Reject `create()` with `ERR_SPIFFE_TIMEOUT` if no first update arrives in time. Default: wait
   * as long as it takes (SPIRE holds the first message until every SVID of the workload is ready).
   */
  timeoutMs?: number;
}

/** Events of every source: `'update'` after each new state, `'error'` for each Workload API failure. */
export interface SourceEvents {
  update: [];
  error: [Error];
}

/**
 * Whether the Workload API is reachable, as the source last saw it: `up` after a message (or
 * while the stream it came on stays open), `down` after the stream failed, until the next message
 * arrives. A silent stream counts as up: SPIRE sends only on change. A hung agent is caught by
 * {@link X509SourceHealth.svid} instead (`stale` once the SVID is overdue for rotation).
 */
export type WorkloadApiState = 'up' | 'down';

/** How a source's connection to the Workload API stands (see {@link LiveSource.health}). */
export interface SourceHealth {
  readonly workloadApi: WorkloadApiState;
  /** When the last update arrived; undefined before the first. */
  readonly lastUpdateAt: Date | undefined;
  /** Code of the last stream failure since the last update (e.g. `ERR_SPIFFE_WORKLOAD_API`). */
  readonly lastErrorCode: string | undefined;
}

/**
 * The state of the source's own X.509-SVID:
 * - `fresh`: valid, and the Workload API is up and rotating it on time;
 * - `stale`: still valid, but the Workload API is down, or the SVID is overdue for rotation (less
 *   than a quarter of its lifetime left; SPIRE rotates at about half), so it will expire unless the
 *   agent comes back. Keep serving with it;
 * - `expired`: past its notAfter (or before its notBefore): do not serve with it;
 * - `missing`: no SVID (redacted on PermissionDenied, the picker chose none, or closed).
 */
export type SvidState = 'fresh' | 'stale' | 'expired' | 'missing';

/** {@link SourceHealth} plus the SVID the source would present now. */
export interface X509SourceHealth extends SourceHealth {
  readonly svid: SvidState;
  readonly spiffeId: string | undefined;
  readonly expiresAt: Date | undefined;
}

/** A rotation is overdue once less than this share of the SVID's lifetime remains. */
const OVERDUE_REMAINING_SHARE = 0.25;

/**
 * The state of `svid` at `now` given the Workload API state (exported for the readiness of
 * components that hold an SVID some other way).
 *
 * @example
 * ```ts
 * svidState(source.getX509Svid(), 'up'); // 'fresh'
 * ```
 */
export function svidState(
  svid: X509Svid | undefined,
  workloadApi: WorkloadApiState,
  now: number = Date.now(),
): SvidState {
  if (!svid) return 'missing';
  const leaf = svid.certificates[0];
  const notBefore = leaf ? Date.parse(leaf.validFrom) : Number.NaN;
  const notAfter = svid.expiresAt.getTime();
  if (!(now < notAfter) || !(now >= notBefore)) return 'expired';
  if (workloadApi === 'down') return 'stale';
  return notAfter - now < (notAfter - notBefore) * OVERDUE_REMAINING_SHARE ? 'stale' : 'fresh';
}

function closedError(what: string): SpiffeError {
  return new SpiffeError('ERR_SPIFFE_CLOSED', `the ${what} is closed`);
}

/** What every source does the same way: own (or borrow) a client, run watches, gate, close. */
class SourceRuntime {
  readonly client: WorkloadApiClient;
  readonly #ownsClient: boolean;
  readonly #stop = new AbortController();
  readonly #gates: FirstUpdateGate[] = [];
  readonly #running: Promise<void>[] = [];
  readonly #logger: WorkloadApiLogger | undefined;
  readonly #timeoutMs: number | undefined;
  readonly #what: string;
  // Per watch: is its stream up? The source is up only when all of them are.
  readonly #down = new Set<number>();
  #lastUpdateAt: Date | undefined;
  #lastErrorCode: string | undefined;

  constructor(what: string, opts: SourceOptions) {
    this.#what = what;
    this.#logger = opts.logger;
    this.#timeoutMs = opts.timeoutMs;
    if (opts.client) {
      this.client = opts.client;
      this.#ownsClient = false;
    } else {
      const clientOpts: ConstructorParameters<typeof WorkloadApiClient>[0] = {};
      if (opts.address !== undefined) clientOpts.address = opts.address;
      if (opts.logger !== undefined) clientOpts.logger = opts.logger;
      if (opts.backoff !== undefined) clientOpts.backoff = opts.backoff;
      this.client = new WorkloadApiClient(clientOpts);
      this.#ownsClient = true;
    }
  }

  get closed(): boolean {
    return this.#stop.signal.aborted;
  }

  health(): SourceHealth {
    return {
      workloadApi: this.closed || this.#down.size > 0 ? 'down' : 'up',
      lastUpdateAt: this.#lastUpdateAt,
      lastErrorCode: this.#lastErrorCode,
    };
  }

  assertOpen(): void {
    if (this.closed) throw closedError(this.#what);
  }

  /** Starts one watch; `apply` receives updates, `report` every error (and the fatal one). */
  watch<T>(
    start: (w: Watcher<T>, signal: AbortSignal) => Promise<void>,
    apply: (v: T) => void,
    report: (e: Error) => void,
  ): void {
    const gate = new FirstUpdateGate(this.#what, this.#timeoutMs);
    const index = this.#gates.push(gate) - 1;
    // Down until the first message: a source that never got one has nothing to serve with.
    this.#down.add(index);
    const run = start(
      {
        onUpdate: (v) => {
          this.#down.delete(index);
          this.#lastUpdateAt = new Date();
          this.#lastErrorCode = undefined;
          apply(v);
          gate.updated();
        },
        onError: (e) => {
          // Only a failed stream means the API is unreachable; an invalid message came over a
          // working one.
          if (isSpiffeError(e, 'ERR_SPIFFE_WORKLOAD_API') || isSpiffeError(e, 'ERR_SPIFFE_NO_IDENTITY')) {
            if (isSpiffeError(e, 'ERR_SPIFFE_WORKLOAD_API')) this.#down.add(index);
            this.#lastErrorCode = e.code;
          }
          gate.noteError(e);
          report(e);
        },
      },
      this.#stop.signal,
    ).then(
      () => gate.fail(closedError(this.#what)),
      (e: unknown) => {
        // Already reported through onError; the watch is over, so nothing more will arrive.
        const err = e instanceof Error ? e : new Error(String(e));
        gate.fail(err);
        this.#logger?.warn?.({ err: err.message }, `${this.#what}: watch stopped`);
      },
    );
    this.#running.push(run);
  }

  async ready(): Promise<void> {
    await Promise.all(this.#gates.map((g) => g.ready));
  }

  async close(): Promise<void> {
    if (!this.closed) {
      this.#stop.abort();
      for (const g of this.#gates) g.fail(closedError(this.#what));
    }
    // Wait for the streams to wind down so no handle outlives close().
    await Promise.allSettled(this.#running);
    if (this.#ownsClient) this.client.close();
  }

  emitError(emitter: EventEmitter<SourceEvents>, e: Error): void {
    // An 'error' event without a listener would throw out of a gRPC callback; log instead.
    if (emitter.listenerCount('error') > 0) emitter.emit('error', e);
    else this.#logger?.warn?.({ code: isSpiffeError(e) ? e.code : undefined, err: e.message }, this.#what);
  }
}

/**
 * What the three sources share: the runtime, the first-update gate in `create()`, redaction of a
 * whole stream's state on PermissionDenied, and closing.
 */
abstract class LiveSource extends EventEmitter<SourceEvents> implements AsyncDisposable {
  protected readonly rt: SourceRuntime;

  protected constructor(what: string, opts: SourceOptions) {
    super();
    this.rt = new SourceRuntime(what, opts);
  }

  /** Resolves `source` once every watch delivered its first update; closes it on failure. */
  protected static async started<S extends LiveSource>(source: S): Promise<S> {
    try {
      await source.rt.ready();
    } catch (e) {
      await source.close();
      throw e;
    }
    return source;
  }

  /** An error handler that drops the state (`drop`) on PermissionDenied and says so with `'update'`. */
  protected redacting(has: () => boolean, drop: () => void): (e: Error) => void {
    return (e) => {
      const redact = isSpiffeError(e, 'ERR_SPIFFE_NO_IDENTITY') && has();
      if (redact) drop();
      this.rt.emitError(this, e);
      if (redact) this.emit('update');
    };
  }

  /** Watches a stream whose whole state is one value, replaced on each update. */
  protected watchValue<T>(
    start: (w: Watcher<T>, signal: AbortSignal) => Promise<void>,
    get: () => T | undefined,
    set: (v: T | undefined) => void,
  ): void {
    this.rt.watch<T>(
      start,
      (v) => {
        set(v);
        this.emit('update');
      },
      this.redacting(
        () => get() !== undefined,
        () => set(undefined),
      ),
    );
  }

  /**
   * How the connection to the Workload API stands, for readiness and metrics. Never throws (also
   * not after close, when it reports `down`).
   */
  health(): SourceHealth {
    return this.rt.health();
  }

  /** Stops the watches (and closes the client if the source created it). Idempotent. */
  async close(): Promise<void> {
    await this.rt.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * A picker for {@link X509SourceOptions.picker} that chooses the SVID whose registration entry has
 * `hint` (SPIFFE Workload API `X509SVID.hint`). It chooses none when no SVID has that hint, so the
 * source reports `ERR_SPIFFE_NO_IDENTITY` rather than silently presenting another identity.
 *
 * @example
 * ```ts
 * await using source = await X509Source.create({ picker: pickByHint('broker') });
 * ```
 */
export function pickByHint(hint: string): (svids: readonly X509Svid[]) => X509Svid | undefined {
  return (svids) => svids.find((s) => s.hint === hint);
}

export interface X509SourceOptions extends SourceOptions {
  /** Chooses the SVID `getX509Svid()` returns (e.g. {@link pickByHint}). Default: `svids[0]`. */
  picker?: (svids: readonly X509Svid[]) => X509Svid | undefined;
}

interface X509State {
  readonly context: X509Context;
  readonly svid: X509Svid | undefined;
}

/**
 * The workload's X.509-SVID and bundles, kept current from the Workload API. Emits `'update'` on
 * every new state (rotation) and on redaction, `'error'` on each failure (`ERR_SPIFFE_NO_IDENTITY`
 * when the agent has no identity for this workload).
 *
 * @example
 * ```ts
 * await using source = await X509Source.create(); // SPIFFE_ENDPOINT_SOCKET
 * const svid = source.getX509Svid();
 * source.on('update', () => reloadTls(source.getX509Svid()));
 * ```
 */
export class X509Source extends LiveSource implements X509SvidSource, X509BundleSource {
  readonly #picker: X509SourceOptions['picker'];
  #state: X509State | undefined;

  private constructor(opts: X509SourceOptions) {
    super('X509Source', opts);
    this.#picker = opts.picker;
    this.rt.watch<X509Context>(
      (w, signal) => this.rt.client.watchX509Context(w, signal),
      (ctx) => this.#apply(ctx),
      this.redacting(
        () => this.#state !== undefined,
        () => {
          this.#state = undefined;
        },
      ),
    );
  }

  /**
   * Starts watching and resolves on the first update.
   *
   * @throws SpiffeError `ERR_SPIFFE_TIMEOUT` (with `timeoutMs`), `ERR_SPIFFE_INVALID_ADDRESS`,
   *   `ERR_SPIFFE_WORKLOAD_API` (InvalidArgument/Unimplemented), `ERR_SPIFFE_CLOSED`
   */
  static create(opts: X509SourceOptions = {}): Promise<X509Source> {
    return LiveSource.started(new X509Source(opts));
  }

  #apply(context: X509Context): void {
    let svid: X509Svid | undefined = context.svids[0];
    if (this.#picker) {
      try {
        svid = this.#picker(context.svids);
      } catch (e) {
        svid = undefined;
        this.rt.emitError(this, e instanceof Error ? e : new Error(String(e)));
      }
    }
    this.#state = { context, svid };
    this.emit('update');
  }

  /**
   * The current SVID (`svids[0]`, or the picker's choice).
   *
   * @throws SpiffeError `ERR_SPIFFE_NO_IDENTITY` when redacted (or the picker chose none),
   *   `ERR_SPIFFE_CLOSED`
   */
  getX509Svid(): X509Svid {
    this.rt.assertOpen();
    const svid = this.#state?.svid;
    if (!svid) {
      throw new SpiffeError(
        'ERR_SPIFFE_NO_IDENTITY',
        this.#state
          ? 'the picker chose no X.509-SVID'
          : 'the Workload API has no X.509-SVID for this workload',
      );
    }
    return svid;
  }

  /**
   * The Workload API state plus the SVID `getX509Svid()` would return and its {@link SvidState}
   * at `now`. Never throws.
   *
   * @example
   * ```ts
   * const h = source.health();
   * if (h.svid === 'stale') log.warn({ expiresAt: h.expiresAt }, 'Workload API down; serving the cached SVID');
   * ```
   */
  override health(now: number = Date.now()): X509SourceHealth {
    const base = this.rt.health();
    const svid = this.rt.closed ? undefined : this.#state?.svid;
    return {
      ...base,
      svid: svidState(svid, base.workloadApi, now),
      spiffeId: svid?.id.toString(),
      expiresAt: svid?.expiresAt,
    };
  }

  /** The bundle of `td` (own or federated); undefined if unknown or redacted. */
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    this.rt.assertOpen();
    return this.#state?.context.bundles.get(td);
  }

  /** Every bundle in the current state (the TLS helpers use this to build their `ca` list). */
  getX509Bundles(): X509BundleSet {
    this.rt.assertOpen();
    return this.#state?.context.bundles ?? new X509BundleSet();
  }

  /**
   * The whole current context.
   *
   * @throws SpiffeError `ERR_SPIFFE_NO_IDENTITY` when redacted, `ERR_SPIFFE_CLOSED`
   */
  getX509Context(): X509Context {
    this.rt.assertOpen();
    if (!this.#state) {
      throw new SpiffeError(
        'ERR_SPIFFE_NO_IDENTITY',
        'the Workload API has no X.509 context for this workload',
      );
    }
    return this.#state.context;
  }
}

/**
 * JWT bundles kept current from the Workload API, plus JWT-SVID fetching (delegated to the client:
 * the agent caches tokens itself).
 *
 * @example
 * ```ts
 * await using jwt = await JwtSource.create();
 * const svid = await jwt.fetchJwtSvid({ audience: ['https://broker.example.org'] });
 * const peer = await parseAndValidateJwtSvid(token, jwt, 'https://broker.example.org');
 * ```
 */
export class JwtSource extends LiveSource implements JwtBundleSource {
  #bundles: JwtBundleSet | undefined;

  private constructor(opts: SourceOptions) {
    super('JwtSource', opts);
    this.watchValue<JwtBundleSet>(
      (w, signal) => this.rt.client.watchJwtBundles(w, signal),
      () => this.#bundles,
      (v) => {
        this.#bundles = v;
      },
    );
  }

  /** Starts watching JWT bundles and resolves on the first update. @throws SpiffeError */
  static create(opts: SourceOptions = {}): Promise<JwtSource> {
    return LiveSource.started(new JwtSource(opts));
  }

  /** A JWT-SVID from the agent. @throws SpiffeError */
  fetchJwtSvid(params: FetchJwtSvidParams & CallSignalOptions): Promise<JwtSvid> {
    this.rt.assertOpen();
    return this.rt.client.fetchJwtSvid(params);
  }

  /** Every JWT-SVID the agent issues for the audience. @throws SpiffeError */
  fetchJwtSvids(params: FetchJwtSvidParams & CallSignalOptions): Promise<JwtSvid[]> {
    this.rt.assertOpen();
    return this.rt.client.fetchJwtSvids(params);
  }

  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
    this.rt.assertOpen();
    return this.#bundles?.get(td);
  }

  /** The current set; empty when redacted. */
  getJwtBundles(): JwtBundleSet {
    this.rt.assertOpen();
    return this.#bundles ?? new JwtBundleSet();
  }
}

/**
 * X.509 and JWT bundles kept current from the Workload API, for workloads that verify peers. Uses
 * FetchX509Bundles, which SPIRE can serve without an identity (`allow_unauthenticated_verifiers`).
 *
 * @example
 * ```ts
 * await using bundles = await BundleSource.create();
 * verifyX509Svid(peerChain, bundles);
 * ```
 */
export class BundleSource extends LiveSource implements X509BundleSource, JwtBundleSource {
  // Two independent streams, so two fields; each is still replaced in one assignment.
  #x509: X509BundleSet | undefined;
  #jwt: JwtBundleSet | undefined;

  private constructor(opts: SourceOptions) {
    super('BundleSource', opts);
    this.watchValue<X509BundleSet>(
      (w, signal) => this.rt.client.watchX509Bundles(w, signal),
      () => this.#x509,
      (v) => {
        this.#x509 = v;
      },
    );
    this.watchValue<JwtBundleSet>(
      (w, signal) => this.rt.client.watchJwtBundles(w, signal),
      () => this.#jwt,
      (v) => {
        this.#jwt = v;
      },
    );
  }

  /** Starts both watches and resolves once each has delivered its first update. @throws SpiffeError */
  static create(opts: SourceOptions = {}): Promise<BundleSource> {
    return LiveSource.started(new BundleSource(opts));
  }

  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    this.rt.assertOpen();
    return this.#x509?.get(td);
  }

  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
    this.rt.assertOpen();
    return this.#jwt?.get(td);
  }

  getX509Bundles(): X509BundleSet {
    this.rt.assertOpen();
    return this.#x509 ?? new X509BundleSet();
  }

  getJwtBundles(): JwtBundleSet {
    this.rt.assertOpen();
    return this.#jwt ?? new JwtBundleSet();
  }
}
