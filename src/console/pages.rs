//! The console's one page and its assets, built into the binary (`include_str!`): no CDN, it
//! works offline. The page carries the console's token in `<meta name="burrow-token">`; its
//! script sends it with every state-changing request (see `security.rs`).

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("assets/console.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");
/// Where the page takes the token.
const TOKEN_PLACEHOLDER: &str = "{{TOKEN}}";

pub(super) fn routes(token: String) -> Router {
    let page = PAGE.replace(TOKEN_PLACEHOLDER, &token);
    Router::new()
        .route("/", get(move || std::future::ready(Html(page.clone()))))
        .route(
            "/assets/console.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    SCRIPT,
                )
                    .into_response()
            }),
        )
        .route(
            "/assets/console.css",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_a_place_for_the_token_and_loads_only_its_own_assets() {
        assert!(PAGE.contains(&format!(
            r#"<meta name="burrow-token" content="{TOKEN_PLACEHOLDER}">"#
        )));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        // The only URL in the script is the SVG namespace.
        assert_eq!(
            SCRIPT.matches("http://").count() + SCRIPT.matches("https://").count(),
            SCRIPT.matches("http://www.w3.org/2000/svg").count()
        );
    }
}
