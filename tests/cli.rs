//! The binary's offline commands that have no suite of their own: `flowgate crd`, and how
//! the offline commands write to a pipe.

use std::process::Command;

fn flowgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(args)
        .output()
        .expect("flowgate runs")
}

#[test]
fn crd_writes_the_committed_files_into_a_directory_it_creates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("new/crds");
    let written = flowgate(&["crd", "--out-dir", &out.display().to_string()]);
    assert!(written.status.success(), "{written:?}");
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut files = 0;
    for entry in std::fs::read_dir(&committed).expect("crds/") {
        let name = entry.expect("entry").file_name();
        let want = std::fs::read_to_string(committed.join(&name)).expect("committed");
        let have = std::fs::read_to_string(out.join(&name)).expect("written");
        assert_eq!(have, want, "{name:?}");
        files += 1;
    }
    assert_eq!(files, 3);

    // A path that cannot be a directory is named in the error.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    let refused = flowgate(&["crd", "--out-dir", &file.join("crds").display().to_string()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("creating {}", file.join("crds").display())),
        "{stderr}"
    );
}

/// `flowgate crd | head` and `flowgate check … | head`: a reader that stops early is not a
/// failure (Rust ignores SIGPIPE, and `print!` would panic with exit 101).
#[test]
fn a_reader_that_stops_early_is_not_a_failure() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for args in [
        vec!["crd"],
        vec!["check", examples.to_str().expect("utf-8 path")],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("flowgate runs");
        // Nothing read: the pipe's reader is gone before the first write.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("flowgate ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `flowgate run` with settings that only turn out unusable at start: exit 2, "invalid
/// configuration" naming the settings, and no ledger file left behind.
#[test]
fn run_refuses_unusable_settings_before_opening_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (resources, secret) = (dir.path().join("resources"), dir.path().join("secret"));
    std::fs::create_dir(&resources).expect("resources dir");
    std::fs::write(&secret, "a-secret-of-at-least-32-bytes-long!!").expect("secret");
    let ledger = dir.path().join("ledger.db");
    let no_key: &[(&str, &std::path::Path)] = &[];
    let secret_and_audience: &[(&str, &std::path::Path)] = &[
        ("FLOWGATE_JWT_HS256_SECRET_FILE", &secret),
        (
            "FLOWGATE_SERVICE_ACCOUNT_AUDIENCE",
            std::path::Path::new("flowgate"),
        ),
    ];
    let missing = dir.path().join("missing");
    let unreadable_client_secret: &[(&str, &std::path::Path)] = &[
        ("FLOWGATE_JWT_HS256_SECRET_FILE", &secret),
        (
            "FLOWGATE_TOKEN_ENDPOINT_URL",
            std::path::Path::new("http://127.0.0.1:9/token"),
        ),
        ("FLOWGATE_TOKEN_CLIENT_ID", std::path::Path::new("flowgate")),
        ("FLOWGATE_TOKEN_CLIENT_SECRET_FILE", &missing),
    ];
    let logging_nothing: &[(&str, &std::path::Path)] = &[
        ("FLOWGATE_JWT_HS256_SECRET_FILE", &secret),
        ("RUST_LOG", std::path::Path::new("warning")),
    ];
    for (settings, named) in [
        (no_key, "FLOWGATE_JWKS_URL"),
        (secret_and_audience, "FLOWGATE_SERVICE_ACCOUNT_AUDIENCE"),
        (
            unreadable_client_secret,
            "FLOWGATE_TOKEN_CLIENT_SECRET_FILE",
        ),
        (logging_nothing, "RUST_LOG"),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
        for (name, _) in
            std::env::vars().filter(|(n, _)| n.starts_with("FLOWGATE_") || n == "RUST_LOG")
        {
            command.env_remove(name);
        }
        let out = command
            .args(["run", "--resources-dir"])
            .arg(&resources)
            .env(
                "FLOWGATE_LEDGER_URL",
                format!("sqlite://{}", ledger.display()),
            )
            .env("FLOWGATE_LISTEN_ADDR", "127.0.0.1:0")
            .env("FLOWGATE_OPS_ADDR", "127.0.0.1:0")
            .envs(settings.iter().copied())
            .output()
            .expect("flowgate runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{named}: {stderr}");
        assert!(
            stderr.contains("invalid configuration") && stderr.contains(named),
            "{stderr}"
        );
        assert!(!ledger.exists(), "{named}: a ledger file was created");
    }
}

/// A switch set by its environment variable takes the words a shell user writes (`1`, `yes`,
/// `on`, any case), as `true` and `false` do: both switches read, so nothing would run.
#[test]
fn switches_from_the_environment_take_1_yes_and_on() {
    for (yes, no) in [("1", "0"), ("yes", "no"), ("On", "off"), ("TRUE", "false")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FLOWGATE_")) {
            command.env_remove(name);
        }
        let out = command
            .args(["run"])
            .env("FLOWGATE_NO_CONTROLLER", yes)
            .env("FLOWGATE_NO_PROXY", yes)
            .env("FLOWGATE_RESOURCES_RECURSIVE", no)
            .output()
            .expect("flowgate runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yes}: {stderr}");
        assert!(stderr.contains("nothing would run"), "{yes}: {stderr}");
    }
}

/// `--help` shows which environment variable sets each option, and the values of most; not the
/// ledger's URL, which may carry a PostgreSQL password.
#[test]
fn help_does_not_print_the_ledger_url() {
    let url = "postgres://flowgate:s3cret-password@db.example/flowgate";
    for args in [vec!["run", "--help"], vec!["ledger", "backup", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(&args)
            .env("FLOWGATE_LEDGER_URL", url)
            .env("FLOWGATE_OPS_ADDR", "[::]:9191")
            .output()
            .expect("flowgate runs");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(help.contains("FLOWGATE_LEDGER_URL"), "{args:?}: {help}");
        assert!(!help.contains("s3cret-password"), "{args:?}: {help}");
        if args[0] == "run" {
            assert!(help.contains("FLOWGATE_OPS_ADDR=[::]:9191"), "{help}");
        }
    }
}
