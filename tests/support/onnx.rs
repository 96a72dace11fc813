//! Small ONNX graphs made by the tests, for engines whose real weights cannot be had here.
//!
//! Each graph has exactly the inputs and outputs (names, element types, shapes with dynamic
//! lengths) of the real export, and computes its output from every input, so that the engine's
//! whole path (spectrogram, tensors, sessions, output handling) runs on ONNX Runtime for real.
//! The weights are fixed pseudo-random numbers: the graphs mean nothing as voices, but the same
//! input always gives the same output and different inputs give different outputs.
//!
//! Graphs are serialised as ONNX `ModelProto` messages (IR version 8, opset 17) with the subset
//! of `onnx.proto` they need, declared below with prost's derive macros and the field numbers of
//! the official schema.

use std::path::Path;

use prost::Message;
use tts_worker::engine::openvoice::{BINS, CONVERTER_FILE, EXTRACTOR_FILE, HOP, TONE_COLOR_DIM};

/// The IR version and operator set the graphs declare; ONNX Runtime 1.32 runs both.
pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;

/// The parts of `onnx.proto` (package `onnx`) a graph of plain operators needs. Fields are
/// `optional` as in the schema (proto2), and each keeps the schema's number.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, optional, tag = "1")]
        pub ir_version: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub producer_name: Option<String>,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, optional, tag = "1")]
        pub domain: Option<String>,
        #[prost(int64, optional, tag = "2")]
        pub version: Option<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub op_type: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
    }

    /// `AttributeProto.AttributeType` values used here.
    pub const ATTRIBUTE_INT: i32 = 2;
    pub const ATTRIBUTE_INTS: i32 = 7;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(int64, optional, tag = "3")]
        pub i: Option<i64>,
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
        #[prost(int32, optional, tag = "20")]
        pub r#type: Option<i32>,
    }

    /// `TensorProto.DataType` values used here.
    pub const FLOAT: i32 = 1;
    pub const INT64: i32 = 7;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, optional, tag = "2")]
        pub data_type: Option<i32>,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(int64, repeated, tag = "7")]
        pub int64_data: Vec<i64>,
        #[prost(string, optional, tag = "8")]
        pub name: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    /// `TypeProto` with its `tensor_type` member, the only one of its `value` oneof used here
    /// (a oneof member is encoded as the plain field it is).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorTypeProto>,
    }

    /// `TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorTypeProto {
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    /// `TensorShapeProto.Dimension`: a length or a name, one of the two.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

use proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};

/// A dimension of a graph input or output: a fixed length or a named, dynamic one.
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Fixed(i64),
    Dynamic(&'static str),
}

/// An element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    I64,
}

impl Elem {
    fn code(self) -> i32 {
        match self {
            Elem::F32 => proto::FLOAT,
            Elem::I64 => proto::INT64,
        }
    }
}

/// A graph being put together: nodes in order, constant tensors, inputs and outputs.
#[derive(Default)]
pub struct Graph {
    graph: GraphProto,
}

/// An attribute of a node.
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph {
            graph: GraphProto {
                name: Some(name.into()),
                ..Default::default()
            },
        }
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> &mut Self {
        self.graph.input.push(value_info(name, elem, dims));
        self
    }

    pub fn output(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> &mut Self {
        self.graph.output.push(value_info(name, elem, dims));
        self
    }

    /// A constant f32 tensor; empty `dims` make a scalar.
    pub fn constant_f32(&mut self, name: &str, dims: &[i64], values: Vec<f32>) -> &mut Self {
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            values.len(),
            "{name}"
        );
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(proto::FLOAT),
            float_data: values,
            name: Some(name.into()),
            ..Default::default()
        });
        self
    }

    /// A constant i64 tensor; empty `dims` make a scalar.
    pub fn constant_i64(&mut self, name: &str, dims: &[i64], values: Vec<i64>) -> &mut Self {
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            values.len(),
            "{name}"
        );
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(proto::INT64),
            int64_data: values,
            name: Some(name.into()),
            ..Default::default()
        });
        self
    }

    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<Attr>,
    ) -> &mut Self {
        let name = format!("{op}_{}", self.graph.node.len());
        self.named_node(&name, op, inputs, outputs, attributes)
    }

    /// A node with a name of the caller's, as exporters name them after the module they ran.
    pub fn named_node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<Attr>,
    ) -> &mut Self {
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name.into()),
            op_type: Some(op.into()),
            attribute: attributes
                .into_iter()
                .map(|a| match a {
                    Attr::Int(name, i) => AttributeProto {
                        name: Some(name.into()),
                        i: Some(i),
                        r#type: Some(proto::ATTRIBUTE_INT),
                        ..Default::default()
                    },
                    Attr::Ints(name, ints) => AttributeProto {
                        name: Some(name.into()),
                        ints,
                        r#type: Some(proto::ATTRIBUTE_INTS),
                        ..Default::default()
                    },
                })
                .collect(),
        });
        self
    }

    /// The serialised model: this graph at [`IR_VERSION`] and the default domain's [`OPSET`].
    pub fn to_bytes(&self) -> Vec<u8> {
        ModelProto {
            ir_version: Some(IR_VERSION),
            producer_name: Some("voice-clone-tts tests".into()),
            graph: Some(self.graph.clone()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
        }
        .encode_to_vec()
    }
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(elem.code()),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => Dimension {
                                dim_value: Some(*n),
                                dim_param: None,
                            },
                            Dim::Dynamic(name) => Dimension {
                                dim_value: None,
                                dim_param: Some(name.to_string()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// `len` fixed pseudo-random weights, uniform in [-scale, scale] (a 64-bit LCG from `seed`).
pub fn weights(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0) * scale
        })
        .collect()
}

/// The names the tone-colour converter's graph gives its inputs, to make graphs that break the
/// contract on purpose.
#[derive(Debug, Clone)]
pub struct ConverterNames {
    pub spectrogram: &'static str,
    pub spectrogram_lengths: &'static str,
    pub source_tone_color: &'static str,
    pub target_tone_color: &'static str,
    pub tau: &'static str,
    pub audio: &'static str,
}

impl Default for ConverterNames {
    fn default() -> Self {
        ConverterNames {
            spectrogram: "spectrogram",
            spectrogram_lengths: "spectrogram_lengths",
            source_tone_color: "source_tone_color",
            target_tone_color: "target_tone_color",
            tau: "tau",
            audio: "audio",
        }
    }
}

/// A reference encoder with the real one's signature: `spectrogram` f32 [1, T, 513] →
/// `tone_color` f32 [1, `dim`, 1]. It takes the log spectrum's mean over time, projects it to
/// `dim` values and squashes them with tanh, so the tone colour is a function of the clip's
/// average timbre. The real graph gives 256 values; other `dim`s make graphs that break the
/// contract.
pub fn tone_color_extractor(dim: usize) -> Vec<u8> {
    let mut g = Graph::new("tone_color_extractor");
    g.input(
        "spectrogram",
        Elem::F32,
        &[
            Dim::Fixed(1),
            Dim::Dynamic("frames"),
            Dim::Fixed(BINS as i64),
        ],
    )
    .output(
        "tone_color",
        Elem::F32,
        &[Dim::Fixed(1), Dim::Fixed(dim as i64), Dim::Fixed(1)],
    )
    .constant_f32(
        "projection",
        &[BINS as i64, dim as i64],
        weights(1, BINS * dim, 0.02),
    )
    .constant_i64("embedding_shape", &[3], vec![1, dim as i64, 1])
    .node("Log", &["spectrogram"], &["log_spectrogram"], vec![])
    .node(
        "ReduceMean",
        &["log_spectrogram"],
        &["mean_spectrum"],
        vec![Attr::Ints("axes", vec![1]), Attr::Int("keepdims", 0)],
    )
    .node(
        "MatMul",
        &["mean_spectrum", "projection"],
        &["projected"],
        vec![],
    )
    .node("Tanh", &["projected"], &["squashed"], vec![])
    .node(
        "Reshape",
        &["squashed", "embedding_shape"],
        &["tone_color"],
        vec![],
    );
    g.to_bytes()
}

/// A converter with the real one's signature: `spectrogram` f32 [1, 513, T],
/// `spectrogram_lengths` i64 [1], `source_tone_color` and `target_tone_color` f32 [1, 256, 1],
/// `tau` f32 [1] → `audio` f32 [1, 1, T * 256].
///
/// Each spectrogram frame is projected to one hop of samples (log spectrum × [513, 256], tanh),
/// each of the hop's 256 samples is scaled by `1 + tau * (target - source)` at its position, frames
/// past `spectrogram_lengths` are silenced, and the frames are laid end to end at half scale. The
/// audio so depends on the speech, on both tone colours and on `tau`, like the real converter's.
pub fn tone_color_converter(names: &ConverterNames) -> Vec<u8> {
    let n = names;
    let tone = [
        Dim::Fixed(1),
        Dim::Fixed(TONE_COLOR_DIM as i64),
        Dim::Fixed(1),
    ];
    let mut g = Graph::new("tone_color_converter");
    g.input(
        n.spectrogram,
        Elem::F32,
        &[
            Dim::Fixed(1),
            Dim::Fixed(BINS as i64),
            Dim::Dynamic("frames"),
        ],
    )
    .input(n.spectrogram_lengths, Elem::I64, &[Dim::Fixed(1)])
    .input(n.source_tone_color, Elem::F32, &tone)
    .input(n.target_tone_color, Elem::F32, &tone)
    .input(n.tau, Elem::F32, &[Dim::Fixed(1)])
    .output(
        n.audio,
        Elem::F32,
        &[Dim::Fixed(1), Dim::Fixed(1), Dim::Dynamic("samples")],
    )
    .constant_f32(
        "synthesis",
        &[BINS as i64, HOP as i64],
        weights(2, BINS * HOP, 0.02),
    )
    .constant_i64("row_shape", &[3], vec![1, 1, TONE_COLOR_DIM as i64])
    .constant_i64("mask_shape", &[3], vec![1, -1, 1])
    .constant_i64("audio_shape", &[3], vec![1, 1, -1])
    .constant_i64("time_axis", &[], vec![2])
    .constant_i64("zero", &[], vec![0])
    .constant_i64("one", &[], vec![1])
    .constant_f32("unity", &[1], vec![1.0])
    .constant_f32("level", &[1], vec![0.5])
    // The speech: one hop of samples per frame.
    .node("Log", &[n.spectrogram], &["log_spectrogram"], vec![])
    .node(
        "Transpose",
        &["log_spectrogram"],
        &["frames_first"],
        vec![Attr::Ints("perm", vec![0, 2, 1])],
    )
    .node("MatMul", &["frames_first", "synthesis"], &["hops"], vec![])
    .node("Tanh", &["hops"], &["hop_samples"], vec![])
    // The voice: a gain per sample position from the two tone colours.
    .node(
        "Sub",
        &[n.target_tone_color, n.source_tone_color],
        &["colour_shift"],
        vec![],
    )
    .node(
        "Reshape",
        &["colour_shift", "row_shape"],
        &["shift_row"],
        vec![],
    )
    .node("Mul", &["shift_row", n.tau], &["scaled_shift"], vec![])
    .node("Add", &["scaled_shift", "unity"], &["gain"], vec![])
    .node("Mul", &["hop_samples", "gain"], &["coloured"], vec![])
    // Frames past the given length are silent.
    .node("Shape", &[n.spectrogram], &["spectrogram_shape"], vec![])
    .node(
        "Gather",
        &["spectrogram_shape", "time_axis"],
        &["frame_count"],
        vec![Attr::Int("axis", 0)],
    )
    .node(
        "Range",
        &["zero", "frame_count", "one"],
        &["frame_index"],
        vec![],
    )
    .node(
        "Less",
        &["frame_index", n.spectrogram_lengths],
        &["frame_valid"],
        vec![],
    )
    .node(
        "Cast",
        &["frame_valid"],
        &["frame_weight"],
        vec![Attr::Int("to", proto::FLOAT as i64)],
    )
    .node(
        "Reshape",
        &["frame_weight", "mask_shape"],
        &["frame_mask"],
        vec![],
    )
    .node("Mul", &["coloured", "frame_mask"], &["masked"], vec![])
    .node("Mul", &["masked", "level"], &["levelled"], vec![])
    .node("Reshape", &["levelled", "audio_shape"], &[n.audio], vec![]);
    g.to_bytes()
}

/// Writes an OpenVoice model directory: the given graphs under their file names, `None` leaving
/// a file out.
pub fn write_openvoice_dir(dir: &Path, extractor: Option<&[u8]>, converter: Option<&[u8]>) {
    std::fs::create_dir_all(dir).expect("the model directory is created");
    if let Some(bytes) = extractor {
        std::fs::write(dir.join(EXTRACTOR_FILE), bytes).expect("the extractor is written");
    }
    if let Some(bytes) = converter {
        std::fs::write(dir.join(CONVERTER_FILE), bytes).expect("the converter is written");
    }
}

/// A temporary OpenVoice model directory holding both graphs as the contract has them.
pub fn openvoice_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_openvoice_dir(
        dir.path(),
        Some(&tone_color_extractor(TONE_COLOR_DIM)),
        Some(&tone_color_converter(&ConverterNames::default())),
    );
    dir
}
