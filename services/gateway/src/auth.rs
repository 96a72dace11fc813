//! Who is calling: API keys sent as `Authorization: Bearer <key>`, checked against the SHA-256
//! hashes in config (keys themselves are never stored), and the tenant each key belongs to.
//!
//! Jobs, their audio and cloned voices belong to the tenant that made them; another tenant is
//! told they do not exist (404), so ids reveal nothing. Admin keys also see the worker fleet
//! (`/api/nodes`, `/ws`). With authentication off (standalone's default) every caller is the
//! one open tenant, with admin rights.
//!
//! Callers are identified before any limit is applied: a request without a valid key counts
//! against its address and the quota for the unauthenticated only, so strangers cannot use up
//! the quota that tenants share.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::AppError;
use crate::limits::ClientIp;

/// One configured key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub tenant: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    pub admin: bool,
    /// The tenant's own requests per minute; `None`: the global limit alone.
    pub rpm: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub required: bool,
    pub keys: Vec<ApiKey>,
}

/// The caller of a request, put in its extensions by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `None` when authentication is off: the one open tenant.
    pub tenant: Option<String>,
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see something that belongs to `owner`.
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.admin && self.tenant.is_none() || self.tenant.as_deref() == owner
    }
}

pub struct Auth {
    required: bool,
    by_hash: HashMap<String, Caller>,
    /// Requests per minute of the tenants whose keys set one.
    tenant_rpm: HashMap<String, u32>,
}

/// The lower-case hex SHA-256 of a key, as config stores it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Auth {
    pub fn new(options: &AuthOptions) -> Result<Self, String> {
        if options.required && options.keys.is_empty() {
            return Err(
                "authentication is required but no API keys are configured (auth.keys); \
                 add keys or set auth.mode: off"
                    .into(),
            );
        }
        let mut by_hash = HashMap::new();
        let mut tenant_rpm: HashMap<String, u32> = HashMap::new();
        for key in &options.keys {
            let hash = key.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "auth key {:?}: sha256 must be 64 hex digits (voice-clone-tts hash-key prints it)",
                    key.name
                ));
            }
            if key.tenant.trim().is_empty() {
                return Err(format!("auth key {:?} names no tenant", key.name));
            }
            if let Some(rpm) = key.rpm {
                if rpm == 0 {
                    return Err(format!("auth key {:?}: rpm must be at least 1", key.name));
                }
                // One quota per tenant: keys that disagree about it would make it depend on
                // which key a request happens to carry.
                match tenant_rpm.insert(key.tenant.clone(), rpm) {
                    Some(other) if other != rpm => {
                        return Err(format!(
                            "auth keys of tenant {:?} give different rpm ({other} and {rpm}); \
                             its keys share one quota",
                            key.tenant
                        ));
                    }
                    _ => {}
                }
            }
            by_hash.insert(
                hash,
                Caller {
                    tenant: Some(key.tenant.clone()),
                    admin: key.admin,
                },
            );
        }
        Ok(Auth {
            required: options.required,
            by_hash,
            tenant_rpm,
        })
    }

    /// Requests per minute of each tenant that has a quota of its own.
    pub fn tenant_quotas(&self) -> &HashMap<String, u32> {
        &self.tenant_rpm
    }

    fn caller(&self, authorization: Option<&str>) -> Result<Caller, AppError> {
        if !self.required {
            return Ok(Caller {
                tenant: None,
                admin: true,
            });
        }
        let key = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| unauthorized("send an API key as Authorization: Bearer <key>"))?;
        self.by_hash
            .get(&hash_key(key))
            .cloned()
            .ok_or_else(|| unauthorized("the API key is not valid"))
    }
}

fn unauthorized(message: &str) -> AppError {
    AppError::client(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Paths anyone may call: the health probe, and the API's document and its page, which hold no
/// data (the page sends the key the user types with every call it makes).
fn is_public(path: &str) -> bool {
    path == "/health"
        || path == crate::openapi::DOCUMENT_PATH
        || path == crate::openapi::PAGE_PATH
        || path.starts_with(&format!("{}/", crate::openapi::PAGE_PATH))
}

/// Paths only admin keys may call: the worker fleet, the metrics and the queue's operations.
fn is_admin_only(path: &str) -> bool {
    path == "/api/nodes" || path == "/ws" || path == "/metrics" || path.starts_with("/api/admin/")
}

/// Middleware: identifies the caller and hands the [`Caller`] (and the client's address) to the
/// limits and the handlers. A request without a valid key is counted against its address and the
/// unauthenticated quota, then refused with 401 (or 429 when over those).
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let ip = state.limits.client_ip_of(&request);
    request.extensions_mut().insert(ClientIp(ip));
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Browsers cannot set headers on WebSockets; they may pass the key as ?access_token=,
    // percent-encoded as a query value is, so that keys with `+`, `/` or `=` work too.
    let from_query = request.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "access_token")
            .map(|(_, token)| format!("Bearer {token}"))
    });
    let caller = match state.auth.caller(authorization.or(from_query.as_deref())) {
        Ok(c) => c,
        Err(e) => {
            if let Err(limited) = state.limits.admit_unauthenticated(ip).await {
                tracing::info!(%ip, "unauthenticated request refused: {limited}");
                return limited.into_response();
            }
            let mut response = e.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("valid header"),
            );
            return response;
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Middleware inside the limits: refuses non-admins on admin paths (403). It runs after the
/// limits so that a tenant's forbidden requests count against its quotas like any other.
pub async fn authorize(request: Request, next: Next) -> Response {
    let admin = request
        .extensions()
        .get::<Caller>()
        .is_none_or(|caller| caller.admin);
    if is_admin_only(request.uri().path()) && !admin {
        return AppError::client(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this path is for admin keys only",
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&AuthOptions {
            required: true,
            keys: vec![ApiKey {
                name: "acme-ci".into(),
                tenant: "acme".into(),
                sha256: hash_key("s3cret"),
                admin: false,
                rpm: None,
            }],
        })
        .unwrap()
    }

    #[test]
    fn keys_are_checked_by_their_hash() {
        let a = auth();
        assert_eq!(
            a.caller(Some("Bearer s3cret")).unwrap(),
            Caller {
                tenant: Some("acme".into()),
                admin: false
            }
        );
        assert!(a.caller(Some("Bearer wrong")).is_err());
        assert!(a.caller(Some("s3cret")).is_err());
        assert!(a.caller(None).is_err());
    }

    #[test]
    fn required_auth_needs_keys_and_hashes_must_be_hashes() {
        assert!(
            Auth::new(&AuthOptions {
                required: true,
                keys: vec![]
            })
            .is_err()
        );
        let bad = ApiKey {
            name: "x".into(),
            tenant: "t".into(),
            sha256: "not-a-hash".into(),
            admin: false,
            rpm: None,
        };
        assert!(
            Auth::new(&AuthOptions {
                required: false,
                keys: vec![bad]
            })
            .is_err()
        );
        let open = Auth::new(&AuthOptions {
            required: false,
            keys: vec![],
        })
        .unwrap();
        assert!(open.caller(None).unwrap().admin);
    }

    #[test]
    fn keys_of_a_tenant_share_one_quota() {
        let key = |name: &str, tenant: &str, rpm: Option<u32>| ApiKey {
            name: name.into(),
            tenant: tenant.into(),
            sha256: hash_key(name),
            admin: false,
            rpm,
        };
        let auth = Auth::new(&AuthOptions {
            required: true,
            keys: vec![
                key("a1", "acme", Some(30)),
                key("a2", "acme", None),
                key("g1", "globex", None),
            ],
        })
        .unwrap();
        assert_eq!(
            auth.tenant_quotas(),
            &HashMap::from([("acme".to_string(), 30)])
        );
        let disagreeing = Auth::new(&AuthOptions {
            required: true,
            keys: vec![key("a1", "acme", Some(30)), key("a2", "acme", Some(60))],
        });
        assert!(disagreeing.is_err_and(|e| e.contains("different rpm")));
    }

    #[test]
    fn tenants_see_only_their_own() {
        let acme = Caller {
            tenant: Some("acme".into()),
            admin: false,
        };
        assert!(acme.owns(Some("acme")));
        assert!(!acme.owns(Some("globex")));
        assert!(!acme.owns(None));
        let open = Caller {
            tenant: None,
            admin: true,
        };
        assert!(open.owns(Some("acme")) && open.owns(None));
    }
}
