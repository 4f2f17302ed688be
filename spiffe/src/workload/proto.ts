// Loads workload.proto at runtime (it ships in the package's proto/, two levels up from both src/workload/
// and dist/workload/) and describes the decoded messages. Shared by the client and the fake server.
import { fileURLToPath } from 'node:url';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';

/** The metadata every Workload API request must carry (SPIFFE_Workload_Endpoint.md §3). */
export const SECURITY_HEADER = 'workload.spiffe.io';

// Decoded with defaults, so absent fields are '' / empty Buffer / [] / {} rather than undefined:
// "absent" and "empty" mean the same thing in the spec (a redaction).
export interface RawX509Svid {
  spiffe_id: string;
  x509_svid: Buffer;
  x509_svid_key: Buffer;
  bundle: Buffer;
  hint: string;
}
export interface RawX509SvidResponse {
  svids: RawX509Svid[];
  crl: Buffer[];
  federated_bundles: Record<string, Buffer>;
}
export interface RawX509BundlesResponse {
  crl: Buffer[];
  bundles: Record<string, Buffer>;
}
export interface RawJwtSvidRequest {
  audience: string[];
  spiffe_id: string;
}
export interface RawJwtSvid {
  spiffe_id: string;
  svid: string;
  hint: string;
}
export interface RawJwtSvidResponse {
  svids: RawJwtSvid[];
}
export interface RawJwtBundlesResponse {
  bundles: Record<string, Buffer>;
}
export interface RawValidateJwtSvidRequest {
  audience: string;
  svid: string;
}
export interface RawValidateJwtSvidResponse {
  spiffe_id: string;
  claims: RawStruct | null;
}
/** google.protobuf.Struct as proto-loader decodes it (`oneofs: true` adds `kind`). */
export interface RawStruct {
  fields: Record<string, RawValue>;
}
export interface RawValue {
  kind?: string;
  nullValue?: unknown;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: RawStruct;
  listValue?: { values: RawValue[] };
}
export type Empty = Record<string, never>;

export interface WorkloadApiMethods {
  FetchX509SVID: MethodDefinition<Empty, RawX509SvidResponse>;
  FetchX509Bundles: MethodDefinition<Empty, RawX509BundlesResponse>;
  FetchJWTSVID: MethodDefinition<RawJwtSvidRequest, RawJwtSvidResponse>;
  FetchJWTBundles: MethodDefinition<Empty, RawJwtBundlesResponse>;
  ValidateJWTSVID: MethodDefinition<RawValidateJwtSvidRequest, RawValidateJwtSvidResponse>;
  FetchWITSVID: MethodDefinition<{ spiffe_id: string }, unknown>;
  FetchWITBundles: MethodDefinition<Empty, unknown>;
}

export type WorkloadApiMethodName = keyof WorkloadApiMethods;

let cached: (WorkloadApiMethods & ServiceDefinition) | undefined;

/** The `SpiffeWorkloadAPI` service definition (loaded once). */
export function workloadApiService(): WorkloadApiMethods & ServiceDefinition {
  if (!cached) {
    const path = fileURLToPath(new URL('../../proto/workload.proto', import.meta.url));
    const pkg = loadSync(path, {
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    cached = pkg.SpiffeWorkloadAPI as unknown as WorkloadApiMethods & ServiceDefinition;
  }
  return cached;
}
