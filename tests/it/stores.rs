//! One conformance suite for both secret stores, against moto and OpenBao: staging, promotion,
//! discarding and their idempotence, with readers seeing only what was promoted.

use secrecy::{ExposeSecret as _, SecretString};
use vigil::stores::{AwsSecretsManager, SecretStore, StoreError, VaultKv};

use crate::support::{Services, unique};

/// Rotation ids are UUIDs; AWS wants 32 to 64 characters in a ClientRequestToken.
fn token(n: &str) -> String {
    format!("00000000-0000-4000-8000-{n:0>12}")
}

fn value(password: &str) -> SecretString {
    SecretString::from(serde_json::json!({ "engine": "postgres", "username": "app", "password": password }).to_string())
}

fn password_of(value: &SecretString) -> String {
    let parsed: serde_json::Value = serde_json::from_str(value.expose_secret()).unwrap();
    parsed["password"].as_str().unwrap().to_owned()
}

async fn conformance(store: &dyn SecretStore, path: &str, read_as_an_app: impl AsyncFn() -> String) {
    assert_eq!(password_of(&store.current(path).await.unwrap().value), "initial");
    assert!(store.pending(path).await.unwrap().is_none());

    // Staging is invisible to readers and idempotent.
    store.put_pending(path, &token("1"), &value("first")).await.unwrap();
    store.put_pending(path, &token("1"), &value("first")).await.unwrap();
    let pending = store.pending(path).await.unwrap().unwrap();
    assert_eq!((pending.token.clone(), password_of(&pending.value)), (token("1"), "first".to_owned()));
    assert_eq!(password_of(&store.current(path).await.unwrap().value), "initial");
    assert_eq!(read_as_an_app().await, "initial", "an application must not see a staged value");

    // Promotion makes it current, clears the stage, and may be repeated.
    store.promote(path, &token("1")).await.unwrap();
    store.promote(path, &token("1")).await.unwrap();
    assert_eq!(password_of(&store.current(path).await.unwrap().value), "first");
    assert_eq!(read_as_an_app().await, "first");
    assert!(store.pending(path).await.unwrap().is_none(), "no stale pending stage after promotion");

    // Discarding removes only the named rotation's stage, and may be repeated.
    store.put_pending(path, &token("2"), &value("second")).await.unwrap();
    store.discard_pending(path, &token("other")).await.unwrap();
    assert!(store.pending(path).await.unwrap().is_some());
    store.discard_pending(path, &token("2")).await.unwrap();
    store.discard_pending(path, &token("2")).await.unwrap();
    assert!(store.pending(path).await.unwrap().is_none());
    assert_eq!(password_of(&store.current(path).await.unwrap().value), "first");

    // A new rotation replaces an abandoned stage instead of being blocked by it.
    store.put_pending(path, &token("3"), &value("third")).await.unwrap();
    store.put_pending(path, &token("4"), &value("fourth")).await.unwrap();
    assert_eq!(store.pending(path).await.unwrap().unwrap().token, token("4"));
    let err = store.promote(path, &token("3")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    store.promote(path, &token("4")).await.unwrap();
    assert_eq!(password_of(&store.current(path).await.unwrap().value), "fourth");

    let err = store.current(&format!("{path}-absent")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let err = store.put_pending(path, &token("5"), &SecretString::from("not json".to_owned())).await.unwrap_err();
    assert!(matches!(err, StoreError::Malformed { .. }) && !err.to_string().contains("not json"), "{err}");
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn aws_secrets_manager_moves_its_labels_like_aws_rotation_functions() {
    let services = Services::load();
    let dir = tempfile::tempdir().unwrap();
    let aws = services.aws(dir.path());
    let store = AwsSecretsManager::connect(&aws).await.unwrap();
    let path = unique("vigil-store");
    // The SDK client the suite reads with, as an application would (AWSCURRENT).
    let client = services.secrets_manager().await;
    client.create_secret().name(&path).secret_string(value("initial").expose_secret()).send().await.unwrap();

    conformance(&store, &path, async || {
        // AWS reads AWSCURRENT when no stage is named; moto 5.2.5 then serves the version the
        // secret was created with, ignoring label moves, so the stage is named here.
        let got = client.get_secret_value().secret_id(&path).version_stage("AWSCURRENT").send().await.unwrap();
        password_of(&SecretString::from(got.secret_string().unwrap().to_owned()))
    })
    .await;

    // AWS's stages after two promotions: the current version, the previous one, nothing pending.
    let described = client.describe_secret().secret_id(&path).send().await.unwrap();
    let stages = described.version_ids_to_stages().unwrap();
    let labelled = |label: &str| stages.values().filter(|s| s.iter().any(|x| x == label)).count();
    assert_eq!((labelled("AWSCURRENT"), labelled("AWSPREVIOUS"), labelled("AWSPENDING")), (1, 1, 0), "{stages:?}");
    let previous = client.get_secret_value().secret_id(&path).version_stage("AWSPREVIOUS").send().await.unwrap();
    assert_eq!(password_of(&SecretString::from(previous.secret_string().unwrap().to_owned())), "first");
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn vault_kv_keeps_current_as_the_newest_version() {
    let services = Services::load();
    let dir = tempfile::tempdir().unwrap();
    let store = VaultKv::connect(&services.vault(dir.path())).unwrap();
    let path = unique("vigil-store");
    let http = services.openbao.http();
    let url = format!("{}/v1/secret/data/{path}", services.openbao.address);
    let root_token = services.openbao.token.clone();
    let written = http
        .post(&url)
        .header("X-Vault-Token", &root_token)
        .json(&serde_json::json!({ "data": { "engine": "postgres", "username": "app", "password": "initial" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);

    // Applications read the newest version, as KV clients do by default.
    conformance(&store, &path, async || {
        let read: serde_json::Value =
            http.get(&url).header("X-Vault-Token", &root_token).send().await.unwrap().json().await.unwrap();
        read["data"]["data"]["password"].as_str().unwrap().to_owned()
    })
    .await;

    let meta = services.vault_get(&format!("secret/metadata/{path}")).await;
    let custom = &meta["data"]["custom_metadata"];
    assert_eq!(custom["vigil_rotation"], token("4"));
    assert_eq!(custom["vigil_current_version"], meta["data"]["current_version"].to_string());
    assert_eq!(meta["data"]["current_version"], 3, "initial, first, fourth: staging writes no version");
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn vault_kv_promotion_cut_short_after_its_write_finishes_without_a_second_version() {
    let services = Services::load();
    let dir = tempfile::tempdir().unwrap();
    let store = VaultKv::connect(&services.vault(dir.path())).unwrap();
    let path = unique("vigil-store");
    // A new version of the secret, as any KV writer makes one.
    let write = async |password: &str| {
        let value = serde_json::json!({ "engine": "postgres", "username": "app", "password": password });
        services.seed(crate::support::Store::Vault, dir.path(), &path, &value).await;
    };
    write("initial").await;
    let first = token("1");
    store.put_pending(&path, &first, &value("first")).await.unwrap();
    store.promote(&path, &first).await.unwrap();
    let second = token("2");
    store.put_pending(&path, &second, &value("second")).await.unwrap();
    // The process wrote the new version and died before recording the stages.
    write("second").await;

    store.promote(&path, &second).await.unwrap();
    let meta = services.vault_get(&format!("secret/metadata/{path}")).await;
    assert_eq!(meta["data"]["current_version"], 3, "initial, first, second: the write is not repeated");
    let custom = &meta["data"]["custom_metadata"];
    assert_eq!(custom["vigil_rotation"], second);
    assert_eq!(custom["vigil_current_version"], "3");
    assert_eq!(custom["vigil_previous_version"], "2");
    assert!(store.pending(&path).await.unwrap().is_none());
    assert_eq!(password_of(&store.current(&path).await.unwrap().value), "second");
}
