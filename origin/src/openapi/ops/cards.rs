//! `/ops/v1/voids` and `/ops/v1/allocations`: voiding cards, looking allocations up with masked
//! codes, and revealing them (admin, audited, never cached).

use allot_shared::{ApiError, Denomination, ErrorCode};
use serde_json::{Value, json};
use utoipa::openapi::HttpMethod;

use super::{bad_body, bad_input, op, unknown_parameter};
use crate::http::ops::cards as handler;
use crate::openapi::build::{Op, formatted_string, header};
use crate::ops::allocations::{self, AllocationLookup, AllocationPage, AllocationView};
use crate::ops::operators::Role;
use crate::ops::voids::{MAX_CARD_IDS, MAX_VOID_CARDS, VoidOutcome, VoidSelector};

const SAMPLE_ALLOCATION: &str = "0192f0c1-7c7e-7000-8000-000000000001";
const SAMPLE_CLIENT: &str = "0192f0c1-7c7e-7000-8000-0000000000d4";

/// An allocation of two cards, the second voided; codes masked or in clear.
fn sample_allocation(clear: bool) -> Value {
    let (first, second) = if clear {
        (json!({ "code": "GQ7T-4XKP-9M2D", "pin": "4821" }), json!({ "code": "ZR3W-8HNB-6C1F" }))
    } else {
        let masked = |code: &str| json!({ "code": allocations::mask_code(code) });
        (masked("GQ7T-4XKP-9M2D"), masked("ZR3W-8HNB-6C1F"))
    };
    let mut cards = json!([
        { "card_id": 81234, "position": 0, "status": "allocated", "expires_at": "2027-12-31T23:59:59Z" },
        {
            "card_id": 81235, "position": 1, "status": "void",
            "voided_at": "2026-11-27T17:00:00Z", "void_reason": "supplier recall"
        }
    ]);
    for (card, secret) in cards.as_array_mut().expect("an array").iter_mut().zip([first, second]) {
        for (k, v) in secret.as_object().expect("an object") {
            card[k] = v.clone();
        }
    }
    json!({
        "id": SAMPLE_ALLOCATION, "client": { "id": SAMPLE_CLIENT, "name": "Shop" },
        "product_id": "amazon-us", "denomination": "25.00", "currency": "USD", "quantity": 2,
        "client_reference": "order-1042", "idempotency_key": "k-7f3a",
        "created_at": "2026-11-27T16:05:31.204Z", "cards": cards
    })
}

fn allocation_id_param(op: Op) -> Op {
    op.path_param("id", formatted_string("uuid", "The allocation's id."))
}

fn no_allocation() -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no allocation with id {SAMPLE_ALLOCATION}"))
}

fn refused<T>(result: Result<T, ApiError>) -> ApiError {
    match result {
        Err(e) => e,
        Ok(_) => unreachable!("the sample input is refused by construction"),
    }
}

/// The `404` of unknown card ids, as the void answers it: the ids named, nothing voided.
fn unknown_cards() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no card with id 9001, 9002; nothing was voided")
        .with_details(json!({ "unknown_card_ids": [9001, 9002], "unknown": 2 }))
}

fn void_cards() -> Op {
    let description = format!(
        "Exactly one selector: `card_ids` (1-{MAX_CARD_IDS}, voided whatever their status), `import_id`, or \
         `product_id` with `denomination` (active cards, and allocated ones with `include_allocated`). At most \
         {MAX_VOID_CARDS} cards per void. One transaction locks the cards in id order, marks them `void` with \
         `voided_at` and the reason, writes one `card.voided` event per card and the audit row `card.void`; then \
         the ids leave the cache at once. A void is final; an allocated card keeps its allocation, whose \
         `GET /v1/allocations/{{id}}` then shows the card's `voided_at`."
    );
    let op = op(HttpMethod::Post, "/ops/v1/voids", Role::Operator, "opsVoidCards", "Void cards", &description)
        .json_body::<handler::VoidBody>(
            "What to void, and why.",
            json!({ "product_id": "amazon-us", "denomination": "25.00", "reason": "supplier recall" }),
        )
        .json_response::<VoidOutcome>(
            200,
            "Done (also when every card was void already).",
            json!({
                "matched": 3, "voided": 3, "voided_allocated": 1, "already_void": 0, "skipped_allocated": 0, "credited": 1,
                "card_ids": [101, 102, 107]
            }),
            &[],
        );
    let selector = |ids, import, product: Option<&str>, denomination| {
        refused(VoidSelector::from_fields(ids, import, product.map(str::to_owned), denomination))
    };
    let malformed = Denomination::parse("abc").expect_err("abc is not a denomination");
    let too_precise = Denomination::parse("25.001").and_then(|d| d.to_minor(2)).expect_err("USD has 2 places");
    let op = bad_input(
        op,
        &[
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<handler::VoidBody>(r#"{"card_ids":[1],"colour":"blue"}"#),
            selector(None, None, None, None),
            selector(Some(vec![]), None, None, None),
            selector(None, None, Some("amazon-us"), None),
            selector(None, None, None, Some("25.00")),
            selector(None, None, Some("amazon-us"), Some("abc")),
            ApiError::validation("reason", "is required (1-500 characters)"),
            ApiError::validation("reason", "must be 1-500 characters"),
            ApiError::validation(
                "include_allocated",
                "applies to import_id and product_id selectors; card ids are voided whatever their status",
            ),
            ApiError::validation("denomination", malformed.to_string()),
            ApiError::validation("denomination", too_precise.to_string()),
            ApiError::validation("product_id", "no product \"amazon-us\""),
            ApiError::validation("denomination", "product \"amazon-us\" is not offered in 30.00"),
            ApiError::validation("body", format!("selects 150000 cards to void; at most {MAX_VOID_CARDS} per request")),
        ],
    );
    op.error(
        "Unknown card ids (named; the first 100 in `details.unknown_card_ids`; nothing was voided), or import.",
        &[
            unknown_cards(),
            ApiError::new(ErrorCode::NotFound, "no import with id 0192f0c1-7c7e-7000-8000-0000000000c3"),
        ],
    )
    .error(
        "The body is over 1 MiB.",
        &[ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 1048576 bytes")],
    )
    .error(
        "Some cards stayed locked by allocations in progress past the lock timeout, or the origin cannot serve; \
         nothing was voided. Retry after `Retry-After`.",
        &[
            ApiError::new(
                ErrorCode::OriginUnavailable,
                "some cards stayed locked by allocations in progress; nothing was voided, retry",
            ),
            ApiError::new(ErrorCode::OriginUnavailable, "the database is unavailable; retry shortly"),
        ],
    )
}

fn find_allocations() -> Op {
    let description = "Exactly one of `id`, `client_id` (newest first), `client_reference` (newest first) and \
                       `card_id` (the allocation holding the card, if any). Codes are masked; PINs are never shown. \
                       `cursor` and `limit` page the `client_id` and `client_reference` lookups.";
    let op =
        op(HttpMethod::Get, "/ops/v1/allocations", Role::Viewer, "opsFindAllocations", "Find allocations", description)
            .query::<handler::AllocationQuery>()
            .listing_response::<AllocationView>(
                "A page of allocations.",
                json!({ "items": [sample_allocation(false)], "next_cursor": null }),
            );
    let lookup = |reference: Option<&str>| {
        refused(AllocationLookup::from_fields(None, None, reference.map(str::to_owned), None))
    };
    let page = |cursor, limit| match AllocationPage::parse(cursor, limit) {
        Err(e) => e.to_api_error(),
        Ok(_) => unreachable!("the sample page is refused by construction"),
    };
    bad_input(
        op,
        &[
            lookup(None),
            lookup(Some("")),
            ApiError::validation("id", "must be a UUID"),
            ApiError::validation("client_id", "must be a UUID"),
            page(None, Some(0)),
            page(Some("nope"), None),
            unknown_parameter::<handler::AllocationQuery>(),
        ],
    )
}

fn show_allocation() -> Op {
    let description = "Codes masked; PINs never shown.";
    let op = op(
        HttpMethod::Get,
        "/ops/v1/allocations/{id}",
        Role::Viewer,
        "opsShowAllocation",
        "One allocation",
        description,
    );
    let op =
        allocation_id_param(op).json_response::<AllocationView>(200, "The allocation.", sample_allocation(false), &[]);
    bad_input(op, &[ApiError::validation("id", "must be a UUID")])
        .error("No allocation has this id.", &[no_allocation()])
}

fn reveal_allocation() -> Op {
    let description = "No body. The allocation with its codes and PINs in clear. The audit row `allocation.reveal` \
                       (the client and the card ids) is committed before any code is decrypted, so every reveal \
                       that answered codes is on record; an unknown id writes none. Never cached.";
    let op = op(
        HttpMethod::Post,
        "/ops/v1/allocations/{id}/reveal",
        Role::Admin,
        "opsRevealAllocation",
        "Reveal an allocation's codes",
        description,
    );
    let no_store = header("`no-store`: the codes must not be kept by any cache.");
    let op = allocation_id_param(op).json_response::<AllocationView>(
        200,
        "The allocation, codes and PINs in clear.",
        sample_allocation(true),
        &[("cache-control", no_store)],
    );
    bad_input(op, &[ApiError::validation("id", "must be a UUID")])
        .error("No allocation has this id.", &[no_allocation()])
}

/// The voids and allocation lookup operations, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    vec![void_cards(), find_allocations(), show_allocation(), reveal_allocation()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_show_pins_only_in_clear() {
        for clear in [false, true] {
            let view = sample_allocation(clear);
            let cards = view["cards"].as_array().unwrap();
            assert_eq!(cards.len() as u64, view["quantity"].as_u64().unwrap());
            assert_eq!(cards[0].get("pin").is_some(), clear, "PINs only in clear");
        }
        assert_eq!(sample_allocation(false)["cards"][0]["code"], "••••••9M2D");
    }
}
