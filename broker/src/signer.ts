// Which signer the broker uses (config `signing`): its own keys in the store (keys.ts), or a Vault
// Transit key (transit-signer.ts) reached through the broker's one Vault client (vault.ts).
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { BrokerConfig } from './config.ts';
import { BrokerError } from './errors.ts';
import { keyWrapperFromConfig } from './key-wrap.ts';
import { SigningKeys } from './keys.ts';
import type { Store } from './store/types.ts';
import { TransitSigner } from './transit-signer.ts';
import { openJwtSource, openX509Source } from './workload-sources.ts';
import { type VaultAuth, VaultClient } from './vault.ts';

/** The opened signer and what to close, in reverse order, on shutdown. */
export interface OpenedSigner {
  keys: SigningKeys | TransitSigner;
  vault?: VaultClient;
  closers: (() => Promise<void> | void)[];
}

/**
 * Connects to Vault as the broker's workload (`vault.auth`): JWT auth with a JWT-SVID from the
 * Workload API, TLS cert auth, or a static token (development).
 */
export async function connectVault(
  config: BrokerConfig,
  logger: Logger,
  closers: (() => Promise<void> | void)[],
): Promise<VaultClient> {
  const v = config.vault;
  if (!v) throw new BrokerError('TASKPASS_CONFIG_INVALID', 'the vault section is not configured');
  let auth: VaultAuth;
  let svid: (() => { cert: string; key: string }) | undefined;
  if (v.auth.method === 'jwt') {
    const jwt = await openJwtSource(config, logger, 'jwt source for vault');
    closers.push(() => jwt.close());
    const audience = v.auth.audience;
    auth = {
      method: 'jwt',
      role: v.auth.role,
      mount: v.auth.mount,
      jwtSvid: async () => (await jwt.fetchJwtSvid({ audience })).token,
    };
  } else if (v.auth.method === 'cert') {
    // The broker's own X.509-SVID (the same hint as its TLS server), read afresh at every login.
    const x509 = await openX509Source(config, logger, 'x509 source for vault');
    closers.push(() => x509.close());
    svid = () => {
      const s = x509.getX509Svid();
      return { cert: s.certChainPem(), key: s.privateKeyPem() };
    };
    auth = { method: 'cert', mount: v.auth.mount, ...(v.auth.name ? { name: v.auth.name } : {}) };
  } else {
    logger.warn('vault: static token authentication is for development only');
    auth = { method: 'token', token: v.auth.token };
  }
  const ca = v.caFile ? readFileSync(v.caFile, 'utf8') : undefined;
  const client = await VaultClient.connect({
    address: v.address,
    auth,
    timeoutMs: v.timeoutMs,
    ...(v.namespace ? { namespace: v.namespace } : {}),
    ...(ca || svid ? { tls: { ...(ca ? { ca } : {}), ...(svid ? { cert: svid } : {}) } } : {}),
    logger,
  });
  closers.push(() => client.close());
  return client;
}

/** Opens the configured signer. A Vault that cannot be reached fails start-up (fail closed). */
export async function openSigner(config: BrokerConfig, store: Store, logger: Logger): Promise<OpenedSigner> {
  const closers: (() => Promise<void> | void)[] = [];
  const schedule = {
    rotateEverySec: config.keys.rotateEvery,
    prepublishSec: config.keys.prepublish,
    maxTokenTtlSec: config.tokens.maxTtl,
    logger,
  };
  const s = config.signing;
  if (s.kind === 'vault-transit') {
    const vault = await connectVault(config, logger, closers);
    const keys = await TransitSigner.open(vault, {
      ...schedule,
      key: s.key,
      mount: s.mount,
      maxBatch: s.maxBatch,
      maxQueue: s.maxQueue,
    });
    closers.push(() => keys.close());
    logger.info({ key: s.key, mount: s.mount }, 'tokens are signed by vault transit');
    return { keys, vault, closers };
  }
  // Before the store is touched: no KEK and no explicit plaintext opt-in refuses to start.
  const wrapper = keyWrapperFromConfig(config.keys);
  if (wrapper.protection === 'plaintext') {
    logger.warn(
      'signing keys are stored UNENCRYPTED (keys.allowPlaintext: true); anyone who can read the store can sign tokens',
    );
  }
  const keys = await SigningKeys.open(store, { ...schedule, wrapper });
  closers.push(() => keys.close());
  return { keys, closers };
}
