// TLS with SPIFFE identities for node:tls, node:https and undici: options that follow a live
// X.509 source across rotation, authentication of peers by SPIFFE ID against their own trust
// domain's bundle, and the RFC 8705 thumbprint of a certificate.
export {
  type Authorizer,
  chainFromPeerCertificate,
  peerSpiffeId,
  pinPeerCertificate,
  type VerifyPeerOptions,
  verifyPeerChain,
  x5tS256,
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
