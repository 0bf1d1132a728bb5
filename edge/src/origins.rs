//! A region's origin instances: one `ORIGINS` entry parsed and checked, and the order in which
//! one request tries them.
//!
//! Spread: each request starts at the next instance of a per-isolate counter (round robin), and
//! the counter starts at a random value when the isolate loads. Round robin alone would send the
//! first request of every fresh isolate to the first instance (Cloudflare runs many isolates, and
//! most serve few requests each); a random start alone would spread unevenly over a few requests.
//! Together, one busy isolate alternates exactly and many quiet ones start uniformly at random.
//!
//! Failover: the attempts go on round the list from the start instance, each instance at most
//! once, so a list of N gives at most N attempts. A single instance keeps the one retry it always
//! had (it may be a load balancer in front of several machines, or restarting): two attempts.

use std::cell::Cell;

use crate::platform;

/// Most instances one region may list (every one of them may be tried by one request).
pub const MAX_INSTANCES: usize = 8;

thread_local! {
    static TURN: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Var: JSON object, region code → origin base URL, or a list of them for several instances
/// (`{"eu":["https://eu1.origin.example","https://eu2.origin.example"],"us":"https://us.origin.example"}`).
pub const ORIGINS: &str = "ORIGINS";

/// The instances serving one region, in the configured order: at least one, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instances(Vec<String>);

impl Instances {
    /// Parse one `ORIGINS` value: a URL string, or a non-empty list of distinct URL strings.
    pub fn parse(region: &str, value: &serde_json::Value) -> Result<Self, String> {
        let bad = |why: String| format!("{ORIGINS}: region {region:?} {why}");
        let raw: Vec<&serde_json::Value> = match value {
            serde_json::Value::String(_) => vec![value],
            serde_json::Value::Array(list) => list.iter().collect(),
            _ => return Err(bad("must be an origin URL or a list of origin URLs".into())),
        };
        if raw.is_empty() {
            return Err(bad("has an empty list of origins".into()));
        }
        if raw.len() > MAX_INSTANCES {
            return Err(bad(format!("lists {} origins; at most {MAX_INSTANCES}", raw.len())));
        }
        let mut urls: Vec<String> = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            let Some(s) = v.as_str() else {
                return Err(bad(format!("origin {} is not a string", i + 1)));
            };
            let url = origin_base(region, s)?;
            if urls.contains(&url) {
                return Err(bad(format!("lists {url} twice")));
            }
            urls.push(url);
        }
        debug_assert!(!urls.is_empty() && urls.len() <= MAX_INSTANCES);
        Ok(Self(urls))
    }

    /// The base URLs (`scheme://host[:port]`), in the configured order.
    pub fn urls(&self) -> &[String] {
        &self.0
    }

    /// How many instances.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a region has at least one instance); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The instances one request tries, in order, when its turn is `turn`.
    pub fn attempt_order(&self, turn: u32) -> Vec<&str> {
        attempt_order(self.0.len(), turn).into_iter().map(|i| self.0[i].as_str()).collect()
    }

    /// An instance's name for callers and health documents: `<region>/<position from 1>`. The
    /// URL itself is never shown outside the worker's own log.
    pub fn label(&self, region: &str, url: &str) -> String {
        match self.0.iter().position(|u| u == url) {
            Some(i) => format!("{region}/{}", i + 1),
            None => format!("{region}/?"),
        }
    }
}

/// Indices into a list of `len` instances, in the order one request tries them: from
/// `turn % len` round the list, each once; a single instance twice (its one retry).
pub fn attempt_order(len: usize, turn: u32) -> Vec<usize> {
    match len {
        0 => Vec::new(),
        1 => vec![0, 0],
        n => {
            let start = turn as usize % n;
            (0..n).map(|k| (start + k) % n).collect()
        }
    }
}

/// This isolate's next turn: a counter that starts at a random value.
pub fn next_turn() -> u32 {
    TURN.with(|t| {
        let turn = t.get().unwrap_or_else(|| u32::from_le_bytes(platform::random::<4>()));
        t.set(Some(turn.wrapping_add(1)));
        turn
    })
}

/// Parse one origin base URL: http(s), a host, no path, query or fragment.
pub fn origin_base(region: &str, raw: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{ORIGINS}: origin {raw:?} of region {region:?} {why}");
    let url = worker::Url::parse(raw).map_err(|_| bad("is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    // The signature covers the path the origin sees; a base path would change it.
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must be scheme://host[:port] without a path, query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_single_url_or_a_list() {
        let one = Instances::parse("eu", &json!("http://127.0.0.1:8080/")).unwrap();
        assert_eq!(one.urls(), ["http://127.0.0.1:8080"]);
        let two = Instances::parse("eu", &json!(["http://a:8080", "https://b.example"])).unwrap();
        assert_eq!(two.urls(), ["http://a:8080", "https://b.example"]);
        assert_eq!(two.len(), 2);
        assert_eq!(two.label("eu", "https://b.example"), "eu/2");
        assert_eq!(two.label("eu", "http://c"), "eu/?");
        assert_eq!(Instances::parse("eu", &json!(["http://a"])).unwrap().urls(), ["http://a"]);
    }

    #[test]
    fn refuses_bad_lists_with_the_reason() {
        let cases = [
            (json!([]), "empty list"),
            (json!(["http://a:8080", "http://a:8080/"]), "lists http://a:8080 twice"),
            (json!(["http://A:8080", "http://a:8080"]), "twice"),
            (json!(["http://a", 7]), "origin 2 is not a string"),
            (json!(["http://a", "not a url"]), "\"not a url\" of region \"eu\" is not a URL"),
            (json!(["http://a", "ftp://b"]), "http or https"),
            (json!(["http://a/base"]), "without a path"),
            (json!(["http://u:p@a"]), "credentials"),
            (json!(7), "an origin URL or a list"),
            (json!({ "a": "http://a" }), "an origin URL or a list"),
            (json!(null), "an origin URL or a list"),
            (json!((0..9).map(|i| format!("http://h{i}")).collect::<Vec<_>>()), "at most 8"),
        ];
        for (value, want) in cases {
            let err = Instances::parse("eu", &value).unwrap_err();
            assert!(err.contains(want), "{value}: {err}");
            assert!(err.starts_with("ORIGINS: "), "{err}");
        }
    }

    #[test]
    fn each_instance_once_from_the_turn() {
        assert_eq!(attempt_order(0, 5), Vec::<usize>::new());
        assert_eq!(attempt_order(1, 0), [0, 0]);
        assert_eq!(attempt_order(1, 7), [0, 0]);
        assert_eq!(attempt_order(2, 0), [0, 1]);
        assert_eq!(attempt_order(2, 1), [1, 0]);
        assert_eq!(attempt_order(3, 4), [1, 2, 0]);
        assert_eq!(attempt_order(3, u32::MAX), [0, 1, 2]); // u32::MAX % 3 == 0
        for n in 2..=MAX_INSTANCES {
            for turn in 0..20u32 {
                let order = attempt_order(n, turn);
                let mut seen = order.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n} turn={turn}: each instance once");
                assert_eq!(order[0], turn as usize % n);
            }
        }
    }

    #[test]
    fn consecutive_turns_spread_evenly() {
        let n = 3;
        let mut firsts = vec![0; n];
        for turn in 1000..1000 + 300u32 {
            firsts[attempt_order(n, turn)[0]] += 1;
        }
        assert_eq!(firsts, [100, 100, 100]);
    }

    #[test]
    fn urls_name_instances_in_order() {
        let i = Instances::parse("us", &json!(["http://a", "http://b", "http://c"])).unwrap();
        assert_eq!(i.attempt_order(1), ["http://b", "http://c", "http://a"]);
    }
}
