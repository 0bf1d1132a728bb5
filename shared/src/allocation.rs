//! Allocation requests and responses.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::ident::{validate_client_reference, validate_product_id};
use crate::limits::Limits;
use crate::money::{Currency, Denomination};

/// A validated `POST /v1/allocations` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationRequest {
    /// The product to allocate from.
    pub product_id: String,
    /// The face value asked for, exactly as parsed.
    pub denomination: Denomination,
    /// How many cards; 1..=the configured maximum.
    pub quantity: u32,
    /// The caller's own reference, stored and echoed.
    pub client_reference: Option<String>,
}

// Every field is optional here so that a missing field gets a message naming it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllocationRequest {
    #[serde(default)]
    product_id: Option<Value>,
    #[serde(default)]
    denomination: Option<Value>,
    #[serde(default)]
    quantity: Option<Value>,
    #[serde(default)]
    client_reference: Option<Value>,
}

fn required_string(field: &str, v: Option<Value>) -> Result<String, ApiError> {
    match v {
        None => Err(ApiError::validation(field, "is required")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::validation(field, "must be a string")),
    }
}

impl AllocationRequest {
    /// Parse and validate a request body (JSON object; unknown fields rejected).
    pub fn parse(body: &[u8], limits: &Limits) -> Result<Self, ApiError> {
        if body.len() > limits.max_body_bytes {
            return Err(ApiError::new(
                crate::ErrorCode::PayloadTooLarge,
                format!("the body must be at most {} bytes", limits.max_body_bytes),
            ));
        }
        // serde would also accept a JSON array for a struct; only an object is a request.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(ApiError::validation("body", "must be a JSON object"));
        }
        let raw: RawAllocationRequest = serde_json::from_slice(body).map_err(|e| {
            let reason = if e.is_data() {
                // serde names the unknown or duplicate field, or the wrong top-level type.
                format!("{e}")
            } else {
                format!("is not valid JSON ({e})")
            };
            ApiError::validation("body", reason)
        })?;

        let product_id = required_string("product_id", raw.product_id)?;
        validate_product_id(&product_id).map_err(|r| ApiError::validation("product_id", r))?;

        let denomination = required_string("denomination", raw.denomination)?;
        let denomination =
            Denomination::parse(&denomination).map_err(|e| ApiError::validation("denomination", e.to_string()))?;

        let max = limits.max_quantity;
        let quantity = match raw.quantity {
            None => return Err(ApiError::validation("quantity", "is required")),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(q) if (1..=u64::from(max)).contains(&q) => q as u32,
                _ => {
                    return Err(ApiError::validation("quantity", format!("must be a whole number from 1 to {max}")));
                }
            },
            Some(_) => return Err(ApiError::validation("quantity", "must be a number")),
        };

        let client_reference = match raw.client_reference {
            None => None,
            Some(Value::String(s)) => {
                validate_client_reference(&s).map_err(|r| ApiError::validation("client_reference", r))?;
                Some(s)
            }
            Some(_) => return Err(ApiError::validation("client_reference", "must be a string")),
        };

        Ok(Self { product_id, denomination, quantity, client_reference })
    }

    /// A digest of the request's meaning, for idempotency: equal for bodies that ask for the
    /// same thing (`"25"` and `"25.00"`, any key order or whitespace), different otherwise.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"allocation-v1\0");
        h.update(self.product_id.as_bytes());
        h.update(b"\0");
        h.update(self.denomination.normalized().to_string().as_bytes());
        h.update(b"\0");
        h.update(self.quantity.to_string().as_bytes());
        h.update(b"\0");
        match &self.client_reference {
            Some(r) => {
                h.update(b"1");
                h.update(r.as_bytes());
            }
            None => h.update(b"0"),
        }
        h.finalize().into()
    }

    /// The request as a JSON body (the form a client sends).
    pub fn to_json(&self) -> String {
        let mut v = serde_json::json!({
            "product_id": self.product_id,
            "denomination": self.denomination.to_string(),
            "quantity": self.quantity,
        });
        if let Some(r) = &self.client_reference {
            v["client_reference"] = Value::String(r.clone());
        }
        v.to_string()
    }
}

/// One card handed to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AllocatedCard {
    /// The card's id.
    pub card_id: i64,
    /// The redemption code (secret).
    pub code: String,
    /// The PIN, for cards that have one (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// When the card expires (RFC 3339), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub expires_at: Option<String>,
    /// When an operator voided the card (RFC 3339), if they did; absent for every other card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub voided_at: Option<String>,
}

/// The `201` body of a successful allocation, stored and replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AllocationResponse {
    /// The allocation's id (UUID).
    #[cfg_attr(feature = "openapi", schema(format = Uuid))]
    pub allocation_id: String,
    /// The product allocated from.
    pub product_id: String,
    /// The face value, with the currency's decimal places (`"25.00"`).
    pub denomination: String,
    /// The product's currency.
    pub currency: Currency,
    /// Number of cards.
    pub quantity: u32,
    /// The caller's reference, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_reference: Option<String>,
    /// The cards, distinct.
    pub cards: Vec<AllocatedCard>,
    /// When the allocation was committed (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use proptest::prelude::*;

    fn parse(body: &str) -> Result<AllocationRequest, ApiError> {
        AllocationRequest::parse(body.as_bytes(), &Limits::default())
    }

    fn field_of(e: &ApiError) -> String {
        e.details.as_ref().unwrap()["field"].as_str().unwrap().to_owned()
    }

    #[test]
    fn parses_a_good_request() {
        let r = parse(r#"{"product_id":"amazon-us","denomination":"25.00","quantity":3,"client_reference":"o-1"}"#)
            .unwrap();
        assert_eq!(r.product_id, "amazon-us");
        assert_eq!(r.denomination.to_minor(2).unwrap(), 2500);
        assert_eq!(r.quantity, 3);
        assert_eq!(r.client_reference.as_deref(), Some("o-1"));
        assert_eq!(parse(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        let cases = [
            (r#"{"product_id":"p","denomination":"25","quantity":0}"#, "quantity"),
            (r#"{"product_id":"p","denomination":"25","quantity":-1}"#, "quantity"),
            (r#"{"product_id":"p","denomination":"25","quantity":21}"#, "quantity"),
            (r#"{"product_id":"p","denomination":"25","quantity":1.5}"#, "quantity"),
            (r#"{"product_id":"p","denomination":"25","quantity":1e3}"#, "quantity"),
            (r#"{"product_id":"p","denomination":"25","quantity":99999999999999999999999}"#, "quantity"),
            (r#"{"product_id":"p","denomination":"25","quantity":"2"}"#, "quantity"),
            (r#"{"product_id":"p","denomination":"25"}"#, "quantity"),
            (r#"{"product_id":"p","denomination":25,"quantity":1}"#, "denomination"),
            (r#"{"product_id":"p","denomination":"-5","quantity":1}"#, "denomination"),
            (r#"{"product_id":"p","denomination":"1e3","quantity":1}"#, "denomination"),
            (r#"{"product_id":"p","denomination":"","quantity":1}"#, "denomination"),
            (r#"{"product_id":"","denomination":"5","quantity":1}"#, "product_id"),
            (r#"{"product_id":7,"denomination":"5","quantity":1}"#, "product_id"),
            (r#"{"denomination":"5","quantity":1}"#, "product_id"),
            (r#"{"product_id":"p","denomination":"5","quantity":1,"client_reference":5}"#, "client_reference"),
            (r#"{"product_id":"p","denomination":"5","quantity":1,"extra":true}"#, "body"),
            (r#"{"product_id":"p","product_id":"q","denomination":"5","quantity":1}"#, "body"),
            (r#"[1,2]"#, "body"),
            (r#"{"product_id":"p""#, "body"),
            ("", "body"),
            ("{} trailing", "body"),
        ];
        for (body, field) in cases {
            let e = parse(body).expect_err(body);
            assert_eq!(e.code, ErrorCode::ValidationFailed, "{body}");
            assert_eq!(field_of(&e), field, "{body}");
        }
        let big = format!(r#"{{"product_id":"{}"}}"#, "x".repeat(20_000));
        assert_eq!(parse(&big).unwrap_err().code, ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn fingerprint_ignores_form_but_not_meaning() {
        let a = parse(r#"{"product_id":"p","denomination":"25","quantity":2}"#).unwrap();
        let b = parse(r#" { "quantity": 2, "denomination": "25.00", "product_id": "p" } "#).unwrap();
        let c = parse(r#"{"product_id":"p","denomination":"25","quantity":3}"#).unwrap();
        let d = parse(r#"{"product_id":"p","denomination":"25","quantity":2,"client_reference":"x"}"#).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_ne!(a.fingerprint(), d.fingerprint());
    }

    #[test]
    fn response_round_trips() {
        let resp = AllocationResponse {
            allocation_id: "0190c6d2-0000-7000-8000-000000000000".into(),
            product_id: "p".into(),
            denomination: "25.00".into(),
            currency: Currency::parse("USD").unwrap(),
            quantity: 1,
            client_reference: None,
            cards: vec![AllocatedCard {
                card_id: 7,
                code: "ABCD".into(),
                pin: None,
                expires_at: None,
                voided_at: None,
            }],
            created_at: "2026-11-21T00:00:00Z".into(),
        };
        let json = serde_json::to_string(&resp).unwrap();
        assert!(!json.contains("pin"));
        assert!(!json.contains("voided_at"), "a card that is not void says nothing about voids");
        assert_eq!(serde_json::from_str::<AllocationResponse>(&json).unwrap(), resp);
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = AllocationRequest::parse(&body, &Limits::default());
        }

        #[test]
        fn parse_never_panics_on_json_like_text(body in r#"\{("[a-z_]{1,16}":("[^"]{0,12}"|-?[0-9.e]{1,8}|null|true|\[\]),?){0,5}\}"#) {
            let _ = AllocationRequest::parse(body.as_bytes(), &Limits::default());
        }

        #[test]
        fn serialise_then_parse_round_trips(
            product in "[a-z0-9][a-z0-9._:-]{0,20}",
            minor in 1i64..1_000_000,
            quantity in 1u32..=20,
            reference in proptest::option::of("[ -~]{1,40}"),
        ) {
            let req = AllocationRequest {
                product_id: product,
                denomination: Denomination::parse(&crate::money::format_minor(minor, 2)).unwrap(),
                quantity,
                client_reference: reference,
            };
            let back = AllocationRequest::parse(req.to_json().as_bytes(), &Limits::default()).unwrap();
            prop_assert_eq!(back.fingerprint(), req.fingerprint());
            prop_assert_eq!(back, req);
        }
    }
}
