// Public API of @taskpass/spiffe. Each area lives in a folder named after the SPIFFE spec's noun.
// The Workload API (gRPC, Node-only) is the subpath @taskpass/spiffe/workload, so this entry stays
// light for code that only parses and checks SVIDs and bundles.
export * from './errors.ts';
export * from './id.ts';
export * from './bundle/index.ts';
export * from './svid/index.ts';
export * from './tls/index.ts';
