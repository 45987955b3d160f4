//! The actor system: one thread running actix's `System`, one Arbiter
//! (a thread with a current-thread tokio runtime and its own blocking pool)
//! per shard, each running a [`Shard`], and a monitor of the store's writer.

use super::shard::Shard;
use super::shared::Shared;
use crate::error::{ShutdownError, StartError};
use crate::metric_names::{MAILBOX_DEPTH, WRITE_BATCH_EVENTS};
use actix::prelude::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

/// The running actor system: stopped at shutdown or when the last handle drops.
pub(crate) struct SystemThread {
    pub system: actix_rt::System,
    pub thread: JoinHandle<()>,
}

impl SystemThread {
    /// Stops the system and joins its thread (which joins the shards').
    pub(crate) fn stop(self) -> Result<(), ShutdownError> {
        self.system.stop();
        self.thread
            .join()
            .map_err(|_| ShutdownError::SystemPanicked)
    }
}

/// Starts the actix system on its own thread, with one Arbiter per shard.
pub(crate) fn start_system(
    shared: Arc<Shared>,
) -> Result<(Vec<Addr<Shard>>, SystemThread), StartError> {
    let (started, receive) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("eventfold-system".into())
        .spawn(move || {
            let runner = actix_rt::System::new();
            let result = runner.block_on(async move {
                let mut arbiters = Vec::with_capacity(shared.settings.shards);
                let mut shards = Vec::with_capacity(shared.settings.shards);
                for index in 0..shared.settings.shards {
                    let blocking = shared.settings.blocking_threads_per_shard_max;
                    let arbiter = actix_rt::Arbiter::try_with_tokio_rt(move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .max_blocking_threads(blocking)
                            .thread_name(format!("eventfold-shard-{index}"))
                            .build()
                    })
                    .map_err(|source| StartError::Thread {
                        name: format!("eventfold-shard-{index}"),
                        source,
                    })?;
                    let shard_shared = Arc::clone(&shared);
                    // The mailbox is created with its bound, here, before the
                    // handle can send: `start_in_arbiter` would create it with
                    // actix's default of 16 and set the bound only once the
                    // arbiter runs the shard, and commands sent in between
                    // were refused as `Overloaded`.
                    let (sender, receiver) =
                        actix::dev::channel::channel(shared.settings.shard_mailbox_commands_max);
                    let spawned = arbiter.handle().spawn_fn(move || {
                        Context::with_receiver(receiver).run(Shard::new(shard_shared, index));
                    });
                    if !spawned {
                        return Err(StartError::SystemStopped { shard: Some(index) });
                    }
                    shards.push(Addr::new(sender));
                    arbiters.push(arbiter);
                }
                let monitor = Monitor {
                    last: shared.store.writer_stats(),
                    shared: Arc::clone(&shared),
                };
                monitor.start();
                Ok::<_, StartError>((arbiters, shards, actix_rt::System::current()))
            });
            match result {
                Ok((arbiters, shards, system)) => {
                    let _ = started.send(Ok((shards, system)));
                    if let Err(error) = runner.run() {
                        tracing::error!(%error, "the actor system stopped with an error");
                    }
                    for arbiter in arbiters {
                        arbiter.stop();
                        if arbiter.join().is_err() {
                            tracing::error!("a shard thread panicked");
                        }
                    }
                }
                Err(error) => {
                    let _ = started.send(Err(error));
                }
            }
        })
        .map_err(|source| StartError::Thread {
            name: "eventfold-system".into(),
            source,
        })?;
    match receive.recv() {
        Ok(Ok((shards, system))) => Ok((shards, SystemThread { system, thread })),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(StartError::SystemStopped { shard: None }),
    }
}

/// Samples the writer's batch size once a second into a histogram, and
/// the shards' mailbox depths into gauges.
struct Monitor {
    pub shared: Arc<Shared>,
    pub last: eventfold_storage::WriterStats,
}

impl Actor for Monitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |monitor, _| {
            for (shard, queued) in monitor.shared.queued.iter().enumerate() {
                let depth = queued.load(Ordering::Relaxed).max(0);
                metrics::gauge!(MAILBOX_DEPTH, "shard" => shard.to_string()).set(depth as f64);
            }
            let now = monitor.shared.store.writer_stats();
            let batches = now.batches - monitor.last.batches;
            if batches > 0 {
                let events = now.events - monitor.last.events;
                metrics::histogram!(WRITE_BATCH_EVENTS).record(events as f64 / batches as f64);
            }
            monitor.last = now;
        });
    }
}
