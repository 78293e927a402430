//! MESSAGEs deferred for authorised devices that were offline (seed manual, "Deferred
//! messages"): stored per recipient device, handed out in order when the device
//! registers, marked delivered only when the device confirmed it, expired after a TTL.
//!
//! Delivery is exactly-once as far as the server can make it: rows are read with a
//! delivery lease ([`Store::claim_deferred`]) and marked delivered by
//! [`Store::ack_deferred`] only after the device's 2xx. A crash before the ack hands the
//! message out again once the lease runs out (never lost); a crash after it never
//! repeats it. The lease also keeps two deliverers (two REGISTERs racing, or two
//! signaling nodes on one PostgreSQL database) from sending one device the same
//! messages at once or out of order. A delivery repeated after a crash carries the
//! same Call-ID ([`DeferredMessage::delivery_call_id`]) so the device can discard it.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{canonical_instance_id, Backend, Store, StoreError};
use crate::model::{AccountId, DeferredMessage};

/// Default time a deferred message is kept (7 days).
pub const DEFAULT_DEFERRED_TTL_SECS: i64 = 7 * 24 * 3600;

/// At most this many messages are handed out per claim; the rest follow on the next.
pub const MAX_CLAIM: u32 = 500;

/// Input for [`Store::defer_message`].
#[derive(Debug, Clone)]
pub struct NewDeferred<'a> {
    pub account_id: AccountId,
    /// Recipient device; canonicalised like [`Store::find_device`] does.
    pub instance_id: &'a str,
    /// The From header value of the original request.
    pub sender: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// The original Date header, if the request had one.
    pub date: Option<&'a str>,
    /// Unix seconds.
    pub received_at: i64,
    pub expires_at: i64,
}

const COLUMNS: &str = "id, account_id, instance_id, sender, content_type, body, date_header, \
     received_at, expires_at";

fn from_row(row: &AnyRow) -> Result<DeferredMessage, StoreError> {
    Ok(DeferredMessage {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        instance_id: row.try_get("instance_id")?,
        sender: row.try_get("sender")?,
        content_type: row.try_get("content_type")?,
        body: row.try_get("body")?,
        date: row.try_get("date_header")?,
        received_at: row.try_get("received_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

impl DeferredMessage {
    /// Call-ID for delivering this message: the same on every attempt, so a device
    /// that got it before a crash (2xx sent, ack not stored) can recognise a repeat.
    pub fn delivery_call_id(&self, host: &str) -> String {
        format!("deferred-{}-{}@{host}", self.id, self.received_at)
    }
}

impl Store {
    /// Stores a MESSAGE for one offline device; returns its id (delivery order).
    pub async fn defer_message(&self, m: &NewDeferred<'_>) -> Result<i64, StoreError> {
        let instance = canonical_instance_id(m.instance_id).ok_or(StoreError::DeviceNotFound)?;
        let row = sqlx::query(
            "INSERT INTO deferred_messages (account_id, instance_id, sender, content_type, body, \
             date_header, received_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id",
        )
        .bind(m.account_id)
        .bind(instance)
        .bind(m.sender)
        .bind(m.content_type)
        .bind(m.body)
        .bind(m.date)
        .bind(m.received_at)
        .bind(m.expires_at)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Stores one MESSAGE for several offline devices of an account in one transaction
    /// (all or none); `m.instance_id` is ignored. Returns the ids in `instances` order.
    pub async fn defer_message_to(
        &self,
        m: &NewDeferred<'_>,
        instances: &[&str],
    ) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.begin().await?;
        let mut ids = Vec::with_capacity(instances.len());
        for inst in instances {
            let instance = canonical_instance_id(inst).ok_or(StoreError::DeviceNotFound)?;
            let row = sqlx::query(
                "INSERT INTO deferred_messages (account_id, instance_id, sender, content_type, \
                 body, date_header, received_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(m.account_id)
            .bind(instance)
            .bind(m.sender)
            .bind(m.content_type)
            .bind(m.body)
            .bind(m.date)
            .bind(m.received_at)
            .bind(m.expires_at)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(row.try_get("id")?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Undelivered, unexpired messages of a device in delivery order, without
    /// claiming them (for inspection; deliverers use [`Store::claim_deferred`]).
    pub async fn pending_deferred(
        &self,
        account: AccountId,
        instance_id: &str,
        now: i64,
    ) -> Result<Vec<DeferredMessage>, StoreError> {
        let Some(instance) = canonical_instance_id(instance_id) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM deferred_messages WHERE account_id = $1 AND instance_id = $2 \
             AND delivered_at IS NULL AND expires_at > $3 ORDER BY id LIMIT {MAX_CLAIM}"
        ))
        .bind(account)
        .bind(instance)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Hands out a device's undelivered messages in order (at most [`MAX_CLAIM`]) under
    /// a delivery lease of `lease_secs`. Returns nothing while another deliverer holds
    /// a live lease on that device's messages. Call [`Store::ack_deferred`] with the
    /// ids the device confirmed; the others come back once the lease ends.
    pub async fn claim_deferred(
        &self,
        account: AccountId,
        instance_id: &str,
        now: i64,
        lease_secs: i64,
    ) -> Result<Vec<DeferredMessage>, StoreError> {
        let Some(instance) = canonical_instance_id(instance_id) else {
            return Ok(Vec::new());
        };
        // Most registrations find nothing: answer those without taking a write lock.
        let any = sqlx::query(
            "SELECT 1 FROM deferred_messages WHERE account_id = $1 AND instance_id = $2 \
             AND delivered_at IS NULL AND expires_at > $3 LIMIT 1",
        )
        .bind(account)
        .bind(&instance)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        // Serialise claimers of one account: SQLite already holds its write lock
        // (BEGIN IMMEDIATE); PostgreSQL locks the account row.
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
                .bind(account)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let busy = sqlx::query(
            "SELECT 1 FROM deferred_messages WHERE account_id = $1 AND instance_id = $2 \
             AND delivered_at IS NULL AND claimed_until > $3 LIMIT 1",
        )
        .bind(account)
        .bind(&instance)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if busy.is_some() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM deferred_messages WHERE account_id = $1 AND instance_id = $2 \
             AND delivered_at IS NULL AND expires_at > $3 ORDER BY id LIMIT {MAX_CLAIM}"
        ))
        .bind(account)
        .bind(&instance)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let msgs = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        if let (Some(first), Some(last)) = (msgs.first(), msgs.last()) {
            sqlx::query(
                "UPDATE deferred_messages SET claimed_until = $1 WHERE account_id = $2 \
                 AND instance_id = $3 AND delivered_at IS NULL AND id >= $4 AND id <= $5",
            )
            .bind(now.saturating_add(lease_secs.max(1)))
            .bind(account)
            .bind(&instance)
            .bind(first.id)
            .bind(last.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(msgs)
    }

    /// The seam name: [`Store::claim_deferred`] now with a 32 s lease (RFC 3261
    /// Timer F, the longest a MESSAGE transaction can take).
    pub async fn take_deferred(
        &self,
        account: AccountId,
        instance_id: &str,
    ) -> Result<Vec<DeferredMessage>, StoreError> {
        self.claim_deferred(account, instance_id, super::unix_now(), 32)
            .await
    }

    /// Marks messages delivered (the device answered 2xx); they are never handed out
    /// again. Returns how many were newly marked (an id acked twice counts once).
    pub async fn ack_deferred(&self, ids: &[i64], now: i64) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let mut n = 0;
        for id in ids {
            let r = sqlx::query(
                "UPDATE deferred_messages SET delivered_at = $1, claimed_until = NULL \
                 WHERE id = $2 AND delivered_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            n += r.rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Extends the delivery lease of claimed, undelivered messages to `until` (a
    /// round that is still sending keeps them).
    pub async fn extend_deferred_lease(&self, ids: &[i64], until: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE deferred_messages SET claimed_until = $1 \
                 WHERE id = $2 AND delivered_at IS NULL",
            )
            .bind(until)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives claimed but unconfirmed messages back at once (the deliverer gave up,
    /// for example the device's flow closed), instead of waiting for the lease.
    pub async fn release_deferred(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE deferred_messages SET claimed_until = NULL \
                 WHERE id = $1 AND delivered_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes messages whose expiry is at or before `now` (delivered or not), and
    /// those of devices that were revoked since (nobody can fetch them any more).
    /// Returns how many.
    pub async fn expire_deferred(&self, now: i64) -> Result<u64, StoreError> {
        let expired = sqlx::query("DELETE FROM deferred_messages WHERE expires_at <= $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        let orphaned = sqlx::query(
            "DELETE FROM deferred_messages WHERE NOT EXISTS (SELECT 1 FROM devices d \
             WHERE d.account_id = deferred_messages.account_id \
             AND d.instance_id = deferred_messages.instance_id)",
        )
        .execute(self.pool())
        .await?;
        Ok(expired.rows_affected() + orphaned.rows_affected())
    }
}
