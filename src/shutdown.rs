//! The stop signal, passed down explicitly to every long-running task (as in tokio's
//! mini-redis): the composition root holds the [`Stop`] and hands each task a [`Shutdown`].
//!
//! A task checks [`Shutdown::is_stopping`] between steps and awaits [`Shutdown::wait`] in
//! every `select!` that could otherwise block; when the [`Stop`] is triggered — or dropped,
//! which a task must read the same way — every holder sees it.

use std::time::Duration;
use tokio::sync::watch;

/// The sending side: stops every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Stop {
    tx: watch::Sender<bool>,
}

/// The receiving side, one per task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Stop {
    /// A new stop signal and the first listener of it.
    pub fn new() -> (Stop, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Stop { tx }, Shutdown { rx })
    }

    /// Tells every listener to stop. Idempotent.
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    /// Another listener of this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }
}

impl Shutdown {
    /// A listener that never stops (for tools that run until their own end).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for the life of the program: a dropped sender reads as a stop.
        std::mem::forget(tx);
        Shutdown { rx }
    }

    /// Whether the task should stop now.
    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes when the stop signal is given (or its sender is gone).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Sleeps `d`, or less if the stop signal comes first; returns `true` when stopping.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_stopping(),
            _ = self.wait() => true,
        }
    }
}

impl From<watch::Receiver<bool>> for Shutdown {
    /// Adopts a plain watch channel (`true` = stop), as older call sites made them.
    fn from(rx: watch::Receiver<bool>) -> Shutdown {
        Shutdown { rx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_sees_the_stop_and_a_dropped_stop() {
        let (stop, mut a) = Stop::new();
        let mut b = stop.subscribe();
        assert!(!a.is_stopping());
        stop.stop();
        a.wait().await;
        assert!(b.sleep(Duration::from_secs(60)).await);
        let (stop, mut c) = Stop::new();
        drop(stop);
        c.wait().await;
        assert!(c.is_stopping());
        assert!(!Shutdown::never().is_stopping());
    }
}
