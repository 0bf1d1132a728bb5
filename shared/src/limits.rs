//! Request limits both sides enforce.

/// Default largest number of cards one allocation may ask for.
pub const DEFAULT_MAX_QUANTITY: u32 = 20;
/// Default largest request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;

/// The configurable limits a request is validated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `quantity` accepted in one allocation request.
    pub max_quantity: u32,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_quantity: DEFAULT_MAX_QUANTITY, max_body_bytes: DEFAULT_MAX_BODY_BYTES }
    }
}
