// The broker's Workload API sources, opened as its configuration says (`workloadApi.address`,
// `.hint`, `.timeoutMs`): its own X.509-SVID (TLS server, Vault cert auth) and JWT-SVIDs (Vault
// JWT auth). A Workload API error is logged and the cached SVIDs are kept; the 'error' listener also
// keeps a hiccup from becoming an unhandled 'error' event.
import { isSpiffeError, type X509Svid } from '@taskpass/spiffe';
import { JwtSource, pickByHint, X509Source } from '@taskpass/spiffe/workload';
import type { Logger } from 'pino';
import type { BrokerConfig } from './config.ts';

/** Picks the broker's own X.509-SVID: the one with `hint`, else the default (first) one. */
export function svidPicker(
  hint: string | undefined,
): ((svids: readonly X509Svid[]) => X509Svid | undefined) | undefined {
  if (hint === undefined) return undefined;
  return pickByHint(hint);
}

const logErrors = (logger: Logger, what: string) => (err: Error) =>
  logger.warn(
    { err: err.message, code: isSpiffeError(err) ? err.code : undefined },
    `workload api error (${what})`,
  );

/** The broker's own X.509 source (the SVID `workloadApi.hint` names). */
export async function openX509Source(
  config: BrokerConfig,
  logger: Logger,
  what: string,
): Promise<X509Source> {
  const { address, hint, timeoutMs } = config.workloadApi;
  const picker = svidPicker(hint);
  const source = await X509Source.create({
    ...(address ? { address } : {}),
    ...(picker ? { picker } : {}),
    timeoutMs,
  });
  source.on('error', logErrors(logger, what));
  return source;
}

/** A JWT source on the broker's Workload API. */
export async function openJwtSource(config: BrokerConfig, logger: Logger, what: string): Promise<JwtSource> {
  const { address, timeoutMs } = config.workloadApi;
  const source = await JwtSource.create({ ...(address ? { address } : {}), timeoutMs });
  source.on('error', logErrors(logger, what));
  return source;
}
