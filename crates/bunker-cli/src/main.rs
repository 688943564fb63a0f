//! The `bunker` binary; everything is in the library so tests can build the
//! same program.

fn main() -> std::process::ExitCode {
    bunker_cli::main()
}
