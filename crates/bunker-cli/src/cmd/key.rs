//! `bunker key create|id|export|import`: the repository key file and its
//! passphrase-wrapped copy for escrow (local; no server).

use std::path::{Path, PathBuf};

use anyhow::Context;
use bunker_crypt::{wrap, KdfParams, Key, KeyFileKind, Passphrase};

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
    /// Print the key id of a key file, plain or wrapped (safe to share;
    /// the key is not).
    Id { file: PathBuf },
    /// Wrap a key file with a passphrase (argon2id) into a new file, for
    /// escrow; prints the key id.
    Export {
        /// The plain key file to wrap.
        #[arg(long)]
        key_file: PathBuf,
        /// The wrapped key file to create (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// A file whose first line is the passphrase (default: the
        /// environment variable BUNKER_KEY_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// argon2id memory in KiB (default 65536, at least 8192). For
        /// tests: less memory makes the passphrase cheaper to guess.
        #[arg(long, hide = true)]
        kdf_memory_kib: Option<u32>,
    },
    /// Unwrap a wrapped key file into a new plain key file; prints the key
    /// id.
    Import {
        /// The wrapped key file (`key export`).
        #[arg(long = "in")]
        input: PathBuf,
        /// The plain key file to create (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// A file whose first line is the passphrase (default: the
        /// environment variable BUNKER_KEY_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

/// The passphrase from `--passphrase-file` or the environment; required.
fn passphrase(file: Option<&Path>) -> anyhow::Result<Passphrase> {
    Passphrase::from_file_or_env(file)?.with_context(|| {
        format!(
            "a passphrase is needed: give --passphrase-file FILE or set {}",
            wrap::PASSPHRASE_ENV
        )
    })
}

pub fn run(json: bool, c: Command) -> CmdResult {
    let (file, id, kind) = match c {
        Command::Create { out } => {
            let key = Key::generate();
            key.create_file(&out)
                .with_context(|| "creating the key file")?;
            (out, key.id(), KeyFileKind::Plain)
        }
        Command::Id { file } => {
            let (kind, id) = wrap::inspect_file(&file)?;
            (file, id, kind)
        }
        Command::Export {
            key_file,
            out,
            passphrase_file,
            kdf_memory_kib,
        } => {
            let key = Key::load(&key_file)?;
            let pass = passphrase(passphrase_file.as_deref())?;
            let mut kdf = KdfParams::default();
            if let Some(m) = kdf_memory_kib {
                kdf.memory_kib = m;
            }
            let bytes = wrap::wrap(&key, &pass, kdf)?;
            wrap::create_file(&out, &bytes).with_context(|| "creating the wrapped key file")?;
            (out, key.id(), KeyFileKind::Wrapped)
        }
        Command::Import {
            input,
            out,
            passphrase_file,
        } => {
            let pass = passphrase(passphrase_file.as_deref())?;
            // Read before `out` is created: a wrong passphrase leaves
            // nothing behind.
            let (key, kind) = bunker_crypt::load_key_file(&input, Some(&pass))?;
            if kind == KeyFileKind::Plain {
                return Err(bunker_crypt::Error::NotWrapped { path: input }.into());
            }
            key.create_file(&out)
                .with_context(|| "creating the key file")?;
            (out, key.id(), KeyFileKind::Plain)
        }
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "key_id": id.to_string(), "file": file, "kind": kind.name() })
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
      Prints the key id of FILE, a plain or a wrapped key file; exit 1 if
      FILE is not a bunker key file or is damaged. A wrapped file's id is
      the one its header names, checked when it is unwrapped.
      --json: {"key_id", "file", "kind": "plain" | "wrapped"}
  key export --key-file KEY --out WRAPPED [--passphrase-file FILE]
      Wraps KEY with a passphrase (argon2id, 64 MiB, 3 passes) into the
      new file WRAPPED (136 bytes, mode 0600), for escrow: keep it and the
      passphrase in different places. The passphrase is the first line of
      FILE, else the environment variable BUNKER_KEY_PASSPHRASE; at least
      12 characters. `serve --key-file WRAPPED --key-passphrase-file FILE`
      serves from the wrapped file directly.
  key import --in WRAPPED --out KEY [--passphrase-file FILE]
      Unwraps WRAPPED into the new plain key file KEY; exit 1, creating
      nothing, on a wrong passphrase or a damaged file."##;
