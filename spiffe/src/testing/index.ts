// Test helpers: an in-memory CA that mints good and bad SVIDs and bundles, and a fake Workload API
// that is a real gRPC server on a temporary socket. For tests only; never use in production.
export * from './ca.ts';
export * from './fake-workload-api.ts';
