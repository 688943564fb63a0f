//! `bunker token create|list|revoke` (admin).

use bunker_api::{Role, TokenRequest};

use crate::output::time;
use crate::{CmdResult, Global};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a token; prints the secret alone on the last line.
    Create {
        #[arg(long, value_parser = ["admin", "writer", "reader"])]
        role: String,
        /// Only this snapshot name and the names continuing it after
        /// `-`, `.`, `_` or `/` (`db` covers `db-1`, not `db2`).
        #[arg(long)]
        scope: Option<String>,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

pub fn run(g: &Global, c: Command) -> CmdResult {
    let client = g.client()?;
    match c {
        Command::Create { role, scope, name } => {
            let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role {role}"))?;
            let created = client.create_token(&TokenRequest { role, scope, name })?;
            if g.json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                eprintln!(
                    "created {} token {}",
                    created.info.role.as_str(),
                    created.info.id
                );
                println!("{}", created.token);
            }
        }
        Command::List => {
            let tokens = client.tokens()?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string(&bunker_api::TokenList { tokens })?
                );
            } else {
                println!(
                    "{:<17} {:<7} {:<16} {:<21} NAME",
                    "ID", "ROLE", "SCOPE", "CREATED (UTC)"
                );
                for t in tokens {
                    println!(
                        "{:<17} {:<7} {:<16} {:<21} {}",
                        t.id,
                        t.role.as_str(),
                        t.scope.unwrap_or_else(|| "*".into()),
                        time(t.created_unix_ms),
                        t.name.unwrap_or_default()
                    );
                }
            }
        }
        Command::Revoke { id } => {
            client.revoke_token(&id)?;
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

/// The rest of `bunker token --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"  token create --role admin|writer|reader [--scope SCOPE] [--name LABEL]
      created <role> token <id> on stderr, then the secret alone on stdout.
      --json: {"token", "info"}
  token list
      ID ROLE SCOPE CREATED (UTC) NAME, scope * for none; never secrets. A
      scoped admin token lists only the tokens inside its scope
  token revoke ID
      revoked <id> on stderr; an unknown id (or one outside a scoped admin's
      scope) exits 3

The secret is shown once. Revocation takes effect on the next request."##;
