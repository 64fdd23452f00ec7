use clap::Parser;

fn main() {
    quiet_mesa();
    let cli = mapo::cli::Cli::parse_from(mapo::cli::with_dev(std::env::args_os()));
    if let Err(e) = mapo::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Mesa's Vulkan drivers warn "XDG_RUNTIME_DIR is invalid or not set" on every device open
/// when it is unset (containers, CI); they only need a private folder to exist.
fn quiet_mesa() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mapo-xdg-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_ok() {
        // SAFETY: first thing in main, before any thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}
