// The minting hot path (docs/design.md §2). ES256 signed directly with node:crypto (IEEE P1363
// signature encoding, as JWS requires): about twice the throughput of jose's SignJWT on Node 20,
// and the output is an ordinary compact JWS that jose verifies (see test/mint.test.ts).
import { KeyObject, randomFillSync, sign, type webcrypto } from 'node:crypto';
import {
  ACCESS_TOKEN_TYPE,
  type ActorClaim,
  type AuthorizationDetail,
  type CallTokenClaims,
} from '@taskpass/contract';

/** Everything a token says; the caller has already decided that it may be issued. */
export interface MintInput {
  issuer: string;
  kid: string;
  /** ES256 (P-256) private key: a node KeyObject or a WebCrypto CryptoKey. */
  privateKey: KeyObject | webcrypto.CryptoKey;
  /** Delegating user's sub, or the agent's SPIFFE ID for autonomous tasks. */
  sub: string;
  /** Agent SPIFFE ID: `client_id` and `act.sub`. */
  agent: string;
  /** Earlier actors (for sub-agents), nested under the current one. */
  priorAct?: ActorClaim;
  audience: string;
  /** Epoch seconds. */
  iat: number;
  exp: number;
  taskId: string;
  detail: AuthorizationDetail;
  /** x5t#S256 of the agent's mTLS certificate, when it authenticated with mTLS. */
  x5tS256?: string;
  singleUse: boolean;
  template: string;
}

const keyObjects = new WeakMap<object, KeyObject>();
function toKeyObject(k: KeyObject | webcrypto.CryptoKey): KeyObject {
  if (k instanceof KeyObject) return k;
  let ko = keyObjects.get(k);
  if (!ko) {
    ko = KeyObject.from(k);
    keyObjects.set(k, ko);
  }
  return ko;
}

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64url');

// Token ids are drawn from a pool filled by the CSPRNG 256 ids at a time (as node's randomUUID
// does): one call into OpenSSL per 256 tokens instead of one per token. Each byte is used once.
const JTI_BYTES = 16;
const jtiPool = Buffer.alloc(256 * JTI_BYTES);
let jtiAt = jtiPool.length;

/** A fresh 128-bit token id. */
export function newJti(): string {
  if (jtiAt === jtiPool.length) {
    randomFillSync(jtiPool);
    jtiAt = 0;
  }
  const jti = jtiPool.toString('base64url', jtiAt, jtiAt + JTI_BYTES);
  jtiAt += JTI_BYTES;
  return jti;
}

// The protected header depends on the kid alone: encoded once per key.
const headers = new Map<string, string>();
function encodedHeader(kid: string): string {
  let h = headers.get(kid);
  if (h === undefined) {
    h = b64(JSON.stringify({ alg: 'ES256', typ: ACCESS_TOKEN_TYPE, kid }));
    if (headers.size >= 64) headers.clear();
    headers.set(kid, h);
  }
  return h;
}

/** Builds the claim set (exported for tests and explain). */
export function buildClaims(input: MintInput, jti: string): CallTokenClaims {
  const act: ActorClaim = input.priorAct ? { sub: input.agent, act: input.priorAct } : { sub: input.agent };
  const claims: CallTokenClaims = {
    iss: input.issuer,
    sub: input.sub,
    act,
    client_id: input.agent,
    aud: input.audience,
    iat: input.iat,
    exp: input.exp,
    jti,
    txn: input.taskId,
    authorization_details: [input.detail],
    tpl: input.template,
  };
  if (input.x5tS256) claims.cnf = { 'x5t#S256': input.x5tS256 };
  if (input.singleUse) claims.single_use = true;
  return claims;
}

/** A key that signs in-process, or a signer elsewhere (Vault Transit) that answers a JWS signature. */
export type TokenSigningKey =
  | { kid: string; privateKey: KeyObject | webcrypto.CryptoKey; sign?: undefined }
  | {
      kid: string;
      privateKey?: undefined;
      /** The ES256 JWS signature (IEEE P1363 r||s) of `signingInput`. */
      sign(signingInput: Buffer): Promise<Buffer>;
    };

function prepare(input: Omit<MintInput, 'privateKey'>): {
  signingInput: string;
  jti: string;
  claims: CallTokenClaims;
} {
  if (!(Number.isInteger(input.iat) && Number.isInteger(input.exp) && input.exp > input.iat)) {
    throw new Error('mintToken: exp must be an integer after iat');
  }
  const jti = newJti();
  const claims = buildClaims(input as MintInput, jti);
  return { signingInput: `${encodedHeader(input.kid)}.${b64(JSON.stringify(claims))}`, jti, claims };
}

/** Signs a call/session token. Throws if exp is not after iat (never mint a dead or eternal token). */
export function mintToken(input: MintInput): { token: string; jti: string; claims: CallTokenClaims } {
  const { signingInput, jti, claims } = prepare(input);
  const sig = sign('sha256', Buffer.from(signingInput), {
    key: toKeyObject(input.privateKey),
    dsaEncoding: 'ieee-p1363',
  });
  return { token: `${signingInput}.${sig.toString('base64url')}`, jti, claims };
}

/**
 * Signs with whichever key signs now: in-process (synchronous underneath) or remote (Vault
 * Transit). The same claims and header either way.
 */
export async function mintTokenWith(
  key: TokenSigningKey,
  input: Omit<MintInput, 'kid' | 'privateKey'>,
): Promise<{ token: string; jti: string; claims: CallTokenClaims }> {
  if (key.privateKey) return mintToken({ ...input, kid: key.kid, privateKey: key.privateKey });
  const { signingInput, jti, claims } = prepare({ ...input, kid: key.kid });
  const sig = await key.sign(Buffer.from(signingInput));
  return { token: `${signingInput}.${sig.toString('base64url')}`, jti, claims };
}

// Local signatures asked for during one event-loop turn are made together, at its end (a
// setImmediate): ES256 over P-256 walks precomputed tables that the rest of a request's work
// pushes out of the CPU's caches, so made back to back they cost less than half as much
// (docs/decisions.md "Signing at the end of the turn").
interface PendingSignature {
  input: string;
  key: KeyObject;
  resolve(sig: string): void;
  reject(err: unknown): void;
}
let pending: PendingSignature[] = [];

function signPending(): void {
  const batch = pending;
  pending = [];
  for (const p of batch) {
    try {
      p.resolve(
        sign('sha256', Buffer.from(p.input), { key: p.key, dsaEncoding: 'ieee-p1363' }).toString('base64url'),
      );
    } catch (err) {
      p.reject(err);
    }
  }
}

function signAtEndOfTurn(input: string, key: KeyObject): Promise<string> {
  return new Promise((resolve, reject) => {
    if (pending.length === 0) setImmediate(signPending);
    pending.push({ input, key, resolve, reject });
  });
}

/** A token whose id and claims are fixed; {@link PreparedToken.sign} makes it. */
export interface PreparedToken {
  jti: string;
  claims: CallTokenClaims;
  /**
   * The compact JWS: signed at the end of this event-loop turn with the turn's other tokens
   * (in-process keys) or now (a remote signer). Call it once.
   */
  sign(): Promise<string>;
}

/**
 * {@link mintTokenWith} in two steps, so that the caller can act on the token's id before it is
 * signed: with an in-process key the broker queues the issued call's record first, and at the end
 * of the turn the store's batch leaves for the writer thread before the turn's tokens are signed,
 * while it commits. (A remote signer can fail; the broker has it sign before recording.)
 */
export function prepareToken(
  key: TokenSigningKey,
  input: Omit<MintInput, 'kid' | 'privateKey'>,
): PreparedToken {
  const { signingInput, jti, claims } = prepare({ ...input, kid: key.kid });
  return {
    jti,
    claims,
    sign: () => {
      const sig = key.privateKey
        ? signAtEndOfTurn(signingInput, toKeyObject(key.privateKey))
        : key.sign(Buffer.from(signingInput)).then((s) => s.toString('base64url'));
      return sig.then((s) => `${signingInput}.${s}`);
    },
  };
}
