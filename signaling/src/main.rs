//! `tandem-signaling`: parses flags and configuration, sets up logging, runs the
//! server until SIGINT or SIGTERM, then shuts down gracefully.

use clap::Parser;
use tandem_signaling::config::{Cli, SignalingConfig};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = match SignalingConfig::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem-signaling: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.check_config {
        // What start-up reads besides the configuration: the TLS certificate and key.
        if let Err(e) = tandem_signaling::sip::check_tls_files(&cfg.sip) {
            eprintln!("tandem-signaling: {e}");
            return std::process::ExitCode::from(2);
        }
        match toml::to_string_pretty(&cfg.redacted()) {
            Ok(t) => print!("{t}"),
            Err(e) => eprintln!("tandem-signaling: cannot print the configuration: {e}"),
        }
        return std::process::ExitCode::SUCCESS;
    }
    // The level was checked with the rest of the configuration.
    if let Err(e) = tandem_ops::logging::init(cfg.log.format, &cfg.log.level) {
        eprintln!("tandem-signaling: {e}");
        return std::process::ExitCode::from(2);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-signaling: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        ignore_sighup();
        tandem_signaling::run_until(cfg, wait_for_signal).await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tandem-signaling: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGHUP must not stop the process (a service manager's reload sends it). Nothing
/// is read again yet: the log line says so.
fn ignore_sighup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::warn!(
                            "SIGHUP: configuration reload is not supported by tandem-signaling; nothing changed (restart to apply a new configuration)"
                        );
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "no SIGHUP handler"),
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
