//! `tandem-relay`: parse flags and config, then run the relay.

use anyhow::Context as _;
use clap::Parser;
use tandem_relay::cli::{log_capacity, Args};
use tandem_relay::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    args.apply(&mut config);
    config.validate()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log_level))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    log_capacity(&config);
    let relay = tandem_relay::Relay::bind(&config)
        .await
        .context("starting the relay")?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    s.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        s.cancel();
    });
    if let Some(certs) = relay.tls_certificates() {
        // SIGHUP reads the TLS certificate and key again (renewals); connections and
        // allocations stay.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        match certs.reload() {
                            Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                            Err(e) => tracing::error!(
                                error = %e,
                                "SIGHUP: TLS certificate and key not reloaded, the previous ones stay"
                            ),
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "no SIGHUP handler: TLS reload unavailable"),
        }
    }
    relay.run(shutdown).await;
    Ok(())
}
