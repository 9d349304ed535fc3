//! The `ferrocat` binary: a thin shell over `ferrocat_server`.

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
