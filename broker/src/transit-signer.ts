// Call tokens signed by a Vault Transit key (ECDSA P-256): the private key never leaves Vault.
//
// Each Transit key version is one signing key; its kid is the JWK thumbprint of its public key, as
// for the broker's own keys. The schedule follows keys.ts, with Vault's `creation_time` of a version
// as its createdAt (so replicas sharing the Transit key agree without talking to each other):
//   createdAt   published in the JWKS (not signing yet)
//   activeFrom  = createdAt + prepublish (the key's first version: createdAt, it must sign at once)
//   retireAt    = activeFrom + rotateEvery: from retireAt - prepublish a successor is made with
//               Transit `rotate`, which signs only after its own full prepublish
//   a version stays published until its successor has signed for maxTokenTtl (its last token expired).
// Signing names the version (`key_version`), so Transit's own "latest" never signs early.
//
// Signing: `prehashed` SHA-256 with `marshaling_algorithm=jws`, so Vault answers the IEEE P1363
// signature a JWS carries. Requests that arrive while others are in flight are sent together with
// `batch_input`; the queue is bounded. Vault unreachable or sealed → TASKPASS_SIGNER_UNAVAILABLE.
import { createHash, createPublicKey } from 'node:crypto';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { KeySchedule, type KeyScheduleOptions } from './key-schedule.ts';
import { BrokerError } from './errors.ts';
import type { PublicSigningJwk } from './keys.ts';
import type { TokenSigningKey } from './mint.ts';
import { VaultRequestError, type VaultResponse } from './vault.ts';

/** What the signer needs of Vault (VaultClient; tests may hand in another). */
export interface VaultPort {
  read(path: string): Promise<VaultResponse>;
  write(path: string, data: Record<string, unknown>): Promise<VaultResponse>;
}

/** Options of {@link TransitSigner.open}. */
export interface TransitSignerOptions extends KeyScheduleOptions {
  /** Transit key name; created (ecdsa-p256) when missing. */
  key: string;
  /** Transit mount (default `transit`). */
  mount?: string;
  /** Most signatures in one `batch_input` request (default 64). */
  maxBatch?: number;
  /** Sign requests in flight to Vault at once (default 4). */
  maxInFlight?: number;
  /** Signatures waiting at most; more are refused at once (default 1024). */
  maxQueue?: number;
}

interface Version {
  version: number;
  createdAt: number;
  activeFrom: number;
  retireAt: number;
  jwk: PublicSigningJwk;
}

interface Pending {
  version: number;
  digest: string;
  resolve: (sig: Buffer) => void;
  reject: (err: unknown) => void;
}

const unavailable = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('TASKPASS_SIGNER_UNAVAILABLE', message, undefined, cause ? { cause } : undefined);

/** A Vault Transit signature `vault:v<N>:<base64url r||s>` → its bytes. */
function signatureBytes(s: unknown): Buffer {
  const m = typeof s === 'string' ? /^vault:v\d+:([A-Za-z0-9_-]+={0,2})$/.exec(s) : null;
  const sig = m ? Buffer.from(m[1] as string, 'base64url') : Buffer.alloc(0);
  if (sig.length !== 64) throw unavailable('vault transit answered a malformed ES256 signature');
  return sig;
}

async function publicJwkOf(pem: string): Promise<PublicSigningJwk> {
  const jwk = createPublicKey(pem).export({ format: 'jwk' }) as JWK;
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || !jwk.x || !jwk.y) {
    throw new Error('vault transit key is not ECDSA P-256 (create it with type ecdsa-p256)');
  }
  const kid = await calculateJwkThumbprint({ kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y }, 'sha256');
  return { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, kid, alg: 'ES256', use: 'sig' };
}

/**
 * The broker's signing keys kept in Vault Transit. The same face as SigningKeys (keys.ts):
 * `current()` and `jwks()` are synchronous reads of the loaded versions; `rotateIfDue()` (run by
 * `start()`'s timer) reloads them, rotates the Transit key when due and retires old versions.
 */
export class TransitSigner extends KeySchedule {
  readonly protection = 'vault-transit' as const;
  readonly #vault: VaultPort;
  readonly #o: { key: string; mount: string; maxBatch: number; maxInFlight: number; maxQueue: number };
  #versions: Version[] = [];
  #queue: Pending[] = [];
  #inFlight = 0;
  /** The batch sizes sent, for tests and metrics. */
  readonly batches: number[] = [];

  private constructor(vault: VaultPort, o: TransitSignerOptions) {
    super('TransitSigner', o);
    if (!/^[\w-][\w.-]*$/.test(o.key) || !/^[\w-]+(\/[\w-]+)*$/.test(o.mount ?? 'transit')) {
      throw new RangeError('TransitSigner: key and mount must be plain Vault path segments');
    }
    this.#vault = vault;
    this.#o = {
      key: o.key,
      mount: o.mount ?? 'transit',
      maxBatch: o.maxBatch ?? 64,
      maxInFlight: o.maxInFlight ?? 4,
      maxQueue: o.maxQueue ?? 1024,
    };
  }

  /**
   * Loads the Transit key's versions (creating the key when missing), so that `current()` works
   * when it resolves, and starts the schedule timer unless `autoStart: false`. Throws
   * TASKPASS_SIGNER_UNAVAILABLE when Vault cannot be reached.
   */
  static async open(vault: VaultPort, o: TransitSignerOptions): Promise<TransitSigner> {
    const s = new TransitSigner(vault, o);
    await s.rotateIfDue();
    if (o.autoStart ?? true) s.start();
    return s;
  }

  /** `<mount>/keys/<key>`, `<mount>/sign/<key>`, `<mount>/keys/<key>/rotate`. */
  #path(op: 'keys' | 'sign' | 'rotate'): string {
    const { mount, key } = this.#o;
    return op === 'rotate' ? `${mount}/keys/${key}/rotate` : `${mount}/${op}/${key}`;
  }

  /** The version that signs now (hot path, synchronous): its kid and a `sign` that goes to Vault. */
  current(): TokenSigningKey {
    const now = this.nowSec();
    let pick: Version | undefined;
    for (const v of this.#versions) if (v.activeFrom <= now) pick = v;
    if (!pick) throw unavailable('no vault transit key version is active (not loaded yet)');
    const version = pick.version;
    return { kid: pick.jwk.kid, sign: (input) => this.#sign(version, input) };
  }

  /** Public keys to publish: next, current, and retired versions whose tokens may still be valid. */
  jwks(): { keys: PublicSigningJwk[] } {
    return { keys: this.#versions.map((v) => ({ ...v.jwk })) };
  }

  /** The loaded schedule (no key material) with Transit version numbers, for tests and diagnostics. */
  schedule(): { kid: string; version: number; createdAt: number; activeFrom: number; retireAt: number }[] {
    return this.#versions.map(({ jwk, version, createdAt, activeFrom, retireAt }) => ({
      kid: jwk.kid,
      version,
      createdAt,
      activeFrom,
      retireAt,
    }));
  }

  #sign(version: number, input: Buffer): Promise<Buffer> {
    if (this.#queue.length >= this.#o.maxQueue) {
      return Promise.reject(unavailable(`vault transit signing queue is full (${this.#o.maxQueue} waiting)`));
    }
    const digest = createHash('sha256').update(input).digest('base64');
    return new Promise((resolve, reject) => {
      this.#queue.push({ version, digest, resolve, reject });
      this.#pump();
    });
  }

  /** Sends waiting signatures while fewer than maxInFlight requests are out, one version per batch. */
  #pump(): void {
    while (this.#inFlight < this.#o.maxInFlight && this.#queue.length > 0) {
      const version = (this.#queue[0] as Pending).version;
      const batch: Pending[] = [];
      const rest: Pending[] = [];
      for (const p of this.#queue) {
        if (p.version === version && batch.length < this.#o.maxBatch) batch.push(p);
        else rest.push(p);
      }
      this.#queue = rest;
      this.#inFlight++;
      void this.#send(version, batch).finally(() => {
        this.#inFlight--;
        this.#pump();
      });
    }
  }

  async #send(version: number, batch: Pending[]): Promise<void> {
    this.batches.push(batch.length);
    const common = {
      key_version: version,
      hash_algorithm: 'sha2-256',
      prehashed: true,
      marshaling_algorithm: 'jws',
    };
    try {
      const body =
        batch.length === 1
          ? { ...common, input: (batch[0] as Pending).digest }
          : { ...common, batch_input: batch.map((p) => ({ input: p.digest })) };
      const res = await this.#vault.write(this.#path('sign'), body);
      if (batch.length === 1) {
        (batch[0] as Pending).resolve(signatureBytes(res.data?.signature));
        return;
      }
      const results = res.data?.batch_results;
      if (!Array.isArray(results) || results.length !== batch.length) {
        throw unavailable('vault transit answered a batch of the wrong length');
      }
      for (const [i, p] of batch.entries()) {
        const r = results[i] as { signature?: unknown; error?: unknown };
        try {
          if (r.error) throw unavailable(`vault transit refused to sign: ${String(r.error)}`);
          p.resolve(signatureBytes(r.signature));
        } catch (err) {
          p.reject(err);
        }
      }
    } catch (err) {
      const e =
        err instanceof BrokerError
          ? err
          : unavailable(`vault transit signing failed: ${(err as Error).message}`, err);
      if (!(err instanceof BrokerError))
        this.rotation.logger?.warn({ err: (err as Error).message }, 'vault transit sign failed');
      for (const p of batch) p.reject(e);
    }
  }

  async #load(): Promise<Version[]> {
    let res: VaultResponse;
    try {
      res = await this.#vault.read(this.#path('keys'));
    } catch (err) {
      if (!(err instanceof VaultRequestError && err.status === 404)) throw err;
      await this.#vault.write(this.#path('keys'), { type: 'ecdsa-p256' });
      this.rotation.logger?.info({ key: this.#o.key }, 'vault transit key created');
      res = await this.#vault.read(this.#path('keys'));
    }
    if (res.data?.type !== 'ecdsa-p256') {
      throw new Error(`vault transit key ${this.#o.key} is ${String(res.data?.type)}, not ecdsa-p256`);
    }
    const raw = (res.data.keys ?? {}) as Record<string, { public_key?: string; creation_time?: string }>;
    const known = new Map(this.#versions.map((v) => [v.version, v]));
    const { prepublishSec, rotateEverySec } = this.rotation;
    const first = Math.min(...Object.keys(raw).map(Number));
    const out: Version[] = [];
    for (const [k, v] of Object.entries(raw)) {
      const version = Number(k);
      const createdMs = Date.parse(v.creation_time ?? '');
      // A successor is rounded up (never taken as older than it is: publish-before-sign holds);
      // the first version down (nothing was published before it, it must sign at once).
      const createdAt = Number(k) === first ? Math.floor(createdMs / 1000) : Math.ceil(createdMs / 1000);
      if (!Number.isInteger(version) || !v.public_key || !Number.isFinite(createdAt)) {
        throw new Error(`vault transit key ${this.#o.key} version ${k} has no public key or creation time`);
      }
      const jwk = known.get(version)?.jwk ?? (await publicJwkOf(v.public_key));
      const activeFrom = version === first ? createdAt : createdAt + prepublishSec;
      out.push({ version, createdAt, activeFrom, retireAt: activeFrom + rotateEverySec, jwk });
    }
    return out.sort((a, b) => a.version - b.version);
  }

  /**
   * The schedule's step (run by `rotateIfDue`): reloads the versions, rotates the Transit key when
   * the signing version retires within `prepublishSec`, and drops versions whose last token has
   * expired. Throws TASKPASS_SIGNER_UNAVAILABLE when Vault cannot be reached (the loaded set is kept).
   */
  protected async rotate(now: number): Promise<void> {
    let versions: Version[];
    try {
      versions = await this.#load();
      const activeAt = (t: number) => versions.filter((v) => v.activeFrom <= t).at(-1);
      const current = activeAt(now);
      if (current && current === versions.at(-1) && now >= current.retireAt - this.rotation.prepublishSec) {
        // Another replica may rotate at the same moment: both versions get published before they
        // sign, and the later one simply takes over a little earlier.
        await this.#vault.write(this.#path('rotate'), {});
        this.rotation.logger?.info({ key: this.#o.key }, 'vault transit key rotated');
        versions = await this.#load();
      }
    } catch (err) {
      throw err instanceof BrokerError
        ? err
        : unavailable(`vault transit key ${this.#o.key} could not be loaded: ${(err as Error).message}`, err);
    }
    const signer = versions.filter((v) => v.activeFrom <= now).at(-1);
    const keep = versions.filter((v, i) => {
      const successor = versions.slice(i + 1).find((s) => s.activeFrom <= now);
      return v === signer || !successor || successor.activeFrom + this.rotation.maxTokenTtlSec > now;
    });
    this.#install(keep);
  }

  #install(next: Version[]): void {
    this.#versions = next;
    this.published(next.map((v) => v.jwk.kid));
  }

  protected stepFailed(err: unknown): void {
    this.rotation.logger?.warn({ err: (err as Error).message }, 'vault transit key check failed; retrying');
  }
}
