// 100 verifiers in one worker thread (their own event loop, away from the broker's): each has its
// own RevocationFeedClient with its own mTLS connection to the broker's SSE feed, and its own
// verifier. For each task the main thread arms us with a fresh token; we check that every verifier
// accepts it, then watch until each one refuses it, and report when that happened.
import { X509Certificate } from 'node:crypto';
import { setImmediate as tick } from 'node:timers/promises';
import { parentPort, workerData } from 'node:worker_threads';
import { Agent } from 'undici';
import { createVerifier, RevocationFeedClient, type Verifier, VerifierError } from '@taskpass/verifier';

export interface RevocationWorkerData {
  brokerUrl: string;
  tls: { key: string; cert: string; ca: string };
  /** The agent's certificate (PEM): its call tokens are bound to it (cnf), so calls present it. */
  agentCert: string;
  issuer: string;
  audience: string;
  jwks: { keys: Record<string, unknown>[] };
  verifiers: number;
}

export type RevocationWorkerMsg =
  | { type: 'arm'; token: string; ticket: string; task: string; jti: string }
  | { type: 'close' };

export type RevocationWorkerReply =
  | { type: 'ready' }
  | { type: 'armed' }
  | {
      type: 'observed';
      /** Epoch ms (performance.timeOrigin + now) at which each verifier first saw the revocation; NaN if never. */
      at: number[];
      /** Verifiers whose verifyCall did not refuse with TASKPASS_VERIFY_REVOKED afterwards. */
      notRefused: number;
    }
  | { type: 'error'; message: string };

const d = workerData as RevocationWorkerData;
const clientCertificate = new X509Certificate(d.agentCert);
const now = () => performance.timeOrigin + performance.now();
const dispatchers: Agent[] = [];
const feeds: RevocationFeedClient[] = [];
const verifiers: Verifier[] = [];
for (let i = 0; i < d.verifiers; i++) {
  const dispatcher = new Agent({
    connect: { key: d.tls.key, cert: d.tls.cert, ca: d.tls.ca, checkServerIdentity: () => undefined },
  });
  dispatchers.push(dispatcher);
  const feed = new RevocationFeedClient({ brokerUrl: d.brokerUrl, dispatcher });
  feeds.push(feed);
  verifiers.push(
    createVerifier({
      issuer: d.issuer,
      audience: d.audience,
      jwks: d.jwks as never,
      tools: { get_ticket: { action: 'read', resource: 'tickets/{ticket_id}' } },
      revocation: feed,
    }),
  );
}
const post = (m: RevocationWorkerReply) => parentPort!.postMessage(m);

try {
  await Promise.all(feeds.map((f) => f.ready(20_000)));
  post({ type: 'ready' });
} catch (e) {
  post({ type: 'error', message: String(e) });
}

parentPort!.on('message', async (m: RevocationWorkerMsg) => {
  if (m.type === 'close') {
    await Promise.all(feeds.map((f) => f.close()));
    await Promise.all(dispatchers.map((x) => x.close()));
    parentPort!.close();
    return;
  }
  const call = { tool: 'get_ticket', args: { ticket_id: m.ticket }, clientCertificate };
  try {
    await Promise.all(verifiers.map((v) => v.verifyCall(m.token, call)));
  } catch (e) {
    post({ type: 'error', message: `a verifier refused the fresh token: ${String(e)}` });
    return;
  }
  post({ type: 'armed' });
  // Watch every feed (an O(1) lookup, the same one verifyCall makes) until all saw it, 5 s at most.
  const at = new Array<number>(feeds.length).fill(Number.NaN);
  let left = feeds.length;
  const deadline = now() + 5000;
  while (left > 0 && now() < deadline) {
    for (let i = 0; i < feeds.length; i++) {
      if (Number.isNaN(at[i]!) && feeds[i]!.isRevoked(m.task, m.jti)) {
        at[i] = now();
        left--;
      }
    }
    if (left > 0) await tick();
  }
  // And the verifiers themselves now refuse the token.
  let notRefused = 0;
  await Promise.all(
    verifiers.map((v) =>
      v.verifyCall(m.token, call).then(
        () => notRefused++,
        (e: unknown) => {
          if (!(e instanceof VerifierError && e.code === 'TASKPASS_VERIFY_REVOKED')) notRefused++;
        },
      ),
    ),
  );
  post({ type: 'observed', at, notRefused });
});
