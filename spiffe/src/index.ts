// Public API of @taskpass/spiffe. Each area lives in a folder named after the SPIFFE spec's noun.
export * from './errors.ts';
export * from './id.ts';
export * from './bundle/index.ts';
export * from './svid/index.ts';
export * from './workload/index.ts';
export * from './tls/index.ts';
