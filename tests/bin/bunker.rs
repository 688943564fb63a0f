//! The `bunker` program, built in the test package so the suite can run it.

fn main() -> std::process::ExitCode {
    bunker_cli::main()
}
