//! `tandem-relay`: parse flags and config, then run the relay. Every error is printed
//! once, on standard error, and sets the exit status: 2 for configuration, 1 for a
//! failure to start.

use std::process::ExitCode;

use clap::Parser;
use tandem_relay::cli::{log_capacity, Args};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args = Args::parse();
    let check_only = args.check_config;
    let config = match tandem_relay::cli::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem-relay: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        return match tandem_relay::cli::check(&config) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tandem-relay: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(e) = tandem_ops::logging::init(config.log_format, &config.log_level) {
        eprintln!("tandem-relay: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: tandem_relay::Config) -> Result<(), String> {
    // `config` is also what SIGHUP compares a reloaded one with.
    log_capacity(&config);
    let relay = tandem_relay::Relay::bind(&config)
        .await
        .map_err(|e| format!("cannot start: {e}"))?;
    let shutdown = CancellationToken::new();
    // SIGTERM or SIGINT: drain (new allocations and sessions refused, /ready 503,
    // existing ones relayed until they end or drain-timeout), then stop; a second
    // signal stops at once.
    let drain = relay.drain_handle();
    let limit = std::time::Duration::from_secs(config.drain_timeout);
    let s = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGTERM handler");
                    None
                }
            };
        stop_signal(&mut term).await;
        drain.start();
        let wait = async {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                let (allocations, sessions) = drain.live();
                if allocations == 0 && sessions == 0 {
                    tracing::info!("drain finished: no allocation or media session left");
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::info!(
                        allocations,
                        media_sessions = sessions,
                        "drain-timeout reached: stopping with these still live"
                    );
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = stop_signal(&mut term) => tracing::info!("second stop signal: stopping without waiting"),
        }
        s.cancel();
    });
    // SIGHUP reads the configuration again (file, flags and TANDEM_* variables) and
    // puts in force what can change while running: the TLS certificate and key, the
    // static users, REST secrets and realm. Allocations and connections stay. A
    // configuration that does not validate is refused and the running one stays.
    let certs = relay.tls_certificates();
    let reload = relay.drain_handle();
    let running = config.clone();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                let mut running = running;
                while hup.recv().await.is_some() {
                    let new = match tandem_relay::cli::load(Args::parse()) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: new configuration refused, the running one stays");
                            continue;
                        }
                    };
                    if let Some(certs) = &certs {
                        match certs.reload() {
                            Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                            Err(e) => {
                                tracing::error!(
                                    error = %e,
                                    "SIGHUP: TLS certificate and key not reloaded, the previous ones stay; credentials not changed either"
                                );
                                continue;
                            }
                        }
                    }
                    reload.reload_credentials(&new);
                    tracing::info!(
                        realm_changed = new.realm != running.realm,
                        users = new.user.len(),
                        users_changed = new.user != running.user,
                        secrets = new.static_auth_secret.len(),
                        secrets_changed = new.static_auth_secret != running.static_auth_secret,
                        "SIGHUP: credentials reloaded; other keys take effect at restart"
                    );
                    running = new;
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "no SIGHUP handler"),
    }
    relay.run(shutdown).await;
    Ok(())
}

/// The next SIGINT or SIGTERM.
async fn stop_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(t) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = t.recv() => {}
        },
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
