//! `amqps://` against a private node (index 6) with a TLS listener whose CA the test makes:
//! with `amqp.tls_ca_file` naming that CA the binaries connect with the certificate verified;
//! with another CA they fail at once, in one line that says the certificate is not trusted and
//! never shows the password.

use std::path::Path;
use std::process::Command;

use crate::harness::{Node, TlsFiles, SERIAL};

const PASSWORD: &str = "tls-s3cret-pw";

/// Runs `openssl args…` in `dir`, panicking with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (scripts/ensure-tools installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA named `name` (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=burrow test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// The CA `ca`, a server certificate for `localhost` it signed, and a second CA `other` that
/// signed nothing.
fn make_certificates(dir: &Path) -> TlsFiles {
    make_ca(dir, "ca");
    make_ca(dir, "other");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// Runs `burrow topology apply` against `url` trusting `ca` (if any); (exit code, stdout,
/// stderr).
fn apply(url: &str, ca: Option<&Path>) -> (Option<i32>, String, String) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burrow"));
    cmd.args(["topology", "apply"])
        .current_dir(home.path())
        .env_clear()
        .env("HOME", home.path())
        .env("AMQP_URL", url)
        .env("RUST_LOG", "off");
    if let Some(ca) = ca {
        cmd.env("BURROW__AMQP__TLS_CA_FILE", ca);
    }
    let out = cmd.output().expect("running burrow");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn amqps_verifies_the_broker_against_the_configured_ca() {
    crate::requires::skip_unless_fault_env!();
    let _serial = SERIAL.lock().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let tls = make_certificates(certs.path());
    let node = Node::start_tls(6, &tls);
    node.ctl_ok(&["add_user", "burrow-tls", PASSWORD]);
    node.ctl_ok(&["set_permissions", "-p", "/", "burrow-tls", ".*", ".*", ".*"]);
    let url = format!(
        "amqps://burrow-tls:{PASSWORD}@localhost:{}/%2f",
        node.tls_port()
    );

    let (code, stdout, stderr) = apply(&url, Some(&tls.ca));
    assert_eq!(code, Some(0), "trusted CA: {stdout}{stderr}");
    assert!(stdout.contains("topology applied"), "{stdout}");
    // The declarations really went over TLS: the node shows one TLS connection's work.
    let queues = node.ctl_ok(&["list_queues", "name"]);
    assert!(queues.contains("orders.fulfillment"), "{queues}");

    for (what, ca) in [
        ("another CA", Some(certs.path().join("other.pem"))),
        ("the system CAs only", None),
    ] {
        let (code, stdout, stderr) = apply(&url, ca.as_deref());
        assert_eq!(code, Some(78), "{what}: {stdout}{stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
        assert!(
            stderr.contains("TLS certificate of RabbitMQ at amqps://burrow-tls:***@localhost")
                && stderr.contains("not trusted"),
            "{what}: {stderr}"
        );
        assert!(
            !stderr.contains(PASSWORD) && !stdout.contains(PASSWORD),
            "{what}"
        );
    }

    let (code, _, stderr) = apply(&url, Some(&certs.path().join("server.csr")));
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("tls_ca_file") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}
