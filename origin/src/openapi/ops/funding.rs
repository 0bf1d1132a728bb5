//! `/ops/v1/clients/{id}/funding` and `/ops/v1/clients/{id}/discounts`: a client's funding
//! accounts, opening and changing them, top-ups, adjustments, CSV statements, and discounts.

use allot_shared::headers::IDEMPOTENT_REPLAYED;
use allot_shared::{ApiError, Currency, ErrorCode, request_headers};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::{ContentBuilder, Header, HttpMethod, ResponseBuilder};
use uuid::Uuid;

use super::{bad_body, bad_input, op, unknown_parameter};
use crate::http::ops::funding as handler;
use crate::openapi::build::{Op, formatted_string, header, idempotency_key_schema, request_id_header, string};
use crate::openapi::gate::real;
use crate::ops::funding::{self as service, Account, Discount, Funding, Posted, STATEMENT_HEADER, Sign};
use crate::ops::operators::Role;

/// `DELETE /ops/v1/clients/{id}/discounts/{product_id}`: what was cleared.
// Hand-written: the handler answers with `json!`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearedDiscount {
    /// The client.
    pub client_id: Uuid,
    /// The product.
    pub product_id: String,
    /// False when the client had no discount on the product (nothing written, no audit row).
    pub cleared: bool,
    /// The discount it had, in basis points; null when none.
    #[schema(required = true)]
    pub previous_bps: Option<i32>,
}

const SAMPLE_CLIENT: &str = "0192f0c1-7c7e-7000-8000-0000000000d4";

fn eur() -> Currency {
    Currency::parse("EUR").expect("EUR is a currency")
}

fn sample_account() -> Value {
    json!({
        "client_id": SAMPLE_CLIENT, "currency": "EUR", "balance": "1200.00", "credit_limit": "500.00",
        "available": "1700.00", "low_balance": "100.00", "low": false, "credit_voids": true,
        "created_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T16:05:31Z"
    })
}

fn sample_discount() -> Value {
    json!({ "client_id": SAMPLE_CLIENT, "product_id": "steam-eu", "discount_bps": 250, "updated_at": "2026-11-27T10:00:00Z" })
}

fn client_and_currency(op: Op) -> Op {
    op.path_param("id", formatted_string("uuid", "The client's id."))
        .path_param("currency", string("The account's currency, an ISO 4217 code (`EUR`)."))
}

fn client_and_product(op: Op) -> Op {
    op.path_param("id", formatted_string("uuid", "The client's id."))
        .path_param("product_id", string("The product's id."))
}

fn no_client() -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no client with id {SAMPLE_CLIENT}"))
}

fn no_account() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("client {SAMPLE_CLIENT} has no funding account in EUR; an admin opens one first"),
    )
}

fn no_product() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no product \"steam-eu\"")
}

fn bad_currency() -> ApiError {
    service::parse_currency("eur").expect_err("eur is not a currency code").to_api_error()
}

fn bad_amount(field: &str, text: &str, sign: Sign) -> ApiError {
    service::parse_amount(field, text, eur(), sign).expect_err("the example amount is refused").to_api_error()
}

fn bad_memo(memo: &str, required: bool) -> ApiError {
    service::parse_memo(Some(memo), required).expect_err("the example memo is refused").to_api_error()
}

/// A posting's optional `Idempotency-Key` header.
fn keyed(op: Op) -> Op {
    let key = idempotency_key_schema(
        "Optional: post at most once under this key (1-255 visible ASCII characters, sent once) on this account. \
         Sent again with the same body, the answer is the entry already made; with another, `422`.",
        "topup-2026-11-27-8812",
    );
    op.header_param("Idempotency-Key", false, key)
}

fn replayed_header() -> (&'static str, Header) {
    (IDEMPOTENT_REPLAYED, header("`true` when the entry was posted by an earlier request with the same key."))
}

fn bad_key() -> ApiError {
    real(request_headers::idempotency_key(Some("two words")))
}

fn too_large(op: Op) -> Op {
    op.error(
        "The body is over 1 MiB.",
        &[ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 1048576 bytes")],
    )
}

fn show_funding() -> Op {
    let description = "The client's funding accounts by currency (balance, credit limit, what it may still spend, \
        its low-balance threshold and whether it is low, whether voids credit back) and its discounts by \
        product. A client without an account in a product's currency allocates that product without limit.";
    let op = op(
        HttpMethod::Get,
        "/ops/v1/clients/{id}/funding",
        Role::Viewer,
        "opsShowFunding",
        "A client's funding accounts and discounts",
        description,
    )
    .path_param("id", formatted_string("uuid", "The client's id."))
    .json_response::<Funding>(
        200,
        "The client's funding.",
        json!({ "client_id": SAMPLE_CLIENT, "accounts": [sample_account()], "discounts": [sample_discount()] }),
        &[],
    );
    bad_input(op, &[ApiError::validation("id", "must be a UUID")]).error("No such client.", &[no_client()])
}

fn set_account() -> Op {
    let description = "Opens the client's account in `{currency}` (`201`; from then on its allocations in that \
        currency are paid for from the balance, and refused with `402 INSUFFICIENT_FUNDS` when the balance plus \
        the credit limit does not cover them), or changes its settings (`200`). An absent field stays as it is; \
        a new account starts with a credit limit of 0, no threshold, and voids credited back. Amounts are decimal \
        strings with at most as many decimals as the currency has. A credit limit below what the client already \
        owes (a negative balance) is refused, and nothing changes. Audited as `funding.open` or `funding.set`, \
        with the settings before and after.";
    let op = op(
        HttpMethod::Put,
        "/ops/v1/clients/{id}/funding/{currency}",
        Role::Admin,
        "opsSetFundingAccount",
        "Open or change a client's funding account",
        description,
    );
    let op = client_and_currency(op)
        .json_body::<handler::AccountBody>(
            "The settings to change.",
            json!({ "credit_limit": "500.00", "low_balance": "100.00", "credit_voids": true }),
        )
        .json_response::<Account>(201, "Opened.", sample_account(), &[])
        .json_response::<Account>(200, "Changed.", sample_account(), &[]);
    let beyond = service::beyond_credit_error("credit_limit", service::LIMIT_BELOW_OWED);
    let op = bad_input(
        op,
        &[
            ApiError::validation("id", "must be a UUID"),
            bad_currency(),
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<handler::AccountBody>(r#"{"credit_limit": 5}"#),
            bad_amount("credit_limit", "-1", Sign::NonNegative),
            bad_amount("credit_limit", "10.001", Sign::NonNegative),
            beyond,
        ],
    )
    .error("No such client.", &[no_client()]);
    too_large(op)
}

fn entry_example(kind: &str, amount: &str, memo: &str, balance: &str) -> Value {
    let mut account = sample_account();
    account["balance"] = json!(balance);
    json!({ "entry_id": 41877, "kind": kind, "amount": amount, "memo": memo, "account": account })
}

fn deposit() -> Op {
    let description = "A top-up: `amount` (a positive decimal string in the currency's exponent) is credited to \
        the client: one `deposit` ledger entry (debit `deposits`, credit the client) and the balance, in one \
        transaction. `memo` is optional (a payment reference, say). Send an `Idempotency-Key` to post it at most \
        once: a retry with the same key and body answers the entry already made (`201` with \
        `Idempotent-Replayed: true`, the account as it is now, nothing written). A client without an account in \
        the currency gets `404` (an admin opens one first). Audited as `funding.deposit`.";
    let op = op(
        HttpMethod::Post,
        "/ops/v1/clients/{id}/funding/{currency}/deposits",
        Role::Operator,
        "opsDeposit",
        "Top up a client's account",
        description,
    );
    let op = keyed(client_and_currency(op))
        .json_body::<handler::EntryBody>(
            "The amount and a memo.",
            json!({ "amount": "250.00", "memo": "wire 2026-11-27 ref 8812" }),
        )
        .json_response::<Posted>(
            201,
            "Posted; the account after it.",
            entry_example("deposit", "250.00", "wire 2026-11-27 ref 8812", "1450.00"),
            &[replayed_header()],
        );
    let op = bad_input(
        op,
        &[
            ApiError::validation("id", "must be a UUID"),
            bad_currency(),
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<handler::EntryBody>("{}"),
            bad_amount("amount", "0", Sign::Positive),
            bad_amount("amount", "25.001", Sign::Positive),
            bad_amount("amount", "-5", Sign::Positive),
            bad_memo("a\nb", false),
            bad_key(),
        ],
    )
    .error("No such client, or it has no account in the currency.", &[no_client(), no_account()])
    .error(
        "The `Idempotency-Key` was used on this account for another posting; nothing was changed.",
        &[service::key_used_for_another_posting(41877, "deposit", "250.00")],
    );
    too_large(op)
}

fn adjust() -> Op {
    let description = "A correction: `amount` is a signed, non-zero decimal string; positive credits the client \
        (debit `adjustments`), negative debits it (credit `adjustments`), as one `adjustment` ledger entry and the \
        balance, in one transaction. `memo` is required: say why. An adjustment that would leave the account owing \
        more than its credit limit is refused, and nothing changes. Idempotent by `Idempotency-Key`, as a deposit. \
        Audited as `funding.adjust`.";
    let op = op(
        HttpMethod::Post,
        "/ops/v1/clients/{id}/funding/{currency}/adjustments",
        Role::Admin,
        "opsAdjust",
        "Adjust a client's balance",
        description,
    );
    let op = keyed(client_and_currency(op))
        .json_body::<handler::EntryBody>(
            "The signed amount and why.",
            json!({ "amount": "-12.50", "memo": "refund of a duplicate top-up, ticket 3310" }),
        )
        .json_response::<Posted>(
            201,
            "Posted; the account after it.",
            entry_example("adjustment", "-12.50", "refund of a duplicate top-up, ticket 3310", "1187.50"),
            &[replayed_header()],
        );
    let beyond = service::beyond_credit_error("amount", service::ADJUSTMENT_BEYOND_CREDIT);
    let op = bad_input(
        op,
        &[
            ApiError::validation("id", "must be a UUID"),
            bad_currency(),
            ApiError::validation("body", "a JSON object is required"),
            bad_amount("amount", "0", Sign::NonZero),
            bad_amount("amount", "1.001", Sign::NonZero),
            bad_memo(" ", true),
            bad_key(),
            beyond,
        ],
    )
    .error("No such client, or it has no account in the currency.", &[no_client(), no_account()])
    .error(
        "The `Idempotency-Key` was used on this account for another posting; nothing was changed.",
        &[service::key_used_for_another_posting(41877, "adjustment", "-12.50")],
    );
    too_large(op)
}

fn statement() -> Op {
    let description = "The client's ledger entries in `{currency}` created in [`from`, `to`), oldest first (by \
        entry id), as CSV (RFC 4180, CRLF line ends) with a header row. `amount` is signed (a credit to the client \
        is positive) and `balance_after` is the running balance, starting from the balance at `from` (the sum of \
        every earlier entry). Memos and actors are quoted where needed; one that starts with `=`, `+`, `-` or `@` \
        is prefixed with `'` so a spreadsheet does not run it. Streamed from one consistent snapshot, a page of \
        1000 entries at a time, so any period may be asked for; a failure midway cuts the transfer short (the file \
        never looks complete).";
    let op = op(
        HttpMethod::Get,
        "/ops/v1/clients/{id}/funding/{currency}/statement.csv",
        Role::Viewer,
        "opsStatement",
        "A client's statement as CSV",
        description,
    );
    let example = format!(
        "{STATEMENT_HEADER}41870,2026-11-01T09:00:00Z,deposit,1000.00,1000.00,,,wire ref 8812,cli:ana\r\n\
         41871,2026-11-02T10:15:02.5Z,allocation,-50.00,950.00,0192f0c1-7c7e-7000-8000-000000000001,,,\r\n\
         41875,2026-11-03T11:00:00Z,reversal,25.00,975.00,0192f0c1-7c7e-7000-8000-000000000001,81234,,\r\n\
         41877,2026-11-04T12:00:00Z,adjustment,-12.50,962.50,,,\"refund, ticket 3310\",{SAMPLE_CLIENT}\r\n"
    );
    let content = ContentBuilder::new()
        .schema(Some(string(
            "CSV with the columns entry_id, created_at (RFC 3339, UTC), kind, amount, balance_after, allocation_id, \
             card_id, memo, actor.",
        )))
        .example(Some(json!(example)))
        .build();
    let response = ResponseBuilder::new()
        .description("The statement, streamed.")
        .content("text/csv", content)
        .header("x-request-id", request_id_header())
        .header("content-disposition", header("`attachment; filename=\"statement-<client>-<currency>.csv\"`"));
    let op = client_and_currency(op).query::<handler::StatementQuery>().response(200, response);
    bad_input(
        op,
        &[
            ApiError::validation("id", "must be a UUID"),
            bad_currency(),
            ApiError::validation("to", "must be after from"),
            unknown_parameter::<handler::StatementQuery>(),
        ],
    )
    .error("No such client, or it has no account in the currency.", &[no_client(), no_account()])
}

fn set_discount() -> Op {
    let description = "The client's price of the product becomes its face value less `discount_bps` basis points \
        (rounded down to a whole minor unit, so the price is rounded up), for allocations from now on. Audited as \
        `discount.set`, with the previous value.";
    let op = op(
        HttpMethod::Put,
        "/ops/v1/clients/{id}/discounts/{product_id}",
        Role::Admin,
        "opsSetDiscount",
        "Set a client's discount on a product",
        description,
    );
    let op = client_and_product(op)
        .json_body::<handler::DiscountBody>("The discount.", json!({ "discount_bps": 250 }))
        .json_response::<Discount>(200, "The discount.", sample_discount(), &[]);
    let op = bad_input(
        op,
        &[
            ApiError::validation("id", "must be a UUID"),
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<handler::DiscountBody>("{}"),
            ApiError::validation("discount_bps", "must be 0 to 10000 basis points (100 = 1 %)"),
        ],
    )
    .error("No such client or product.", &[no_client(), no_product()]);
    too_large(op)
}

fn clear_discount() -> Op {
    let description = "No body. The client pays face value for the product from now on. Clearing a discount the \
        client does not have changes nothing (`cleared: false`, no audit row). Audited as `discount.clear`.";
    let op = op(
        HttpMethod::Delete,
        "/ops/v1/clients/{id}/discounts/{product_id}",
        Role::Admin,
        "opsClearDiscount",
        "Clear a client's discount on a product",
        description,
    );
    let op = client_and_product(op).json_response::<ClearedDiscount>(
        200,
        "Cleared.",
        json!({ "client_id": SAMPLE_CLIENT, "product_id": "steam-eu", "cleared": true, "previous_bps": 250 }),
        &[],
    );
    bad_input(op, &[ApiError::validation("id", "must be a UUID")])
        .error("No such client or product.", &[no_client(), no_product()])
}

/// The funding operations, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    vec![show_funding(), set_account(), deposit(), adjust(), statement(), set_discount(), clear_discount()]
}
