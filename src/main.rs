use clap::Parser;

fn main() {
    let cli = mapo::cli::Cli::parse();
    if let Err(e) = mapo::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
