//! The `bunker` program, built in the test package so the suite can run it
//! with the store's failpoints compiled in.

fn main() -> std::process::ExitCode {
    // FAILPOINTS in the environment inject the store's faults (tests).
    let _faults = fail::FailScenario::setup();
    bunker_cli::main()
}
