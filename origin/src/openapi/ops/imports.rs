//! `/ops/v1/imports`: upload a CSV file of cards into one bucket (streamed, all or nothing), and
//! read imports and their progress.

use allot_shared::{ApiError, Denomination, ErrorCode};
use serde_json::{Value, json};
use time::macros::datetime;
use utoipa::openapi::HttpMethod;

use super::{bad_input, bad_page, op, unknown_parameter};
use crate::http::ops::imports as handler;
use crate::openapi::build::{Op, formatted_string, header, string};
use crate::ops::imports::{self as service, Import};
use crate::ops::operators::Role;

const SAMPLE_IMPORT: &str = "0192f0c1-7c7e-7000-8000-0000000000c3";

fn sample_import() -> Value {
    json!({
        "id": SAMPLE_IMPORT, "product_id": "steam-eu", "denomination": "25.00", "state": "committed",
        "lines_read": 1001, "accepted": 1000, "rejected": 0, "bytes_read": 13013, "bytes_expected": 13013,
        "percent_done": 100, "problems": [],
        "created_by": super::SAMPLE_OPERATOR,
        "created_at": "2026-11-27T16:18:03.12Z", "updated_at": "2026-11-27T16:18:04.48Z",
        "finished_at": "2026-11-27T16:18:04.48Z"
    })
}

/// The `400` a file with problems answers, made by the service's own constructor.
fn rejected_file() -> ApiError {
    let problems = json!([
        { "line": 7, "problem": "the same code as line 3" },
        { "line": 9, "problem": "this code is already loaded" }
    ]);
    let import = Import {
        id: SAMPLE_IMPORT.parse().expect("a UUID"),
        product_id: "steam-eu".into(),
        denomination: "25.00".into(),
        state: "rejected".into(),
        lines_read: 9,
        accepted: 6,
        rejected: 2,
        bytes_read: 312,
        bytes_expected: Some(312),
        percent_done: Some(100),
        problems,
        created_by: super::SAMPLE_OPERATOR.into(),
        created_at: datetime!(2026-11-27 16:18:03 UTC),
        updated_at: datetime!(2026-11-27 16:18:03 UTC),
        finished_at: Some(datetime!(2026-11-27 16:18:03 UTC)),
    };
    service::rejection(&import, 2)
}

/// The `400` of a query without `product_id`, as the query extractor answers it.
fn missing_product() -> ApiError {
    let uri = "/?denomination=25.00".parse().expect("a valid URI");
    let rejection =
        axum::extract::Query::<handler::ImportQuery>::try_from_uri(&uri).err().expect("product_id is required");
    ApiError::validation("query", rejection.body_text())
}

fn create_import() -> Op {
    let description = "The body is the CSV file, streamed and checked line by line as it arrives (any content type \
        is read as the file; `curl -T cards.csv -X POST …` streams it). A header line names the columns: `code` \
        (required), `pin`, `expires_at` (RFC 3339), in any order; every line ends in a newline, the last one too. \
        All or nothing, in one transaction: either every card is inserted, the import ends `committed` and is \
        audited as `import.commit`, or nothing is, and it ends `rejected` with its first 100 problems by line \
        (`import.reject`), answered as `400`. Committed cards join the cache at once. The file may be up to \
        `ALLOT_IMPORT_MAX_BYTES` (default 1 GiB) and the upload may last up to `ALLOT_IMPORT_TIMEOUT_MS` \
        (default 30 min), after which it ends `failed`.";
    let op = op(HttpMethod::Post, "/ops/v1/imports", Role::Operator, "opsCreateImport", "Import cards", description)
        .query::<handler::ImportQuery>()
        .raw_body(
            "text/csv",
            "The file: a header line, then one card per line.",
            string("CSV, UTF-8, LF or CRLF line ends; at most 64 KiB a line."),
            json!("code,pin,expires_at\nGIFT-0001,1234,2027-12-31T23:59:59Z\nGIFT-0002,,\n\"GIFT,0003\",9999,\n"),
        );
    let location = header("The import, `/ops/v1/imports/{id}`.");
    let op = op.json_response::<Import>(
        201,
        "Committed: every card of the file is in the bucket.",
        sample_import(),
        &[("location", location)],
    );
    let malformed = Denomination::parse("abc").expect_err("abc is not a denomination");
    let too_precise = Denomination::parse("25.001").and_then(|d| d.to_minor(2)).expect_err("EUR has 2 places");
    let op = op.error(
        "The file has problems (`details` holds the counts and the first 100 problems by line; the import ended \
         `rejected`, nothing was imported), or the query is refused (`details.field`; no import was made).",
        &[
            rejected_file(),
            missing_product(),
            unknown_parameter::<handler::ImportQuery>(),
            ApiError::validation("id", "must be a UUID"),
            ApiError::validation("product_id", "no product \"steam-eu\""),
            ApiError::validation("denomination", malformed.to_string()),
            ApiError::validation("denomination", too_precise.to_string()),
            ApiError::validation("denomination", "product \"steam-eu\" is not offered in 30.00"),
            ApiError::validation("id", format!("an import with id {SAMPLE_IMPORT} already exists")),
        ],
    );
    op.error(
        "Postgres is unavailable, or the upload ran past `ALLOT_IMPORT_TIMEOUT_MS` (the import ends `failed`; \
         nothing was imported); retry after `Retry-After`.",
        &[
            ApiError::new(ErrorCode::OriginUnavailable, "the request took too long; retry"),
            ApiError::new(ErrorCode::OriginUnavailable, "the database is unavailable; retry shortly"),
        ],
    )
}

fn show_import() -> Op {
    let description = "At any state: while the upload runs its counters grow (written about once a second).";
    let op = op(HttpMethod::Get, "/ops/v1/imports/{id}", Role::Viewer, "opsShowImport", "One import", description)
        .path_param("id", formatted_string("uuid", "The import's id."))
        .json_response::<Import>(200, "The import.", sample_import(), &[]);
    bad_input(op, &[ApiError::validation("id", "must be a UUID")]).error(
        "No import has this id.",
        &[ApiError::new(ErrorCode::NotFound, format!("no import with id {SAMPLE_IMPORT}"))],
    )
}

fn list_imports() -> Op {
    let description = "Newest first (by `created_at`, then id), with cursor pagination.";
    let op = op(HttpMethod::Get, "/ops/v1/imports", Role::Viewer, "opsListImports", "Imports", description)
        .query::<handler::ListQuery>()
        .listing_response::<Import>(
            "A page of imports.",
            json!({ "items": [sample_import()], "next_cursor": "aTE6MTc5NjMxMDI4MzEyMDAwMDowMTky" }),
        );
    let [limit, cursor] = bad_page();
    bad_input(op, &[limit, cursor, unknown_parameter::<handler::ListQuery>()])
}

/// The imports operations, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    vec![list_imports(), create_import(), show_import()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rejection_lists_problems_as_documented() {
        let doc = serde_json::to_value(crate::openapi::document()).unwrap();
        let details = rejected_file().details.expect("a rejection has details");
        let problem = json!({ "$ref": "#/components/schemas/ImportProblem" });
        let mut out = Vec::new();
        for p in details["problems"].as_array().expect("a list of problems") {
            crate::openapi::check::violations(&doc, &problem, p, "problem", &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }
}
