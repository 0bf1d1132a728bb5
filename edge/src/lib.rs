//! allot's edge worker.
use worker::*;

/// Entry point for every request the worker receives.
#[event(fetch)]
async fn fetch(_req: Request, _env: Env, _ctx: Context) -> Result<Response> {
    Response::ok("allot edge")
}
