//! A node's etcd lease kept alive on a task of its own, so that nothing
//! the ownership loop waits on (a claim's marker while the log elects a
//! leader, a host standing down) can hold a renewal back; and the watch
//! that tells the loop when the lease is gone or about to be.

use etcd_client::Client;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) type KeepAlive = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// Renews `lease` every third of `ttl` on a task of its own, until the
/// receiver is dropped. The receiver holds the time before which the
/// lease is surely still valid (`ttl` after the last renewal etcd
/// answered was sent), or `None` once it ran out or etcd said it is gone.
pub(crate) fn keep_alive(
    mut etcd: Client,
    lease: i64,
    ttl: Duration,
    granted_at: Instant,
    (mut keeper, mut answers): KeepAlive,
) -> watch::Receiver<Option<Instant>> {
    let mut deadline = granted_at + ttl;
    let (valid, receiver) = watch::channel(Some(deadline));
    tokio::spawn(async move {
        let mut renew = tokio::time::interval(ttl / 3);
        loop {
            renew.tick().await;
            if valid.is_closed() {
                return;
            }
            let sent = Instant::now();
            let renewed = async {
                keeper.keep_alive().await?;
                answers.message().await
            };
            match tokio::time::timeout(deadline.saturating_duration_since(sent), renewed).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    deadline = sent + ttl;
                    valid.send_replace(Some(deadline));
                }
                // etcd says the lease is gone, or it ran out unanswered.
                Ok(Ok(_)) | Err(_) => {
                    valid.send_replace(None);
                    return;
                }
                Ok(Err(error)) => {
                    // The connection broke (an etcd member died): a new
                    // keeper on another member, same lease.
                    tracing::debug!(%error, "lease renewal failed; reconnecting");
                    if let Ok((k, a)) = etcd.lease_keep_alive(lease).await {
                        keeper = k;
                        answers = a;
                    }
                }
            }
        }
    });
    receiver
}

/// Resolves once the lease is gone or within `margin` of running out.
pub(crate) async fn lease_lost(mut valid: watch::Receiver<Option<Instant>>, margin: Duration) {
    loop {
        let Some(deadline) = *valid.borrow_and_update() else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.checked_sub(margin).unwrap_or(deadline)) => {
                if *valid.borrow() == Some(deadline) {
                    return;
                }
            }
            changed = valid.changed() => if changed.is_err() { return },
        }
    }
}
