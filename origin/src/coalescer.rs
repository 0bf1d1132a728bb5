//! A coalescer: many callers submit one input each and await one output each; one worker
//! takes whatever is queued when it becomes free (up to a maximum) and handles it as one
//! batch. Batches therefore form only under load: a lone caller is handled at once, alone.
//!
//! It knows nothing of what it batches. Two coalescers in a row make a pipeline whose stages
//! overlap: while the second handles batch k, the first handles batch k + 1.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// What handles a batch: one output per input, in the same order.
pub trait BatchHandler<In, Out>: Send + 'static {
    /// Handle `batch`; the answer has exactly `batch.len()` outputs, in order.
    fn handle(&mut self, batch: Vec<In>) -> impl Future<Output = Vec<Out>> + Send;
}

/// The worker stopped (shut down or panicked) before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch worker has stopped")]
pub struct Stopped;

type Entry<In, Out> = (In, oneshot::Sender<Out>);

/// The submitting side of a running coalescer; cheap to clone.
pub struct Coalescer<In, Out> {
    tx: mpsc::UnboundedSender<Entry<In, Out>>,
}

impl<In, Out> Clone for Coalescer<In, Out> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Coalescer<In, Out> {
    /// Start the worker. It stops when `stop` completes while it waits for work (the handler
    /// is dropped then, releasing whatever it holds) or when every `Coalescer` is dropped.
    pub fn start<H>(max_batch: usize, stop: impl Future<Output = ()> + Send + 'static, mut handler: H) -> Self
    where
        H: BatchHandler<In, Out>,
    {
        assert!(max_batch > 0, "a batch holds at least one input");
        let (tx, mut rx) = mpsc::unbounded_channel::<Entry<In, Out>>();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let entries = tokio::select! {
                    entries = next_batch(&mut rx, max_batch) => entries,
                    () = &mut stop => None,
                };
                let Some(entries) = entries else { return };
                let (inputs, replies): (Vec<In>, Vec<oneshot::Sender<Out>>) = entries.into_iter().unzip();
                let outputs = handler.handle(inputs).await;
                assert_eq!(outputs.len(), replies.len(), "a batch handler answers every input");
                for (out, reply) in outputs.into_iter().zip(replies) {
                    // The caller may have gone away; its output is simply dropped.
                    let _ = reply.send(out);
                }
            }
        });
        Self { tx }
    }

    /// Submit one input and wait for its output.
    pub async fn submit(&self, input: In) -> Result<Out, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((input, reply)).map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

/// The first queued entry (waiting for one), then whatever else is queued, up to `max`.
async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(entry) => batch.push(entry),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Doubler {
        batches: Arc<AtomicUsize>,
        largest: Arc<AtomicUsize>,
    }

    impl BatchHandler<u32, u32> for Doubler {
        async fn handle(&mut self, batch: Vec<u32>) -> Vec<u32> {
            self.batches.fetch_add(1, Ordering::SeqCst);
            self.largest.fetch_max(batch.len(), Ordering::SeqCst);
            // Give the queue time to fill while this batch is "written".
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            batch.into_iter().map(|x| x * 2).collect()
        }
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_batches_form_under_load() {
        let (batches, largest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let handler = Doubler { batches: batches.clone(), largest: largest.clone() };
        let c = Coalescer::start(8, std::future::pending(), handler);
        let answers = futures::future::join_all((0..40u32).map(|i| c.submit(i))).await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..40u32).map(|i| i * 2).collect::<Vec<_>>());
        assert!(largest.load(Ordering::SeqCst) > 1, "concurrent inputs shared a batch");
        assert!(largest.load(Ordering::SeqCst) <= 8, "no batch over the maximum");
        assert!(batches.load(Ordering::SeqCst) >= 5, "40 inputs in batches of at most 8");
        // A lone caller is answered alone.
        assert_eq!(c.submit(21).await, Ok(42));
    }

    #[tokio::test]
    async fn a_stopped_worker_answers_stopped() {
        let handler = Doubler { batches: Arc::default(), largest: Arc::default() };
        let c = Coalescer::start(8, std::future::ready(()), handler);
        // The worker sees `stop` complete and exits; the queue is closed with it.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(c.submit(1).await, Err(Stopped));
    }
}
