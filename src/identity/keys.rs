//! Verification keys: decoded once when they load, each with the algorithms it may verify.
//!
//! The algorithm is decided by the key, never by the token: an RSA key verifies RS*/PS* only, an
//! EC P-256 key ES256 only, an HS256 secret HS256 only. A token's `alg` merely has to be one of
//! them.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::config::ConfigError;

/// A set of [`Algorithm`]s, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AlgSet(u16);

impl AlgSet {
    pub(crate) const HS256: Self = Self::of(&[Algorithm::HS256]);
    pub(crate) const RSA: Self = Self::of(&[
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ]);
    pub(crate) const ES256: Self = Self::of(&[Algorithm::ES256]);
    pub(crate) const ES384: Self = Self::of(&[Algorithm::ES384]);
    pub(crate) const EDDSA: Self = Self::of(&[Algorithm::EdDSA]);

    pub(crate) const fn of(algs: &[Algorithm]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < algs.len() {
            bits |= bit(algs[i]);
            i += 1;
        }
        Self(bits)
    }

    pub(crate) fn contains(self, alg: Algorithm) -> bool {
        let b = bit(alg);
        b != 0 && self.0 & b == b
    }

    fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }
}

const fn bit(alg: Algorithm) -> u16 {
    match alg {
        Algorithm::HS256 => 1,
        Algorithm::HS384 => 1 << 1,
        Algorithm::HS512 => 1 << 2,
        Algorithm::ES256 => 1 << 3,
        Algorithm::ES384 => 1 << 4,
        Algorithm::RS256 => 1 << 5,
        Algorithm::RS384 => 1 << 6,
        Algorithm::RS512 => 1 << 7,
        Algorithm::PS256 => 1 << 8,
        Algorithm::PS384 => 1 << 9,
        Algorithm::PS512 => 1 << 10,
        Algorithm::EdDSA => 1 << 11,
        #[allow(unreachable_patterns)] // `Algorithm` is non-exhaustive
        _ => 0,
    }
}

/// The algorithm a JWS header names, exactly as RFC 7518 spells it. `none` (in any case) and
/// anything unknown is `None`.
pub(crate) fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One key, ready to verify.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<Box<str>>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: AlgSet,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("family", &self.key.family())
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Same `kid`, algorithms and key material.
    fn same_as(&self, other: &Self) -> bool {
        use jsonwebtoken::DecodingKeyKind::{RsaModulusExponent, SecretOrDer};
        let material = match (self.key.kind(), other.key.kind()) {
            (SecretOrDer(a), SecretOrDer(b)) => a == b,
            (RsaModulusExponent { n, e }, RsaModulusExponent { n: n2, e: e2 }) => {
                n == n2 && e == e2
            }
            _ => false,
        };
        material
            && self.kid == other.kid
            && self.algorithms == other.algorithms
            && self.key.family() == other.key.family()
    }
}

/// Whether two key sets hold the same keys in the same order.
pub(crate) fn same_keys(a: &[VerifyingKey], b: &[VerifyingKey]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y))
}

/// What looking a key up by `kid` found.
pub(crate) enum Lookup<'a> {
    Found(&'a VerifyingKey),
    /// Keys with this `kid` exist, but none is for the token's algorithm.
    WrongAlgorithm,
    NotFound,
}

/// Finds the key for a token: by `kid` when it has one, else the only key for its algorithm.
pub(crate) fn lookup<'a>(
    keys: &'a [VerifyingKey],
    kid: Option<&str>,
    alg: Algorithm,
) -> Lookup<'a> {
    match kid {
        Some(kid) => {
            let mut named = keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
            let Some(first) = named.next() else {
                return Lookup::NotFound;
            };
            std::iter::once(first)
                .chain(named)
                .find(|k| k.algorithms.contains(alg))
                .map_or(Lookup::WrongAlgorithm, Lookup::Found)
        }
        None => {
            let mut usable = keys.iter().filter(|k| k.algorithms.contains(alg));
            match (usable.next(), usable.next()) {
                (Some(only), None) => Lookup::Found(only),
                _ => Lookup::NotFound,
            }
        }
    }
}

/// Where a key file is configured, for errors.
pub(crate) const HS256_SETTING: &str = "FLOWGATE_JWT_HS256_SECRET_FILE";
pub(crate) const PUBLIC_KEY_SETTING: &str = "FLOWGATE_JWT_PUBLIC_KEY_FILE";

/// The HS256 secret: the file's bytes, without trailing newline characters.
pub(crate) fn hs256_secret(path: &Path, bytes: &[u8]) -> Result<VerifyingKey, ConfigError> {
    const SETTING: &str = HS256_SETTING;
    let secret = trim_trailing_newlines(bytes);
    if secret.is_empty() {
        return Err(ConfigError {
            setting: SETTING,
            problem: format!("{} is empty", path.display()),
        });
    }
    // A public key is no secret: anyone could sign HS256 tokens with it (algorithm confusion by
    // configuration: one Secret holding both files, the wrong key of it mounted).
    let text = String::from_utf8_lossy(secret);
    let json_key = serde_json::from_slice::<serde_json::Value>(secret)
        .is_ok_and(|v| v.get("kty").is_some() || v.get("keys").is_some());
    if text.contains("-----BEGIN") || json_key {
        return Err(ConfigError {
            setting: SETTING,
            problem: format!(
                "{} holds a PEM or JWK key, not a shared secret: an HS256 secret must be secret \
                 (for a public key use FLOWGATE_JWT_PUBLIC_KEY_FILE)",
                path.display()
            ),
        });
    }
    if secret.len() < 32 {
        tracing::warn!(
            setting = SETTING,
            bytes = secret.len(),
            "HS256 secret is shorter than 32 bytes (RFC 7518 §3.2); use a longer one"
        );
    }
    Ok(VerifyingKey {
        kid: None,
        key: DecodingKey::from_secret(secret),
        algorithms: AlgSet::HS256,
    })
}

fn trim_trailing_newlines(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// A PEM public key file: RSA (SPKI or PKCS#1), EC P-256/P-384 or Ed25519.
pub(crate) fn public_key_file(path: &Path, pem: &[u8]) -> Result<VerifyingKey, ConfigError> {
    public_key_pem(pem).map_err(|problem| ConfigError {
        setting: PUBLIC_KEY_SETTING,
        problem: format!("{}: {problem}", path.display()),
    })
}

pub(crate) fn public_key_pem(pem: &[u8]) -> Result<VerifyingKey, &'static str> {
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err("is a private key; give the public key");
    }
    let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        // PKCS#1 DER of a 4096-bit modulus and an exponent the verifier takes (at most 33
        // bits): at most 528 bytes.
        if key.try_get_as_bytes().is_ok_and(|der| der.len() > 540) {
            return Err(RSA_TOO_LONG);
        }
        // As for a JWK: shorter moduli are refused (and `signature.rs` would refuse them).
        let utils = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.key_utils;
        let modulus = key
            .try_get_as_bytes()
            .ok()
            .and_then(|der| (utils.rsa_pub_components_from_public_key)(der).ok())
            .map(|(n, _)| n.iter().skip_while(|b| **b == 0).count());
        match modulus {
            Some(len) if len < MIN_RSA_MODULUS_BYTES => {
                return Err("RSA modulus shorter than 2048 bits");
            }
            Some(len) if len > MAX_RSA_MODULUS_BYTES => return Err(RSA_TOO_LONG),
            // RustCrypto's reader takes 4096 bits at most, and exponents from 2 to 2^33 - 1.
            None => return Err(RSA_UNREADABLE),
            Some(_) => {}
        }
        (key, AlgSet::RSA)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        let algorithms = ec_algorithms(&key).ok_or("EC key is neither P-256 nor P-384")?;
        (key, algorithms)
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        (key, AlgSet::EDDSA)
    } else {
        return Err("not a PEM RSA, EC (P-256/P-384) or Ed25519 public key");
    };
    Ok(VerifyingKey {
        kid: None,
        key,
        algorithms,
    })
}

/// ES256 for a P-256 point, ES384 for a P-384 one (uncompressed SEC1: 65 or 97 bytes).
fn ec_algorithms(key: &DecodingKey) -> Option<AlgSet> {
    match key.try_get_as_bytes().ok()?.len() {
        65 => Some(AlgSet::ES256),
        97 => Some(AlgSet::ES384),
        _ => None,
    }
}

/// The fields of a JWK (RFC 7517) that matter for a signature-verification key.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// RSA keys below this modulus size are refused (NIST SP 800-131A).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// The verifier (the `rsa` crate) refuses longer moduli at every verification: such a key would
/// load and then fail every token as a bad signature.
const MAX_RSA_MODULUS_BYTES: usize = 512;
const RSA_TOO_LONG: &str = "RSA modulus longer than 4096 bits, which the verifier cannot use";
const RSA_UNREADABLE: &str = "RSA key the verifier cannot use (a modulus over 4096 bits, or an exponent outside 2 to 2^33 - 1)";

/// Parses a JWKS document. Keys that are not public signature keys flowgate can use (encryption
/// keys, symmetric keys, unknown curves, short RSA moduli) are skipped; an error means no usable
/// key at all.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    #[derive(Deserialize)]
    struct JwkSet {
        keys: Vec<serde_json::Value>,
    }
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let total = set.keys.len();
    let keys: Vec<VerifyingKey> = set
        .keys
        .into_iter()
        .filter_map(|raw| {
            let parsed = serde_json::from_value::<Jwk>(raw)
                .map_err(|e| e.to_string())
                .and_then(|jwk| {
                    let kid = jwk.kid.clone();
                    from_jwk(jwk).map_err(|e| format!("kid {kid:?}: {e}"))
                });
            parsed
                .map_err(|e| tracing::debug!(error = %e, "skipping JWK"))
                .ok()
        })
        .collect();
    if keys.is_empty() {
        return Err(format!(
            "none of its {total} keys is a usable signature key"
        ));
    }
    Ok(keys)
}

fn from_jwk(jwk: Jwk) -> Result<VerifyingKey, &'static str> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signature key (use)");
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|op| op == "verify")
    {
        return Err("not a verification key (key_ops)");
    }
    let (key, family) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                return Err("RSA key without n or e");
            };
            let key = DecodingKey::from_rsa_components(n, e).map_err(|_| "bad RSA n or e")?;
            if let jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind() {
                let len = n.iter().skip_while(|b| **b == 0).count();
                if len < MIN_RSA_MODULUS_BYTES {
                    return Err("RSA modulus shorter than 2048 bits");
                }
                if len > MAX_RSA_MODULUS_BYTES {
                    return Err(RSA_TOO_LONG);
                }
            }
            (key, AlgSet::RSA)
        }
        ("EC", Some("P-256" | "P-384")) => {
            let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                return Err("EC key without x or y");
            };
            let key = DecodingKey::from_ec_components(x, y).map_err(|_| "bad EC x or y")?;
            let family = ec_algorithms(&key).ok_or("EC point of the wrong size")?;
            let expected = if jwk.crv.as_deref() == Some("P-256") {
                AlgSet::ES256
            } else {
                AlgSet::ES384
            };
            if family != expected {
                return Err("EC point does not match crv");
            }
            (key, family)
        }
        ("OKP", Some("Ed25519")) => {
            let x = jwk.x.as_deref().ok_or("OKP key without x")?;
            let key = DecodingKey::from_ed_components(x).map_err(|_| "bad Ed25519 x")?;
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
                return Err("Ed25519 key is not 32 bytes");
            }
            (key, AlgSet::EDDSA)
        }
        ("oct", _) => return Err("symmetric keys are not accepted from a key set"),
        _ => return Err("unsupported key type or curve"),
    };
    let algorithms = match jwk.alg.as_deref() {
        None => family,
        Some(name) => {
            let named = parse_alg(name).map(|a| AlgSet::of(&[a]));
            let allowed = named.map_or(AlgSet(0), |n| n.intersect(family));
            if allowed.is_empty() {
                return Err("alg does not fit the key type");
            }
            allowed
        }
    };
    Ok(VerifyingKey {
        kid: jwk.kid.map(String::into_boxed_str),
        key,
        algorithms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_is_refused_as_an_hs256_secret() {
        let path = Path::new("/etc/flowgate/jwt/secret");
        let pem = include_bytes!("../../tests/fixtures/keys/rsa1024.pub");
        let jwks = br#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#;
        let jwk = br#"{"kty": "oct", "k": "c2VjcmV0"}"#;
        for refused in [pem.as_slice(), jwks, jwk] {
            let error = hs256_secret(path, refused).err().map(|e| e.problem);
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.contains("not a shared secret")),
                "{error:?}"
            );
        }
        assert!(hs256_secret(path, b"a long enough random shared secret, 48 bytes!!\n").is_ok());
    }

    #[test]
    fn none_and_unknown_algorithms_are_not_parsed() {
        for name in [
            "none", "None", "NONE", "nOnE", "hs256", "HS256 ", "ES512", "",
        ] {
            assert_eq!(parse_alg(name), None, "{name:?}");
        }
        assert_eq!(parse_alg("EdDSA"), Some(Algorithm::EdDSA));
    }

    #[test]
    fn alg_sets_hold_exactly_their_members() {
        assert!(AlgSet::RSA.contains(Algorithm::PS512));
        assert!(!AlgSet::RSA.contains(Algorithm::HS256));
        assert!(!AlgSet::HS256.contains(Algorithm::HS384));
        assert!(AlgSet::ES256.contains(Algorithm::ES256));
        assert!(!AlgSet::ES256.contains(Algorithm::ES384));
    }

    #[test]
    fn trailing_newlines_are_trimmed_from_secrets() {
        assert_eq!(trim_trailing_newlines(b"s3cret\n"), b"s3cret");
        assert_eq!(trim_trailing_newlines(b"s3cret\r\n\n"), b"s3cret");
        assert_eq!(trim_trailing_newlines(b" s3cret "), b" s3cret ");
        assert_eq!(trim_trailing_newlines(b"\n"), b"");
    }

    fn jwks(keys: serde_json::Value) -> Result<Vec<VerifyingKey>, String> {
        parse_jwks(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    #[test]
    fn unusable_jwks_entries_are_skipped() {
        let keys = jwks(serde_json::json!([
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": ED_X},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": ED_X},
            {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "good", "x": ED_X},
            "not even an object"
        ]))
        .expect("one usable key");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("good"));
        assert_eq!(keys[0].algorithms, AlgSet::EDDSA);
    }

    #[test]
    fn rsa_keys_longer_than_the_verifier_takes_are_refused_when_they_load() {
        let long = include_bytes!("../../tests/fixtures/keys/rsa8192.pub");
        assert_eq!(public_key_pem(long).err(), Some(RSA_TOO_LONG));
        let usual = include_bytes!("../../tests/fixtures/keys/rsa.pub");
        assert!(public_key_pem(usual).is_ok());
        // Its PKCS#1 DER is under the size bound, its modulus over 4096 bits.
        let over = include_bytes!("../../tests/fixtures/keys/rsa4104.pub");
        assert_eq!(public_key_pem(over).err(), Some(RSA_UNREADABLE));
        let short = include_bytes!("../../tests/fixtures/keys/rsa1024.pub");
        assert_eq!(
            public_key_pem(short).err(),
            Some("RSA modulus shorter than 2048 bits")
        );
        // base64url of 512 and 513 bytes of 0xC1.
        let n_4096 = format!("{}wcE", "wcHB".repeat(170));
        let n_4104 = "wcHB".repeat(171);
        let keys = jwks(serde_json::json!([
            {"kty": "RSA", "kid": "long", "n": n_4104, "e": "AQAB"},
            {"kty": "RSA", "kid": "fits", "n": n_4096, "e": "AQAB"}
        ]))
        .expect("one usable key");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("fits"));
    }

    #[test]
    fn a_jwk_alg_narrows_and_must_fit_the_key_type() {
        let keys = jwks(serde_json::json!([
            {"kty": "OKP", "crv": "Ed25519", "kid": "a", "alg": "EdDSA", "x": ED_X},
            {"kty": "OKP", "crv": "Ed25519", "kid": "b", "alg": "HS256", "x": ED_X}
        ]))
        .expect("one usable key");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
    }

    #[test]
    fn key_sets_compare_by_kid_algorithms_and_material() {
        let ed = |kid: &str, x: &str| serde_json::json!([{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x}]);
        let other_x = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let a = jwks(ed("a", ED_X)).expect("keys");
        assert!(same_keys(&a, &jwks(ed("a", ED_X)).expect("keys")));
        assert!(!same_keys(&a, &jwks(ed("b", ED_X)).expect("keys")));
        assert!(!same_keys(&a, &jwks(ed("a", other_x)).expect("keys")));
        assert!(!same_keys(&a, &[]));
    }

    #[test]
    fn a_jwks_without_usable_keys_is_an_error() {
        assert!(jwks(serde_json::json!([])).is_err());
        assert!(parse_jwks(b"{\"keys\": 1}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn lookup_by_kid_then_by_algorithm() {
        let key = |kid: Option<&str>, algorithms| VerifyingKey {
            kid: kid.map(Into::into),
            key: DecodingKey::from_secret(b"k"),
            algorithms,
        };
        let keys = [key(Some("r"), AlgSet::RSA), key(Some("e"), AlgSet::ES256)];
        assert!(matches!(
            lookup(&keys, Some("e"), Algorithm::ES256),
            Lookup::Found(k) if k.kid.as_deref() == Some("e")
        ));
        assert!(matches!(
            lookup(&keys, Some("e"), Algorithm::RS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            lookup(&keys, Some("zz"), Algorithm::RS256),
            Lookup::NotFound
        ));
        assert!(matches!(
            lookup(&keys, None, Algorithm::PS256),
            Lookup::Found(k) if k.kid.as_deref() == Some("r")
        ));
        let two_rsa = [key(Some("a"), AlgSet::RSA), key(Some("b"), AlgSet::RSA)];
        assert!(matches!(
            lookup(&two_rsa, None, Algorithm::RS256),
            Lookup::NotFound
        ));
    }
}
