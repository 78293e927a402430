//! Persistent state: accounts, public IDs, devices and registrar bindings.
//!
//! One [`Store`] talks to SQLite (the embedded default, a file under the data
//! directory, WAL mode) or PostgreSQL (several signaling nodes sharing one
//! database), picked by the URL scheme. Queries are checked at run time through
//! sqlx's `Any` driver so that building needs no database; the SQL is written in the
//! subset both backends accept (`$N` placeholders, `ON CONFLICT`, BIGINT/INTEGER
//! columns decoded as `i64`). Each backend has its own migrations directory.
//!
//! Write paths that check a limit first lock the account row (an `UPDATE` of
//! `accounts.updated_at` as the first statement of the transaction): PostgreSQL then
//! serialises concurrent authorisations of one account on the row lock, SQLite on its
//! single writer lock, so a limit can never be overshot by two racing requests.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::model::{AccountCredentials, AccountId, Binding, Device, DeviceClass, MediaPolicy};
use crate::number;

mod messages;
mod push;
pub use messages::{NewDeferred, DEFAULT_DEFERRED_TTL_SECS, MAX_CLAIM};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Country code used to read bare numbers when none was configured.
pub const DEFAULT_COUNTRY_CODE: &str = "1";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("cannot create the database directory: {0}")]
    CreateDir(#[source] std::io::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("account not found")]
    AccountNotFound,
    #[error("device not found")]
    DeviceNotFound,
    #[error("login is already taken")]
    LoginTaken,
    #[error("username is already taken")]
    UsernameTaken,
    #[error("the account already has a username; it can be set only once")]
    UsernameAlreadySet,
    #[error("phone number is already assigned to an account")]
    PhoneNumberTaken,
    #[error("{label} limit of {limit} reached")]
    DeviceLimitReached { label: &'static str, limit: u32 },
    #[error("device is already authorised with class {existing}")]
    DeviceClassMismatch { existing: &'static str },
    #[error("corrupt row in the database: {0}")]
    Corrupt(&'static str),
}

/// Per-class device limits. `mobile` counts mobile and tablet devices together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceLimits {
    /// Mobile and tablet devices together.
    pub mobile: u32,
    pub desktop: u32,
    pub web: u32,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        DeviceLimits {
            mobile: 3,
            desktop: 1,
            web: 1,
        }
    }
}

impl DeviceLimits {
    /// The limit that applies to `class` and the label used in errors.
    pub fn for_class(&self, class: DeviceClass) -> (u32, &'static str) {
        match class {
            DeviceClass::Mobile | DeviceClass::Tablet => (self.mobile, "mobile/tablet"),
            DeviceClass::Desktop => (self.desktop, "desktop"),
            DeviceClass::Web => (self.web, "web"),
        }
    }
}

/// Limits set on one account; `None` means the configured default applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitOverrides {
    pub mobile: Option<u32>,
    pub desktop: Option<u32>,
    pub web: Option<u32>,
}

impl LimitOverrides {
    pub fn effective(&self, defaults: &DeviceLimits) -> DeviceLimits {
        DeviceLimits {
            mobile: self.mobile.unwrap_or(defaults.mobile),
            desktop: self.desktop.unwrap_or(defaults.desktop),
            web: self.web.unwrap_or(defaults.web),
        }
    }
}

/// An account as the administrator sees it (no credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub login: String,
    pub country_code: String,
    pub username: Option<String>,
    pub display_name: Option<String>,
    /// Normalised E.164 digits, sorted.
    pub phone_numbers: Vec<String>,
    pub limits: LimitOverrides,
    /// The no-answer rule: a `sip:` URI a call goes to when no device
    /// answered (voicemail, another number); `None` ends such a call with 480.
    pub no_answer_forward: Option<String>,
    /// How the account's calls carry media.
    pub media: MediaPolicy,
    pub created_at: i64,
}

/// Input for [`Store::create_account`]. The password is hashed here and dropped.
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    pub login: &'a str,
    pub password: &'a str,
    pub realm: &'a str,
    pub country_code: &'a str,
    pub display_name: Option<&'a str>,
}

/// Result of [`Store::authorise_device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorised {
    pub device: Device,
    /// `true` when the instance was new, `false` when it was already authorised
    /// (its name was updated).
    pub created: bool,
    /// Desktop/web devices removed to make room (their bindings were deleted too; the
    /// caller must drop them from the registrar).
    pub replaced: Vec<Device>,
}

/// Input for [`Store::authorise_device`].
#[derive(Debug, Clone)]
pub struct NewDevice<'a> {
    pub instance_id: &'a str,
    pub class: DeviceClass,
    pub name: &'a str,
    pub push_provider: Option<&'a str>,
    pub push_token: Option<&'a str>,
}

/// HA1 values of RFC 7616 over `login:realm:password`, lower-case hex: (MD5, SHA-256).
pub fn ha1(login: &str, realm: &str, password: &str) -> (String, String) {
    let input = format!("{login}:{realm}:{password}");
    let md5 = hex::encode(Md5::digest(input.as_bytes()));
    let sha = hex::encode(Sha256::digest(input.as_bytes()));
    (md5, sha)
}

/// Canonical form of a `+sip.instance` value, `None` when it is not a URN we accept:
/// `urn:uuid:` with a lower-case UUID (RFC 4122 UUIDs compare case-insensitively), or
/// another RFC 8141 URN kept as given. Devices are stored under this form and
/// [`Store::find_device`] applies it to its argument, so the registrar may pass the
/// value from the Contact header as it came.
pub fn canonical_instance_id(raw: &str) -> Option<String> {
    if raw.len() > 256 {
        return None;
    }
    if let Some(uuid) = raw
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("urn:uuid:"))
        .map(|_| &raw[9..])
    {
        let b = uuid.as_bytes();
        let ok = b.len() == 36
            && b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        return ok.then(|| format!("urn:uuid:{}", uuid.to_ascii_lowercase()));
    }
    // RFC 8141: "urn:" NID ":" NSS. The NSS characters allowed exclude '<', '>', '"'
    // and whitespace, which would break the Contact header parameter.
    let rest = raw
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("urn:"))
        .map(|_| &raw[4..])?;
    let (nid, nss) = rest.split_once(':')?;
    let nid_ok = (2..=32).contains(&nid.len())
        && nid.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && !nid.starts_with('-');
    let nss_ok = !nss.is_empty()
        && nss
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&c));
    (nid_ok && nss_ok).then(|| raw.to_owned())
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug)]
struct Inner {
    pool: AnyPool,
    backend: Backend,
    default_country_code: String,
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

const ACCOUNT_COLUMNS: &str = "id, login, country_code, username, display_name, \
     limit_mobile, limit_desktop, limit_web, no_answer_forward, media_policy, created_at";
const DEVICE_COLUMNS: &str =
    "account_id, instance_id, class, name, created_at, push_provider, push_token";
const BINDING_COLUMNS: &str = "account_id, instance_id, reg_id, contact_uri, expires_at, \
     call_id, cseq, transport, source, local, user_agent, pn_provider, pn_prid, pn_param";

fn opt_limit(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// The `media_policy` column; a value this version does not know reads as the
/// default rather than failing every look-up of the account.
fn media_from_row(row: &AnyRow) -> Result<MediaPolicy, sqlx::Error> {
    let v: String = row.try_get("media_policy")?;
    Ok(MediaPolicy::parse(&v).unwrap_or_else(|| {
        tracing::warn!(value = %v, "unknown media_policy in the database; using ice");
        MediaPolicy::Ice
    }))
}

fn account_from_row(row: &AnyRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        id: row.try_get("id")?,
        login: row.try_get("login")?,
        country_code: row.try_get("country_code")?,
        username: row.try_get("username")?,
        display_name: row.try_get("display_name")?,
        phone_numbers: Vec::new(),
        no_answer_forward: row.try_get("no_answer_forward")?,
        media: media_from_row(row)?,
        limits: LimitOverrides {
            mobile: opt_limit(row.try_get("limit_mobile")?),
            desktop: opt_limit(row.try_get("limit_desktop")?),
            web: opt_limit(row.try_get("limit_web")?),
        },
        created_at: row.try_get("created_at")?,
    })
}

fn device_from_row(row: &AnyRow) -> Result<Device, StoreError> {
    let class: String = row.try_get("class")?;
    Ok(Device {
        account_id: row.try_get("account_id")?,
        instance_id: row.try_get("instance_id")?,
        class: DeviceClass::parse(&class).ok_or(StoreError::Corrupt("device class"))?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        push_provider: row.try_get("push_provider")?,
        push_token: row.try_get("push_token")?,
    })
}

fn binding_from_row(row: &AnyRow) -> Result<Binding, StoreError> {
    let reg_id: i64 = row.try_get("reg_id")?;
    let cseq: i64 = row.try_get("cseq")?;
    Ok(Binding {
        account_id: row.try_get("account_id")?,
        instance_id: row.try_get("instance_id")?,
        reg_id: u32::try_from(reg_id).map_err(|_| StoreError::Corrupt("binding reg_id"))?,
        contact_uri: row.try_get("contact_uri")?,
        expires_at: row.try_get("expires_at")?,
        call_id: row.try_get("call_id")?,
        cseq: u32::try_from(cseq).map_err(|_| StoreError::Corrupt("binding cseq"))?,
        transport: row.try_get("transport")?,
        source: row.try_get("source")?,
        local: row.try_get("local")?,
        user_agent: row.try_get("user_agent")?,
        push: match (
            row.try_get::<Option<String>, _>("pn_provider")?,
            row.try_get::<Option<String>, _>("pn_prid")?,
        ) {
            (Some(provider), Some(prid)) => Some(crate::model::PushParams {
                provider,
                prid,
                param: row.try_get("pn_param")?,
            }),
            _ => None,
        },
    })
}

impl Store {
    /// `"sqlite://path/to/file.db"` (file and directory created if missing, WAL mode)
    /// or `"postgres://..."`; runs the migrations. Bare phone numbers given to
    /// [`Store::find_account`] are read with country code [`DEFAULT_COUNTRY_CODE`]
    /// unless [`Store::with_default_country_code`] says otherwise.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with(url, DEFAULT_COUNTRY_CODE, 8).await
    }

    /// Like [`Store::connect`] with the country code for bare numbers and the pool size.
    pub async fn connect_with(
        url: &str,
        default_country_code: &str,
        max_connections: u32,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let (path, query) = match path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path, None),
            };
            if path.is_empty() {
                return Err(StoreError::UnsupportedUrl);
            }
            if path != ":memory:" {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir).map_err(StoreError::CreateDir)?;
                    }
                }
            }
            let query = match query {
                Some(q) if q.contains("mode=") => q.to_owned(),
                Some(q) => format!("{q}&mode=rwc"),
                None => "mode=rwc".to_owned(),
            };
            (Backend::Sqlite, format!("sqlite://{path}?{query}"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let options = sqlx::any::AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        match backend {
            Backend::Sqlite => {
                // WAL is a property of the file: set once, it stays.
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&pool)
                    .await?;
                SQLITE_MIGRATIONS.run(&pool).await?;
            }
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                default_country_code: default_country_code.to_owned(),
            }),
        })
    }

    /// Sets the country code used to read bare phone numbers in [`Store::find_account`].
    pub fn with_default_country_code(self, cc: &str) -> Store {
        Store {
            inner: Arc::new(Inner {
                pool: self.inner.pool.clone(),
                backend: self.inner.backend,
                default_country_code: cc.to_owned(),
            }),
        }
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Closes the pool; pending queries finish first.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// A trivial query, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// A write transaction. SQLite gets `BEGIN IMMEDIATE`: a deferred transaction
    /// that reads and then writes can fail at once with SQLITE_BUSY when another
    /// writer committed in between (its busy timeout does not apply); taking the
    /// write lock up front makes writers queue on the busy timeout instead.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let statement = match self.inner.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        Ok(self.inner.pool.begin_with(statement).await?)
    }

    // ----- accounts -------------------------------------------------------------

    pub async fn create_account(&self, a: &NewAccount<'_>) -> Result<Account, StoreError> {
        let (md5, sha) = ha1(a.login, a.realm, a.password);
        let now = unix_now();
        let mut tx = self.begin().await?;
        // A login must not equal another account's username or phone number: each of
        // them names an account when logging in.
        let clash = sqlx::query(
            "SELECT 1 FROM accounts WHERE username = $1 \
             UNION ALL SELECT 1 FROM phone_numbers WHERE number = $1",
        )
        .bind(a.login)
        .fetch_optional(&mut *tx)
        .await?;
        if clash.is_some() {
            return Err(StoreError::LoginTaken);
        }
        let row = sqlx::query(&format!(
            "INSERT INTO accounts (login, ha1_md5, ha1_sha256, country_code, display_name, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
             RETURNING {ACCOUNT_COLUMNS}"
        ))
        .bind(a.login)
        .bind(md5)
        .bind(sha)
        .bind(a.country_code)
        .bind(a.display_name)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::LoginTaken
            } else {
                e.into()
            }
        })?;
        let account = account_from_row(&row)?;
        tx.commit().await?;
        Ok(account)
    }

    async fn phone_numbers_of(&self, id: AccountId) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT number FROM phone_numbers WHERE account_id = $1 ORDER BY number")
                .bind(id)
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("number").map_err(Into::into))
            .collect()
    }

    pub async fn get_account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut account = account_from_row(&row)?;
        account.phone_numbers = self.phone_numbers_of(id).await?;
        Ok(Some(account))
    }

    /// Accounts with `id > after`, in id order, at most `limit` of them.
    pub async fn list_accounts(
        &self,
        after: AccountId,
        limit: u32,
    ) -> Result<Vec<Account>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut accounts = rows
            .iter()
            .map(account_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if let (Some(first), Some(last)) = (accounts.first(), accounts.last()) {
            let numbers = sqlx::query(
                "SELECT account_id, number FROM phone_numbers \
                 WHERE account_id >= $1 AND account_id <= $2 ORDER BY number",
            )
            .bind(first.id)
            .bind(last.id)
            .fetch_all(self.pool())
            .await?;
            for r in &numbers {
                let id: AccountId = r.try_get("account_id")?;
                let n: String = r.try_get("number")?;
                if let Some(a) = accounts.iter_mut().find(|a| a.id == id) {
                    a.phone_numbers.push(n);
                }
            }
        }
        Ok(accounts)
    }

    /// Changes the password (recomputing both HA1 values), display name, country
    /// code or no-answer rule; `None` leaves a field as it is, `Some(None)` clears
    /// a nullable one.
    pub async fn update_account(
        &self,
        id: AccountId,
        password: Option<(&str, &str)>,
        display_name: Option<Option<&str>>,
        country_code: Option<&str>,
        no_answer_forward: Option<Option<&str>>,
    ) -> Result<Account, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query("UPDATE accounts SET updated_at = $1 WHERE id = $2 RETURNING login")
            .bind(unix_now())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::AccountNotFound)?;
        let login: String = row.try_get("login")?;
        if let Some((password, realm)) = password {
            let (md5, sha) = ha1(&login, realm, password);
            sqlx::query("UPDATE accounts SET ha1_md5 = $1, ha1_sha256 = $2 WHERE id = $3")
                .bind(md5)
                .bind(sha)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(name) = display_name {
            sqlx::query("UPDATE accounts SET display_name = $1 WHERE id = $2")
                .bind(name)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(cc) = country_code {
            sqlx::query("UPDATE accounts SET country_code = $1 WHERE id = $2")
                .bind(cc)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(uri) = no_answer_forward {
            sqlx::query("UPDATE accounts SET no_answer_forward = $1 WHERE id = $2")
                .bind(uri)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.get_account(id)
            .await?
            .ok_or(StoreError::AccountNotFound)
    }

    /// Sets how the account's calls carry media.
    pub async fn set_media_policy(
        &self,
        id: AccountId,
        media: MediaPolicy,
    ) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE accounts SET media_policy = $1, updated_at = $2 WHERE id = $3")
                .bind(media.as_str())
                .bind(unix_now())
                .bind(id)
                .execute(self.pool())
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AccountNotFound);
        }
        Ok(())
    }

    /// Deletes the account with its numbers, devices and bindings. Returns the
    /// devices it had, so the caller can drop their live registrations.
    pub async fn delete_account(&self, id: AccountId) -> Result<Vec<Device>, StoreError> {
        let mut tx = self.begin().await?;
        let locked = sqlx::query("UPDATE accounts SET updated_at = $1 WHERE id = $2")
            .bind(unix_now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(StoreError::AccountNotFound);
        }
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 ORDER BY created_at, instance_id"
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let devices = rows
            .iter()
            .map(device_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        for table in ["bindings", "devices", "phone_numbers"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE account_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM accounts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(devices)
    }

    /// Adds a phone number already normalised with [`number::normalize`].
    pub async fn add_phone_number(&self, id: AccountId, e164: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let locked = sqlx::query("UPDATE accounts SET updated_at = $1 WHERE id = $2")
            .bind(unix_now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(StoreError::AccountNotFound);
        }
        // Logins made of digits (accounts signed up with their number) name an
        // account too; the same account may carry its own login as a number.
        let clash = sqlx::query("SELECT 1 FROM accounts WHERE login = $1 AND id <> $2")
            .bind(e164)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if clash.is_some() {
            return Err(StoreError::PhoneNumberTaken);
        }
        sqlx::query(
            "INSERT INTO phone_numbers (number, account_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(e164)
        .bind(id)
        .bind(unix_now())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::PhoneNumberTaken
            } else {
                e.into()
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    /// Returns `false` when the account does not have that number.
    pub async fn remove_phone_number(&self, id: AccountId, e164: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM phone_numbers WHERE account_id = $1 AND number = $2")
            .bind(id)
            .bind(e164)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Sets the username (service ID). It can be set once.
    pub async fn set_username(&self, id: AccountId, username: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let row =
            sqlx::query("UPDATE accounts SET updated_at = $1 WHERE id = $2 RETURNING username")
                .bind(unix_now())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::AccountNotFound)?;
        let current: Option<String> = row.try_get("username")?;
        if current.is_some() {
            return Err(StoreError::UsernameAlreadySet);
        }
        // A username must not equal another account's login either.
        let clash = sqlx::query("SELECT 1 FROM accounts WHERE login = $1 AND id <> $2")
            .bind(username)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if clash.is_some() {
            return Err(StoreError::UsernameTaken);
        }
        sqlx::query("UPDATE accounts SET username = $1 WHERE id = $2")
            .bind(username)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::UsernameTaken
                } else {
                    e.into()
                }
            })?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_limits(
        &self,
        id: AccountId,
        limits: &LimitOverrides,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE accounts SET limit_mobile = $1, limit_desktop = $2, limit_web = $3, \
             updated_at = $4 WHERE id = $5",
        )
        .bind(limits.mobile.map(i64::from))
        .bind(limits.desktop.map(i64::from))
        .bind(limits.web.map(i64::from))
        .bind(unix_now())
        .bind(id)
        .execute(self.pool())
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::AccountNotFound);
        }
        Ok(())
    }

    /// `identity` is the SIP login, the username (service ID) or a phone number in
    /// any form [`number::normalize`] accepts; bare numbers are read with the
    /// default country code, and a number that is already full E.164 without `+`
    /// (`48600345698`) is also tried as it is.
    pub async fn find_account(
        &self,
        identity: &str,
    ) -> Result<Option<AccountCredentials>, StoreError> {
        self.find_account_dialled(identity, None).await
    }

    /// [`Self::find_account`] for an identity dialled by a caller whose country code
    /// is `country_code` (`None`: the configured default): `0600…` from a Polish
    /// account is `48600…`, from a British one `44600…`.
    pub async fn find_account_dialled(
        &self,
        identity: &str,
        country_code: Option<&str>,
    ) -> Result<Option<AccountCredentials>, StoreError> {
        if identity.is_empty() || identity.len() > 256 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT id, login, ha1_md5, ha1_sha256, country_code, no_answer_forward, \
             media_policy FROM accounts \
             WHERE login = $1 OR username = $1 \
             ORDER BY CASE WHEN login = $1 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(identity)
        .fetch_optional(self.pool())
        .await?;
        let row = match row {
            Some(row) => Some(row),
            None => {
                let mut candidates = Vec::with_capacity(2);
                let cc = country_code.unwrap_or(&self.inner.default_country_code);
                if let Ok(n) = number::normalize(identity, cc) {
                    candidates.push(n);
                }
                let trimmed = identity.trim();
                if !trimmed.starts_with('0')
                    && (number::MIN_DIGITS..=number::E164_MAX_DIGITS).contains(&trimmed.len())
                    && trimmed.bytes().all(|b| b.is_ascii_digit())
                    && !candidates.iter().any(|c| c == trimmed)
                {
                    candidates.push(trimmed.to_owned());
                }
                let mut found = None;
                for c in candidates {
                    found = sqlx::query(
                        "SELECT a.id, a.login, a.ha1_md5, a.ha1_sha256, a.country_code, \
                         a.no_answer_forward, a.media_policy FROM accounts a \
                         JOIN phone_numbers p ON p.account_id = a.id WHERE p.number = $1",
                    )
                    .bind(c)
                    .fetch_optional(self.pool())
                    .await?;
                    if found.is_some() {
                        break;
                    }
                }
                found
            }
        };
        let Some(row) = row else { return Ok(None) };
        Ok(Some(AccountCredentials {
            id: row.try_get("id")?,
            login: row.try_get("login")?,
            ha1_md5: row.try_get("ha1_md5")?,
            ha1_sha256: row.try_get("ha1_sha256")?,
            country_code: row.try_get("country_code")?,
            no_answer_forward: row.try_get("no_answer_forward")?,
            media: media_from_row(&row)?,
        }))
    }

    // ----- devices --------------------------------------------------------------

    pub async fn find_device(
        &self,
        account: AccountId,
        instance_id: &str,
    ) -> Result<Option<Device>, StoreError> {
        let Some(instance_id) = canonical_instance_id(instance_id) else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 AND instance_id = $2"
        ))
        .bind(account)
        .bind(instance_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    pub async fn list_devices(&self, account: AccountId) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 ORDER BY created_at, instance_id"
        ))
        .bind(account)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Authorises a device under the account's limits (`defaults` where the account
    /// sets none). Mobile and tablet devices beyond the limit are refused; a desktop
    /// or web device at the limit replaces the oldest device of its class (one
    /// instance per class with the default limit of 1). Re-authorising an instance
    /// that exists updates its name and push token.
    pub async fn authorise_device(
        &self,
        account: AccountId,
        d: &NewDevice<'_>,
        defaults: &DeviceLimits,
    ) -> Result<Authorised, StoreError> {
        let now = unix_now();
        let mut tx = self.begin().await?;
        // Lock the account row first (see the module comment).
        let row = sqlx::query(
            "UPDATE accounts SET updated_at = $1 WHERE id = $2 \
             RETURNING limit_mobile, limit_desktop, limit_web",
        )
        .bind(now)
        .bind(account)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::AccountNotFound)?;
        let overrides = LimitOverrides {
            mobile: opt_limit(row.try_get("limit_mobile")?),
            desktop: opt_limit(row.try_get("limit_desktop")?),
            web: opt_limit(row.try_get("limit_web")?),
        };
        let limits = overrides.effective(defaults);

        let existing = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 AND instance_id = $2"
        ))
        .bind(account)
        .bind(d.instance_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(existing) = existing {
            let existing = device_from_row(&existing)?;
            if existing.class != d.class {
                return Err(StoreError::DeviceClassMismatch {
                    existing: existing.class.as_str(),
                });
            }
            let row = sqlx::query(&format!(
                "UPDATE devices SET name = $1, \
                 push_provider = COALESCE($2, push_provider), push_token = COALESCE($3, push_token) \
                 WHERE account_id = $4 AND instance_id = $5 RETURNING {DEVICE_COLUMNS}"
            ))
            .bind(d.name)
            .bind(d.push_provider)
            .bind(d.push_token)
            .bind(account)
            .bind(d.instance_id)
            .fetch_one(&mut *tx)
            .await?;
            let device = device_from_row(&row)?;
            tx.commit().await?;
            return Ok(Authorised {
                device,
                created: false,
                replaced: Vec::new(),
            });
        }

        let (limit, label) = limits.for_class(d.class);
        let same_limit_classes: &[&str] = match d.class {
            DeviceClass::Mobile | DeviceClass::Tablet => &["mobile", "tablet"],
            DeviceClass::Desktop => &["desktop"],
            DeviceClass::Web => &["web"],
        };
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 AND class IN ($2, $3) \
             ORDER BY created_at, instance_id"
        ))
        .bind(account)
        .bind(same_limit_classes[0])
        .bind(
            same_limit_classes
                .get(1)
                .copied()
                .unwrap_or(same_limit_classes[0]),
        )
        .fetch_all(&mut *tx)
        .await?;
        let current = rows
            .iter()
            .map(device_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let count = u32::try_from(current.len()).unwrap_or(u32::MAX);
        let mut replaced = Vec::new();
        if count >= limit {
            let replaceable = matches!(d.class, DeviceClass::Desktop | DeviceClass::Web);
            if !replaceable || limit == 0 {
                return Err(StoreError::DeviceLimitReached { label, limit });
            }
            // Oldest first, until there is room for one.
            let excess = (count - limit + 1) as usize;
            for old in current.into_iter().take(excess) {
                for table in ["bindings", "devices"] {
                    sqlx::query(&format!(
                        "DELETE FROM {table} WHERE account_id = $1 AND instance_id = $2"
                    ))
                    .bind(account)
                    .bind(&old.instance_id)
                    .execute(&mut *tx)
                    .await?;
                }
                replaced.push(old);
            }
        }
        let row = sqlx::query(&format!(
            "INSERT INTO devices (account_id, instance_id, class, name, created_at, push_provider, \
             push_token) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(account)
        .bind(d.instance_id)
        .bind(d.class.as_str())
        .bind(d.name)
        .bind(now)
        .bind(d.push_provider)
        .bind(d.push_token)
        .fetch_one(&mut *tx)
        .await?;
        let device = device_from_row(&row)?;
        tx.commit().await?;
        Ok(Authorised {
            device,
            created: true,
            replaced,
        })
    }

    /// Deletes the device and its stored bindings; `None` when there was no such device.
    pub async fn delete_device(
        &self,
        account: AccountId,
        instance_id: &str,
    ) -> Result<Option<Device>, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "DELETE FROM devices WHERE account_id = $1 AND instance_id = $2 RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(account)
        .bind(instance_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let device = device_from_row(&row)?;
        sqlx::query("DELETE FROM bindings WHERE account_id = $1 AND instance_id = $2")
            .bind(account)
            .bind(instance_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(device))
    }

    /// Sets (or with `None`, clears) the device's push provider and token.
    pub async fn set_push_token(
        &self,
        account: AccountId,
        instance_id: &str,
        push: Option<(&str, &str)>,
    ) -> Result<Device, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE devices SET push_provider = $1, push_token = $2 \
             WHERE account_id = $3 AND instance_id = $4 RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(push.map(|p| p.0))
        .bind(push.map(|p| p.1))
        .bind(account)
        .bind(instance_id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::DeviceNotFound)?;
        device_from_row(&row)
    }

    // ----- bindings (registrar write-through) -------------------------------------

    /// Upsert keyed by (account_id, instance_id, reg_id).
    pub async fn save_binding(&self, b: &Binding) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO bindings ({BINDING_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (account_id, instance_id, reg_id) DO UPDATE SET \
             contact_uri = excluded.contact_uri, expires_at = excluded.expires_at, \
             call_id = excluded.call_id, cseq = excluded.cseq, transport = excluded.transport, \
             source = excluded.source, local = excluded.local, user_agent = excluded.user_agent, \
             pn_provider = excluded.pn_provider, pn_prid = excluded.pn_prid, \
             pn_param = excluded.pn_param"
        ))
        .bind(b.account_id)
        .bind(&b.instance_id)
        .bind(i64::from(b.reg_id))
        .bind(&b.contact_uri)
        .bind(b.expires_at)
        .bind(&b.call_id)
        .bind(i64::from(b.cseq))
        .bind(&b.transport)
        .bind(&b.source)
        .bind(&b.local)
        .bind(b.user_agent.as_deref())
        .bind(b.push.as_ref().map(|p| p.provider.as_str()))
        .bind(b.push.as_ref().map(|p| p.prid.as_str()))
        .bind(b.push.as_ref().and_then(|p| p.param.as_deref()))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn delete_binding(
        &self,
        account: AccountId,
        instance_id: &str,
        reg_id: u32,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM bindings WHERE account_id = $1 AND instance_id = $2 AND reg_id = $3",
        )
        .bind(account)
        .bind(instance_id)
        .bind(i64::from(reg_id))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn delete_instance_bindings(
        &self,
        account: AccountId,
        instance_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM bindings WHERE account_id = $1 AND instance_id = $2")
            .bind(account)
            .bind(instance_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Every stored binding, expired or not (the registrar drops expired ones).
    pub async fn load_bindings(&self) -> Result<Vec<Binding>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BINDING_COLUMNS} FROM bindings ORDER BY account_id, instance_id, reg_id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(binding_from_row).collect()
    }

    /// Deletes bindings that expired at or before `now`; returns how many.
    pub async fn delete_expired_bindings(&self, now: i64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM bindings WHERE expires_at <= $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }
}
