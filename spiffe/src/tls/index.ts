// TLS with SPIFFE identities for node:tls, node:https and undici: options that follow a live
// X.509 source across rotation, authentication of peers by SPIFFE ID against their own trust
// domain's bundle. (The RFC 8705 thumbprint `x5tS256` is Taskpass's wire contract: @taskpass/contract.)
export {
  type Authorizer,
  chainFromPeerCertificate,
  peerSpiffeId,
  pinPeerCertificate,
  type VerifyPeerOptions,
  verifyPeerChain,
} from './authorize.ts';
export {
  createMtlsAgent,
  createTlsAgent,
  mtlsClientOptions,
  spiffeCheckServerIdentity,
  type TlsAgentOptions,
  type TlsClientHelperOptions,
  tlsClientOptions,
} from './client.ts';
export {
  currentSecureContextOptions,
  type MtlsServerHelper,
  type MtlsServerOptions,
  mtlsServerOptions,
  type TlsHelperOptions,
  type TlsSource,
  trustedAuthorities,
} from './server.ts';
