//! Group commit for webhook deliveries.
//!
//! Each HTTP handler hands its delivery to a writer task and waits; the writer takes whatever
//! has queued up (up to `max_batch`), writes it in **one** transaction, commits (one fsync),
//! and only then answers every waiting handler. Under load many deliveries share one commit;
//! when idle a lone delivery is committed at once (no timer, no added latency).
//!
//! A reply is never sent before its delivery is committed, so a 202 always means "stored".

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Inserted, NewDelivery, Store, StoreError};

type Reply = oneshot::Sender<Result<Inserted, String>>;

#[derive(Clone)]
pub struct DeliveryWriter {
    tx: mpsc::Sender<(NewDelivery, Reply)>,
}

impl DeliveryWriter {
    /// Start `writers` writer tasks (1 for SQLite, which has one writer anyway; a few for
    /// PostgreSQL, whose commits can overlap).
    pub fn spawn(store: Arc<dyn Store>, max_batch: usize, writers: usize) -> Self {
        let (tx, rx) = mpsc::channel::<(NewDelivery, Reply)>(max_batch.max(1) * writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let rx = rx.clone();
            let store = store.clone();
            tokio::spawn(async move {
                let mut batch: Vec<(NewDelivery, Reply)> = Vec::with_capacity(max_batch);
                loop {
                    {
                        let mut rx = rx.lock().await;
                        if rx.recv_many(&mut batch, max_batch.max(1)).await == 0 {
                            return; // every sender is gone: the server is shutting down
                        }
                    }
                    write_batch(store.as_ref(), &mut batch).await;
                }
            });
        }
        Self { tx }
    }

    /// Store one delivery; returns once it is committed (or the commit failed).
    pub async fn write(&self, delivery: NewDelivery) -> Result<Inserted, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send((delivery, reply))
            .await
            .map_err(|_| StoreError::Unavailable("delivery writer stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("delivery writer stopped".into()))?
            .map_err(StoreError::Unavailable)
    }
}

async fn write_batch(store: &dyn Store, batch: &mut Vec<(NewDelivery, Reply)>) {
    let (deliveries, replies): (Vec<NewDelivery>, Vec<Reply>) = batch.drain(..).unzip();
    match store.insert_deliveries(&deliveries).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = deliveries.len(), "storing a batch of deliveries failed");
            let msg = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(msg.clone()));
            }
        }
    }
}
