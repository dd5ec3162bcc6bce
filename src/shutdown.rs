//! One shutdown signal per process, handed to every task, so a failing task stops the process
//! in order (leases released, sockets removed, audit flushed) instead of `process::exit`.

use std::sync::Arc;
use tokio::sync::watch;

/// A clonable stop signal: triggered once by SIGTERM/SIGINT or by a task that cannot go on.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Option<String>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that only [`Shutdown::trigger`] fires (tests, embedded use).
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// A signal that also fires on SIGTERM or SIGINT. Needs a tokio runtime.
    pub fn on_signals() -> Self {
        let s = Self::new();
        let fire = s.clone();
        tokio::spawn(async move {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut t) => {
                        t.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => fire.trigger("SIGINT"),
                _ = term => fire.trigger("SIGTERM"),
            }
        });
        s
    }

    /// Ask every holder to stop; the first reason is kept, later ones are ignored.
    pub fn trigger(&self, reason: &str) {
        self.tx.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            tracing::info!(reason, "shutting down");
            *r = Some(reason.to_string());
            true
        });
    }

    /// Why the process is stopping, once it is.
    pub fn reason(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Completes once the signal has fired (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(Option::is_some).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Shutdown;
    use std::time::Duration;

    #[tokio::test]
    async fn every_clone_sees_the_first_reason() {
        let s = Shutdown::new();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        assert_eq!(s.reason(), None);
        s.clone().trigger("key service failed");
        s.trigger("SIGTERM");
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        assert_eq!(s.reason().as_deref(), Some("key service failed"));
        // Waiting after the fact returns at once.
        tokio::time::timeout(Duration::from_millis(100), s.wait())
            .await
            .expect("already triggered");
    }
}
