fn main() -> std::process::ExitCode {
    tagbridge::cli::main()
}
