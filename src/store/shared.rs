//! Sharing one [`Store`] between async tasks: a mutex around it, and a way to run store calls
//! (which block on SQLite and fsync) on tokio's blocking pool instead of a runtime worker.

use super::{Store, StoreError, StoreSettings};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The store as the pollers, the analytics and the uplink share it.
pub type SharedStore = Arc<Mutex<Store>>;

/// Opens a store for sharing.
pub fn open_shared(path: &Path, cfg: &StoreSettings) -> Result<SharedStore, StoreError> {
    Ok(Arc::new(Mutex::new(Store::open(path, cfg)?)))
}

/// Runs `f` with the store locked, on tokio's blocking pool, so a slow fsync never stalls the
/// async tasks. A mutex poisoned by a panic elsewhere is taken over: SQLite's own transactions
/// keep the file consistent whatever the panicking caller was doing.
///
/// ```ignore
/// let rows = with_store(&store, |s| s.pending(0, 64)).await?;
/// ```
pub async fn with_store<T, F>(store: &SharedStore, f: F) -> T
where
    F: FnOnce(&mut Store) -> T + Send + 'static,
    T: Send + 'static,
{
    let store = Arc::clone(store);
    let job = move || {
        let mut guard = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("store call cancelled: {e}"),
    }
}
