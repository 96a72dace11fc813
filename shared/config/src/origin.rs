//! Keys of the origin document's `config.yaml` that this service spells differently.
//!
//! A config file written for the origin document must load as it is, so each of its keys that
//! has a counterpart here is rewritten to that counterpart. The rewrite happens inside each layer
//! (embedded defaults, file, environment) before the layers are merged: a file's
//! `workers.gpt_sovits.api_url` then replaces the embedded `urls` exactly as a file's `urls`
//! would, and a `TTS__WORKERS__GPT_SOVITS__URLS` variable still wins over both.

use config::{ConfigError as SourceError, Map, Source, Value, ValueKind};
use serde::Deserialize;

/// What an origin key's value must be, and how it becomes the value of this service's key.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// One server URL, which becomes a list of one.
    OneUrl,
    /// Whole seconds.
    Seconds,
    /// A directory path.
    Directory,
}

/// An origin key, the key of this service it stands for, and what its value must be.
struct Alias {
    origin: &'static str,
    ours: &'static str,
    kind: Kind,
}

/// Every origin key with a counterpart here. `docs/CONFIGURATION.md` lists them with the keys
/// of the origin document that have none.
const ALIASES: [Alias; 4] = [
    Alias {
        origin: "workers.gpt_sovits.api_url",
        ours: "workers.gpt_sovits.urls",
        kind: Kind::OneUrl,
    },
    // The origin's gateway expects a heartbeat this often; here the workers send them.
    Alias {
        origin: "gateway.heartbeat_interval",
        ours: "worker.heartbeat_interval",
        kind: Kind::Seconds,
    },
    Alias {
        origin: "paths.voices",
        ours: "storage.voices_dir",
        kind: Kind::Directory,
    },
    Alias {
        origin: "paths.output",
        ours: "storage.audio_dir",
        kind: Kind::Directory,
    },
];

/// A configuration layer whose origin keys are rewritten to this service's keys.
#[derive(Debug, Clone)]
pub(crate) struct OriginKeys<S>(pub S);

impl<S: Source + Clone + Send + Sync + 'static> Source for OriginKeys<S> {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, SourceError> {
        let mut layer = self.0.collect()?;
        rewrite(&mut layer).map_err(SourceError::Message)?;
        Ok(layer)
    }
}

/// Rewrites the origin keys of one layer. A layer that sets both an origin key and its
/// counterpart to different values is refused: which one was meant cannot be known.
fn rewrite(layer: &mut Map<String, Value>) -> Result<(), String> {
    for alias in &ALIASES {
        let Some(value) = take(layer, alias.origin) else {
            continue;
        };
        let converted = convert(alias, value)?;
        if let Some(existing) = get(layer, alias.ours)
            && !same(alias.kind, existing, &converted)
        {
            return Err(format!(
                "{} and {} are both set, to different values; {} is the origin document's \
                 spelling of {}, so keep one of them",
                alias.origin, alias.ours, alias.origin, alias.ours
            ));
        }
        put(layer, alias.ours, converted);
    }
    Ok(())
}

fn convert(alias: &Alias, value: Value) -> Result<Value, String> {
    let origin = alias.origin;
    match alias.kind {
        Kind::OneUrl => match value.kind {
            ValueKind::String(url) if !url.trim().is_empty() => {
                Ok(Value::from(vec![Value::from(url.trim().to_string())]))
            }
            _ => Err(format!(
                "{origin} must be one server URL, such as \"http://127.0.0.1:9880\"; several \
                 servers go in {} as a list",
                alias.ours
            )),
        },
        Kind::Seconds => value
            .into_uint()
            .map(Value::from)
            .map_err(|e| format!("{origin} must be whole seconds: {e}")),
        Kind::Directory => match value.kind {
            ValueKind::String(dir) => Ok(Value::from(dir)),
            _ => Err(format!("{origin} must be a directory path")),
        },
    }
}

/// Whether a value given for this service's key says the same as the converted origin value.
fn same(kind: Kind, ours: &Value, converted: &Value) -> bool {
    #[derive(Deserialize, PartialEq)]
    struct Urls(#[serde(deserialize_with = "crate::list_or_string")] Vec<String>);
    match kind {
        Kind::OneUrl => {
            let urls = |v: &Value| v.clone().try_deserialize::<Urls>().ok();
            urls(ours).is_some_and(|ours| Some(ours) == urls(converted))
        }
        Kind::Seconds => ours.clone().into_uint().ok() == converted.clone().into_uint().ok(),
        Kind::Directory => ours.clone().into_string().ok() == converted.clone().into_string().ok(),
    }
}

/// Removes a key from a layer. A file's layer is nested tables; the environment's has one
/// dotted key per variable, so both spellings are looked for.
fn take(layer: &mut Map<String, Value>, key: &str) -> Option<Value> {
    if let Some(value) = layer.remove(key) {
        return Some(value);
    }
    let (parents, last) = split(key);
    let mut table = layer;
    for part in parents {
        match &mut table.get_mut(part)?.kind {
            ValueKind::Table(inner) => table = inner,
            _ => return None,
        }
    }
    table.remove(last)
}

fn get<'a>(layer: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if let Some(value) = layer.get(key) {
        return Some(value);
    }
    let (parents, last) = split(key);
    let mut table = layer;
    for part in parents {
        match &table.get(part)?.kind {
            ValueKind::Table(inner) => table = inner,
            _ => return None,
        }
    }
    table.get(last)
}

/// Sets a key in a layer. A dotted top-level key is merged into the nested tables when the
/// layers are combined, so it serves both kinds of layer.
fn put(layer: &mut Map<String, Value>, key: &str, value: Value) {
    layer.insert(key.to_string(), value);
}

fn split(key: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a key has at least one part");
    (parts, last)
}
