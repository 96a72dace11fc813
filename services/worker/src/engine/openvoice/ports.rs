//! OpenVoice's model files and their ports: which graphs the model directory must hold, and the
//! inputs and outputs (names, element types, fixed dimensions) the engine feeds and reads. A
//! graph that differs is refused at load, naming the file, the port and what differs.

use std::path::Path;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::spectrogram::BINS;
use crate::error::{EngineError, EngineErrorKind};
use crate::runtime::{self, Placement, SessionPool};

/// Values of a tone-colour embedding.
pub const TONE_COLOR_DIM: usize = 256;

/// The reference encoder's graph in the model directory.
pub const EXTRACTOR_FILE: &str = "tone_color_extractor.onnx";
/// The converter's graph in the model directory.
pub const CONVERTER_FILE: &str = "tone_color_converter.onnx";

/// The code of the error a load gives when the model is not installed (no directory configured,
/// or a graph absent), as opposed to installed wrongly. `standalone` without an explicit engine
/// list leaves such an engine out instead of failing.
pub const MODEL_MISSING: &str = "model_missing";

/// One input or output a graph must have: its name, element type and shape, with `-1` for a
/// dimension of any length.
pub(super) struct Port {
    name: &'static str,
    ty: TensorElementType,
    shape: &'static [i64],
}

pub(super) const EXTRACTOR_INPUTS: [Port; 1] = [Port {
    name: "spectrogram",
    ty: TensorElementType::Float32,
    shape: &[1, -1, BINS as i64],
}];

pub(super) const EXTRACTOR_OUTPUTS: [Port; 1] = [Port {
    name: "tone_color",
    ty: TensorElementType::Float32,
    shape: &[1, TONE_COLOR_DIM as i64, 1],
}];

pub(super) const CONVERTER_INPUTS: [Port; 5] = [
    Port {
        name: "spectrogram",
        ty: TensorElementType::Float32,
        shape: &[1, BINS as i64, -1],
    },
    Port {
        name: "spectrogram_lengths",
        ty: TensorElementType::Int64,
        shape: &[1],
    },
    Port {
        name: "source_tone_color",
        ty: TensorElementType::Float32,
        shape: &[1, TONE_COLOR_DIM as i64, 1],
    },
    Port {
        name: "target_tone_color",
        ty: TensorElementType::Float32,
        shape: &[1, TONE_COLOR_DIM as i64, 1],
    },
    Port {
        name: "tau",
        ty: TensorElementType::Float32,
        shape: &[1],
    },
];

pub(super) const CONVERTER_OUTPUTS: [Port; 1] = [Port {
    name: "audio",
    ty: TensorElementType::Float32,
    shape: &[1, 1, -1],
}];

pub(super) fn model_missing(message: String) -> EngineError {
    EngineError::new(EngineErrorKind::Internal, MODEL_MISSING, message)
}

/// Refuses a model directory that does not exist or lacks a graph, naming what is missing.
pub(super) fn check_model_dir(dir: &Path) -> Result<(), EngineError> {
    if !dir.is_dir() {
        return Err(model_missing(format!(
            "openvoice model directory {} does not exist (it must hold {EXTRACTOR_FILE} and \
             {CONVERTER_FILE})",
            dir.display()
        )));
    }
    let missing: Vec<&str> = [EXTRACTOR_FILE, CONVERTER_FILE]
        .into_iter()
        .filter(|file| !dir.join(file).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(model_missing(format!(
            "openvoice model directory {} lacks {} (it must hold {EXTRACTOR_FILE} and \
             {CONVERTER_FILE})",
            dir.display(),
            missing.join(" and ")
        )));
    }
    Ok(())
}

/// Builds the sessions of the graph at `model` and checks its ports against `inputs` and
/// `outputs`.
pub(super) fn session_pool(
    env: &ort::environment::Environment,
    model: &Path,
    device: &str,
    threads: usize,
    sessions: usize,
    inputs: &[Port],
    outputs: &[Port],
) -> Result<(SessionPool, Placement), EngineError> {
    let (pool, placement) = runtime::session_pool(
        env,
        model,
        device,
        threads,
        sessions,
        &names(inputs),
        &names(outputs),
    )?;
    check_ports(&pool.take(), model, inputs, outputs)?;
    Ok((pool, placement))
}

fn names(ports: &[Port]) -> Vec<&'static str> {
    ports.iter().map(|p| p.name).collect()
}

/// Refuses a graph whose inputs or outputs have another element type or a fixed dimension of
/// another length than the engine feeds and reads, naming the file, the port and both shapes.
/// Names were checked when the sessions were built.
fn check_ports(
    session: &Session,
    model: &Path,
    inputs: &[Port],
    outputs: &[Port],
) -> Result<(), EngineError> {
    let have = session
        .inputs()
        .iter()
        .map(|o| ("input", o.name(), o.dtype()))
        .chain(
            session
                .outputs()
                .iter()
                .map(|o| ("output", o.name(), o.dtype())),
        );
    for (kind, name, dtype) in have {
        let expected = if kind == "input" { inputs } else { outputs };
        let Some(port) = expected.iter().find(|p| p.name == name) else {
            continue;
        };
        let mismatch = |what: String| {
            EngineError::internal(format!("model {} {kind} {name:?} {what}", model.display()))
        };
        let ValueType::Tensor { ty, shape, .. } = dtype else {
            return Err(mismatch(format!(
                "is a {dtype}, not a tensor of {}",
                port.ty
            )));
        };
        if *ty != port.ty {
            return Err(mismatch(format!("has type {ty}, expected {}", port.ty)));
        }
        // A graph that declares no shape at all leaves the check to the run.
        if shape.is_empty() {
            continue;
        }
        let fits = shape.len() == port.shape.len()
            && shape
                .iter()
                .zip(port.shape)
                .all(|(have, want)| *have < 0 || *want < 0 || have == want);
        if !fits {
            return Err(mismatch(format!(
                "has shape {}, expected {}",
                show_shape(shape),
                show_shape(port.shape)
            )));
        }
    }
    Ok(())
}

/// A shape as `[1, T, 513]`, with `?` for a dimension of any length.
fn show_shape(shape: &[i64]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| {
            if *d < 0 {
                "?".to_string()
            } else {
                d.to_string()
            }
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_directory_or_graph_is_a_missing_model() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_model_dir(&dir.path().join("nowhere")).unwrap_err();
        assert_eq!(err.code(), MODEL_MISSING);
        std::fs::write(dir.path().join(EXTRACTOR_FILE), b"").unwrap();
        let err = check_model_dir(dir.path()).unwrap_err();
        assert_eq!(err.code(), MODEL_MISSING);
        assert!(err.message().contains(CONVERTER_FILE), "{err}");
        assert!(
            !err.message().contains(&format!("lacks {EXTRACTOR_FILE}")),
            "{err}"
        );
    }
}
