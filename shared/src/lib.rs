//! allot's wire contract and pure logic, shared by the edge (wasm32) and the origin.
//!
//! Nothing here does I/O or reads a clock or a random source: callers pass time and
//! randomness in, so every function behaves identically at the edge and at the origin.

pub mod allocation;
pub mod api_key;
pub mod catalogue;
pub mod error;
pub mod funding;
pub mod headers;
pub mod health;
pub mod ident;
pub mod limits;
pub mod money;
pub mod operator_token;
pub mod rate_limit;
pub mod region;
pub mod request_headers;
pub mod signature;
pub mod trace;
pub mod webhook;

pub use allocation::{AllocatedCard, AllocationRequest, AllocationResponse};
pub use api_key::{ApiKey, ApiKeyError};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use limits::Limits;
pub use money::{Currency, Denomination};
pub use operator_token::OperatorToken;
pub use region::Region;
