//! The web console in headless Chromium: the page and its assets are public and revalidated, it
//! loads without errors, speech plays while it streams, an uploaded reference enrols to `ready`
//! and a bad one shows the API's message, every control is labelled and works from the
//! keyboard, and an admin key sees the fleet change live.
//!
//! Each test saves a screenshot of its last page under `<target>/console-screenshots/`.

use std::time::{Duration, Instant};

use fantoccini::key::Key;
use serde_json::{Value, json};
use tts_config::ApiKeySettings;
use tts_gateway::auth::hash_key;
use tts_tests::app::VOICE;
use tts_tests::browser::{Browser, BrowserOptions};
use tts_tests::clips::{self, FIRST, SECOND};
use tts_tests::{
    Deployment, TestApp, spawn_engines_with, spawn_standalone, spawn_worker_process,
    wait_until_listed,
};

const TENANT: &str = "console-tenant-key-0123";
const ADMIN: &str = "console-admin-key-4567";

const SECONDS: Duration = Duration::from_secs(1);

fn keys() -> Vec<ApiKeySettings> {
    [("acme", TENANT, false), ("ops", ADMIN, true)]
        .into_iter()
        .map(|(tenant, key, admin)| ApiKeySettings {
            name: format!("{tenant}-console"),
            tenant: tenant.into(),
            sha256: hash_key(key),
            admin,
            rpm: None,
        })
        .collect()
}

/// Opens the console and waits until it has listed the voices and the fleet.
async fn open_console(browser: &Browser) {
    browser.goto("/").await;
    browser
        .wait_for_text("#voices-status", "stock", 30 * SECONDS)
        .await;
    browser
        .wait_for_text("#fleet-status", "live", 30 * SECONDS)
        .await;
}

fn assert_no_errors(errors: &[tts_tests::browser::LogEntry]) {
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
}

/// What `<audio id="player">` has decoded: null until it has data and a duration; its error if
/// it has one.
const DECODED: &str = "const p = document.getElementById('player'); \
    if (p.error) return {error: p.error.code, message: p.error.message}; \
    return p.readyState >= 2 && Number.isFinite(p.duration) && p.duration > 0 \
        ? {duration: p.duration, readyState: p.readyState, paused: p.paused, \
           played: p.played.length, currentTime: p.currentTime} \
        : null;";

/// Speaks `text` through the form in `format` and waits until the page has the whole answer;
/// returns the job's id, from the recent jobs.
async fn speak(browser: &Browser, text: &str, format: &str) -> String {
    let before = newest_job(browser).await;
    browser.select("#speak-format", format).await;
    browser.fill("#speak-text", text).await;
    browser.click("#speak-submit").await;
    wait_until_spoken(browser, &before).await
}

/// The newest job in the recent jobs, or null.
async fn newest_job(browser: &Browser) -> Value {
    browser.js(NEWEST_JOB, vec![]).await
}

const NEWEST_JOB: &str = "const row = document.querySelector('#jobs-table tbody tr[data-job-id]'); \
    return row ? row.dataset.jobId : null;";

/// Waits until a job newer than `before` is in the recent jobs and the page says it has all of
/// its audio; returns its id.
async fn wait_until_spoken(browser: &Browser, before: &Value) -> String {
    let script = format!(
        "const newest = (() => {{ {NEWEST_JOB} }})(); \
         const status = document.getElementById('speak-status').textContent; \
         return newest && newest !== {before} && status.includes(`${{newest.slice(0, 8)}}: done`) \
           ? newest : null;"
    );
    let job = browser
        .wait_for("a new synthesis done", 60 * SECONDS, &script)
        .await;
    job.as_str().expect("a job id").to_string()
}

/// Waits until the recording has run for at least `seconds`, as the page counts them.
async fn wait_until_recorded_for(browser: &Browser, seconds: u32) {
    browser
        .wait_for(
            &format!("{seconds} s of recording"),
            (seconds + 15) * SECONDS,
            &format!(
                "const m = /Recording: (\\d+) s/.exec(document.getElementById('clone-status').textContent); \
                 return m !== null && Number(m[1]) >= {seconds};"
            ),
        )
        .await;
}

/// Checks that the player decoded the job's audio, as long as the stored audio within
/// `tolerance` seconds, and that the recent jobs show the job succeeded.
async fn assert_played(browser: &Browser, app: &TestApp, job_id: &str, tolerance: f64) -> Value {
    let media = browser
        .wait_for("decoded audio in the player", 30 * SECONDS, DECODED)
        .await;
    assert!(media.get("error").is_none(), "the player failed: {media}");
    let job = app.job(job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let stored = job["duration_seconds"].as_f64().expect("a duration");
    let decoded = media["duration"].as_f64().unwrap();
    assert!(
        (decoded - stored).abs() <= tolerance,
        "the player has {decoded} s, the job {stored} s: {media}"
    );
    let row = format!("#jobs-table tr[data-job-id=\"{job_id}\"][data-status=\"succeeded\"]");
    browser
        .wait_for(
            "the job succeeded in the recent jobs",
            30 * SECONDS,
            &format!("return document.querySelector({}) !== null;", json!(row)),
        )
        .await;
    media
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_public_typed_and_revalidated() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.auth.mode = "auto".into();
        s.auth.keys = keys();
    })
    .await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} without a key");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let etag = headers["etag"].to_str().unwrap().to_string();
        assert!(etag.starts_with('"') && etag.len() > 8, "{etag}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");

        // A browser revalidating what it has gets 304 and no body.
        let again = app
            .client
            .get(app.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.bytes().await.unwrap().is_empty());
        let stale = app
            .client
            .get(app.url(path))
            .header("if-none-match", "\"an-older-build\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), 200, "{path}");
    }

    // The page may run its own scripts and talk to its own gateway, nothing else.
    let page = app.client.get(app.url("/")).send().await.unwrap();
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    // The API is as closed as before; the console's paths answer other methods with the API's
    // JSON 405, and a path it does not have is the API's (401 without a key, 404 with one).
    let voices = app.client.get(app.url("/api/voices")).send().await.unwrap();
    assert_eq!(voices.status(), 401);
    let post = app.client.post(app.url("/")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    let body: Value = post.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed", "{body}");
    let missing = app
        .client
        .get(app.url("/console/missing.js"))
        .bearer_auth(TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "not_found", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_requests_count_as_requests_without_a_key() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.auth.mode = "auto".into();
        s.auth.keys = keys();
        s.gateway.unauthenticated_rpm = 5;
    })
    .await;
    // The quota for requests without a key runs out for the page too...
    let mut refused = None;
    for _ in 0..20 {
        let response = app
            .client
            .get(app.url("/console/icon.svg"))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            refused = Some(response.json::<Value>().await.unwrap());
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let refused = refused.expect("the unauthenticated quota runs out");
    assert_eq!(refused["error"], "rate_limit_exceeded", "{refused}");
    // ...and never touches the tenants' quota.
    let tenant = app
        .client
        .get(app.url("/api/voices"))
        .bearer_auth(TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(tenant.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_loads_without_errors_and_keeps_the_key_in_the_tab() {
    let app = spawn_standalone(&["piper"]).await;
    let browser = Browser::open(&app.base_url).await;
    browser
        .run("page-loads", async |b: &Browser| {
            open_console(b).await;
            assert_eq!(b.client.title().await.unwrap(), "voice-clone-tts console");
            let voice = b
                .js(
                    "return document.getElementById('speak-voice').value;",
                    vec![],
                )
                .await;
            assert_eq!(voice, VOICE);
            b.wait_for_text("#fleet-status", "1 worker live (piper)", 10 * SECONDS)
                .await;
            assert_no_errors(&b.errors().await);

            // The key is the tab's: in sessionStorage, never in localStorage or a cookie, and
            // still there after a reload of the tab.
            b.fill("#api-key", "tab-only-key").await;
            b.click("#key-use").await;
            b.wait_for_text("#key-status", "Key set for this tab", 10 * SECONDS)
                .await;
            let stored = b
                .js(
                    "return [sessionStorage.getItem('voice-clone-tts.key'), localStorage.length, \
                     document.cookie];",
                    vec![],
                )
                .await;
            assert_eq!(stored, json!(["tab-only-key", 0, ""]));
            b.client.refresh().await.unwrap();
            open_console(b).await;
            let field = b
                .js("return document.getElementById('api-key').value;", vec![])
                .await;
            assert_eq!(field, "tab-only-key");
            b.click("#key-forget").await;
            b.wait_for_text("#key-status", "No key", 10 * SECONDS).await;
            let stored = b
                .js(
                    "return sessionStorage.getItem('voice-clone-tts.key');",
                    vec![],
                )
                .await;
            assert!(stored.is_null(), "{stored}");
            assert_no_errors(&b.errors().await);
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_plays_while_it_streams_in_every_format() {
    let app = spawn_standalone(&["piper"]).await;
    let browser = Browser::open(&app.base_url).await;
    browser
        .run("synthesis", async |b: &Browser| {
            open_console(b).await;
            // MP3 decoders add the encoder's delay and pad the last frame; the others decode to
            // the stored length.
            for (format, tolerance) in [
                ("mp3", 0.2),
                ("wav", 0.02),
                ("pcm", 0.02),
                ("opus", 0.05),
                ("flac", 0.02),
            ] {
                let text = format!("The console plays {format} as it arrives. Then it keeps it.");
                let job_id = speak(b, &text, format).await;
                let media = assert_played(b, &app, &job_id, tolerance).await;
                if format == "mp3" {
                    // Played from the stream itself: the element started before the body ended.
                    assert!(
                        media["played"].as_u64() > Some(0) || media["paused"] == false,
                        "{media}"
                    );
                }
                let download = b
                    .js(
                        "const a = document.getElementById('speak-download'); \
                         return a.hidden ? null : a.getAttribute('download');",
                        vec![],
                    )
                    .await;
                let extension = if format == "opus" { "ogg" } else { format };
                assert_eq!(download, format!("{job_id}.{extension}").as_str());
            }
            assert_no_errors(&b.errors().await);
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_reference_enrols_to_ready_and_a_bad_one_shows_the_api_message() {
    let reference = tokio::task::spawn_blocking(|| clips::spoken_wav(&format!("{FIRST} {SECOND}")))
        .await
        .unwrap();
    let mut noise = vec![0u8; 64 * 1024];
    for (i, b) in noise.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("joe.wav");
    let bad = files.path().join("noise.wav");
    std::fs::write(&good, &reference).unwrap();
    std::fs::write(&bad, &noise).unwrap();
    let app = spawn_engines_with(Deployment::Standalone, &["kokoro"], |s| {
        s.voices.search_evaluations = 1;
    })
    .await;
    // What the API says about the bad clip, to find in the page.
    let refusal: Value = app
        .upload_voice(noise, "noise.wav", &[("name", "Noise"), ("language", "en")])
        .await
        .json()
        .await
        .unwrap();
    let expected = format!(
        "{} ({})",
        refusal["message"].as_str().unwrap(),
        refusal["error"].as_str().unwrap()
    );
    assert_eq!(refusal["error"], "invalid_audio", "{refusal}");

    let browser = Browser::open(&app.base_url).await;
    browser
        .run("enrollment", async |b: &Browser| {
            open_console(b).await;
            b.fill("#clone-name", "Noise").await;
            b.select("#clone-language", "en").await;
            b.choose_file("#clone-file", &bad).await;
            b.click("#clone-submit").await;
            let shown = b
                .wait_for_text("#clone-error", &expected, 30 * SECONDS)
                .await;
            assert_eq!(shown, expected);

            b.fill("#clone-name", "Console Joe").await;
            b.choose_file("#clone-file", &good).await;
            b.wait_for_text("#clone-reference", "joe.wav", 5 * SECONDS)
                .await;
            b.fill("#clone-transcript", &format!("{FIRST} {SECOND}"))
                .await;
            b.click("#clone-submit").await;
            b.wait_for_text(
                "#clone-status",
                "Voice Console Joe is ready",
                600 * SECONDS,
            )
            .await;
            // The error from before went with the new upload.
            assert_eq!(b.text("#clone-error").await, "");

            // The progress came live, event by event, up to success.
            let events = b
                .js(
                    "return [...document.querySelectorAll('#clone-events li')] \
                     .map((li) => li.textContent);",
                    vec![],
                )
                .await;
            let events: Vec<String> = serde_json::from_value(events).unwrap();
            assert!(
                events.iter().any(|e| e.contains("enrollment step")),
                "{events:?}"
            );
            assert_eq!(events.last().map(String::as_str), Some("100 % succeeded"));
            let progress = b
                .js("return document.getElementById('clone-progress').value;", vec![])
                .await;
            assert_eq!(progress, 1.0);

            // Listed as ready, with its enrollment job among the recent jobs.
            let row = b
                .wait_for(
                    "the cloned voice listed as ready",
                    30 * SECONDS,
                    "const r = document.querySelector('#voices-table tr[data-name=\"Console Joe\"]'); \
                     return r && r.dataset.status === 'ready' ? r.dataset.voiceId : null;",
                )
                .await;
            let voice_id = row.as_str().unwrap().to_string();
            let voice = app.get_json(&format!("/api/voices/{voice_id}")).await;
            assert_eq!(voice["status"], "ready", "{voice}");
            b.wait_for(
                "the enrollment job succeeded in the recent jobs",
                30 * SECONDS,
                "return document.querySelector('#jobs-table tr[data-kind=\"enrollment\"]\
                 [data-status=\"succeeded\"]') !== null;",
            )
            .await;
            // No voice was made of the refused clip.
            let voices = app.get_json("/api/voices").await;
            assert!(
                !voices["voices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == "Noise"),
                "{voices}"
            );

            // The new voice speaks from the same page.
            b.select("#speak-voice", &voice_id).await;
            let job_id = speak(b, "Hello from a cloned voice.", "mp3").await;
            assert_played(b, &app, &job_id, 0.2).await;
            let job = app.job(&job_id).await;
            assert_eq!(job["voice_id"], voice_id.as_str(), "{job}");

            // The only errors are the refusal's own: the API's 422 for the bad clip.
            let errors = b.errors().await;
            assert!(
                errors
                    .iter()
                    .all(|e| e.source == "network" && e.message.contains("422")),
                "{errors:#?}"
            );
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_from_the_microphone_is_sent_as_a_wav_reference() {
    let reference = tokio::task::spawn_blocking(|| clips::spoken_wav(&format!("{FIRST} {SECOND}")))
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let microphone = files.path().join("microphone.wav");
    std::fs::write(&microphone, &reference).unwrap();
    let app = spawn_engines_with(Deployment::Standalone, &["kokoro"], |s| {
        s.voices.search_evaluations = 1;
    })
    .await;
    let browser = Browser::open_with(
        &app.base_url,
        BrowserOptions {
            microphone: Some(microphone),
        },
    )
    .await;
    browser
        .run("recording", async |b: &Browser| {
            open_console(b).await;
            b.click("#record-toggle").await;
            b.wait_for(
                "the recording under way",
                10 * SECONDS,
                "return document.getElementById('record-toggle').getAttribute('aria-pressed') \
                 === 'true';",
            )
            .await;
            // The fake microphone plays the clip: six seconds of it hold enough speech.
            wait_until_recorded_for(b, 6).await;
            b.click("#record-toggle").await;
            let reference = b
                .wait_for_text("#clone-reference", "the recording", 20 * SECONDS)
                .await;
            let seconds: f64 = reference
                .trim_start_matches("Reference: the recording (")
                .trim_end_matches(" s).")
                .parse()
                .unwrap_or_else(|_| panic!("{reference}"));
            assert!(seconds >= 6.0, "{reference}");
            let preview = b
                .js(
                    "const p = document.getElementById('record-preview'); \
                     return !p.hidden && p.src.startsWith('blob:');",
                    vec![],
                )
                .await;
            assert_eq!(preview, true);

            b.fill("#clone-name", "Recorded").await;
            b.select("#clone-language", "en").await;
            b.click("#clone-submit").await;
            // Accepted (the gateway decoded the WAV and a worker found enough speech in it),
            // then enrolled.
            b.wait_for_text("#clone-status", "Voice Recorded is ready", 600 * SECONDS)
                .await;
            assert_eq!(b.text("#clone-error").await, "");
            let voices = app.get_json("/api/voices").await;
            let recorded = voices["voices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "Recorded")
                .cloned()
                .expect("the recorded voice is listed");
            assert_eq!(recorded["status"], "ready", "{recorded}");
            assert!(
                recorded["speech_seconds"].as_f64() >= Some(3.0),
                "{recorded}"
            );
            assert_no_errors(&b.errors().await);
        })
        .await;
}

/// A name for an element, the same in the page's list of controls and for the focused one.
const DESCRIBE: &str = "const describe = (e) => e.id ? `#${e.id}` : \
    `${e.tagName.toLowerCase()}[${e.getAttribute('aria-label') || e.textContent.trim()}]`;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_is_labelled_and_works_from_the_keyboard() {
    let app = spawn_standalone(&["piper"]).await;
    let browser = Browser::open(&app.base_url).await;
    browser
        .run("keyboard", async |b: &Browser| {
            open_console(b).await;

            // Every control has a name people and screen readers can use, and every label is
            // for a control that exists.
            let unnamed = b
                .js(
                    "const name = (e) => (e.getAttribute('aria-label') || '').trim() \
                       || (e.getAttribute('aria-labelledby') || '').split(' ') \
                            .map((id) => document.getElementById(id)?.textContent.trim() || '') \
                            .join(' ').trim() \
                       || [...(e.labels || [])].map((l) => l.textContent.trim()).join(' ').trim(); \
                     const controls = [...document.querySelectorAll( \
                       'input, select, textarea, progress, audio, button, a[href]')] \
                       .filter((e) => !e.closest('[aria-hidden=\"true\"]')); \
                     const unnamed = controls \
                       .filter((e) => !(name(e) || (e.matches('button, a') && e.textContent.trim()))) \
                       .map((e) => e.outerHTML.slice(0, 120)); \
                     const orphans = [...document.querySelectorAll('label[for]')] \
                       .filter((l) => !document.getElementById(l.htmlFor)) \
                       .map((l) => l.outerHTML); \
                     return unnamed.concat(orphans);",
                    vec![],
                )
                .await;
            assert_eq!(unnamed, json!([]), "controls without a name");
            let live = b
                .js(
                    "const sections = ['speak', 'clone', 'voices', 'jobs', 'fleet']; \
                     return ['key', ...sections].every((r) => \
                         document.getElementById(`${r}-status`).getAttribute('aria-live') === 'polite') \
                       && sections.every((r) => \
                         document.getElementById(`${r}-error`).getAttribute('role') === 'alert');",
                    vec![],
                )
                .await;
            assert_eq!(live, true, "every section announces its status and errors");

            // Tab walks the controls in the order they are shown, each with a visible focus
            // ring. (The player's own buttons live inside the <audio> element.)
            let expected = b
                .js(
                    &format!(
                        "{DESCRIBE} return [...document.querySelectorAll( \
                           'a[href], button, input, select, textarea, [tabindex]')] \
                           .filter((e) => !e.disabled && e.tabIndex >= 0 && e.tagName !== 'AUDIO' \
                             && e.getClientRects().length > 0) \
                           .map(describe);"
                    ),
                    vec![],
                )
                .await;
            let expected: Vec<String> = serde_json::from_value(expected).unwrap();
            assert!(expected.len() > 15, "{expected:?}");
            b.client.refresh().await.unwrap();
            open_console(b).await;
            let mut walked: Vec<String> = Vec::new();
            let mut unringed = Vec::new();
            for _ in 0..expected.len() * 3 + 20 {
                b.press(Key::Tab).await;
                let focused = b
                    .js(
                        &format!(
                            "{DESCRIBE} const e = document.activeElement; \
                             if (!e || e === document.body || e.tagName === 'AUDIO') return null; \
                             const style = getComputedStyle(e); \
                             return [describe(e), style.outlineStyle !== 'none' \
                               && parseFloat(style.outlineWidth) >= 2];"
                        ),
                        vec![],
                    )
                    .await;
                let Some([name, ringed]) = focused.as_array().map(|a| [a[0].clone(), a[1].clone()])
                else {
                    continue;
                };
                let name = name.as_str().unwrap().to_string();
                if walked.last() == Some(&name) {
                    continue;
                }
                if ringed != true {
                    unringed.push(name.clone());
                }
                walked.push(name);
                if walked.len() == expected.len() {
                    break;
                }
            }
            assert_eq!(walked, expected, "the tab order");
            assert!(unringed.is_empty(), "focus not visible on {unringed:?}");

            // Enter submits: the text typed, then Speak.
            tab_to(b, "#speak-text").await;
            let field = b.client.active_element().await.unwrap();
            field.clear().await.unwrap();
            field.send_keys("Typed and spoken from the keyboard.").await.unwrap();
            tab_to(b, "#speak-submit").await;
            let before = newest_job(b).await;
            b.press(Key::Enter).await;
            wait_until_spoken(b, &before).await;
            b.wait_for("decoded audio in the player", 30 * SECONDS, DECODED)
                .await;

            // Space presses a button.
            tab_to(b, "#jobs-refresh").await;
            b.press(Key::Space).await;
            b.wait_for_text("#jobs-status", "1 job refreshed", 10 * SECONDS)
                .await;

            // A button in the voices' table, by Enter: the voice is chosen and the focus goes
            // to the text.
            tab_to(b, &format!("button[aria-label=\"Use voice {VOICE}\"]")).await;
            b.press(Key::Enter).await;
            b.wait_for_text("#speak-status", "chosen", 10 * SECONDS).await;
            let focused = b.js("return document.activeElement.id;", vec![]).await;
            assert_eq!(focused, "speak-text");

            // Recording starts and stops on Space, and says so to assistive technology.
            tab_to(b, "#record-toggle").await;
            b.press(Key::Space).await;
            wait_until_recorded_for(b, 1).await;
            let pressed = b
                .js(
                    "return document.getElementById('record-toggle').getAttribute('aria-pressed');",
                    vec![],
                )
                .await;
            assert_eq!(pressed, "true");
            b.press(Key::Space).await;
            b.wait_for_text("#clone-status", "Recorded", 10 * SECONDS)
                .await;

            // The key form submits on Enter.
            tab_to(b, "#api-key").await;
            b.client
                .active_element()
                .await
                .unwrap()
                .send_keys("keyboard-key")
                .await
                .unwrap();
            b.press(Key::Enter).await;
            b.wait_for_text("#key-status", "Key set for this tab", 10 * SECONDS)
                .await;
            assert_no_errors(&b.errors().await);
        })
        .await;
}

/// Presses Tab until the element `css` has the focus.
async fn tab_to(browser: &Browser, css: &str) {
    for _ in 0..200 {
        let there = browser
            .js(
                "return document.activeElement !== null && document.activeElement.matches(arguments[0]);",
                vec![json!(css)],
            )
            .await;
        if there == true {
            return;
        }
        browser.press(Key::Tab).await;
    }
    panic!("Tab never reached {css}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_sees_the_fleet_change_live() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.auth.mode = "auto".into();
        s.auth.keys = keys();
    })
    .await;
    let _first = spawn_worker_process(&app.settings, "console-worker-a");
    let mut second = spawn_worker_process(&app.settings, "console-worker-b");
    wait_until_listed(&app.client, &app.base_url, Some(ADMIN), VOICE, 60 * SECONDS).await;
    let nodes = wait_for_nodes(&app, 2).await;

    let browser = Browser::open(&app.base_url).await;
    browser
        .run("fleet", async |b: &Browser| {
            b.goto("/").await;
            // Without a key the API's refusal is shown, and where to put the key.
            b.wait_for_text("#voices-error", "(unauthorized)", 30 * SECONDS)
                .await;
            b.wait_for_text("#key-status", "needs an API key", 10 * SECONDS)
                .await;

            // A tenant's key: its voices, and the API's refusal of the fleet.
            b.fill("#api-key", TENANT).await;
            b.press(Key::Enter).await;
            b.wait_for_text("#voices-status", "stock", 30 * SECONDS)
                .await;
            b.wait_for_text("#fleet-error", "(forbidden)", 30 * SECONDS)
                .await;

            // An admin key: the live workers, as the API lists them, over the WebSocket.
            b.fill("#api-key", ADMIN).await;
            b.click("#key-use").await;
            b.wait_for_text(
                "#fleet-status",
                "2 workers live (piper); live",
                30 * SECONDS,
            )
            .await;
            assert_eq!(b.text("#fleet-error").await, "");
            let shown = shown_nodes(b).await;
            let mut listed: Vec<String> = nodes
                .iter()
                .map(|n| n["node_id"].as_str().unwrap().to_string())
                .collect();
            listed.sort();
            assert_eq!(shown, listed);
            assert!(
                shown.iter().any(|n| n.contains("console-worker-b")),
                "{shown:?}"
            );

            // A worker that stops leaves the page without a reload.
            let status = second.terminate();
            assert!(status.success(), "{status}");
            b.wait_for_text("#fleet-status", "1 worker live (piper); live", 30 * SECONDS)
                .await;
            let shown = shown_nodes(b).await;
            assert_eq!(shown.len(), 1, "{shown:?}");
            assert!(shown[0].contains("console-worker-a"), "{shown:?}");
        })
        .await;
}

/// The node ids the fleet table shows, sorted.
async fn shown_nodes(browser: &Browser) -> Vec<String> {
    let shown = browser
        .js(
            "return [...document.querySelectorAll('#fleet-table tr[data-node-id]')] \
             .map((r) => r.dataset.nodeId).sort();",
            vec![],
        )
        .await;
    serde_json::from_value(shown).unwrap()
}

/// Polls `GET /api/nodes` with the admin key until it lists `count` workers; returns them.
async fn wait_for_nodes(app: &TestApp, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + 60 * SECONDS;
    loop {
        let body: Value = app
            .client
            .get(app.url("/api/nodes"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == count {
            return nodes;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
