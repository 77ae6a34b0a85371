//! How vigil reaches a database over TLS: the settings every database target and the
//! PostgreSQL state store share, and their translation for the client tools vigil starts.
//!
//! Verified TLS is the default: a target without a `tls` line gets `verify-full` against the
//! trusted roots (Mozilla's, built in) or its `ca_file`. A server that offers no TLS is refused
//! before any credential is sent, under every mode but `disable`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How much of the server's identity is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// TLS, a certificate from a trusted CA, and the host name in it. The default.
    #[default]
    VerifyFull,
    /// TLS and a certificate from a trusted CA, whatever name it carries.
    VerifyCa,
    /// TLS without checking the certificate: safe from eavesdroppers, not from impostors.
    Require,
    /// No TLS: the password and every row cross the network in the clear.
    Disable,
}

impl TlsMode {
    /// Every mode, by the name configuration uses.
    pub const ALL: [(&'static str, Self); 4] = [
        ("verify-full", Self::VerifyFull),
        ("verify-ca", Self::VerifyCa),
        ("require", Self::Require),
        ("disable", Self::Disable),
    ];

    /// The name configuration uses.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, mode)| *mode == self).map_or("verify-full", |(name, _)| name)
    }

    /// The mode configuration names `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, mode)| *mode)
    }

    /// Whether the server's certificate is checked against trusted roots.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyFull | Self::VerifyCa)
    }
}

/// A database connection's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tls {
    /// How much is checked.
    pub mode: TlsMode,
    /// The CA certificates (PEM) trusted besides the built-in roots.
    pub ca_file: Option<PathBuf>,
}

/// Where Debian and its derivatives keep the system's trusted roots, for the client tools
/// (libpq before version 16 has no `sslrootcert=system`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Tls {
    /// The CA file the client tools trust: `ca_file`, else the system's bundle.
    fn roots(&self) -> &Path {
        self.ca_file.as_deref().unwrap_or(Path::new(SYSTEM_ROOTS))
    }

    /// libpq's settings (`pg_dump`, `pg_restore`), as environment variables.
    pub fn libpq_env(&self) -> Vec<(&'static str, OsString)> {
        // libpq's sslmode names are vigil's.
        let mut env = vec![("PGSSLMODE", OsString::from(self.mode.as_str()))];
        if self.mode.verifies() {
            env.push(("PGSSLROOTCERT", self.roots().as_os_str().to_owned()));
        }
        env
    }

    /// The MariaDB client tools' options (`mariadb-dump`, `mariadb`). MariaDB's clients check
    /// the host name whenever they check the certificate, so `verify-ca` is as strict as
    /// `verify-full` for them.
    pub fn mariadb_args(&self) -> Vec<OsString> {
        match self.mode {
            TlsMode::Disable => vec!["--skip-ssl".into()],
            TlsMode::Require => vec!["--ssl".into(), "--skip-ssl-verify-server-cert".into()],
            TlsMode::VerifyFull | TlsMode::VerifyCa => {
                let mut ca = OsString::from("--ssl-ca=");
                ca.push(self.roots());
                vec!["--ssl".into(), ca, "--ssl-verify-server-cert".into()]
            }
        }
    }

    /// sqlx's PostgreSQL options, set as these settings say.
    pub fn postgres(&self, options: sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgConnectOptions {
        use sqlx::postgres::PgSslMode;
        let options = options.ssl_mode(match self.mode {
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
            TlsMode::VerifyCa => PgSslMode::VerifyCa,
            TlsMode::Require => PgSslMode::Require,
            TlsMode::Disable => PgSslMode::Disable,
        });
        match &self.ca_file {
            Some(ca) if self.mode.verifies() => options.ssl_root_cert(ca),
            _ => options,
        }
    }

    /// sqlx's MySQL options, set as these settings say.
    pub fn mysql(&self, options: sqlx::mysql::MySqlConnectOptions) -> sqlx::mysql::MySqlConnectOptions {
        use sqlx::mysql::MySqlSslMode;
        let options = options.ssl_mode(match self.mode {
            TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
            TlsMode::VerifyCa => MySqlSslMode::VerifyCa,
            TlsMode::Require => MySqlSslMode::Required,
            TlsMode::Disable => MySqlSslMode::Disabled,
        });
        match &self.ca_file {
            Some(ca) if self.mode.verifies() => options.ssl_ca(ca),
            _ => options,
        }
    }
}

/// Whether `host` names this machine: `disable` is warned about everywhere else.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_by_name() {
        for (name, mode) in TlsMode::ALL {
            assert_eq!(TlsMode::parse(name), Some(mode));
            assert_eq!(mode.as_str(), name);
        }
        assert_eq!(TlsMode::parse("prefer"), None, "no mode may fall back to cleartext");
        assert_eq!(TlsMode::default(), TlsMode::VerifyFull);
    }

    #[test]
    fn client_tools_get_the_same_settings() {
        let tls = Tls { mode: TlsMode::VerifyFull, ca_file: Some("/etc/vigil/ca.pem".into()) };
        assert_eq!(
            tls.libpq_env(),
            vec![("PGSSLMODE", OsString::from("verify-full")), ("PGSSLROOTCERT", OsString::from("/etc/vigil/ca.pem"))]
        );
        assert!(tls.mariadb_args().contains(&OsString::from("--ssl-verify-server-cert")));
        assert!(tls.mariadb_args().contains(&OsString::from("--ssl-ca=/etc/vigil/ca.pem")));
        let off = Tls { mode: TlsMode::Disable, ca_file: None };
        assert_eq!(off.libpq_env(), vec![("PGSSLMODE", OsString::from("disable"))]);
        assert_eq!(off.mariadb_args(), vec![OsString::from("--skip-ssl")]);
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in ["localhost", "127.0.0.1", "127.3.4.5", "::1", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["db.internal", "10.0.0.5", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
