//! Loopback ports for processes a test starts.
//!
//! A port is chosen at random below Linux's ephemeral range (32768+), never from the kernel's
//! `bind(127.0.0.1:0)`: some kernels hand out the same ephemeral port to every such call, so
//! two ports picked one after the other (an origin's and its operator listener's) came out
//! equal. Below the ephemeral range no client socket can take a port either, while the
//! service that owns it is stopped for a fault.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port handed out.
const LOW: u16 = 20_000;
/// How many ports above `LOW` may be handed out (up to 31,999).
const SPAN: u16 = 12_000;

/// Ports already handed out by this process: a port is never handed out twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A random port in `LOW..LOW + SPAN` that `accept` takes, that nothing listens on now and
/// that this process has not handed out before.
fn pick(accept: impl Fn(u16) -> bool) -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let port = LOW + (uuid::Uuid::new_v4().as_u128() % u128::from(SPAN)) as u16;
        if !handed_out.contains(&port) && bindable(port) && accept(port) {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free loopback port for a server the test starts.
pub fn free_port() -> u16 {
    pick(|_| true)
}

/// The first of `n` consecutive free ports whose cluster bus ports (+10000) are free too.
pub fn free_port_run(n: u16) -> u16 {
    let base = pick(|base| base + n <= LOW + SPAN && (base..base + n).all(|p| bindable(p) && bindable(p + 10_000)));
    let mut handed_out = HANDED_OUT.lock().unwrap();
    handed_out.get_or_insert_with(HashSet::new).extend(base..base + n);
    base
}

/// A loopback port nothing listens on, for a dependency that is down.
pub fn closed_port() -> u16 {
    free_port()
}
