//! The pop stage: one Valkey pipeline pops for every request waiting, each pop atomic on its
//! own (see [`crate::cache`]).

use std::sync::Arc;

use super::request::NewAllocation;
use crate::cache::{CacheError, InventoryCache, PopArgs, Popped};
use crate::coalescer::{BatchHandler, Coalescer};

/// One request's pop: its allocation, and its span (the pop span is its child).
pub struct PopAsk {
    /// The allocation the ids are for.
    pub allocation: Arc<NewAllocation>,
    /// The request's span.
    pub span: tracing::Span,
}

/// The coalesced pop stage.
pub type Popper = Coalescer<PopAsk, Result<Popped, CacheError>>;

/// Pops for a batch of requests in one round trip.
pub struct PopStage {
    cache: InventoryCache,
}

impl PopStage {
    /// A stage popping from `cache`.
    pub fn new(cache: InventoryCache) -> Self {
        Self { cache }
    }
}

impl BatchHandler<PopAsk, Result<Popped, CacheError>> for PopStage {
    async fn handle(&mut self, batch: Vec<PopAsk>) -> Vec<Result<Popped, CacheError>> {
        let spans: Vec<tracing::Span> = batch
            .iter()
            .map(|ask| {
                tracing::info_span!(parent: &ask.span, "inventory.pop", popped = tracing::field::Empty,
                    cold = tracing::field::Empty, batch = batch.len())
            })
            .collect();
        let asks: Vec<PopArgs<'_>> = batch.iter().map(|ask| ask.allocation.pop_args()).collect();
        let answers: Vec<Result<Popped, CacheError>> = match self.cache.pop_many(&asks).await {
            Ok(popped) => popped.into_iter().map(Ok).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        };
        for (answer, span) in answers.iter().zip(&spans) {
            span.record("cold", matches!(answer, Ok(Popped::Cold)));
            span.record("popped", if let Ok(Popped::Ids(ids)) = answer { ids.len() } else { 0 });
        }
        answers
    }
}
