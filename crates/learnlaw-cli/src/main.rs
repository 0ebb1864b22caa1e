//! The `learnlaw` command. Its code is the `learnlaw_cli` library, which the Python package runs too.
fn main() -> std::process::ExitCode {
    learnlaw_cli::main()
}
