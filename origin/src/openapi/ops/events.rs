//! `/ops/v1/events`: events read back from Postgres in the relay's order, for consumers that
//! missed part of the stream.

use std::time::Duration;

use serde_json::json;
use utoipa::openapi::HttpMethod;

use super::{bad_input, op, unknown_parameter};
use crate::http::ops::events as handler;
use crate::openapi::build::Op;
use crate::ops::events::{self as service, EventsPage};
use crate::ops::operators::Role;

fn list_events() -> Op {
    let description = "Committed events in the relay's order (commit order; each event's `seq`, its stream entry \
        id being `<seq>-0`), after the event whose id is `after`: pass the id of the last event you processed \
        (from this API, or `outbox_id` from the stream) and then each page's `next_after`; a page shorter than \
        `limit` means caught up, for now. Only events the relay has placed are listed (it places them within \
        about 100 ms of their commit, also while the events Valkey is down), so paging never skips one. \
        `published_at` is null until the event is in the stream. Published events are kept \
        `ALLOT_EVENTS_RETENTION_DAYS` (default 7) days, then pruned from the start of the order; an `after` \
        no longer kept is refused, naming the oldest kept. Payloads carry ids and counts, never a card code.";
    let example = json!({
        "items": [
            {
                "id": 90412, "seq": 88120, "topic": "allocation.created",
                "aggregate_id": "0192f0c1-7c7e-7000-8000-000000000001",
                "payload": {
                    "allocation_id": "0192f0c1-7c7e-7000-8000-000000000001",
                    "client_id": "0192f0c1-7c7e-7000-8000-0000000000d4", "product_id": "amazon-us",
                    "denomination": "25.00", "currency": "USD", "quantity": 2, "card_ids": [81234, 81235]
                },
                "created_at": "2026-11-27T16:05:31.204Z", "published_at": "2026-11-27T16:05:31.262Z"
            },
            {
                "id": 90415, "seq": 88121, "topic": "stock.low", "aggregate_id": "amazon-us/2500",
                "payload": {
                    "product_id": "amazon-us", "denomination_minor": 2500, "currency": "USD", "active": 99,
                    "threshold": 100, "previous": "ok", "state": "low", "at": "2026-11-27T16:05:45.010Z"
                },
                "created_at": "2026-11-27T16:05:45.010Z", "published_at": null
            }
        ],
        "next_after": 90415,
        "has_more": false
    });
    let op = op(HttpMethod::Get, "/ops/v1/events", Role::Viewer, "opsListEvents", "Events, to catch up", description)
        .query::<handler::EventsQuery>()
        .json_response::<EventsPage>(200, "A page of events, in order.", example, &[]);
    let week = Duration::from_secs(7 * 86_400);
    bad_input(
        op,
        &[
            service::not_kept(1042, Some(88007), week),
            service::not_placed(90416),
            service::bad_after(),
            service::bad_limit(),
            unknown_parameter::<handler::EventsQuery>(),
        ],
    )
}

/// The events operations, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    vec![list_events()]
}
