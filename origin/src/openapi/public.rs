//! The public API as callers reach it through the edge: allocations, the catalogue, this document
//! and readiness ([`caller_operations`], the document served at `GET /v1/openapi.json`), and the
//! origin's own liveness probe. Examples are built from the real wire types and, where one exists,
//! the real error constructor, so their shape and wording are the code's.

use std::collections::BTreeMap;

use allot_shared::catalogue::{Catalogue, CatalogueEntry, DenominationStock};
use allot_shared::health::{Health, HealthCheck, HealthStatus};
use allot_shared::limits::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUANTITY};
use allot_shared::{
    AllocatedCard, AllocationRequest, AllocationResponse, ApiError, Currency, ErrorCode, Limits, headers,
    request_headers,
};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, HttpMethod, ResponseBuilder};
use uuid::Uuid;

use super::build::{Op, formatted_string, header, idempotency_key_schema, link, request_id_header, schema_ref, string};
use super::gate::{declared_body_too_large, gate_errors, rate_limit_headers, real};
use super::{API_KEY_SCHEME, TAG_ALLOCATIONS, TAG_CATALOGUE, TAG_DOCUMENT, TAG_HEALTH};
use crate::allocation::listing::{Listing, ListingQuery};
use crate::http::allocations::ListQuery;
use crate::http::ops::serde_urlencoded_query;
use crate::ops::page::FOREIGN_CURSOR;

/// The body of `POST /v1/allocations`, as documented; the edge and the origin both parse it with
/// `AllocationRequest::parse`, which refuses unknown fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AllocationRequest)]
pub struct AllocationRequestBody {
    /// The product to allocate from (see `GET /v1/products`).
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", example = "gift-usd")]
    pub product_id: String,
    /// The face value as an exact decimal string: no sign, exponent or leading zeros, at most
    /// 4 decimal places. `"25"` and `"25.00"` ask for the same thing.
    #[schema(pattern = "^(0|[1-9][0-9]{0,9})(\\.[0-9]{1,4})?$", example = "25.00")]
    pub denomination: String,
    /// How many cards, all or nothing (the maximum is configurable; 20 by default). Written as a
    /// JSON integer, `2`: `2.0` and `2e0` are refused, though JSON Schema counts them as integers.
    #[schema(minimum = 1, maximum = 20, example = 2)]
    pub quantity: u32,
    /// Your own reference, stored and echoed: 1-128 characters, no control characters.
    #[schema(min_length = 1, max_length = 128, example = "order-1042")]
    pub client_reference: Option<String>,
}

/// A sample listing cursor (opaque to callers).
const SAMPLE_CURSOR: &str =
    "bDE6OGY0OWUxYzJhMGI3ZDNlNToxNzk1Nzk1NTMxMjA0MDAwMDAwOjAxOTJmMGMxLTdjN2UtNzAwMC04MDAwLTAwMDAwMDAwMDAwMQ";

/// The sample allocation id in examples.
const SAMPLE_ALLOCATION_ID: &str = "0192f0c1-7c7e-7000-8000-000000000001";

fn sample_request() -> Value {
    json!({ "product_id": "gift-usd", "denomination": "25.00", "quantity": 2, "client_reference": "order-1042" })
}

fn sample_allocation() -> Value {
    let card = |id: i64, code: &str| AllocatedCard {
        card_id: id,
        code: code.into(),
        pin: None,
        expires_at: None,
        voided_at: None,
    };
    let response = AllocationResponse {
        allocation_id: SAMPLE_ALLOCATION_ID.into(),
        product_id: "gift-usd".into(),
        denomination: "25.00".into(),
        currency: Currency::parse("USD").expect("a known currency"),
        quantity: 2,
        client_reference: Some("order-1042".into()),
        cards: vec![card(81_234, "GQ7T-4XKP-9M2D"), card(81_235, "ZR3W-8HNB-6C1F")],
        created_at: "2026-11-27T16:05:31.204Z".into(),
    };
    serde_json::to_value(response).expect("a response serialises")
}

/// The sample allocation after an operator voided its second card.
fn sample_allocation_with_a_void() -> Value {
    let mut allocation = sample_allocation();
    allocation["cards"][1]["voided_at"] = json!("2026-11-27T17:00:00Z");
    allocation
}

fn sample_catalogue() -> Value {
    let catalogue = Catalogue {
        products: vec![CatalogueEntry {
            product_id: "gift-usd".into(),
            name: "Demo gift card (USD)".into(),
            currency: Currency::parse("USD").expect("a known currency"),
            denominations: vec![
                DenominationStock { denomination: "25.00".into(), available: 1_840 },
                DenominationStock { denomination: "50.00".into(), available: 0 },
            ],
        }],
    };
    serde_json::to_value(catalogue).expect("a catalogue serialises")
}

fn sample_health(status: HealthStatus) -> Value {
    let check = |status, output: Option<&str>| HealthCheck {
        component_id: None,
        component_type: Some("datastore".into()),
        observed_value: Some(json!(0.84)),
        observed_unit: Some("ms".into()),
        status,
        time: Some("2026-11-27T16:05:31Z".into()),
        output: output.map(str::to_owned),
    };
    let mut checks = BTreeMap::new();
    let postgres = match status {
        HealthStatus::Fail => check(HealthStatus::Fail, Some("no answer within 1s")),
        _ => check(HealthStatus::Pass, None),
    };
    checks.insert("postgres:primary".to_owned(), vec![postgres]);
    checks.insert("valkey".to_owned(), vec![check(HealthStatus::Pass, None)]);
    let mut health = Health::from_checks(checks);
    health.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    serde_json::to_value(health).expect("a health document serialises")
}

/// `Location` on a `201`.
fn location_header() -> utoipa::openapi::Header {
    header(
        "Where the allocation is read back: `/v1/allocations/{allocation_id}`, relative to the API's root. \
         Sent on a replay too.",
    )
}

fn create_allocation() -> Op {
    let idempotency_key = idempotency_key_schema(
        "Your key for this request: 1-255 visible ASCII characters, sent once. Retrying with the same key \
         and body replays the first answer; with another body it is 422 IDEMPOTENCY_MISMATCH.",
        "order-1042-attempt",
    );
    let replayed = header("`true` when this is the stored answer to an earlier request with the same key.");
    let invalid_body = real(AllocationRequest::parse(
        br#"{"product_id":"gift-usd","denomination":"25.00","quantity":0}"#,
        &Limits::default(),
    ));
    let no_key = real(request_headers::idempotency_key(None));
    let in_progress = ApiError::new(
        ErrorCode::IdempotencyInProgress,
        "a request with this Idempotency-Key is still being processed; retry shortly",
    );
    let out_of_stock =
        ApiError::new(ErrorCode::OutOfStock, "only 1 of the 2 cards asked for are available; nothing was allocated")
            .with_details(json!({ "product_id": "gift-usd", "denomination": "25.00", "requested": 2, "available": 1 }));
    let mismatch =
        ApiError::new(ErrorCode::IdempotencyMismatch, "this Idempotency-Key was used with a different request body");
    let too_large =
        ApiError::new(ErrorCode::PayloadTooLarge, format!("the body must be at most {DEFAULT_MAX_BODY_BYTES} bytes"));
    let timeout = ApiError::new(ErrorCode::RequestTimeout, "the request body did not arrive in time");
    let mut op = Op::new(HttpMethod::Post, "/v1/allocations", "createAllocation", "Allocate cards")
        .description(&format!(
            "Allocates `quantity` distinct cards of one product and denomination, all or nothing. \
             Idempotent by `Idempotency-Key`: a retry with the same key and body gets the same `201` \
             (with `Idempotent-Replayed: true`). At most {DEFAULT_MAX_QUANTITY} cards by default. With a \
             funding account in the product's currency, the price is debited from it in the same \
             transaction (a replay is not debited again), or the answer is `402 INSUFFICIENT_FUNDS`."
        ))
        .tag(TAG_ALLOCATIONS)
        .security(API_KEY_SCHEME)
        .header_param("Idempotency-Key", true, idempotency_key)
        .header_param(
            "traceparent",
            false,
            string("W3C trace context; the allocation's spans and events continue this trace."),
        )
        .json_body::<AllocationRequestBody>("What to allocate.", sample_request());
    let mut created_headers = vec![(headers::IDEMPOTENT_REPLAYED, replayed), ("location", location_header())];
    created_headers.extend(rate_limit_headers());
    let read_back = link(
        "getAllocation",
        &[("id", "$response.body#/allocation_id")],
        "Read the allocation back (the `Location` of the `201`).",
    );
    let list_product = link(
        "listAllocations",
        &[("product_id", "$response.body#/product_id")],
        "Your allocations of this product, newest first: this one leads.",
    );
    op = op
        .json_response_linked::<AllocationResponse>(
            201,
            "Allocated (or the replay of an earlier allocation with the same key).",
            sample_allocation(),
            &created_headers,
            vec![("GetAllocation", read_back), ("ListAllocationsOfProduct", list_product)],
        )
        .error(
            "The body or the `Idempotency-Key` is missing or invalid; `details.field` names what.",
            &[invalid_body, no_key],
        )
        .error("The body did not arrive in time.", &[timeout])
        .error(
            "A request with this key is still running (retry after `Retry-After`), or too few cards are \
             available (nothing was allocated).",
            &[in_progress, out_of_stock],
        )
        .error("The body is too large.", &[too_large])
        .error("The key was used before with a different body.", &[mismatch])
        .error(
            "You have a funding account in the product's currency and its balance plus credit limit does not \
             cover the price; nothing was allocated. `details.available` and `details.required` are decimal \
             strings in `details.currency` (see `GET /v1/balance`).",
            &[super::funding::insufficient_funds_example()],
        );
    gate_errors(op)
}

fn get_allocation() -> Op {
    let not_found = ApiError::new(ErrorCode::NotFound, "no such allocation");
    let op = Op::new(HttpMethod::Get, "/v1/allocations/{id}", "getAllocation", "One allocation")
        .description(
            "The allocation as it was created, to its owner only: anyone else's is `404`, not `403`. A card an \
             operator voided since carries `voided_at`; the other cards have no such field.",
        )
        .tag(TAG_ALLOCATIONS)
        .security(API_KEY_SCHEME)
        .path_param("id", formatted_string("uuid", "The `allocation_id` of a `201`."))
        .json_response::<AllocationResponse>(
            200,
            "The allocation.",
            sample_allocation_with_a_void(),
            &rate_limit_headers(),
        )
        .error("No allocation of yours has this id.", &[not_found]);
    gate_errors(declared_body_too_large(op))
}

/// A listing error as the handler makes it, from a query string.
fn listing_error(client_id: Uuid, query: &str) -> ApiError {
    let checked = serde_urlencoded_query::<ListQuery>(query)
        .and_then(|q| Listing::parse(client_id, &ListingQuery::from(q)).map(|_| ()));
    match checked {
        Err(e) => e.to_api_error(),
        Ok(()) => unreachable!("the sample query {query} is invalid by construction"),
    }
}

fn list_allocations() -> Op {
    let client = Uuid::nil();
    let invalid = [
        listing_error(client, "colour=blue"),
        listing_error(client, "limit=0"),
        listing_error(client, "created_after=yesterday"),
        listing_error(client, "cursor=nope"),
        ApiError::validation("cursor", FOREIGN_CURSOR),
    ];
    let example = json!({ "items": [sample_allocation()], "next_cursor": SAMPLE_CURSOR });
    let op = Op::new(HttpMethod::Get, "/v1/allocations", "listAllocations", "Your allocations")
        .description(
            "Your allocations, newest first (by `created_at`, then `allocation_id`), a page at a time; each \
             item is the document `GET /v1/allocations/{id}` answers, codes included. Follow `next_cursor` \
             with the same filters until it is null; a cursor used with other filters, or by another \
             client, is `400`. Unknown query parameters are `400` too. When a read replica is configured, \
             an allocation made a moment ago may take that moment to be listed.",
        )
        .tag(TAG_ALLOCATIONS)
        .security(API_KEY_SCHEME)
        .query::<ListQuery>()
        .listing_response_with::<AllocationResponse>("A page of your allocations.", example, &rate_limit_headers())
        .error("A query parameter is unknown or invalid; `details.field` names it.", &invalid);
    gate_errors(declared_body_too_large(op))
}

fn list_products() -> Op {
    let etag = header("The catalogue's version; send it as `If-None-Match` to get `304` while unchanged.");
    let cache_control = header("`max-age=5`: the catalogue may be reused for 5 seconds.");
    let not_modified = ResponseBuilder::new()
        .description("Unchanged since the `ETag` sent.")
        .header("etag", etag.clone())
        .header("cache-control", cache_control.clone())
        .header("x-request-id", request_id_header());
    let mut headers = vec![("etag", etag), ("cache-control", cache_control)];
    headers.extend(rate_limit_headers());
    let op = Op::new(HttpMethod::Get, "/v1/products", "listProducts", "The catalogue")
        .description("Every product with its denominations and how many cards of each can be allocated now.")
        .tag(TAG_CATALOGUE)
        .security(API_KEY_SCHEME)
        .header_param("If-None-Match", false, string("An `ETag` from an earlier answer (or `*`)."))
        .json_response::<Catalogue>(200, "The catalogue.", sample_catalogue(), &headers)
        .response(304, not_modified);
    gate_errors(declared_body_too_large(op))
}

/// How long callers and the edge may reuse the document, in seconds.
pub const DOCUMENT_MAX_AGE_SECS: u32 = 300;

fn get_document() -> Op {
    let etag = header("The document's version; send it as `If-None-Match` to get `304` while unchanged.");
    let cache_control = header("`max-age=300`: the document may be reused for 5 minutes.");
    let not_modified = ResponseBuilder::new()
        .description("Unchanged since the `ETag` sent.")
        .header("etag", etag.clone())
        .header("cache-control", cache_control.clone())
        .header("x-request-id", request_id_header());
    let schema = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("openapi", ObjectBuilder::new().schema_type(Type::String))
        .required("openapi")
        .property("info", ObjectBuilder::new().schema_type(Type::Object))
        .required("info")
        .property("paths", ObjectBuilder::new().schema_type(Type::Object))
        .required("paths")
        .description(Some("An OpenAPI 3.1 document."));
    let example = json!({
        "openapi": "3.1.0",
        "info": { "title": "allot", "version": env!("CARGO_PKG_VERSION") },
        "paths": { "/v1/allocations": {} }
    });
    let op = Op::new(HttpMethod::Get, "/v1/openapi.json", "getOpenApiDocument", "This document")
        .description(
            "The callers' OpenAPI 3.1 document: every operation an API key reaches through the edge, with its \
             errors, headers and examples, and `GET /readyz`. No credentials needed. The edge keeps it for \
             5 minutes, so a location asks its origin at most once per 5 minutes.",
        )
        .tag(TAG_DOCUMENT)
        .open()
        .header_param("If-None-Match", false, string("An `ETag` from an earlier answer (or `*`)."))
        .json_response_inline(
            200,
            "The document.",
            schema.into(),
            example,
            &[("etag", etag), ("cache-control", cache_control)],
        )
        .response(304, not_modified);
    op.shared_response(500, super::RESPONSE_INTERNAL).shared_response(503, super::RESPONSE_UNAVAILABLE)
}

fn health_response(description: &str, status: HealthStatus, op: &mut Op) -> ResponseBuilder {
    let content = ContentBuilder::new()
        .schema(Some(schema_ref::<Health>(&mut op.schemas)))
        .example(Some(sample_health(status)))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content(headers::HEALTH_CONTENT_TYPE, content)
        .header("cache-control", header("`no-store`."))
        .header("x-request-id", request_id_header())
}

fn livez() -> Op {
    let mut op = Op::new(HttpMethod::Get, "/livez", "livez", "The process is up")
        .description(
            "Always `pass` while the process serves; no dependency is checked. Served by each origin for its \
             load balancer, not through the edge (so not in the callers' document at `/v1/openapi.json`).",
        )
        .tag(TAG_HEALTH)
        .open();
    let ok = health_response("Up.", HealthStatus::Pass, &mut op);
    op.response(200, ok)
}

fn readyz() -> Op {
    let mut op = Op::new(HttpMethod::Get, "/readyz", "readyz", "Ready to serve")
        .description(
            "`pass` when Postgres answers; Valkey down is `warn` (still `200`: allocations fall back to \
             Postgres); Postgres down is `fail` with `503`. Through the edge: the home region's origin's \
             readiness, kept a few seconds, with an `origin:<region>` check timing the edge's round trip.",
        )
        .tag(TAG_HEALTH)
        .open();
    let ok = health_response("Ready (`pass` or `warn`).", HealthStatus::Pass, &mut op);
    let failing = health_response("Not ready: Postgres does not answer.", HealthStatus::Fail, &mut op);
    op.response(200, ok).response(503, failing)
}

/// The operations callers reach through the edge: the callers' document.
pub fn caller_operations() -> Vec<Op> {
    let mut ops = vec![create_allocation(), list_allocations(), get_allocation(), list_products()];
    ops.extend(super::funding::operations());
    ops.extend([get_document(), readyz()]);
    ops
}

/// Every public operation: the callers' and the origin's liveness probe.
pub fn operations() -> Vec<Op> {
    let mut ops = caller_operations();
    ops.push(livez());
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_example_is_a_valid_request() {
        let text = sample_request().to_string();
        assert!(AllocationRequest::parse(text.as_bytes(), &Limits::default()).is_ok());
        let body: AllocationRequestBody = serde_json::from_str(&text).unwrap();
        assert_eq!(body.quantity, 2);
        assert_eq!(DEFAULT_MAX_QUANTITY, 20, "the schema's maximum says 20");
    }

    #[test]
    fn the_examples_are_the_wire_types() {
        serde_json::from_value::<AllocationResponse>(sample_allocation()).unwrap();
        let voided: AllocationResponse = serde_json::from_value(sample_allocation_with_a_void()).unwrap();
        assert!(voided.cards[1].voided_at.is_some() && voided.cards[0].voided_at.is_none());
        serde_json::from_value::<Catalogue>(sample_catalogue()).unwrap();
        let failing: Health = serde_json::from_value(sample_health(HealthStatus::Fail)).unwrap();
        assert_eq!(failing.status, HealthStatus::Fail);
    }
}
