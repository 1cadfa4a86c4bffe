use std::process::ExitCode;

fn main() -> ExitCode {
    kubestick::cli::main()
}
