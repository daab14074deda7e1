//! `sonde-collector`: parses flags, sets up logging and signals, binds, and runs the collector.

use anyhow::Context;
use clap::Parser;
use sonde_collector::cli::{Cli, Command, QueueCommand};
use sonde_collector::config::Config;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Some(command) = cli.command.take() {
        return maintenance(command);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::try_from(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        sonde_collector::run(config, listener, shutdown).await?;
        Ok(())
    })
}

/// Runs a maintenance command and exits.
fn maintenance(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckRules { files } => {
            let mut failed = false;
            for file in &files {
                match sonde_collector::alerting::rules::check_file(file) {
                    Ok(summary) => println!("{}: {summary}", file.display()),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::ReplayRules {
            query_url,
            query_token,
            from,
            to,
            evaluation_interval,
            tenant,
            files,
        } => {
            use sonde_collector::query::params::parse_time;
            let replay = sonde_collector::alerting::replay::Replay {
                files,
                query_url: query_url
                    .parse()
                    .with_context(|| format!("--query-url {query_url:?} is not a URL"))?,
                token: query_token,
                from_ms: parse_time("from", &from).map_err(anyhow::Error::msg)?,
                to_ms: parse_time("to", &to).map_err(anyhow::Error::msg)?,
                default_interval: sonde_common::duration::parse_duration(&evaluation_interval)
                    .map_err(|e| anyhow::anyhow!("--evaluation-interval: {e}"))?,
                tenant,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let out = runtime
                .block_on(sonde_collector::alerting::replay::run(replay))
                .map_err(anyhow::Error::msg)
                .context("replay failed")?;
            print!("{out}");
            Ok(())
        }
        Command::CheckScrapeConfig { file } => {
            match sonde_collector::scrape::check_file(&file) {
                // The summary names the file.
                Ok(summary) => println!("{summary}"),
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        Command::CheckAlertConfig { file } => {
            match sonde_collector::alerting::manager::config::check_file(&file) {
                Ok(summary) => println!("{}: {summary}", file.display()),
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        Command::Queue {
            action: QueueCommand::Verify { dir },
        } => {
            let report = sonde_collector::queue::verify(&dir)
                .with_context(|| format!("cannot verify the queue in {}", dir.display()))?;
            print!("{report}");
            if !report.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
