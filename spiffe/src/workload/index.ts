// The Workload API: address parsing, the client, and live sources.
export { grpcTargetFromAddress, resolveWorkloadApiAddress, SPIFFE_ENDPOINT_SOCKET } from './address.ts';
export {
  type Backoff,
  type BackoffStrategy,
  type CallSignalOptions,
  type FetchJwtSvidParams,
  linearBackoff,
  structToJson,
  type Watcher,
  WorkloadApiClient,
  type WorkloadApiClientOptions,
  type WorkloadApiLogger,
  type X509Context,
} from './client.ts';
export {
  BundleSource,
  JwtSource,
  pickByHint,
  type SourceEvents,
  type SourceHealth,
  type SourceOptions,
  type SvidState,
  svidState,
  type WorkloadApiState,
  X509Source,
  type X509SourceHealth,
  type X509SourceOptions,
} from './sources.ts';
