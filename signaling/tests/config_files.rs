//! Every signaling TOML under config/ parses and validates; bad values fail naming
//! the key; flags and TANDEM_* variables override the file.

use std::path::Path;

use clap::Parser;
use tandem_signaling::config::{Cli, ConfigError, SignalingConfig};

/// Tests that parse flags (which read TANDEM_* variables) or set variables take this.
static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn config_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Signaling's files: `signaling*.toml` (relay.toml belongs to the relay).
fn signaling_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(config_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("signaling")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn example_files_parse_and_validate() {
    let files = signaling_files();
    assert!(!files.is_empty(), "config/signaling.toml must exist");
    for f in files {
        let cfg = SignalingConfig::from_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn example_starts_embedded_with_the_documented_defaults() {
    let cfg = SignalingConfig::from_file(&config_dir().join("signaling.toml")).unwrap();
    assert_eq!(cfg.database.url, None);
    assert_eq!(cfg.database_url(), "sqlite://./data/signaling.db");
    assert_eq!(cfg.sip.udp_listen, Some("127.0.0.1:5060".parse().unwrap()));
    assert_eq!(cfg.sip.tcp_listen, Some("127.0.0.1:5060".parse().unwrap()));
    assert_eq!(cfg.sip.tls_listen, None);
    assert_eq!(cfg.api.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(cfg.api.admin_token, None);
    assert_eq!(
        (
            cfg.device_limits.mobile,
            cfg.device_limits.desktop,
            cfg.device_limits.web
        ),
        (3, 1, 1)
    );
    assert!(!cfg.log.show_personal_data);
    // WebSocket is off in the code and on in the example, for browsers on this machine.
    assert_eq!(cfg.sip.ws_listen, Some("127.0.0.1:5066".parse().unwrap()));
    assert_eq!(SignalingConfig::default().sip.ws_listen, None);
    assert_eq!(cfg.sip.wss_listen, None);
    // Otherwise the example spells out the defaults: it equals the built-in
    // configuration, except the digest offer, which it narrows to MD5 (noted there:
    // baresip 1.0 gives up on a 401 that also offers SHA-256).
    assert_eq!(cfg.registrar.digest_algorithms, ["MD5"]);
    let mut want = SignalingConfig::default();
    want.sip.ws_listen = cfg.sip.ws_listen;
    want.registrar.digest_algorithms = cfg.registrar.digest_algorithms.clone();
    assert_eq!(cfg, want);
}

fn parse_err(text: &str) -> String {
    match SignalingConfig::from_toml(text, Path::new("test.toml"))
        .and_then(|c| c.validate().map(|_| c))
    {
        Ok(_) => panic!("{text:?} should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_values_fail_naming_the_key() {
    for (text, key) in [
        ("unknown_key = 1", "unknown_key"),
        ("[api]\nlisten = \"not an address\"", "listen"),
        ("[api]\nlistn = \"127.0.0.1:1\"", "listn"),
        ("[api]\nadmin_token = \"short\"", "api.admin_token"),
        ("default_country_code = \"0048\"", "default_country_code"),
        ("[database]\nurl = \"mysql://x\"", "database.url"),
        (
            "[database]\nmax_connections = 0",
            "database.max_connections",
        ),
        ("[sip]\nrealm = \"\"", "sip.realm"),
        ("[sip]\nudp_listen = 5060", "udp_listen"),
        ("[sip]\ntls_listen = \"127.0.0.1:5061\"", "sip.tls_listen"),
        ("[sip]\nwss_listen = \"127.0.0.1:7443\"", "sip.wss_listen"),
        ("[sip]\nws_listen = \"localhost\"", "ws_listen"),
        ("[registrar]\nmin_expires = 0", "registrar.min_expires"),
        ("[device_limits]\nmobile = -1", "mobile"),
        ("[device_limits]\nmobile = 5000", "device_limits.mobile"),
        ("[device_limits]\ntablet = 2", "tablet"),
        ("[log]\nlevel = \"[[[\"", "log.level"),
        ("data_dir = \"\"", "data_dir"),
        ("[[relays]]\ncontrol_url = \"http://10.0.0.5:8081\"", "public_address"),
        (
            "[[relays]]\ncontrol_url = \"10.0.0.5:8081\"\nsecret = \"t\"\npublic_address = \"r\"",
            "relays[0].control_url",
        ),
        (
            "[[relays]]\ncontrol_url = \"http://h:1\"\npublic_address = \"r\"",
            "relays[0].secret",
        ),
        (
            "[[relays]]\ncontrol_url = \"http://h:1\"\nsecret = \"t\"\npublic_address = \"r:3478\"",
            "relays[0].public_address",
        ),
        (
            "[[relays]]\ncontrol_url = \"http://h:1\"\nsecret = \"t\"\npublic_address = \"r\"\nweight = 0",
            "relays[0].weight",
        ),
        (
            "[[relays]]\ncontrol_url = \"http://h:1\"\nsecret = \"t\"\npublic_address = \"r\"\nwieght = 1",
            "wieght",
        ),
        ("[relay_pool]\nhealth_interval_secs = 0", "relay_pool.health_interval_secs"),
        ("[relay_pool]\ndown_after_failures = 0", "relay_pool.down_after_failures"),
        ("[turn]\nsecret = \"0123456789abcdef\"", "turn.uris"),
        ("[turn]\nttl_secs = 0", "turn.ttl_secs"),
        ("[turn]\nuris = [\"http://x\"]", "turn.uris[0]"),
    ] {
        let e = parse_err(text);
        assert!(e.contains(key), "{text:?}: error {e:?} does not name {key}");
    }
}

#[test]
fn flags_override_the_file() {
    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("tandem_cfg_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        "data_dir = \"/var/lib/x\"\n[api]\nlisten = \"127.0.0.1:1111\"\n",
    )
    .unwrap();
    let cli = Cli::try_parse_from([
        "tandem-signaling",
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        "/tmp/d",
        "--database-url",
        "postgres://postgres@127.0.0.1/x",
        "--api-listen",
        "127.0.0.1:0",
        "--sip-listen",
        "127.0.0.1:5070",
        "--sip-tcp-listen",
        "127.0.0.1:5071",
        "--sip-ws-listen",
        "127.0.0.1:5072",
        "--log-level",
        "debug",
        "--log-personal-data",
    ])
    .unwrap();
    let cfg = SignalingConfig::load(&cli).unwrap();
    assert_eq!(cfg.data_dir, Path::new("/tmp/d"));
    assert_eq!(cfg.database_url(), "postgres://postgres@127.0.0.1/x");
    assert_eq!(cfg.api.listen, "127.0.0.1:0".parse().unwrap());
    assert_eq!(cfg.sip.udp_listen, Some("127.0.0.1:5070".parse().unwrap()));
    assert_eq!(cfg.sip.tcp_listen, Some("127.0.0.1:5071".parse().unwrap()));
    assert_eq!(cfg.sip.ws_listen, Some("127.0.0.1:5072".parse().unwrap()));
    assert_eq!(cfg.log.level, "debug");
    assert!(cfg.log.show_personal_data);

    // A bad flag value fails at parse time naming the flag.
    let e = Cli::try_parse_from(["tandem-signaling", "--api-listen", "nowhere"]).unwrap_err();
    assert!(e.to_string().contains("--api-listen"), "{e}");
    // A missing file names the file.
    let cli = Cli::try_parse_from(["tandem-signaling", "--config", "/nonexistent/x.toml"]).unwrap();
    assert!(matches!(
        SignalingConfig::load(&cli),
        Err(ConfigError::Read { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn environment_variables_are_read() {
    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("TANDEM_API_LISTEN", "127.0.0.1:9999");
    std::env::set_var("TANDEM_ADMIN_TOKEN", "from-the-environment-123");
    let cli = Cli::try_parse_from(["tandem-signaling"]).unwrap();
    let cfg = SignalingConfig::load(&cli);
    let cli_flag =
        Cli::try_parse_from(["tandem-signaling", "--api-listen", "127.0.0.1:1"]).unwrap();
    std::env::set_var("TANDEM_API_LISTEN", "bogus");
    let bad = Cli::try_parse_from(["tandem-signaling"]).map(|_| ());
    std::env::remove_var("TANDEM_API_LISTEN");
    std::env::remove_var("TANDEM_ADMIN_TOKEN");
    let cfg = cfg.unwrap();
    assert_eq!(cfg.api.listen, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(
        cfg.api.admin_token.as_deref(),
        Some("from-the-environment-123")
    );
    assert_eq!(
        cli_flag.api_listen,
        Some("127.0.0.1:1".parse().unwrap()),
        "flag beats environment"
    );
    assert!(bad.is_err(), "a bad environment value is refused");
}

/// `--check-config` prints the configuration with every secret hidden, the password
/// of a database URL included; the URL can come from a file instead of a flag.
#[test]
fn check_config_hides_secrets_and_the_database_password() {
    let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("db-url");
    std::fs::write(
        &url_file,
        "postgres://tandem:s3cr3t-pw@db.internal:5432/tandem\n",
    )
    .unwrap();
    let toml = format!(
        "[database]\nurl_file = \"{}\"\n[api]\nadmin_token = \"0123456789abcdef-admin\"\n[registrar]\nnonce_secret = \"nonce-secret-0123456789\"\n",
        url_file.display()
    );
    let path = dir.path().join("signaling.toml");
    std::fs::write(&path, toml).unwrap();
    let cli =
        Cli::try_parse_from(["tandem-signaling", "--config", path.to_str().unwrap()]).unwrap();
    let cfg = SignalingConfig::load(&cli).unwrap();
    assert_eq!(
        cfg.database_url(),
        "postgres://tandem:s3cr3t-pw@db.internal:5432/tandem"
    );
    let shown = toml::to_string_pretty(&cfg.redacted()).unwrap();
    for secret in [
        "s3cr3t-pw",
        "0123456789abcdef-admin",
        "nonce-secret-0123456789",
    ] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(
        shown.contains("postgres://tandem:<hidden>@db.internal:5432/tandem"),
        "{shown}"
    );
    // A URL without a password is shown as it is.
    let mut plain = cfg.clone();
    plain.database.url = Some("postgres://postgres@127.0.0.1:5432/test".into());
    assert_eq!(
        plain.redacted().database.url.as_deref(),
        Some("postgres://postgres@127.0.0.1:5432/test")
    );
}

/// `[[relays]]` and `[turn]`: secrets from files and the environment, hidden by
/// `--check-config`, which prints the relays as TOML.
#[test]
fn relays_and_turn_read_their_secrets_and_hide_them() {
    let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let relay_secret = dir.path().join("relay.secret");
    std::fs::write(&relay_secret, "relay-token-from-a-file\n").unwrap();
    let toml = format!(
        "[[relays]]\ncontrol_url = \"http://10.0.0.5:8081\"\nsecret_file = \"{}\"\npublic_address = \"relay-a.example.net\"\n\
         [[relays]]\ncontrol_url = \"http://10.0.0.6:8081\"\nsecret = \"relay-token-inline\"\npublic_address = \"203.0.113.20\"\nweight = 2\n",
        relay_secret.display()
    );
    let path = dir.path().join("signaling.toml");
    std::fs::write(&path, toml).unwrap();
    std::env::set_var("TANDEM_TURN_SECRET", "turn-secret-from-env-0123");
    let cli =
        Cli::try_parse_from(["tandem-signaling", "--config", path.to_str().unwrap()]).unwrap();
    let cfg = SignalingConfig::load(&cli);
    std::env::remove_var("TANDEM_TURN_SECRET");
    let cfg = cfg.unwrap();
    assert_eq!(cfg.relays.len(), 2);
    assert_eq!(
        cfg.relays[0].secret.as_deref(),
        Some("relay-token-from-a-file")
    );
    assert_eq!(cfg.relays[0].weight, 1);
    assert_eq!(cfg.relays[1].weight, 2);
    assert_eq!(
        cfg.turn.secret.as_deref(),
        Some("turn-secret-from-env-0123")
    );
    assert_eq!(
        cfg.turn.uris_for(&cfg.relays),
        [
            "turn:relay-a.example.net:3478?transport=udp",
            "turn:203.0.113.20:3478?transport=udp"
        ]
    );
    let shown = toml::to_string_pretty(&cfg.redacted()).unwrap();
    for secret in [
        "relay-token-from-a-file",
        "relay-token-inline",
        "turn-secret-from-env-0123",
    ] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(shown.contains("[[relays]]"), "{shown}");
    // An empty secret file is refused naming the key.
    std::fs::write(&relay_secret, "\n").unwrap();
    let e = SignalingConfig::load(&cli).unwrap_err().to_string();
    assert!(e.contains("relays[0].secret_file"), "{e}");
}

/// `--check-config` reads what start-up reads: a TLS (or WSS) listener whose
/// certificate file is missing fails the check, naming the file.
#[test]
fn check_config_catches_a_missing_tls_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signaling.toml");
    std::fs::write(
        &path,
        "[sip]\ntls_listen = \"127.0.0.1:5061\"\ntls_cert = \"/nonexistent/sip.crt\"\ntls_key = \"/nonexistent/sip.key\"\n[api]\nadmin_token = \"0123456789abcdef-admin\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem-signaling"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env_remove("TANDEM_CONFIG")
        .env_remove("TANDEM_ADMIN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/sip.crt"), "{err}");
}
