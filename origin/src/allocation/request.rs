//! A request checked against the catalogue and turned into the allocation it would make.

use allot_shared::{AllocationRequest, ApiError, Currency, ErrorCode};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Caller;
use super::render::AllocationHead;
use crate::cache::PopArgs;
use crate::error::AppError;
use crate::products::ProductDirectory;

/// The allocation a valid request would make: everything the writes and the renderer need.
#[derive(Debug, Clone)]
pub struct NewAllocation {
    /// Its id, chosen before any write.
    pub id: Uuid,
    /// The caller's client.
    pub client_id: Uuid,
    /// The Idempotency-Key.
    pub key: String,
    /// The request's fingerprint (same meaning, same fingerprint).
    pub fingerprint: [u8; 32],
    /// Product.
    pub product_id: String,
    /// The product's currency.
    pub currency: Currency,
    /// Denomination in minor units.
    pub denomination_minor: i64,
    /// Cards asked for.
    pub quantity: u32,
    /// The caller's reference.
    pub client_reference: Option<String>,
    /// W3C trace context for the outbox event, so the relay's span joins the trace.
    pub trace_context: Option<String>,
}

/// Check `req` against the catalogue: an active product offered in the denomination.
pub async fn prepare(
    products: &ProductDirectory,
    caller: &Caller,
    key: String,
    req: &AllocationRequest,
    trace_context: Option<String>,
) -> Result<NewAllocation, AppError> {
    let product = match products.get(&req.product_id).await? {
        Some(p) if p.active => p,
        _ => return Err(ApiError::validation("product_id", "no such product").into()),
    };
    let denomination_minor = req
        .denomination
        .to_minor(product.currency.exponent())
        .map_err(|e| ApiError::validation("denomination", e.to_string()))?;
    // Only a denomination the snapshot does not list needs a second look (an early reload).
    let offered = product.denominations.contains(&denomination_minor)
        || matches!(products.get_offering(&product.id, Some(denomination_minor)).await?,
                    Some(p) if p.active && p.denominations.contains(&denomination_minor));
    if !offered {
        let shown = product.currency.format_minor(denomination_minor);
        return Err(ApiError::validation("denomination", format!("{shown} is not offered for this product")).into());
    }
    Ok(NewAllocation {
        id: Uuid::now_v7(),
        client_id: caller.client_id,
        key,
        fingerprint: req.fingerprint(),
        product_id: product.id,
        currency: product.currency,
        denomination_minor,
        quantity: req.quantity,
        client_reference: req.client_reference.clone(),
        trace_context: crate::telemetry::current_traceparent().or(trace_context),
    })
}

impl NewAllocation {
    /// The head of the response, once committed at `created_at`.
    pub fn head(&self, created_at: OffsetDateTime) -> AllocationHead {
        AllocationHead {
            id: self.id,
            product_id: self.product_id.clone(),
            currency: self.currency,
            denomination_minor: self.denomination_minor,
            quantity: self.quantity,
            client_reference: self.client_reference.clone(),
            created_at,
        }
    }

    /// What to pop for it: exactly its quantity, marking its key as holding ids.
    pub fn pop_args(&self) -> PopArgs<'_> {
        PopArgs {
            product_id: &self.product_id,
            denomination_minor: self.denomination_minor,
            quantity: self.quantity as usize,
            key: Some((self.client_id, &self.key)),
        }
    }

    /// The outbox event: ids only, never codes.
    pub fn event(&self, card_ids: &[i64]) -> serde_json::Value {
        serde_json::json!({
            "allocation_id": self.id,
            "client_id": self.client_id,
            "product_id": self.product_id,
            "denomination": self.currency.format_minor(self.denomination_minor),
            "currency": self.currency,
            "quantity": self.quantity,
            "card_ids": card_ids,
        })
    }

    /// `402 INSUFFICIENT_FUNDS`: the client's funds fall short of the price; nothing was
    /// allocated.
    pub fn insufficient_funds(&self, shortfall: crate::funding::Shortfall) -> AppError {
        allot_shared::funding::insufficient_funds(self.currency, shortfall.available_minor, shortfall.required_minor)
            .into()
    }

    /// `409 OUT_OF_STOCK`: only `available` cards could be had; nothing was allocated.
    pub fn out_of_stock(&self, available: u64) -> AppError {
        let wanted = self.quantity;
        ApiError::new(
            ErrorCode::OutOfStock,
            format!("only {available} of the {wanted} cards asked for are available; nothing was allocated"),
        )
        .with_details(serde_json::json!({
            "product_id": self.product_id,
            "denomination": self.currency.format_minor(self.denomination_minor),
            "requested": wanted,
            "available": available,
        }))
        .into()
    }
}
