#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tagbridge::cli::main()
}
