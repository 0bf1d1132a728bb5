//! Which route a request is. Anything not listed here is `404 NOT_FOUND` and never forwarded:
//! operator paths (`/metrics`, `/health`, `/livez`, …) live on the origin's operator listener only.

/// The routes the edge serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`: the edge itself, answered in the isolate.
    Healthz,
    /// `GET /readyz`: the home origin's readiness, cached briefly.
    Readyz,
    /// `POST /v1/allocations`: forwarded.
    CreateAllocation,
    /// `GET /v1/allocations`: forwarded, never cached (it holds card codes).
    ListAllocations,
    /// `GET /v1/allocations/{id}`: forwarded.
    GetAllocation,
    /// `GET /v1/products`: forwarded, cached briefly per region and key.
    ListProducts,
    /// `GET /v1/balance`: forwarded, never cached (a balance changes with every allocation).
    GetBalance,
    /// `GET /v1/ledger`: forwarded with its query, never cached.
    ListLedger,
    /// `GET /v1/openapi.json`: the callers' document, from the edge cache; no key needed.
    OpenApi,
    /// Everything else, including known paths with the wrong method.
    NotFound,
}

/// Longest allocation id accepted in a path (a UUID is 36; leave room, refuse junk).
const MAX_ID_LEN: usize = 64;

fn is_allocation_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Route {
    /// Classify a method and a URL path (without the query).
    pub fn of(method: &str, path: &str) -> Route {
        match (method, path) {
            ("GET", "/healthz") => Route::Healthz,
            ("GET", "/readyz") => Route::Readyz,
            ("POST", "/v1/allocations") => Route::CreateAllocation,
            ("GET", "/v1/allocations") => Route::ListAllocations,
            ("GET", "/v1/products") => Route::ListProducts,
            ("GET", "/v1/balance") => Route::GetBalance,
            ("GET", "/v1/ledger") => Route::ListLedger,
            ("GET", "/v1/openapi.json") => Route::OpenApi,
            ("GET", p) => match p.strip_prefix("/v1/allocations/") {
                Some(id) if is_allocation_id(id) => Route::GetAllocation,
                _ => Route::NotFound,
            },
            _ => Route::NotFound,
        }
    }

    /// The route's name in logs (ids replaced by a placeholder, so nothing per-request leaks).
    pub fn name(self) -> &'static str {
        match self {
            Route::Healthz => "GET /healthz",
            Route::Readyz => "GET /readyz",
            Route::CreateAllocation => "POST /v1/allocations",
            Route::ListAllocations => "GET /v1/allocations",
            Route::GetAllocation => "GET /v1/allocations/{id}",
            Route::ListProducts => "GET /v1/products",
            Route::GetBalance => "GET /v1/balance",
            Route::ListLedger => "GET /v1/ledger",
            Route::OpenApi => "GET /v1/openapi.json",
            Route::NotFound => "not found",
        }
    }

    /// Whether this route is forwarded to an origin with the caller's API key.
    pub fn is_api(self) -> bool {
        matches!(
            self,
            Route::CreateAllocation
                | Route::ListAllocations
                | Route::GetAllocation
                | Route::ListProducts
                | Route::GetBalance
                | Route::ListLedger
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("GET", "/healthz"), Route::Healthz);
        assert_eq!(Route::of("GET", "/readyz"), Route::Readyz);
        assert_eq!(Route::of("POST", "/v1/allocations"), Route::CreateAllocation);
        assert_eq!(Route::of("GET", "/v1/products"), Route::ListProducts);
        assert_eq!(Route::of("GET", "/v1/allocations"), Route::ListAllocations);
        assert_eq!(Route::of("GET", "/v1/openapi.json"), Route::OpenApi);
        assert_eq!(Route::of("GET", "/v1/balance"), Route::GetBalance);
        assert_eq!(Route::of("GET", "/v1/ledger"), Route::ListLedger);
        assert_eq!(Route::of("GET", "/v1/allocations/0192f0c1-7c7e-7000-8000-000000000001"), Route::GetAllocation);
        for (m, p) in [
            ("GET", "/"),
            ("HEAD", "/healthz"),
            ("POST", "/healthz"),
            ("PUT", "/v1/allocations"),
            ("POST", "/v1/openapi.json"),
            ("GET", "/v1/openapi.json/"),
            ("GET", "/openapi.json"),
            ("DELETE", "/v1/allocations/abc"),
            ("GET", "/v1/allocations/"),
            ("GET", "/v1/allocations/a/b"),
            ("GET", "/v1/allocations/a%2Fb"),
            ("GET", &format!("/v1/allocations/{}", "a".repeat(65))),
            ("POST", "/v1/products"),
            ("GET", "/v1/products/"),
            ("POST", "/v1/balance"),
            ("GET", "/v1/balance/"),
            ("GET", "/v1/balances"),
            ("DELETE", "/v1/ledger"),
            ("GET", "/v1/ledger/1"),
            ("GET", "/metrics"),
            ("GET", "/health"),
            ("GET", "/livez"),
            ("GET", "/HEALTHZ"),
        ] {
            assert_eq!(Route::of(m, p), Route::NotFound, "{m} {p}");
        }
    }

    #[test]
    fn api_routes() {
        assert!(Route::CreateAllocation.is_api() && Route::GetAllocation.is_api() && Route::ListProducts.is_api());
        assert!(Route::ListAllocations.is_api());
        assert!(Route::GetBalance.is_api() && Route::ListLedger.is_api());
        assert!(!Route::Healthz.is_api() && !Route::Readyz.is_api() && !Route::NotFound.is_api());
        assert!(!Route::OpenApi.is_api(), "the document needs no key");
    }
}
