//! Push targets kept with devices: the token set through the API (`push_provider`,
//! `push_token`) and the RFC 8599 parameters the device last registered with
//! (`pn_provider`, `pn_prid`, `pn_param`), and clearing a token the provider reported
//! dead.

use sqlx::Row;

use super::{canonical_instance_id, device_from_row, Store, StoreError, DEVICE_COLUMNS};
use crate::model::{AccountId, Device, PushParams};

impl Store {
    /// Records the RFC 8599 parameters of the device's latest REGISTER (`None`: it
    /// registered without them, so it no longer wants RFC 8599 pushes).
    pub async fn set_device_pn(
        &self,
        account: AccountId,
        instance_id: &str,
        pn: Option<&PushParams>,
    ) -> Result<(), StoreError> {
        let Some(instance) = canonical_instance_id(instance_id) else {
            return Err(StoreError::DeviceNotFound);
        };
        sqlx::query(
            "UPDATE devices SET pn_provider = $1, pn_prid = $2, pn_param = $3 \
             WHERE account_id = $4 AND instance_id = $5",
        )
        .bind(pn.map(|p| p.provider.as_str()))
        .bind(pn.map(|p| p.prid.as_str()))
        .bind(pn.and_then(|p| p.param.as_deref()))
        .bind(account)
        .bind(instance)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every device of the account with its RFC 8599 parameters, if any.
    pub async fn devices_with_pn(
        &self,
        account: AccountId,
    ) -> Result<Vec<(Device, Option<PushParams>)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS}, pn_provider, pn_prid, pn_param FROM devices \
             WHERE account_id = $1 ORDER BY created_at, instance_id"
        ))
        .bind(account)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let device = device_from_row(row)?;
            let pn = match (
                row.try_get::<Option<String>, _>("pn_provider")?,
                row.try_get::<Option<String>, _>("pn_prid")?,
            ) {
                (Some(provider), Some(prid)) => Some(PushParams {
                    provider,
                    prid,
                    param: row.try_get("pn_param")?,
                }),
                _ => None,
            };
            out.push((device, pn));
        }
        Ok(out)
    }

    /// Clears `token` of `provider` wherever the device still has it (API token or
    /// RFC 8599 `pn-prid`, on the device and on its stored bindings): the provider
    /// said it is no longer valid. A token replaced in the meantime is left alone.
    /// Returns whether anything was cleared.
    pub async fn clear_dead_push_token(
        &self,
        account: AccountId,
        instance_id: &str,
        provider: &str,
        token: &str,
    ) -> Result<bool, StoreError> {
        let Some(instance) = canonical_instance_id(instance_id) else {
            return Ok(false);
        };
        let mut tx = self.begin().await?;
        let mut n = 0;
        for sql in [
            "UPDATE devices SET push_provider = NULL, push_token = NULL \
             WHERE account_id = $1 AND instance_id = $2 AND push_provider = $3 AND push_token = $4",
            "UPDATE devices SET pn_provider = NULL, pn_prid = NULL, pn_param = NULL \
             WHERE account_id = $1 AND instance_id = $2 AND pn_provider = $3 AND pn_prid = $4",
            "UPDATE bindings SET pn_provider = NULL, pn_prid = NULL, pn_param = NULL \
             WHERE account_id = $1 AND instance_id = $2 AND pn_provider = $3 AND pn_prid = $4",
        ] {
            let r = sqlx::query(sql)
                .bind(account)
                .bind(&instance)
                .bind(provider)
                .bind(token)
                .execute(&mut *tx)
                .await?;
            n += r.rows_affected();
        }
        tx.commit().await?;
        Ok(n > 0)
    }
}
