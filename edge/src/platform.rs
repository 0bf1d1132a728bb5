//! The runtime's clock, randomness, `request.cf`, headers and vars, read defensively:
//! every accessor returns an `Option` or a default instead of unwrapping a JS value.

use worker::js_sys::{self, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{Env, Request};

/// Milliseconds since the epoch. In Workers the clock advances only across I/O, so durations
/// measure time spent waiting (origin, cache), not CPU.
pub fn now_ms() -> u64 {
    js_sys::Date::now().max(0.0) as u64
}

/// `N` random bytes from `crypto.getRandomValues`, falling back to `Math.random` (ids and span ids
/// only need uniqueness, not secrecy). One call per request is enough: split the bytes.
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if !crypto_random(&mut out) {
        for b in out.iter_mut() {
            *b = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    out
}

fn crypto_random(out: &mut [u8]) -> bool {
    let Ok(crypto) = Reflect::get(&js_sys::global(), &JsValue::from_str("crypto")) else { return false };
    let Ok(get) = Reflect::get(&crypto, &JsValue::from_str("getRandomValues")) else { return false };
    let Ok(get) = get.dyn_into::<js_sys::Function>() else { return false };
    let Ok(len) = u32::try_from(out.len()) else { return false };
    let array = Uint8Array::new_with_length(len);
    if get.call1(&crypto, &array).is_err() {
        return false;
    }
    array.copy_to(out);
    true
}

/// A request header, `None` when absent or unreadable.
pub fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

/// A string property of `request.cf` (`colo`, `country`, …), `None` when cf or the field is absent.
/// (workers-rs' `Cf::colo()` unwraps and panics when colo is missing.)
pub fn cf_string(req: &Request, field: &str) -> Option<String> {
    let cf = Reflect::get(req.inner(), &JsValue::from_str("cf")).ok()?;
    if !cf.is_object() {
        return None;
    }
    Reflect::get(&cf, &JsValue::from_str(field)).ok()?.as_string().filter(|s| !s.is_empty())
}

/// A string var or secret, `None` when unset or not a string.
pub fn var(env: &Env, name: &str) -> Option<String> {
    Reflect::get(env, &JsValue::from_str(name)).ok()?.as_string()
}

/// Write one line to the log (`console.log`).
pub fn log_line(line: &str) {
    worker::console_log!("{}", line);
}
