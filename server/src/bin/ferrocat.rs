//! The `ferrocat` binary: a thin shell over `ferrocat_server`.

/// mimalloc instead of glibc's malloc: the session path allocates and frees
/// small buffers and futures on every request, and glibc's malloc/free were
/// about 15% of an app worker's CPU (see README, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use ferrocat_server::cli::{Cli, Command};
use ferrocat_server::runtime::{self, Mode};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::AllInOne { config } => runtime::run(Mode::AllInOne, config),
        Command::Balancer { config } => runtime::run(Mode::Balancer, Some(config)),
        Command::App { config } => runtime::run(Mode::App, Some(config)),
        Command::CheckConfig { config } => runtime::check_config(&config),
    };
    std::process::exit(code);
}
