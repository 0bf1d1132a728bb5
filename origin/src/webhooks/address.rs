//! Where a webhook may go. An endpoint's URL is `https` (plain `http` only with
//! `ALLOT_WEBHOOK_ALLOW_PRIVATE`), and its host must resolve only to public addresses, when it
//! is added and again on every delivery: the resolver below is the one the HTTP client uses,
//! so a name that later points inside (DNS rebinding) is refused at connect time.

use std::net::{IpAddr, SocketAddr};

use allot_shared::ApiError;
use allot_shared::webhook::is_public_address;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// An endpoint URL that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl(pub Url);

/// Check an endpoint URL's form (scheme, host, no credentials, at most 2000 characters).
pub fn check_form(raw: &str, allow_private: bool) -> Result<Url, ApiError> {
    let bad = |reason: &str| ApiError::validation("url", reason.to_owned());
    if raw.len() > 2000 {
        return Err(bad("must be at most 2000 characters"));
    }
    let url = Url::parse(raw.trim()).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(bad("must be https")),
        _ => return Err(bad("must be an https URL")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(bad("must not have a fragment"));
    }
    Ok(url)
}

/// Check the URL's form and that its host resolves, and only to public addresses (unless
/// private ones are allowed).
pub async fn check(raw: &str, allow_private: bool) -> Result<CheckedUrl, ApiError> {
    let url = check_form(raw, allow_private)?;
    if !allow_private {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs = resolve(host, port).await.map_err(|e| ApiError::validation("url", e))?;
        if let Some(private) = addrs.iter().find(|a| !is_public_address(a.ip())) {
            let reason = format!("resolves to {}, a private, loopback or reserved address", private.ip());
            return Err(ApiError::validation("url", reason));
        }
    }
    Ok(CheckedUrl(url))
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|e| format!("does not resolve ({e})"))?.collect();
    if addrs.is_empty() {
        return Err("does not resolve to any address".to_owned());
    }
    Ok(addrs)
}

/// The HTTP client's resolver: the system's answer, with every private, loopback or reserved
/// address removed (unless allowed); a name left with none fails to connect.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnly {
    /// Whether private addresses are allowed after all (development).
    pub allow_private: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> =
                all.into_iter().filter(|a| allow_private || is_public_address(a.ip())).collect();
            if kept.is_empty() {
                let e =
                    std::io::Error::other(format!("{host} resolves only to private, loopback or reserved addresses"));
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// Whether a URL whose host is an IP literal may be called (the resolver never sees those).
pub fn literal_allowed(url: &Url, allow_private: bool) -> bool {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => allow_private || is_public_address(ip),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_of_a_url_is_checked_first() {
        assert!(check_form("https://hooks.example.com/allot?x=1", false).is_ok());
        for (url, words) in [
            ("http://hooks.example.com/", "must be https"),
            ("ftp://hooks.example.com/", "must be an https URL"),
            ("https://user:pw@hooks.example.com/", "user name or password"),
            ("https://hooks.example.com/#x", "fragment"),
            ("not a url", "is not a URL"),
        ] {
            let e = check_form(url, false).unwrap_err();
            assert!(e.message.contains(words), "{url}: {}", e.message);
        }
        assert!(check_form("http://127.0.0.1:9/", true).is_ok(), "development may use http");
    }

    #[tokio::test]
    async fn private_and_loopback_hosts_are_refused_unless_allowed() {
        for url in ["https://127.0.0.1/", "https://10.0.0.8/hook", "https://[::1]:8443/", "https://localhost/"] {
            let e = check(url, false).await.unwrap_err();
            assert!(e.message.contains("private, loopback or reserved"), "{url}: {}", e.message);
        }
        assert!(check("https://127.0.0.1/", true).await.is_ok());
        let literal = Url::parse("https://169.254.169.254/latest").unwrap();
        assert!(!literal_allowed(&literal, false) && literal_allowed(&literal, true));
    }
}
