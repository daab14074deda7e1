//! The demo: starts `sonde-collector` (embedded store in a data directory, the example rules
//! and alert manager configuration of `collector/config`) and `sonde-agent`
//! (this host's metrics, pushed to it) from the same directory as this binary, prints where to
//! look, and stops both with SIGTERM on Ctrl-C or SIGTERM.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address the collector serves on.
    #[arg(long, default_value = "127.0.0.1:9470")]
    listen: String,
    /// The collector's data directory.
    #[arg(long, default_value = "./sonde-data")]
    data_dir: PathBuf,
    /// The agent's collection interval.
    #[arg(long, default_value = "5s")]
    interval: String,
    /// Rule files and alert manager configuration for the collector (default: the example
    /// ones in the source tree, collector/config).
    #[arg(long)]
    config_dir: Option<PathBuf>,
}

/// The example configuration: `collector/config` of the source tree this binary was built
/// from (found next to `target/<profile>/`, else where the build saw it).
fn example_config() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let candidates = [
        exe.parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
            .map(|root| root.join("collector/config")),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../collector/config")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("rules").is_dir())
        .context("collector/config (the example rules) not found: pass --config-dir")
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found: build all binaries first (cargo build --release --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

async fn ready(listen: &str) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let config = match &args.config_dir {
        Some(d) => d.clone(),
        None => example_config()?,
    };
    let mut collector = Command::new(sibling("sonde-collector")?)
        .args(["--listen", &args.listen, "--data-dir"])
        .arg(&args.data_dir)
        .arg("--rules-dir")
        .arg(config.join("rules"))
        .arg("--alert-config")
        .arg(config.join("alertmanager.yml"))
        // A process group of its own: Ctrl-C reaches only this process, which stops the agent
        // before the collector, so the agent's last batch is delivered.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start sonde-collector")?;
    if !ready(&args.listen).await {
        terminate(&collector);
        bail!(
            "the collector did not start listening on {} within 10 s",
            args.listen
        );
    }
    let mut agent = Command::new(sibling("sonde-agent")?)
        .args([
            "--collector",
            &format!("http://{}", args.listen),
            "--interval",
            &args.interval,
        ])
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start sonde-agent")?;
    eprintln!(
        "\nSonde is running: this host's metrics arrive every {interval}.\n  overview:  http://{listen}/\n  query:     http://{listen}/api/v1/query?query=node_load1\n  alerts:    http://{listen}/api/v1/alerts (rules: {rules})\n  Grafana:   add a Prometheus data source with URL http://{listen}\nCtrl-C stops both.\n",
        interval = args.interval,
        listen = args.listen,
        rules = config.join("rules").display(),
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        status = collector.wait() => eprintln!("sonde-collector exited: {status:?}"),
        status = agent.wait() => eprintln!("sonde-agent exited: {status:?}"),
    }
    // Agent first, so its last batch reaches the collector.
    terminate(&agent);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent.wait()).await;
    terminate(&collector);
    let _ = tokio::time::timeout(Duration::from_secs(30), collector.wait()).await;
    Ok(())
}
