//! The multipart form of `POST /api/voices`: arbitrary bytes as the body of a request with a
//! fixed boundary, read by the gateway's own `upload::read_form` through axum's `Multipart`.
//! It must never panic, and must answer a hostile form with a client error (4xx), never a
//! 500; a form it accepts holds a clip within the size limit and no more text than the body.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::{Request, header};
use axum::response::IntoResponse;
use libfuzzer_sys::fuzz_target;
use tts_gateway::upload::read_form;

/// The boundary the seed bodies in the corpus use.
const BOUNDARY: &str = "fuzzboundary";
/// Small, so that the oversized-clip path is reached as often as the ordinary one.
const MAX_UPLOAD: usize = 256;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|body: &[u8]| {
    let request = Request::builder()
        .method("POST")
        .uri("/api/voices")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(body.to_vec()))
        .expect("a request");
    runtime().block_on(async {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .expect("the content type is multipart");
        match read_form(&mut multipart, MAX_UPLOAD).await {
            Ok(form) => {
                if let Some(file) = &form.file {
                    assert!(file.len() <= MAX_UPLOAD);
                    assert!(file.len() <= body.len());
                }
                for text in [&form.name, &form.language, &form.prompt_text, &form.engine]
                    .into_iter()
                    .flatten()
                {
                    // Text fields are read as UTF-8 with invalid bytes replaced (U+FFFD, three
                    // bytes for one), so it is characters that the body bounds.
                    assert!(text.chars().count() <= body.len());
                }
            }
            Err(e) => {
                let status = e.into_response().status();
                assert!(status.is_client_error(), "a form answered {status}");
            }
        }
    });
});
