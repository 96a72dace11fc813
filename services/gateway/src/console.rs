//! The web console: one page at `/` and its assets under `/console/`, embedded in the binary so
//! that every gateway serves it with no files beside it and no network access.
//!
//! The page holds no data of its own. Every API call it makes carries the key typed into it, so
//! the page and its assets are served without a key. They are routed outside the API's
//! authentication and limits (see `routes::router`) and count instead, like any request without
//! a key, against the client's address and the quota of unauthenticated requests: strangers who
//! load the page never use up the quota that tenants share.
//!
//! Each file is revalidated on every load (`Cache-Control: no-cache` with a strong `ETag` made
//! from its bytes), so a browser never runs an old script against a newer gateway, and a page
//! load that changed nothing costs a few `304 Not Modified` answers.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::AppState;

/// One embedded file and the path it is served at.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../console/index.html"),
    },
    Asset {
        path: "/console/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/console.css"),
    },
    Asset {
        path: "/console/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/console.js"),
    },
    Asset {
        path: "/console/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../console/icon.svg"),
    },
];

/// Every file of the console, as `(path, content type)`, for the API document.
pub fn files() -> impl Iterator<Item = (&'static str, &'static str)> {
    ASSETS.iter().map(|a| (a.path, a.content_type))
}

/// What the page may load and where it may connect: its own files and the API of the gateway
/// that served it, audio from the blobs and media sources it makes, nothing from elsewhere, and
/// no framing by other sites.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; media-src 'self' blob:; connect-src 'self'; \
     form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The console's routes, to be merged outside the API's authentication and limits.
pub fn router(state: &AppState) -> Router<AppState> {
    let mut router = Router::new();
    for asset in ASSETS {
        let etag = etag(asset.body);
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &etag, &headers) })
                .fallback(crate::routes::method_not_allowed),
        );
    }
    router
        .route_layer(middleware::from_fn(crate::metrics::label))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit))
}

/// A strong validator for `body`: part of its SHA-256, quoted as `ETag` wants.
fn etag(body: &[u8]) -> HeaderValue {
    let digest = hex::encode(Sha256::digest(body));
    HeaderValue::from_str(&format!("\"{}\"", &digest[..32])).expect("hex is a valid header")
}

fn serve(asset: &Asset, etag: &HeaderValue, request: &HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if not_modified(request, etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if asset.content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    (headers, asset.body).into_response()
}

/// Whether the request's `If-None-Match` names the file's current `etag` (or `*`).
fn not_modified(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(current) = etag.to_str() else {
        return false;
    };
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        // GET compares weakly (RFC 9110): a weak tag with the same value matches too.
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == current)
}

/// Middleware: counts a console request against the client's address and the quota of
/// requests without a key, as the API does for a caller without a valid key.
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let ip = state.limits.client_ip_of(&request);
    if let Err(limited) = state.limits.admit_unauthenticated(ip).await {
        tracing::info!(%ip, "console request refused: {limited}");
        return limited.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(asset.path),
                "the page never loads {}",
                asset.path
            );
        }
    }

    #[test]
    fn a_matching_validator_is_not_modified() {
        let tag = etag(b"page");
        let request = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, value.parse().unwrap());
            headers
        };
        let current = tag.to_str().unwrap().to_string();
        assert!(not_modified(&request(&current), &tag));
        assert!(not_modified(&request(&format!("\"x\", W/{current}")), &tag));
        assert!(not_modified(&request("*"), &tag));
        assert!(!not_modified(&request("\"other\""), &tag));
        assert!(!not_modified(&HeaderMap::new(), &tag));
    }
}
