//! JWT signing-key rotation against the real stores and publishers, checked by an independent
//! JWT library (`jsonwebtoken`) acting as signer and verifier: {EdDSA, ES256, RS256} x
//! {AWS Secrets Manager, Vault}, with the JWKS published to S3, Vault and a file in turn.
//!
//! Time is a manual clock: each wait (the verifiers' JWKS cache time before the new key signs,
//! the token lifetime plus skew before the old key is unpublished) is crossed by moving it,
//! with a new rotator at every step, as a restarted process would have.

use std::sync::Arc;

use chrono::DateTime;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm as JwsAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use vigil::clock::ManualClock;
use vigil::context::Ctx;
use vigil::evidence::{Ledger, LedgerKey};
use vigil::rotation::Rotator;
use vigil::saga::Ended;
use vigil::state::Db;
use vigil::stores::SecretStore;

use crate::support::{Run, Services, Store, unique, vigil};

#[derive(Debug, Clone, Copy)]
enum Publish {
    S3,
    Vault,
    File,
}

struct JwtCell {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    name: String,
    path: String,
    store: Box<dyn SecretStore>,
    publish: Publish,
    bucket: String,
    services: Services,
}

impl JwtCell {
    /// A JWT secret holding `{}` (no key yet) in `store`, publishing to `publish`, with the
    /// default times (1h cache, 1h tokens, 5m skew).
    async fn new(algorithm: &str, store: Store, publish: Publish) -> Self {
        let services = Services::load();
        let dir = tempfile::tempdir().unwrap();
        let path = unique("vigil/jwt");
        let secret_store = services.seed(store, dir.path(), &path, &json!({})).await;
        let name = unique("auth-jwt");
        let bucket = unique("jwks").to_lowercase();
        let jwks = match publish {
            Publish::S3 => {
                let s3 = vigil::aws::s3_client(&services.aws(dir.path())).await.unwrap();
                s3.create_bucket().bucket(&bucket).send().await.unwrap();
                format!("{{ publish = \"s3\", bucket = \"{bucket}\", key = \".well-known/jwks.json\" }}")
            }
            Publish::Vault => format!("{{ publish = \"vault_kv\", path = \"public/{name}/jwks\" }}"),
            Publish::File => "{ publish = \"file\", path = \"../www/jwks.json\" }".to_owned(),
        };
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        std::fs::write(
            dir.path().join("schedules/jwt.toml"),
            format!(
                "[secrets.{name}]\nkind = \"jwt_signing_key\"\nstore = \"{}\"\npath = \"{path}\"\n\
                 algorithm = \"{algorithm}\"\njwks = {jwks}\n",
                store.config_name()
            ),
        )
        .unwrap();
        let config = services.write_controller_config(dir.path());
        Self { dir, config, name, path, store: secret_store, publish, bucket, services }
    }

    fn vigil(&self, args: &[&str]) -> Run {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        vigil(self.dir.path(), &all)
    }

    /// The stored signing key, as a signer reads it.
    async fn current(&self) -> Value {
        let stored = self.store.current(&self.path).await.unwrap();
        serde_json::from_str(stored.value.expose_secret()).unwrap()
    }

    /// Signs a token with the current key, as the application would: `kid` in the header.
    async fn sign(&self, subject: &str) -> String {
        let key = self.current().await;
        let pem = key["private_key"].as_str().unwrap().as_bytes();
        let (alg, encoding) = match key["alg"].as_str().unwrap() {
            "EdDSA" => (JwsAlgorithm::EdDSA, EncodingKey::from_ed_pem(pem).unwrap()),
            "ES256" => (JwsAlgorithm::ES256, EncodingKey::from_ec_pem(pem).unwrap()),
            "RS256" => (JwsAlgorithm::RS256, EncodingKey::from_rsa_pem(pem).unwrap()),
            other => panic!("unexpected alg {other}"),
        };
        let mut header = Header::new(alg);
        header.kid = Some(key["kid"].as_str().unwrap().to_owned());
        // Expiry by the real clock: jsonwebtoken checks it against the system time.
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3_600;
        jsonwebtoken::encode(&header, &json!({ "sub": subject, "exp": exp }), &encoding).unwrap()
    }

    /// The published document, read as a verifier fetches it.
    async fn published(&self) -> Value {
        match self.publish {
            Publish::S3 => {
                let s3 = vigil::aws::s3_client(&self.services.aws(self.dir.path())).await.unwrap();
                let got = s3.get_object().bucket(&self.bucket).key(".well-known/jwks.json").send().await.unwrap();
                assert_eq!(got.cache_control(), Some("public, max-age=3600"));
                assert_eq!(got.content_type(), Some("application/jwk-set+json"));
                serde_json::from_slice(&got.body.collect().await.unwrap().into_bytes()).unwrap()
            }
            Publish::Vault => {
                let got = self.services.vault_get(&format!("secret/data/public/{}/jwks", self.name)).await;
                let meta = self.services.vault_get(&format!("secret/metadata/public/{}/jwks", self.name)).await;
                assert_eq!(meta["data"]["custom_metadata"]["cache-control"], "public, max-age=3600");
                got["data"]["data"].clone()
            }
            Publish::File => {
                serde_json::from_slice(&std::fs::read(self.dir.path().join("www/jwks.json")).unwrap()).unwrap()
            }
        }
    }

    fn kids(document: &Value) -> Vec<String> {
        document["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
    }
}

/// Verifies `token` against `document` as an independent verifier would: find the key by
/// `kid`, check the signature with that key's own algorithm.
fn verify(token: &str, document: &Value) -> Result<String, String> {
    let set: JwkSet = serde_json::from_value(document.clone()).map_err(|e| e.to_string())?;
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or_else(|| format!("kid {kid} is not published"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let alg: JwsAlgorithm = jwk.common.key_algorithm.ok_or("no alg")?.to_string().parse().map_err(|_| "alg")?;
    let claims = jsonwebtoken::decode::<Value>(token, &key, &Validation::new(alg)).map_err(|e| e.to_string())?;
    Ok(claims.claims["sub"].as_str().unwrap_or_default().to_owned())
}

struct Session<'a> {
    db: &'a Db,
    key_path: std::path::PathBuf,
    clock: Arc<ManualClock>,
    plan: &'a vigil::config::Plan,
}

impl Session<'_> {
    /// The ledger, opened afresh as a restarted process would.
    async fn ledger(&self) -> Ledger {
        Ledger::open(self.db.clone(), LedgerKey::load(&self.key_path).unwrap(), self.clock.clone()).await.unwrap()
    }

    /// Resumes what is in flight with a fresh ledger and rotator, as a restarted process would.
    async fn resume(&self) -> Ended {
        let ledger = self.ledger().await;
        let rotator =
            Rotator::new(Ctx::new(self.plan, self.db, &ledger, self.clock.as_ref(), CancellationToken::new()));
        let mut resumed = rotator.resume().await.unwrap();
        assert_eq!(resumed.len(), 1, "one rotation in flight");
        resumed.remove(0).ended
    }

    /// The secrets `--all-due` would rotate now.
    async fn due(&self) -> Vec<String> {
        let ledger = self.ledger().await;
        Rotator::new(Ctx::new(self.plan, self.db, &ledger, self.clock.as_ref(), CancellationToken::new()))
            .due()
            .await
            .unwrap()
    }

    /// Starts a rotation of `name`, with a fresh ledger and rotator.
    async fn rotate(&self, name: &str) -> Ended {
        let ledger = self.ledger().await;
        let rotator =
            Rotator::new(Ctx::new(self.plan, self.db, &ledger, self.clock.as_ref(), CancellationToken::new()));
        rotator.rotate(name, false).await.unwrap().ended
    }
}

fn waiting(step: &str) -> impl Fn(&Ended) -> bool + '_ {
    move |ended| matches!(ended, Ended::Waiting { step: s, .. } if s == step)
}

async fn lifecycle(algorithm: &str, store: Store, publish: Publish) {
    let cell = JwtCell::new(algorithm, store, publish).await;
    let plan = vigil::config::load(&cell.config).unwrap().plan;
    let db = Db::open(&plan.evidence.store).await.unwrap();
    let key_path = cell.dir.path().join("ledger.key");
    LedgerKey::generate("vigil/keys").save(&key_path).unwrap();
    let clock = Arc::new(ManualClock::new(DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().to_utc()));
    let session = Session { db: &db, key_path, clock: clock.clone(), plan: &plan };
    let hour = chrono::Duration::hours(1);
    let minute = chrono::Duration::minutes(1);

    // The first key: published an hour before it is stored as current, so no verifier ever
    // sees a token from a key it has not fetched.
    assert_eq!(session.due().await, vec![cell.name.clone()], "never rotated: due");
    let ended = session.rotate(&cell.name).await;
    assert!(waiting("promote")(&ended), "{ended:?}");
    assert!(session.due().await.is_empty(), "a rotation in flight is resumed, not started again");
    assert_eq!(cell.current().await, json!({}), "the first key does not sign before verifiers have it");
    let first_kid = JwtCell::kids(&cell.published().await);
    assert_eq!(first_kid.len(), 1);
    clock.advance(hour + minute);
    assert!(waiting("retire")(&session.resume().await));
    assert_eq!(cell.current().await["kid"], first_kid[0]);
    clock.advance(hour + minute * 6);
    assert_eq!(session.resume().await, Ended::Done);

    // A token signed just before the rotation.
    let before = cell.sign("signed-before").await;
    let published = cell.published().await;
    assert_eq!(verify(&before, &published).unwrap(), "signed-before");
    for key in published["keys"].as_array().unwrap() {
        assert_eq!(key["alg"], algorithm, "one algorithm per key");
        assert_eq!(key["kid"], vigil::jwks::thumbprint(key), "kid is the RFC 7638 thumbprint");
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(key.get(private).is_none(), "a private member `{private}` was published");
        }
    }

    // Next: published beside the current key, not signing.
    clock.advance(chrono::Duration::days(7));
    let ended = session.rotate(&cell.name).await;
    assert!(waiting("promote")(&ended), "{ended:?}");
    let cached = cell.published().await;
    let kids = JwtCell::kids(&cached);
    assert_eq!(kids.len(), 2, "current and next are both published");
    assert_eq!(cell.current().await["kid"], first_kid[0], "the next key does not sign yet");

    // A restart inside the JWKS cache window does not promote early.
    clock.advance(hour - minute);
    assert!(waiting("promote")(&session.resume().await));
    assert_eq!(cell.current().await["kid"], first_kid[0]);

    // Current: the new key signs. A verifier still holding the JWKS it cached before the switch
    // verifies the new tokens, and the old token verifies against the published document.
    clock.advance(minute * 2);
    assert!(waiting("retire")(&session.resume().await));
    let after = cell.sign("signed-after").await;
    assert_ne!(cell.current().await["kid"], first_kid[0]);
    assert_eq!(verify(&after, &cached).unwrap(), "signed-after", "a verifier's cached JWKS has the new key");
    assert_eq!(verify(&before, &cell.published().await).unwrap(), "signed-before", "the overlap holds");

    // A restart before the old tokens have expired does not retire early.
    clock.advance(hour);
    assert!(waiting("retire")(&session.resume().await));
    assert_eq!(verify(&before, &cell.published().await).unwrap(), "signed-before");

    // Retired: the old key is gone from the JWKS, its tokens are rejected; new ones verify.
    clock.advance(minute * 6);
    assert_eq!(session.resume().await, Ended::Done);
    let published = cell.published().await;
    assert_eq!(JwtCell::kids(&published).len(), 1);
    let rejected = verify(&before, &published).unwrap_err();
    assert!(rejected.contains("is not published"), "{rejected}");
    assert_eq!(verify(&after, &published).unwrap(), "signed-after");
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none());

    // The evidence verifies and holds no private key.
    let report = vigil::evidence::verify(&db, vigil::evidence::Trust::Genesis).await.unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    let records =
        vigil::evidence::list(&db, &vigil::evidence::RecordFilter { limit: 1000, ..Default::default() }).await.unwrap();
    let text = serde_json::to_string(&records).unwrap();
    let private = cell.current().await["private_key"].as_str().unwrap().to_owned();
    let body: String = private.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!text.contains("PRIVATE KEY") && !text.contains(&body[..40]), "a private key reached the evidence");

    // `vigil jwks show` prints what verifiers fetch.
    let shown = tokio::task::block_in_place(|| cell.vigil(&["--output", "json", "jwks", "show", &cell.name]));
    shown.assert_code(0);
    assert_eq!(shown.json(), published);
}

macro_rules! jwt_matrix {
    ($($name:ident: $alg:expr, $store:expr, $publish:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs services: cargo xtask test"]
        async fn $name() {
            lifecycle($alg, $store, $publish).await;
        }
    )*};
}

jwt_matrix! {
    jwt_eddsa_aws_published_to_s3: "EdDSA", Store::Aws, Publish::S3;
    jwt_eddsa_vault_published_to_a_file: "EdDSA", Store::Vault, Publish::File;
    jwt_es256_aws_published_to_vault: "ES256", Store::Aws, Publish::Vault;
    jwt_es256_vault_published_to_s3: "ES256", Store::Vault, Publish::S3;
    jwt_rs256_aws_published_to_a_file: "RS256", Store::Aws, Publish::File;
    jwt_rs256_vault_published_to_vault: "RS256", Store::Vault, Publish::Vault;
}

/// The real binary killed at every step boundary of a rotation, its clock run ahead across
/// each wait: every restart resumes where it stopped, never promotes or retires early, and
/// never loses a step; no private key reaches its output at TRACE.
#[cfg(feature = "failpoints")]
async fn killed_at_every_step(store: Store, publish: Publish) {
    let cell = JwtCell::new("ES256", store, publish).await;
    let config = cell.config.to_str().unwrap().to_owned();
    let run = |args: &[&str], failpoint: Option<&str>, offset: i64| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
        command.args(["--config", &config, "--output", "json", "-vvv"]).args(args).current_dir(cell.dir.path());
        command.env_remove("RUST_LOG").env("VIGIL_CLOCK_OFFSET", offset.to_string());
        if let Some(point) = failpoint {
            command.env("VIGIL_FAILPOINT", format!("rotation.jwt_signing_key:{point}"));
        }
        command.output().unwrap()
    };
    let mut outputs = String::new();
    let mut crash = |args: &[&str], point: &str, offset: i64| {
        let output = run(args, Some(point), offset);
        assert!(
            output.status.code().is_none(),
            "{point}: should have aborted: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        outputs.push_str(&String::from_utf8_lossy(&output.stderr));
    };
    let resume = |offset: i64| {
        let output = run(&["rotate", "--resume"], None, offset);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        (report["rotations"][0].clone(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (hour, skew) = (3_600, 300);

    crash(&["rotate", &cell.name], "after:generate", 0);
    crash(&["rotate", "--resume"], "before:publish", 0);
    crash(&["rotate", "--resume"], "after:publish", 0);
    let (report, log) = resume(0);
    assert_eq!(report["outcome"], "waiting", "{report}");
    assert_eq!(report["step"], "promote");
    assert_eq!(cell.current().await, json!({}), "not promoted before the JWKS cache time");
    let next = report["user"].as_str().unwrap().to_owned();
    let mut logs = log;

    crash(&["rotate", "--resume"], "before:promote", hour + 60);
    crash(&["rotate", "--resume"], "after:promote", hour + 60);
    let (report, log) = resume(hour + 60);
    logs.push_str(&log);
    assert_eq!(report["step"], "retire", "{report}");
    assert_eq!(cell.current().await["kid"], next.as_str());
    let signed = cell.sign("during-the-window").await;
    assert_eq!(verify(&signed, &cell.published().await).unwrap(), "during-the-window");

    let retire_due = hour + 60 + hour + skew + 60;
    let (report, log) = resume(retire_due - 120);
    logs.push_str(&log);
    assert_eq!(report["step"], "retire", "not retired before tokens expire: {report}");
    crash(&["rotate", "--resume"], "before:retire", retire_due);
    let (report, log) = resume(retire_due);
    logs.push_str(&log);
    assert_eq!(report["outcome"], "done", "{report}");
    assert_eq!(JwtCell::kids(&cell.published().await), vec![next]);

    let private = cell.current().await["private_key"].as_str().unwrap().to_owned();
    let body: String = private.lines().filter(|l| !l.starts_with("-----")).collect();
    logs.push_str(&outputs);
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "the runs logged at TRACE");
    assert!(!logs.contains("PRIVATE KEY") && !logs.contains(&body[..40]), "a private key reached a log");
    cell.vigil(&["evidence", "verify"]).assert_code(0);
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_killed_jwt_rotation_in_vault_resumes_without_losing_or_hurrying_a_step() {
    killed_at_every_step(Store::Vault, Publish::File).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_killed_jwt_rotation_in_aws_resumes_without_losing_or_hurrying_a_step() {
    killed_at_every_step(Store::Aws, Publish::S3).await;
}

/// Configuration mistakes specific to JWT keys name the field and say what to do.
#[test]
fn jwt_configuration_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::write(dir.path().join("vigil.toml"), "[controller]\ndata_dir = \"data\"\n").unwrap();
    let write = |body: &str| std::fs::write(dir.path().join("schedules/jwt.toml"), body).unwrap();
    let check = || vigil(dir.path(), &["config", "check", "vigil.toml"]);

    write("[secrets.auth]\nkind = \"jwt_signing_key\"\nstore = \"vault_kv\"\npath = \"p\"\n");
    let run = check();
    run.assert_code(1);
    assert!(run.stderr().contains("secrets.auth.jwks: a jwt_signing_key secret needs `jwks`"), "{}", run.stderr());

    write(
        "[secrets.auth]\nkind = \"jwt_signing_key\"\nstore = \"vault_kv\"\npath = \"p\"\nalgorithm = \"HS256\"\n\
         jwks = { publish = \"file\", path = \"jwks.json\" }\n",
    );
    let run = check();
    run.assert_code(1);
    assert!(run.stderr().contains("jwt.toml:5:13"), "{}", run.stderr());
    assert!(run.stderr().contains("secrets.auth.algorithm"), "{}", run.stderr());

    write(
        "[secrets.auth]\nkind = \"jwt_signing_key\"\nstore = \"vault_kv\"\npath = \"p\"\noverlap = \"1d\"\n\
         max_token_lifetime = \"7d\"\njwks = { publish = \"s3\", key = \"jwks.json\" }\n",
    );
    let run = check();
    run.assert_code(1);
    for expected in [
        "secrets.auth.overlap: a JWT key's overlap follows from its times",
        "secrets.auth.max_token_lifetime: jwks_cache + max_token_lifetime + clock_skew",
        "secrets.auth.jwks.bucket: publish = \"s3\" needs `bucket`",
    ] {
        assert!(run.stderr().contains(expected), "missing {expected:?} in:\n{}", run.stderr());
    }
}

/// The daemon carries a JWT rotation through its waits with nobody running `--resume`: the
/// first `vigil run --once` bootstraps the key and leaves it waiting to promote; the start's
/// catch-up after the JWKS cache time promotes it; one after the tokens it may have signed
/// expired retires the old key, leaving the JWKS with the new one alone.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn the_daemon_promotes_and_retires_a_jwt_key_when_each_wait_ends() {
    let cell = JwtCell::new("ES256", Store::Vault, Publish::File).await;
    let config = cell.config.to_str().unwrap().to_owned();
    let once = |offset: i64| -> Value {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["--config", &config, "--output", "json", "run", "--once"])
            .current_dir(cell.dir.path())
            .env("VIGIL_CLOCK_OFFSET", offset.to_string())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let outcome = |summary: &Value, job: &str| -> String {
        // A wait that came due while no daemon ran is the start's catch-up's to resume.
        let mut all = summary["resumed"].as_array().unwrap().iter().chain(summary["ran"].as_array().unwrap());
        let found = all.find(|r| r["job"] == job).cloned();
        let found = found.unwrap_or_else(|| panic!("{job} did not run: {summary}"));
        assert_eq!(found["ok"], true, "{summary}");
        found["outcome"].as_str().unwrap().to_owned()
    };
    let (hour, skew) = (3_600, 300);

    let first = once(0);
    assert!(outcome(&first, &format!("rotate:{}", cell.name)).contains("waiting to promote"), "{first}");
    assert_eq!(cell.current().await, json!({}), "not promoted before the JWKS cache time");

    let promoted = once(hour + 60);
    let resumed = format!("resume:secret:{}", cell.name);
    assert!(outcome(&promoted, &resumed).contains("waiting to retire"), "{promoted}");
    let kid = cell.current().await["kid"].as_str().unwrap().to_owned();

    let retired = once(hour + 60 + hour + skew + 60);
    assert_eq!(outcome(&retired, &resumed), "done", "{retired}");
    assert_eq!(JwtCell::kids(&cell.published().await), vec![kid]);
    cell.vigil(&["evidence", "verify"]).assert_code(0);
}
