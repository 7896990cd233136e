//! A token's signature, checked with its key. RSA (RS256/384/512, PS256/384/512) goes to `ring`,
//! the crypto stack flowgate's TLS connections already use: its RSA verification takes about a
//! fifth of the time of RustCrypto's `rsa`, jsonwebtoken's `rust_crypto` backend (~165 µs a
//! token on the benchmark machine), and a token the cache has not seen pays for it on the
//! request path. The other algorithms (HMAC, ECDSA, EdDSA) go through jsonwebtoken.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self as ring_sig, RsaParameters};

/// What checking a signature found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    Valid,
    /// Not made by this key (or not a signature this key could make).
    Invalid,
    /// The signature segment is not base64url.
    NotBase64,
}

/// The longest RSA signature a loaded key makes: 4096-bit moduli at most (`keys.rs`).
const MAX_RSA_SIGNATURE: usize = 512;

/// Checks `signature` (base64url, as in the token) over `message` with `key` for `alg`. The
/// caller has checked that `key` takes `alg`.
pub(crate) fn verify(
    signature: &str,
    message: &[u8],
    key: &DecodingKey,
    alg: Algorithm,
) -> Checked {
    let Some(parameters) = rsa_parameters(alg) else {
        return match jsonwebtoken::crypto::verify(signature, message, key, alg) {
            Ok(true) => Checked::Valid,
            Ok(false) => Checked::Invalid,
            Err(e) if matches!(e.kind(), ErrorKind::Base64(_)) => Checked::NotBase64,
            Err(_) => Checked::Invalid,
        };
    };
    let mut decoded = [0u8; MAX_RSA_SIGNATURE];
    let signature = match URL_SAFE_NO_PAD.decode_slice(signature, &mut decoded) {
        Ok(len) => &decoded[..len],
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => return Checked::Invalid,
        Err(base64::DecodeSliceError::DecodeError(_)) => return Checked::NotBase64,
    };
    let verified = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => ring_sig::RsaPublicKeyComponents {
            // ring takes the minimal encoding; a JWK's `n` may carry a sign byte.
            n: without_leading_zeros(n),
            e: without_leading_zeros(e),
        }
        .verify(parameters, message, signature),
        // PKCS#1 RSAPublicKey, as jsonwebtoken keeps a PEM key.
        DecodingKeyKind::SecretOrDer(der) => {
            ring_sig::UnparsedPublicKey::new(parameters, der).verify(message, signature)
        }
    };
    match verified {
        Ok(()) => Checked::Valid,
        Err(_) => Checked::Invalid,
    }
}

fn rsa_parameters(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn without_leading_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[zeros..]
}

#[cfg(test)]
mod tests {
    use super::*;

    use jsonwebtoken::{EncodingKey, Header};

    const RSA_KEY: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa.key");
    const RSA_PUB: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa.pub");
    const RSA2_PUB: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa2.pub");

    /// `header.payload` and the signature segment of a token signed with the RSA fixture.
    fn signed(alg: Algorithm) -> (String, String) {
        let key = EncodingKey::from_rsa_pem(RSA_KEY).expect("fixture key");
        let token = jsonwebtoken::encode(&Header::new(alg), &serde_json::json!({"sub": "a"}), &key)
            .expect("signs");
        let (message, signature) = token.rsplit_once('.').expect("three segments");
        (message.to_string(), signature.to_string())
    }

    /// Every RSA algorithm, with the key as a PEM file gives it and as a JWK's `n` and `e` (with
    /// a sign byte before `n`, as some providers write it): what ring says is what jsonwebtoken's
    /// own backend says, for good signatures, others' and tampered ones.
    #[test]
    fn ring_agrees_with_jsonwebtoken_on_rsa() {
        let pem = DecodingKey::from_rsa_pem(RSA_PUB).expect("public key");
        let other = DecodingKey::from_rsa_pem(RSA2_PUB).expect("public key");
        let utils = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.key_utils;
        let DecodingKeyKind::SecretOrDer(der) = pem.kind() else {
            panic!("a PEM key is DER");
        };
        let (n, e) = (utils.rsa_pub_components_from_public_key)(der).expect("n and e");
        let signed_n = [&[0u8][..], &n].concat();
        let jwk = DecodingKey::from_rsa_raw_components(&signed_n, &e);
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let (message, signature) = signed(alg);
            let mut tampered = message.clone();
            tampered.push('x');
            for (key, message, want) in [
                (&pem, &message, Checked::Valid),
                (&jwk, &message, Checked::Valid),
                (&other, &message, Checked::Invalid),
                (&pem, &tampered, Checked::Invalid),
            ] {
                let found = verify(&signature, message.as_bytes(), key, alg);
                assert_eq!(found, want, "{alg:?}");
                let theirs = jsonwebtoken::crypto::verify(&signature, message.as_bytes(), key, alg)
                    .unwrap_or(false);
                assert_eq!(theirs, want == Checked::Valid, "{alg:?}: jsonwebtoken");
            }
            assert_eq!(
                verify("not*base64", message.as_bytes(), &pem, alg),
                Checked::NotBase64
            );
            let long = "A".repeat(MAX_RSA_SIGNATURE * 2);
            assert_eq!(
                verify(&long, message.as_bytes(), &pem, alg),
                Checked::Invalid
            );
        }
    }
}
