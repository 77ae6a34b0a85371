//! `vigil jwks`: the JWKS documents vigil publishes for JWT signing keys.

use super::output::print_json;
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::config::{JwtKey, SecretKind};
use crate::jwks;

/// Show the published JWKS of a JWT signing key.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  vigil jwks show auth-jwt\n  vigil jwks show auth-jwt --output json | jq '.keys[].kid'"
)]
pub struct JwksArgs {
    #[command(subcommand)]
    command: JwksCommand,
}

#[derive(Debug, clap::Subcommand)]
enum JwksCommand {
    /// Print the JWKS document as published (public keys only), read back from where it is
    /// published.
    #[command(after_long_help = "Examples:\n  vigil jwks show auth-jwt")]
    Show {
        /// The jwt_signing_key secret.
        name: String,
    },
}

impl JwksArgs {
    pub(super) async fn run(&self, global: &GlobalArgs) -> anyhow::Result<Exit> {
        let JwksCommand::Show { name } = &self.command;
        let plan = load_plan(global)?;
        let spec = plan
            .secrets
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no secret named {name}; `vigil config check` lists them"))?;
        let SecretKind::JwtSigningKey(JwtKey { jwt }) = &spec.kind else {
            anyhow::bail!("{name} is a {} secret; only jwt_signing_key secrets publish a JWKS", spec.kind.as_str());
        };
        let publisher = jwks::connect(&jwt.jwks, plan.aws.as_ref(), plan.vault.as_ref()).await?;
        let Some(document) = publisher.fetch().await? else {
            anyhow::bail!("nothing is published at {} yet; `vigil rotate {name}` publishes the first key", jwt.jwks);
        };
        match global.output {
            OutputFormat::Json => print_json(&document)?,
            OutputFormat::Human => {
                println!(
                    "# {name}: published at {} (Cache-Control: {})",
                    jwt.jwks,
                    jwks::cache_control(jwt.jwks_cache)
                );
                println!("{}", serde_json::to_string_pretty(&document)?);
            }
        }
        Ok(Exit::Success)
    }
}
