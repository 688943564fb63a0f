//! The command-line reference, docs/CLI.md: the long help of every command,
//! exactly as `--help` prints it.
//!
//! The page is generated from clap, never edited by hand, so it cannot
//! disagree with `--help`; the test below fails when the committed page is
//! stale and says how to regenerate it.

use clap::CommandFactory;

/// How to regenerate docs/CLI.md; also printed by the test when it is stale.
const REGENERATE: &str = "BUNKER_BLESS=1 cargo test --release -p bunker-cli cli_md";

/// docs/CLI.md: a header, then one section per command, parents first.
pub(crate) fn markdown() -> String {
    // Fixed width so the page does not depend on the terminal that made it
    // (the env options hide their values, so it does not depend on the
    // environment either).
    let cli = crate::Cli::command().bin_name("bunker").term_width(100);
    let mut out = format!(
        "# Command line\n\n\
         <!-- Generated from the clap definitions in crates/bunker-cli: do not edit.\n     \
         Regenerate with: {REGENERATE} -->\n\n\
         `bunker --help` and the `--help` of every command, as the binary prints\n\
         them. The server's TOML keys, TLS and data directory are in\n\
         [OPERATIONS.md](OPERATIONS.md); the HTTP API is in [API.md](API.md).\n"
    );
    let mut paths = Vec::new();
    command_paths(&cli, &mut vec!["bunker".to_string()], &mut paths);
    for path in paths {
        // Parsing `--help` is what the binary does, so this is its output
        // to the byte, short or long form as clap picks.
        let args = path.iter().map(String::as_str).chain(["--help"]);
        let help = match cli.clone().try_get_matches_from(args) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.render().to_string(),
            other => panic!("{path:?} --help did not print help: {:?}", other.err()),
        };
        out.push_str(&format!(
            "\n## `{}`\n\n```text\n{}\n```\n",
            path.join(" "),
            help.trim_end()
        ));
    }
    out
}

/// Every visible command as the words that name it, parents first.
fn command_paths(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        path.push(sub.get_name().to_string());
        command_paths(sub, path, out);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn cli_md_matches_the_help() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CLI.md");
        let want = super::markdown();
        if std::env::var_os("BUNKER_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
            panic!(
                "docs/CLI.md differs from what the clap definitions print (first at line {}); \
                 regenerate it with: {}",
                line + 1,
                super::REGENERATE
            );
        }
    }
}
