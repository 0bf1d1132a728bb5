//! The request id (from `cf-ray`, else generated) and the W3C trace context (continued or started).

use allot_shared::ident::is_valid_request_id;
use allot_shared::trace::TraceParent;

/// The request id: Cloudflare's `cf-ray` when it is a safe id, else 32 random hex characters.
///
/// A caller's own `x-request-id` is not adopted: the edge is the trust boundary, and `cf-ray` is
/// set by Cloudflare (so it also finds the request in Cloudflare's logs).
pub fn request_id(cf_ray: Option<&str>, random: [u8; 16]) -> String {
    match cf_ray.map(str::trim) {
        Some(ray) if is_valid_request_id(ray) => ray.to_owned(),
        _ => hex::encode(random),
    }
}

/// The trace context of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    /// What the caller sent, if it was valid.
    pub incoming: Option<TraceParent>,
    /// What the edge sends on: the same trace with the edge's span as parent, or a new trace.
    pub outgoing: TraceParent,
}

impl Trace {
    /// Continue a valid incoming `traceparent` with a new span id, or start a new trace.
    /// `random`: 24 random bytes (16 for a new trace id, the last 8 for the span id).
    pub fn continue_or_start(incoming: Option<&str>, random: [u8; 24]) -> Self {
        let incoming = incoming.and_then(TraceParent::parse);
        let outgoing = match incoming {
            Some(parent) => {
                let mut span = [0u8; 8];
                span.copy_from_slice(&random[16..]);
                if span == parent.parent_id {
                    span[7] ^= 1; // a child must not reuse its parent's id
                }
                parent.child(span)
            }
            None => TraceParent::from_random(random),
        };
        Self { incoming, outgoing }
    }

    /// The trace id, for logs.
    pub fn trace_id(&self) -> String {
        self.outgoing.trace_id_hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some("8a1b2c3d4e5f6789-FRA"), [0; 16]), "8a1b2c3d4e5f6789-FRA");
        assert_eq!(request_id(None, [0xab; 16]), "ab".repeat(16));
        assert_eq!(request_id(Some("bad ray\n"), [1; 16]), "01".repeat(16));
        assert_eq!(request_id(Some(&"x".repeat(200)), [2; 16]), "02".repeat(16));
    }

    #[test]
    fn continues_a_valid_trace() {
        let t = Trace::continue_or_start(Some(PARENT), [7; 24]);
        assert!(t.incoming.is_some());
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.outgoing.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-0707070707070707-01");
    }

    #[test]
    fn never_reuses_the_parent_span() {
        let parent = TraceParent::parse(PARENT).unwrap();
        let mut random = [0u8; 24];
        random[16..].copy_from_slice(&parent.parent_id);
        let t = Trace::continue_or_start(Some(PARENT), random);
        assert_ne!(t.outgoing.parent_id, parent.parent_id);
        assert_eq!(t.outgoing.trace_id, parent.trace_id);
    }

    #[test]
    fn starts_a_trace_when_absent_or_invalid() {
        for incoming in [None, Some("garbage"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
            let t = Trace::continue_or_start(incoming, [9; 24]);
            assert!(t.incoming.is_none());
            assert_eq!(t.outgoing.to_string(), "00-09090909090909090909090909090909-0909090909090909-01");
        }
    }
}
