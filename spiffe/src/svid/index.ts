export {
  JWT_SVID_ALGORITHMS,
  JwtSvid,
  parseAndValidateJwtSvid,
  parseInsecureJwtSvid,
  type ValidateJwtSvidOptions,
} from './jwt.ts';
export {
  type ParseX509SvidOptions,
  type VerifiedX509Svid,
  type VerifyX509SvidOptions,
  verifyX509Svid,
  X509Svid,
  type X509SvidSource,
} from './x509.ts';
