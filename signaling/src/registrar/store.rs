//! What the registrar needs from persistent storage.
//!
//! The registrar keeps bindings in memory and writes them through; it reads accounts
//! and devices on each REGISTER. The trait is object safe so that [`super::RegistrarHandle`]
//! stays one concrete type whatever the backend.

use std::future::Future;
use std::pin::Pin;

use crate::model::{AccountCredentials, AccountId, Binding, Device, PushParams};

/// Error from a storage backend, kept opaque: the registrar answers 500 and logs it.
pub type StoreFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Boxed future returned by [`RegistrarStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreFailure>> + Send + 'a>>;

/// Storage operations the registrar uses (see `store::Store` for the real backend).
pub trait RegistrarStore: Send + Sync + 'static {
    /// Account by SIP login, username or phone number in any accepted form.
    fn find_account<'a>(&'a self, identity: &'a str)
        -> StoreFuture<'a, Option<AccountCredentials>>;
    /// [`Self::find_account`] for an identity a caller dialled: national numbers
    /// read with the caller's `country_code` (`None`: the configured default).
    fn find_account_dialled<'a>(
        &'a self,
        identity: &'a str,
        country_code: Option<&'a str>,
    ) -> StoreFuture<'a, Option<AccountCredentials>> {
        let _ = country_code;
        self.find_account(identity)
    }
    fn find_device<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
    ) -> StoreFuture<'a, Option<Device>>;
    /// Upsert keyed by (account_id, instance_id, reg_id).
    fn save_binding<'a>(&'a self, b: &'a Binding) -> StoreFuture<'a, ()>;
    fn delete_binding<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
        reg_id: u32,
    ) -> StoreFuture<'a, ()>;
    fn delete_instance_bindings<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
    ) -> StoreFuture<'a, ()>;
    fn load_bindings(&self) -> StoreFuture<'_, Vec<Binding>>;
    /// Keeps the RFC 8599 parameters of a device's latest REGISTER with the device
    /// (`None` withdraws them). Backends without push support ignore it.
    fn set_device_push<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
        push: Option<&'a PushParams>,
    ) -> StoreFuture<'a, ()> {
        let _ = (account, instance_id, push);
        Box::pin(async { Ok(()) })
    }
}

impl RegistrarStore for crate::store::Store {
    fn find_account<'a>(
        &'a self,
        identity: &'a str,
    ) -> StoreFuture<'a, Option<AccountCredentials>> {
        Box::pin(async move { Ok(crate::store::Store::find_account(self, identity).await?) })
    }
    fn find_account_dialled<'a>(
        &'a self,
        identity: &'a str,
        country_code: Option<&'a str>,
    ) -> StoreFuture<'a, Option<AccountCredentials>> {
        Box::pin(async move {
            Ok(crate::store::Store::find_account_dialled(self, identity, country_code).await?)
        })
    }
    fn find_device<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
    ) -> StoreFuture<'a, Option<Device>> {
        Box::pin(
            async move { Ok(crate::store::Store::find_device(self, account, instance_id).await?) },
        )
    }
    fn save_binding<'a>(&'a self, b: &'a Binding) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(crate::store::Store::save_binding(self, b).await?) })
    }
    fn delete_binding<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
        reg_id: u32,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            Ok(crate::store::Store::delete_binding(self, account, instance_id, reg_id).await?)
        })
    }
    fn delete_instance_bindings<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            Ok(crate::store::Store::delete_instance_bindings(self, account, instance_id).await?)
        })
    }
    fn load_bindings(&self) -> StoreFuture<'_, Vec<Binding>> {
        Box::pin(async move { Ok(crate::store::Store::load_bindings(self).await?) })
    }
    fn set_device_push<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
        push: Option<&'a PushParams>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            Ok(crate::store::Store::set_device_pn(self, account, instance_id, push).await?)
        })
    }
}
