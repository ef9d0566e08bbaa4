//! Who may use the console, and how a cross-site request is kept from replaying or purging:
//!
//! - every state-changing request (anything but GET and HEAD) must carry the console's own
//!   token in [`TOKEN_HEADER`]: random per process, written into the page, readable only by a
//!   page of the console's own origin;
//! - it is also refused when the browser says it comes from another site (`Sec-Fetch-Site`
//!   other than `same-origin`) or names another origin (`Origin`);
//! - without a password (loopback only) the `Host` must be a loopback name, so a page of
//!   another site whose name resolves to 127.0.0.1 (DNS rebinding) cannot read the token;
//! - with `console.password` every request needs HTTP basic auth with it (any user name);
//! - every answer forbids framing (no clickjacking of the confirmation) and caching.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::topology::Password;

/// The request header that carries the console's token on state-changing requests.
pub const TOKEN_HEADER: &str = "x-burrow-token";

/// The console's token and password.
pub(crate) struct Security {
    token: String,
    password: Option<Password>,
}

impl Security {
    /// A fresh random token; `password` protects every request when set.
    pub fn new(password: Option<Password>) -> Self {
        let bytes: [u8; 32] = rand::random();
        Self {
            token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            password,
        }
    }

    /// The token pages carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Why `method` with `headers` is refused, if it is.
    fn refuse(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        let text = |name: &header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        match &self.password {
            Some(password) => {
                let given = text(&header::AUTHORIZATION).and_then(basic_password);
                if !given.is_some_and(|g| same(g.as_bytes(), password.expose().as_bytes())) {
                    return Some(
                        (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Basic realm=\"burrow console\"")],
                            "the console needs its password (HTTP basic auth, any user name)\n",
                        )
                            .into_response(),
                    );
                }
            }
            None => {
                if !text(&header::HOST).is_some_and(is_loopback_host) {
                    return Some(forbidden(
                        "the console answers only to a loopback Host (localhost, 127.0.0.1, [::1])",
                    ));
                }
            }
        }
        if method == Method::GET || method == Method::HEAD {
            return None;
        }
        if let Some(site) = text(&header::HeaderName::from_static("sec-fetch-site")) {
            if site != "same-origin" {
                return Some(forbidden("cross-site request refused (Sec-Fetch-Site)"));
            }
        }
        if let Some(origin) = text(&header::ORIGIN) {
            let host = text(&header::HOST).unwrap_or_default();
            let own = ["http://", "https://"]
                .iter()
                .any(|scheme| origin.strip_prefix(scheme) == Some(host));
            if !own {
                return Some(forbidden("cross-origin request refused (Origin)"));
            }
        }
        let token = text(&header::HeaderName::from_static(TOKEN_HEADER));
        if !token.is_some_and(|t| same(t.as_bytes(), self.token.as_bytes())) {
            return Some(forbidden(
                "missing or wrong console token: reload the console's page",
            ));
        }
        None
    }
}

fn forbidden(why: &'static str) -> Response {
    (StatusCode::FORBIDDEN, format!("{why}\n")).into_response()
}

/// The password of an `Authorization: Basic …` value.
fn basic_password(value: &str) -> Option<String> {
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_owned())
}

/// Compares in time that does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a `Host` header names this machine's loopback: `localhost`, a loopback IP, any port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks every request (see the module documentation) and adds the headers that forbid
/// framing, sniffing, referrers and caching to every answer.
pub(crate) async fn guard(
    State(security): State<Arc<Security>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(refused) = security.refuse(request.method(), request.headers()) {
        return refused;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(password: Option<&str>) -> Security {
        Security::new(password.map(Password::new))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_post_needs_the_token_and_the_own_origin() {
        let s = security(None);
        let token = s.token().to_owned();
        let host = ("host", "127.0.0.1:15680");
        assert!(s.refuse(&Method::GET, &headers(&[host])).is_none());
        assert!(s.refuse(&Method::POST, &headers(&[host])).is_some());
        assert!(s
            .refuse(&Method::POST, &headers(&[host, (TOKEN_HEADER, &token)]))
            .is_none());
        assert!(s
            .refuse(&Method::POST, &headers(&[host, (TOKEN_HEADER, "00")]))
            .is_some());
        let cross = [
            host,
            (TOKEN_HEADER, token.as_str()),
            ("origin", "http://evil.example"),
        ];
        assert!(s.refuse(&Method::POST, &headers(&cross)).is_some());
        let site = [
            host,
            (TOKEN_HEADER, token.as_str()),
            ("sec-fetch-site", "cross-site"),
        ];
        assert!(s.refuse(&Method::POST, &headers(&site)).is_some());
        let own = [
            host,
            (TOKEN_HEADER, token.as_str()),
            ("origin", "http://127.0.0.1:15680"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(s.refuse(&Method::POST, &headers(&own)).is_none());
    }

    #[test]
    fn without_a_password_only_loopback_hosts_are_served() {
        let s = security(None);
        for ok in ["localhost:1", "127.0.0.1:15680", "[::1]:80", "LOCALHOST"] {
            assert!(
                s.refuse(&Method::GET, &headers(&[("host", ok)])).is_none(),
                "{ok}"
            );
        }
        for bad in ["evil.example:15680", "10.0.0.1", "evil.localhost.example"] {
            assert!(
                s.refuse(&Method::GET, &headers(&[("host", bad)])).is_some(),
                "{bad}"
            );
        }
        assert!(s.refuse(&Method::GET, &HeaderMap::new()).is_some());
    }

    #[test]
    fn a_password_is_asked_by_basic_auth() {
        let s = security(Some("s3cret"));
        let auth = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        let host = ("host", "shop.example:15680");
        let refused = s.refuse(&Method::GET, &headers(&[host])).expect("refused");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let wrong = auth("ops:nope");
        assert!(s
            .refuse(&Method::GET, &headers(&[host, ("authorization", &wrong)]))
            .is_some());
        let right = auth("ops:s3cret");
        assert!(s
            .refuse(&Method::GET, &headers(&[host, ("authorization", &right)]))
            .is_none());
    }
}
