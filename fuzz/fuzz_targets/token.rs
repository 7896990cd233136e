//! Bearer tokens → the verifier (size checks, header and claims parsing, signature, claims).
//! The verifier has an HS256 secret; nothing the fuzzer finds without it may verify.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

use flowgate::config::{ClaimMapping, JwtConfig};
use flowgate::identity::{Verifier, VerifierOptions};

struct Fixture {
    verifier: Verifier,
    runtime: tokio::runtime::Runtime,
    _secret: std::path::PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("flowgate-fuzz-{}", std::process::id()));
        let mut file = std::fs::File::create(&path).expect("secret file");
        file.write_all(b"flowgate-fuzz-secret-of-at-least-32-bytes")
            .expect("secret written");
        let config = JwtConfig {
            hs256_secret_file: Some(path.clone()),
            leeway: Duration::from_secs(30),
            ..JwtConfig::default()
        };
        let options = VerifierOptions {
            token_cache_capacity: 0,
            ..VerifierOptions::default()
        };
        Fixture {
            verifier: Verifier::with_options(&config, &ClaimMapping::default(), None, options)
                .expect("verifier"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime"),
            _secret: path,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let result = f.runtime.block_on(f.verifier.verify(token));
    assert!(result.is_err(), "the fuzzer forged a token: {token:?}");
});
