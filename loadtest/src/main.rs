//! `sonde-loadtest`: drives Sonde with simulated load (scenarios come with the load-generator
//! issue) and, with `demo`, runs a collector with its embedded store plus an agent on this host.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sonde-loadtest",
    version,
    about = "Sonde's load generator and demo runner"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a collector (embedded store) and an agent on this host, until Ctrl-C.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Demo(args) => runtime.block_on(demo::run(args)),
    }
}
