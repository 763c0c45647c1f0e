use clap::Parser;

// Loading a large workspace allocates millions of small objects; mimalloc makes that markedly
// cheaper than the system allocator (see the README's benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Output piped into `head` ends quietly, as for any Unix tool, instead of panicking.
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Errors are messages for people: candle captures a backtrace into every error when
    // RUST_BACKTRACE is set, and it would be printed inside them (SPEC.md, "Exit codes"). Panics
    // keep theirs (RUST_BACKTRACE still applies to them).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called before any thread starts.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    miette::set_hook(Box::new(|_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .terminal_links(false)
                .width(100)
                .build(),
        )
    }))
    .expect("the hook is set once");
    let cli = edgebuild::cli::Cli::parse();
    let code = match edgebuild::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            let code = error.exit_code();
            eprintln!("{:?}", miette::Report::new(error));
            code
        }
    };
    std::process::ExitCode::from(code as u8)
}
