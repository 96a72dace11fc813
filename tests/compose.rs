//! compose.yaml as Compose itself reads it. A real Compose implementation (`docker-compose`,
//! which checks a file against the Compose schema without a Docker daemon) must accept it; then,
//! in the configuration it resolved, the services the origin document's
//! `docker-compose up -d gateway xtts-worker` names must exist and bring what they need, every
//! voice model must run in a service that reserves a GPU, and every service of ours must be
//! health-checked on its own `/health`, at the port its configuration gives it.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use tts_config::Settings;
use tts_worker::engine::EngineConfig;
use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml");
const PROJECT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// The image every service of ours runs.
const OUR_IMAGE: &str = "voice-clone-tts:latest";

/// Runs `docker-compose` on compose.yaml (or on `file`, read as if it were there) with the
/// secrets the file requires, so that it interpolates them instead of refusing.
fn docker_compose(file: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new("docker-compose");
    command
        .args(["--project-directory", PROJECT_DIR, "-f"])
        .arg(if file.is_some() { "-" } else { COMPOSE_FILE })
        .args(args)
        .env("TTS_NATS_GATEWAY_PASSWORD", "gateway-secret")
        .env("TTS_NATS_WORKER_PASSWORD", "worker-secret")
        .env("TTS_API_KEYS", "[]")
        // A developer's own Compose settings must not change what is checked.
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_PROJECT_NAME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "docker-compose is not installed, so compose.yaml cannot be validated; \
             `scripts/deps --servers` installs it (Debian's docker-compose package)"
        ),
        Err(e) => panic!("could not run docker-compose: {e}"),
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    if let Some(text) = file {
        stdin
            .write_all(text.as_bytes())
            .expect("docker-compose reads the file");
    }
    drop(stdin);
    child.wait_with_output().expect("docker-compose runs")
}

/// The configuration Compose resolves from compose.yaml (anchors merged, variables
/// interpolated), once per test process.
fn resolved() -> &'static Yaml {
    static RESOLVED: OnceLock<Yaml> = OnceLock::new();
    RESOLVED.get_or_init(|| {
        let out = docker_compose(None, &["config"]);
        assert!(
            out.status.success(),
            "docker-compose refuses compose.yaml:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("docker-compose prints UTF-8");
        YamlLoader::load_from_str(&text)
            .expect("docker-compose prints YAML")
            .into_iter()
            .next()
            .expect("one document")
    })
}

fn services() -> BTreeMap<String, &'static Yaml> {
    resolved()["services"]
        .as_hash()
        .expect("compose.yaml has services")
        .iter()
        .map(|(name, service)| (name.as_str().expect("a service name").to_string(), service))
        .collect()
}

fn strings(value: &Yaml) -> Vec<&str> {
    value
        .as_vec()
        .map(|items| items.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

fn is_ours(service: &Yaml) -> bool {
    service["image"].as_str() == Some(OUR_IMAGE)
}

/// The engine a worker service runs (`voice-clone-tts worker --engine NAME`), if it is one.
fn engine_of(service: &Yaml) -> Option<String> {
    let command = service["command"].as_str()?;
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "--engine")?;
    words.get(at + 1).map(|engine| engine.to_string())
}

/// A service's `TTS__*` variables: the configuration layer it adds over the embedded defaults.
fn environment(service: &Yaml) -> Vec<(String, String)> {
    let Some(vars) = service["environment"].as_hash() else {
        return Vec::new();
    };
    vars.iter()
        .filter_map(|(key, value)| {
            let key = key.as_str()?;
            let value = match value {
                Yaml::String(s) | Yaml::Real(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                _ => return None,
            };
            Some((key.to_string(), value))
        })
        .collect()
}

/// The settings a service of ours starts with, checked as the service would check them.
fn settings_of(name: &str, service: &Yaml) -> Settings {
    let settings = Settings::load_with_env(None, environment(service))
        .unwrap_or_else(|e| panic!("service {name}: its environment is refused: {e}"));
    EngineConfig::check_all(&settings.workers)
        .unwrap_or_else(|e| panic!("service {name}: its engines' settings are refused: {e}"));
    settings
}

fn reserves_a_gpu(service: &Yaml) -> bool {
    let devices = &service["deploy"]["resources"]["reservations"]["devices"];
    devices.as_vec().is_some_and(|devices| {
        devices.iter().any(|device| {
            device["driver"].as_str() == Some("nvidia")
                && strings(&device["capabilities"]).contains(&"gpu")
        })
    })
}

#[test]
fn compose_accepts_the_file_and_refuses_a_broken_one() {
    let out = docker_compose(None, &["config", "--quiet"]);
    assert!(
        out.status.success(),
        "docker-compose refuses compose.yaml:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator is no formality: the same file with a GPU reservation spelt wrong is refused.
    let original = std::fs::read_to_string(COMPOSE_FILE).unwrap();
    assert!(original.contains("capabilities: [gpu]"));
    let broken = original.replace("capabilities: [gpu]", "capabilities: gpu");
    let out = docker_compose(Some(&broken), &["config", "--quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken file was accepted");
    assert!(stderr.contains("capabilities"), "{stderr}");
}

#[test]
fn the_origin_documents_command_names_services_that_bring_what_they_need() {
    let services = services();
    // docker-compose up -d gateway xtts-worker
    for name in ["gateway", "xtts-worker"] {
        let service = services
            .get(name)
            .unwrap_or_else(|| panic!("compose.yaml has no service {name}"));
        // Naming a service starts its profiles, so what it depends on must share one of them
        // or belong to none.
        let profiles = strings(&service["profiles"]);
        for dependency in service["depends_on"].as_hash().into_iter().flatten() {
            let dependency = dependency.0.as_str().unwrap();
            let theirs = strings(&services[dependency]["profiles"]);
            assert!(
                theirs.is_empty() || theirs.iter().any(|p| profiles.contains(p)),
                "{name} depends on {dependency}, which `up {name}` would not start"
            );
        }
    }
    // Every worker is named after its engine, as the origin's xtts-worker is.
    for (name, service) in &services {
        if let Some(engine) = engine_of(service) {
            assert_eq!(*name, format!("{}-worker", engine.replace('_', "-")));
        }
    }
}

#[test]
fn every_voice_model_runs_where_a_gpu_is_reserved() {
    let services = services();
    let mut model_services = Vec::new();
    for (name, service) in &services {
        let Some(engine) = engine_of(service) else {
            continue;
        };
        let settings = settings_of(name, service);
        let section = settings.engine(&engine).unwrap();
        // An engine with upstream servers runs its model there: each server it is given must be
        // a service of this file with a GPU.
        if let Some(urls) = section.options.get("urls") {
            let urls: Vec<String> = match urls {
                serde_json::Value::String(list) => {
                    tts_config::list_or_string(serde_json::Value::String(list.clone())).unwrap()
                }
                other => serde_json::from_value(other.clone()).unwrap(),
            };
            for url in urls {
                let host = url
                    .split("://")
                    .nth(1)
                    .and_then(|rest| rest.split([':', '/']).next())
                    .unwrap_or_default()
                    .to_string();
                let server = services.get(host.as_str()).unwrap_or_else(|| {
                    panic!("{name} sends its jobs to {url}, which is no service of this file")
                });
                model_services.push(host.clone());
                assert!(
                    reserves_a_gpu(server),
                    "{host} runs {engine}'s model for {name} and reserves no NVIDIA GPU"
                );
            }
        }
        // A worker that runs its model itself on CUDA needs the GPU in its own container.
        if section.options.get("device").and_then(|d| d.as_str()) == Some("cuda") {
            model_services.push(name.clone());
            assert!(
                reserves_a_gpu(service),
                "{name} runs {engine} on cuda and reserves no NVIDIA GPU"
            );
        }
    }
    model_services.sort();
    assert_eq!(model_services, ["gpt-sovits", "xtts"]);
}

#[test]
fn every_service_of_ours_checks_its_own_health_endpoint() {
    let services = services();
    let ours: Vec<_> = services.iter().filter(|(_, s)| is_ours(s)).collect();
    assert!(ours.len() >= 6, "{:?}", services.keys());
    for (name, service) in ours {
        let settings = settings_of(name, service);
        let port = match engine_of(service) {
            Some(engine) => settings.engine(&engine).unwrap().port,
            None => {
                assert_eq!(service["command"].as_str(), Some("voice-clone-tts gateway"));
                settings.gateway.port
            }
        };
        let test = strings(&service["healthcheck"]["test"]).join(" ");
        let url = format!("http://127.0.0.1:{port}/health");
        assert!(
            test.contains(&url),
            "{name}'s health check must call {url}, not: {test:?}"
        );
        // Only a failed request may fail the check: urlopen raises on 503 and on no answer.
        assert!(test.starts_with("CMD python3 -c"), "{name}: {test}");
        assert!(
            service["healthcheck"]["start_period"].as_str().is_some(),
            "{name} needs a start_period: its engine loads before /health answers"
        );
    }
}
