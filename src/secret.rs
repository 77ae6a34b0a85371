//! Secret values and the references that say where to find them.
//!
//! A secret value lives only in a [`SecretString`]: its `Debug` prints a redaction marker, it
//! has no `Display`, and its memory is zeroed on drop. Configuration never holds a secret value,
//! only a [`SecretRef`] naming an environment variable, a file or a path in a secret store.

use std::fmt;
use std::path::{Path, PathBuf};

pub use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Which secret store holds a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// AWS Secrets Manager, with its `AWSCURRENT` / `AWSPENDING` / `AWSPREVIOUS` labels.
    AwsSecretsManager,
    /// A Vault or OpenBao KV version 2 mount.
    VaultKv,
}

impl StoreKind {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwsSecretsManager => "aws_secrets_manager",
            Self::VaultKv => "vault_kv",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user name and its password.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The database user.
    pub username: String,
    /// The password.
    pub password: SecretString,
}

impl Credential {
    /// A login stored as a JSON object with string `username` and `password` (AWS's template
    /// for database secrets); the error never shows the value.
    pub fn from_json(value: &SecretString) -> Result<Self, String> {
        use secrecy::ExposeSecret as _;
        let parsed: serde_json::Value = serde_json::from_str(value.expose_secret()).unwrap_or_default();
        match (parsed["username"].as_str(), parsed["password"].as_str()) {
            (Some(username), Some(password)) => {
                Ok(Self { username: username.to_owned(), password: SecretString::from(password.to_owned()) })
            }
            _ => Err("not a JSON object with string `username` and `password`".to_owned()),
        }
    }
}

/// Creates `path` with mode 0600 (and its folder), failing if it exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = create_private(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates `path` for writing, mode 0600, failing if anything is there already, a symbolic
/// link included: a link planted at a path vigil writes secrets to must not redirect them.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// [`create_private`] after removing what is at `path` (a file an interrupted write left, or a
/// link itself, never what it points to).
pub fn create_private_anew(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    create_private(path)
}

/// Where a file is written before it is renamed to `path`: a hidden name beside it.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Writes `bytes` to a new 0600 file at [`partial_path`] and renames it to `path`, replacing
/// whatever is there (a link itself, never its target): a reader never sees half a file.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let partial = partial_path(path);
    let mut file = create_private_anew(&partial)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&partial, path)
}

/// Reads a file that holds a secret, refusing it when group or others may read it: a secret
/// others can read is no longer one, and quietly using it would hide that. The error says
/// which mode was found (`PermissionDenied`, with the mode in its message).
pub fn read_private(path: &Path) -> std::io::Result<zeroize::Zeroizing<String>> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::File::open(path)?;
    // The mode of the file opened, not of whatever the path names a moment later.
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("group or others may read it (mode {mode:03o}); `chmod 600` it"),
        ));
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// This process's private scratch folder, `data_dir/tmp/<pid>` (0700), where client tools'
/// password files live while they run.
///
/// The first call in a process sweeps `data_dir/tmp`: folders of processes no longer running
/// (a crash leaves password files behind) and anything else there are removed, and this
/// process's own folder starts empty (a folder of an earlier process with the same id is stale).
/// Folders of live processes are left alone: a daemon and a manual command may run at once.
pub fn scratch_dir(data_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    static SWEPT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let tmp = data_dir.join("tmp");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&tmp)?;
    let pid = std::process::id();
    let own = tmp.join(pid.to_string());
    if SWEPT.get().is_none() {
        for entry in std::fs::read_dir(&tmp)? {
            let path = entry?.path();
            let alive = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|other| other != pid && Path::new(&format!("/proc/{other}")).exists());
            if !alive {
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                if let Err(err) = removed {
                    tracing::warn!(path = %path.display(), %err, "cannot remove a stale scratch file");
                }
            }
        }
        let _ = SWEPT.set(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&own)?;
    Ok(own)
}

/// Where a secret value is read from. The reference itself is not secret and may be shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum SecretRef {
    /// An environment variable of the vigil process.
    Env {
        /// The variable's name.
        name: String,
    },
    /// A file whose whole content (less one trailing newline) is the value.
    File {
        /// The file's path, made absolute against the configuration file's folder.
        path: PathBuf,
    },
    /// A secret in a secret store, optionally one JSON field of it.
    Store {
        /// Which store.
        store: StoreKind,
        /// The secret's name (AWS) or path under the KV mount (Vault).
        path: String,
        /// A field of the secret's JSON value; the whole value when absent.
        key: Option<String>,
    },
}

/// `path` made absolute against `base` (the folder of the file that named it), with `.` and
/// `..` removed so that plans and errors show the path a person would write.
pub fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    use std::path::Component;
    let mut resolved = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
            }
            other => resolved.push(other),
        }
    }
    resolved
}

impl SecretRef {
    /// Makes a relative file path absolute against `base`, the folder of the file that named it.
    pub fn rebase(self, base: &Path) -> Self {
        match self {
            Self::File { path } => Self::File { path: resolve_path(base, &path) },
            other => other,
        }
    }

    /// Reads the value of an environment or file reference.
    ///
    /// Store references need a store client and are resolved by the store itself.
    pub fn resolve_local(&self) -> Result<SecretString, ResolveError> {
        match self {
            Self::Env { name } => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
                _ => Err(ResolveError::EnvUnset { name: name.clone() }),
            },
            Self::File { path } => {
                let value =
                    read_private(path).map_err(|source| ResolveError::FileUnreadable { path: path.clone(), source })?;
                let value = value.strip_suffix('\n').unwrap_or(&value);
                if value.is_empty() {
                    return Err(ResolveError::FileEmpty { path: path.clone() });
                }
                Ok(SecretString::from(value.to_owned()))
            }
            Self::Store { .. } => Err(ResolveError::NeedsStore { reference: self.to_string() }),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env { name } => write!(f, "env:{name}"),
            Self::File { path } => write!(f, "file:{}", path.display()),
            Self::Store { store, path, key: None } => write!(f, "{store}:{path}"),
            Self::Store { store, path, key: Some(key) } => write!(f, "{store}:{path}#{key}"),
        }
    }
}

/// Why a secret reference could not be read. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The environment variable is missing or empty.
    #[error("environment variable {name} is not set; export it before starting vigil")]
    EnvUnset {
        /// The variable's name.
        name: String,
    },
    /// The file could not be read.
    #[error("cannot read secret file {}: {source}", path.display())]
    FileUnreadable {
        /// The file's path.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file exists but holds nothing.
    #[error("secret file {} is empty", path.display())]
    FileEmpty {
        /// The file's path.
        path: PathBuf,
    },
    /// A store reference, which only a store client can resolve.
    #[error("{reference} is read from its secret store, not locally")]
    NeedsStore {
        /// The reference, as shown in configuration.
        reference: String,
    },
}

/// The fields a reference table may have; which combination is valid is checked after parsing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefTable {
    env: Option<String>,
    file: Option<PathBuf>,
    store: Option<StoreKind>,
    path: Option<String>,
    key: Option<String>,
}

const REF_FORMS: &str = "write { env = \"NAME\" }, { file = \"/path\" } or { store = \"aws_secrets_manager\" | \"vault_kv\", path = \"name\" }";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;

        impl<'de> serde::de::Visitor<'de> for RefVisitor {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret reference table")
            }

            // An inline value is refused without repeating it: it may be the secret itself.
            fn visit_str<E: serde::de::Error>(self, _value: &str) -> Result<SecretRef, E> {
                Err(E::custom(format!(
                    "inline secret values are not allowed (the value is not repeated here); {REF_FORMS}"
                )))
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<SecretRef, M::Error> {
                use serde::de::Error;
                let table = RefTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                match table {
                    RefTable { env: Some(name), file: None, store: None, path: None, key: None } => {
                        Ok(SecretRef::Env { name })
                    }
                    RefTable { env: None, file: Some(path), store: None, path: None, key: None } => {
                        Ok(SecretRef::File { path })
                    }
                    RefTable { env: None, file: None, store: Some(store), path: Some(path), key } => {
                        Ok(SecretRef::Store { store, path, key })
                    }
                    RefTable { env: None, file: None, store: Some(_), path: None, .. } => {
                        Err(M::Error::custom("a store reference needs `path`"))
                    }
                    _ => Err(M::Error::custom(format!("a secret reference takes exactly one form; {REF_FORMS}"))),
                }
            }
        }

        deserializer.deserialize_any(RefVisitor)
    }
}

/// Character classes a generated password may draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CharClass {
    /// `a`–`z`.
    Lower,
    /// `A`–`Z`.
    Upper,
    /// `0`–`9`.
    Digit,
    /// Punctuation that needs no quoting in a URI, `.pgpass`, or a shell: `-_.`.
    Symbol,
}

impl CharClass {
    /// The characters of the class.
    pub fn chars(self) -> &'static str {
        match self {
            Self::Lower => "abcdefghijklmnopqrstuvwxyz",
            Self::Upper => "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            Self::Digit => "0123456789",
            Self::Symbol => "-_.",
        }
    }
}

/// How generated passwords look: length, classes each password draws from, characters never used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PasswordPolicy {
    /// Characters per password.
    pub length: usize,
    /// Every class listed contributes at least one character.
    pub classes: Vec<CharClass>,
    /// Characters removed from every class.
    pub exclude: String,
}

impl PasswordPolicy {
    /// Shortest password a policy may ask for: 16 characters of 62 symbols carry 95 bits.
    pub const MIN_LENGTH: usize = 16;
    /// Longest password a policy may ask for; MySQL and PostgreSQL both accept it.
    pub const MAX_LENGTH: usize = 128;
    /// The least entropy a policy may give a password: `length × log2(alphabet)` bits.
    pub const MIN_ENTROPY_BITS: f64 = 80.0;

    /// The entropy of a password this policy generates, in bits: `length × log2(alphabet)`
    /// (the required classes cost a little, which this leaves out).
    pub fn entropy_bits(&self) -> f64 {
        let symbols = self.alphabet().len();
        if symbols < 2 { 0.0 } else { self.length as f64 * (symbols as f64).log2() }
    }
}

impl PasswordPolicy {
    /// The characters passwords draw from: the classes' characters less the excluded ones.
    fn alphabet(&self) -> Vec<char> {
        let mut alphabet: Vec<char> = self
            .classes
            .iter()
            .flat_map(|class| class.chars().chars())
            .filter(|c| !self.exclude.contains(*c))
            .collect();
        alphabet.sort_unstable();
        alphabet.dedup();
        alphabet
    }

    /// A fresh password from the operating system's CSPRNG: `length` characters drawn
    /// uniformly from the alphabet, with at least one from every class (redrawn until so,
    /// which keeps the draw uniform over the passwords that satisfy the policy).
    pub fn generate(&self) -> SecretString {
        use rand_core::RngCore as _;
        let alphabet = self.alphabet();
        assert!(!alphabet.is_empty(), "validated policies have characters to draw from");
        let n = u32::try_from(alphabet.len()).expect("small alphabet");
        // Rejection sampling: values at or above the largest multiple of n would bias the draw.
        let zone = u32::MAX - (u32::MAX % n);
        loop {
            let mut password = zeroize::Zeroizing::new(String::with_capacity(self.length));
            while password.len() < self.length {
                let value = rand_core::OsRng.next_u32();
                if value < zone {
                    password.push(alphabet[(value % n) as usize]);
                }
            }
            let complete = self.classes.iter().all(|class| password.chars().any(|c| class.chars().contains(c)));
            if complete {
                return SecretString::from(password.as_str().to_owned());
            }
        }
    }
}

impl Default for PasswordPolicy {
    /// 32 characters of letters and digits: about 190 bits, safe unquoted in URIs, `.pgpass` and shells.
    fn default() -> Self {
        Self { length: 32, classes: vec![CharClass::Lower, CharClass::Upper, CharClass::Digit], exclude: String::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_follow_their_policy() {
        let policy = PasswordPolicy {
            length: 20,
            classes: vec![CharClass::Lower, CharClass::Digit, CharClass::Symbol],
            exclude: "0o1l".into(),
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let password = policy.generate();
            let text = password.expose_secret();
            assert_eq!(text.chars().count(), 20);
            assert!(text.chars().any(|c| c.is_ascii_lowercase()) && text.chars().any(|c| c.is_ascii_digit()));
            assert!(text.chars().any(|c| "-_.".contains(c)), "{text}");
            assert!(!text.contains(['0', 'o', '1', 'l', 'A']), "{text}");
            seen.insert(text.to_owned());
        }
        assert_eq!(seen.len(), 200, "no repeats in 200 draws");
        let default = PasswordPolicy::default().generate();
        assert!(default.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()), "safe unquoted in URIs and shells");
    }

    #[test]
    fn a_secret_never_formats() {
        let secret = SecretString::from("hunter2-correct-horse".to_owned());
        let debug = format!("{secret:?}");
        let pretty = format!("{secret:#?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!pretty.contains("hunter2"), "{pretty}");
        assert!(debug.contains("REDACTED"), "{debug}");
        assert_eq!(secret.expose_secret(), "hunter2-correct-horse");
    }

    #[test]
    fn an_inline_value_is_refused_without_repeating_it() {
        #[derive(Debug, Deserialize)]
        struct Holder {
            #[allow(dead_code)]
            token: SecretRef,
        }
        let err = toml::from_str::<Holder>("token = 'hvs.super-secret-token'").unwrap_err();
        // Only the message: toml's `Display` quotes the source line, which is why config
        // diagnostics are built from `message()` and a span.
        assert!(!err.message().contains("super-secret"), "{}", err.message());
        assert!(err.message().contains("inline secret values are not allowed"));
    }

    #[test]
    fn references_parse_in_each_form() {
        #[derive(Debug, Deserialize)]
        struct Holder {
            r: SecretRef,
        }
        let parse = |text: &str| toml::from_str::<Holder>(text).map(|h| h.r);
        assert_eq!(parse("r = { env = 'A' }").unwrap(), SecretRef::Env { name: "A".into() });
        assert_eq!(
            parse("r = { store = 'vault_kv', path = 'a/b', key = 'password' }").unwrap().to_string(),
            "vault_kv:a/b#password"
        );
        assert!(parse("r = { env = 'A', file = 'b' }").is_err());
        assert!(parse("r = { store = 'vault_kv' }").is_err());
        assert!(parse("r = { envv = 'A' }").is_err());
    }

    #[test]
    fn file_references_resolve_relative_to_their_file() {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("token"), b"s3cr3t\n").unwrap();
        let reference = SecretRef::File { path: "token".into() }.rebase(dir.path());
        assert_eq!(reference.resolve_local().unwrap().expose_secret(), "s3cr3t");
        let missing = SecretRef::Env { name: "VIGIL_TEST_SURELY_UNSET".into() };
        assert!(matches!(missing.resolve_local(), Err(ResolveError::EnvUnset { .. })));
    }

    /// The only test in this binary that calls `scratch_dir`, whose sweep runs once per process.
    #[test]
    fn the_scratch_folder_sweeps_what_dead_processes_left() {
        use std::os::unix::fs::PermissionsExt as _;
        let data = tempfile::tempdir().unwrap();
        let tmp = data.path().join("tmp");
        std::fs::create_dir_all(tmp.join("4294967295")).unwrap();
        std::fs::write(tmp.join("4294967295/dump-1.cnf"), "password").unwrap();
        std::fs::write(tmp.join("dump-2.cnf"), "password").unwrap();
        std::fs::create_dir_all(tmp.join("1")).unwrap();
        let own = scratch_dir(data.path()).unwrap();
        assert_eq!(own, tmp.join(std::process::id().to_string()));
        assert_eq!(std::fs::metadata(&own).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(!tmp.join("4294967295").exists(), "a dead process's folder is removed");
        assert!(!tmp.join("dump-2.cnf").exists(), "a stray file is removed");
        assert!(tmp.join("1").exists(), "a live process's folder stays");
    }

    #[test]
    fn a_secret_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_private(&path, b"s3cr3t\n").unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = SecretRef::File { path: path.clone() }.resolve_local().unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("mode {mode:03o}")) && text.contains("chmod 600"), "{text}");
            assert!(!text.contains("s3cr3t"));
        }
    }
}
