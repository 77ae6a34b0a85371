//! TLS to databases: verified by default, and refused, before any credential is sent, for a
//! certificate from another CA, a certificate for another name, and a server offering no TLS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vigil::engines::{self, Credential, Endpoint, Engine};
use vigil::tls::{Tls, TlsMode};

use crate::support::{Database, Services};

fn admin(db: &Database) -> Credential {
    Credential { username: db.user.clone(), password: SecretString::from(db.password.clone()) }
}

fn db_of(services: &Services, engine: Engine) -> &Database {
    match engine {
        Engine::Postgres => &services.postgres,
        Engine::Mysql => &services.mariadb,
    }
}

/// A CA that signed nothing the services serve.
fn other_ca(dir: &Path) -> PathBuf {
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=some other CA", "-keyout"])
        .arg(dir.join("other.key"))
        .arg("-out")
        .arg(dir.join("other.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    dir.join("other.pem")
}

async fn login(engine: Engine, endpoint: Endpoint, db: &Database) -> Result<(), engines::EngineError> {
    engines::connect(engine, endpoint, admin(db)).test_login(&admin(db), &[]).await
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn verify_full_logs_in_to_both_private_servers() {
    let services = Services::load();
    for engine in [Engine::Postgres, Engine::Mysql] {
        let db = db_of(&services, engine);
        login(engine, db.endpoint(), db).await.unwrap_or_else(|err| panic!("{engine:?}: {err}"));
    }
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_certificate_from_another_ca_is_refused_naming_the_host() {
    let services = Services::load();
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(dir.path());
    for engine in [Engine::Postgres, Engine::Mysql] {
        let db = db_of(&services, engine);
        for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa] {
            let endpoint = Endpoint { tls: Tls { mode, ca_file: Some(other.clone()) }, ..db.endpoint() };
            let err = login(engine, endpoint, db).await.expect_err("a certificate from another CA was accepted");
            let text = err.to_string();
            assert!(text.contains(&format!("{}:{}", db.host, db.port)), "{engine:?} {mode:?}: {text}");
            assert!(text.to_lowercase().contains("certificate"), "{engine:?} {mode:?}: {text}");
            assert!(!err.is_transient(), "a certificate problem does not pass by retrying: {text}");
        }
    }
}

/// Forwards `127.0.0.2:port` to the server, so that it is reached by an address its
/// certificate does not name.
async fn another_name_for(db: &Database) -> (String, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!("{}:{}", db.host, db.port);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    ("127.0.0.2".to_owned(), port)
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_certificate_for_another_name_is_refused_under_verify_full_only() {
    let services = Services::load();
    for engine in [Engine::Postgres, Engine::Mysql] {
        let db = db_of(&services, engine);
        let (host, port) = another_name_for(db).await;
        let endpoint = Endpoint { host: host.clone(), port, ..db.endpoint() };
        let err = login(engine, endpoint.clone(), db).await.expect_err("a certificate for another name was accepted");
        let text = err.to_string();
        assert!(text.contains(&format!("{host}:{port}")), "{engine:?}: {text}");
        assert!(text.to_lowercase().contains("certificate"), "{engine:?}: {text}");
        // verify-ca checks the issuer, not the name.
        let endpoint = Endpoint { tls: Tls { mode: TlsMode::VerifyCa, ..db.tls() }, ..endpoint };
        login(engine, endpoint, db).await.unwrap_or_else(|err| panic!("{engine:?} verify-ca: {err}"));
    }
}

/// What a fake PostgreSQL server that offers no TLS and asks for a cleartext password heard.
#[derive(Default, Debug)]
struct Heard {
    asked_for_tls: bool,
    password_message: bool,
}

/// A loopback listener speaking just enough of PostgreSQL's protocol to refuse TLS and ask for
/// the password in the clear, recording what each client sends.
async fn cleartext_postgres() -> (u16, Arc<Mutex<Heard>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = Arc::new(Mutex::new(Heard::default()));
    let record = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if socket.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                if socket.read_exact(&mut body).await.is_err() {
                    return;
                }
                // SSLRequest: 80877103. Refuse it; a client that carries on sends its startup.
                if body[..4] == 80_877_103u32.to_be_bytes() {
                    record.lock().unwrap().asked_for_tls = true;
                    if socket.write_all(b"N").await.is_err() || socket.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    if socket.read_exact(&mut startup).await.is_err() {
                        return;
                    }
                }
                // AuthenticationCleartextPassword.
                if socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.is_err() {
                    return;
                }
                let mut tag = [0u8; 1];
                if socket.read_exact(&mut tag).await.is_ok() && tag[0] == b'p' {
                    record.lock().unwrap().password_message = true;
                }
            });
        }
    });
    (port, heard)
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_server_offering_no_tls_hears_no_password_under_any_mode_but_disable() {
    let services = Services::load();
    let db = &services.postgres;
    for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa, TlsMode::Require] {
        let (port, heard) = cleartext_postgres().await;
        let endpoint = Endpoint { port, tls: Tls { mode, ..db.tls() }, ..db.endpoint() };
        let err = login(Engine::Postgres, endpoint, db).await.expect_err("logged in to a fake server");
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{mode:?}: {text}");
        assert!(text.contains("TLS"), "{mode:?}: {text}");
        let heard = heard.lock().unwrap();
        assert!(heard.asked_for_tls, "{mode:?}: TLS is asked for first");
        assert!(!heard.password_message, "{mode:?}: the password went out in the clear");
    }
    // The listener does hear a password when TLS is written off: it is a real test.
    let (port, heard) = cleartext_postgres().await;
    let endpoint = Endpoint { port, tls: Tls { mode: TlsMode::Disable, ca_file: None }, ..db.endpoint() };
    let _ = login(Engine::Postgres, endpoint, db).await;
    assert!(heard.lock().unwrap().password_message, "mode disable sends the password, as configured");
}
