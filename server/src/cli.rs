//! The `ferrocat` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// ferrocat: a clustered web app-server runtime (balancer + app nodes + replicated sessions).
#[derive(Debug, Parser)]
#[command(name = "ferrocat", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Balancer and app node in one process. Without a config: http://127.0.0.1:8080,
    /// sessions in the in-process store.
    AllInOne {
        /// TOML config file (environment overrides: FERROCAT__SECTION__KEY).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The load balancer alone, in front of any HTTP servers ([balancer] section).
    Balancer {
        /// TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// An app node alone: the demo app with ferrocat sessions ([node] and [session]).
    App {
        /// TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validates a config file: exit 0 when valid, 2 with the bad key named otherwise.
    CheckConfig {
        /// TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}
