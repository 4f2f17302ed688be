export { JwtBundle, JwtBundleSet, type JwtBundleSource } from './jwt.ts';
export { SpiffeBundle, type SpiffeBundleDocument, type SpiffeBundleJwk } from './spiffe.ts';
export { X509Bundle, X509BundleSet, type X509BundleSource } from './x509.ts';
