//! `bunker key create|id`: the repository key file (local; no server).

use std::path::PathBuf;

use anyhow::Context;

use crate::CmdResult;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a new random 256-bit key to a new file (mode 0600); prints
    /// its key id.
    Create {
        /// The key file to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the key id of a key file (safe to share; the key is not).
    Id { file: PathBuf },
}

pub fn run(json: bool, c: Command) -> CmdResult {
    let (file, id) = match c {
        Command::Create { out } => {
            let key = bunker_crypt::Key::generate();
            key.create_file(&out)
                .with_context(|| "creating the key file")?;
            (out, key.id())
        }
        Command::Id { file } => {
            let key = bunker_crypt::Key::load(&file)?;
            (file, key.id())
        }
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "key_id": id.to_string(), "file": file })
        );
    } else {
        println!("{id}");
    }
    Ok(())
}

/// The rest of `bunker key --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"  key create --out FILE
      Writes a new key file (64 bytes, mode 0600) and prints its key id.
      Keep a copy of the file somewhere other than the data it protects:
      an encrypted repository cannot be read without it.
  key id FILE
      Prints the key id of FILE; exit 1 if FILE is not a bunker key file
      or is damaged.
      --json: {"key_id", "file"}"##;
