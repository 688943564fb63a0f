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
