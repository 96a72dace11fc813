//! An ONNX model's weights, read once so that every session of a pool can run on the same copy.
//!
//! A session built from a model file keeps a private copy of every weight; two sessions of a
//! 60 MB voice hold 120 MB of identical numbers. Handing the sessions the same tensors instead
//! (ONNX Runtime's `AddInitializer`) keeps one. Only what that needs is read here: the graph's
//! initializers stored inline (`raw_data`), their names, shapes and element types, from the
//! protobuf encoding of `ModelProto` (onnx.proto: `ModelProto.graph` = 7, `GraphProto.initializer`
//! = 5, `GraphProto.input` = 11, `ValueInfoProto.name` = 1, `TensorProto.dims` = 1,
//! `TensorProto.data_type` = 2, `TensorProto.name` = 8, `TensorProto.raw_data` = 9).

use std::sync::Arc;

use ort::value::{DynValue, Tensor};

use crate::protobuf::{Field, Fields, Wire, push_ints};

/// Initializers smaller than this stay in the model: shapes and scalars cost next to nothing
/// twice, and left alone the graph optimiser can fold them as it always has.
const SHARED_MIN_BYTES: usize = 1024;

/// One initializer stored inline in a model.
#[derive(Debug, PartialEq)]
pub(crate) struct Initializer<'m> {
    pub name: &'m str,
    pub dims: Vec<i64>,
    /// `TensorProto.DataType`.
    pub data_type: u64,
    /// Little-endian element data.
    pub raw: &'m [u8],
}

/// The model's inline initializers of at least [`SHARED_MIN_BYTES`], as tensors ready to be
/// handed to sessions. An initializer that is also a graph input (a default the caller may
/// override), of an element type not handled here, stored outside the file, or named in
/// `private` stays in the model, so each session keeps its own copy of it.
pub(crate) fn shared(
    model: &[u8],
    private: &[String],
) -> Result<Vec<(String, Arc<DynValue>)>, String> {
    let mut shared = Vec::new();
    for init in initializers(model)? {
        if init.raw.len() < SHARED_MIN_BYTES || private.iter().any(|p| p == init.name) {
            continue;
        }
        if let Some(value) = tensor(&init)? {
            shared.push((init.name.to_string(), Arc::new(value)));
        }
    }
    Ok(shared)
}

/// A tensor holding `init`'s data, or `None` for an element type not handled here.
fn tensor(init: &Initializer<'_>) -> Result<Option<DynValue>, String> {
    macro_rules! from_le {
        ($t:ty) => {{
            const SIZE: usize = std::mem::size_of::<$t>();
            if !init.raw.len().is_multiple_of(SIZE) {
                return Err(format!(
                    "initializer {} holds {} bytes, not a whole number of elements",
                    init.name,
                    init.raw.len()
                ));
            }
            let data: Vec<$t> = init
                .raw
                .chunks_exact(SIZE)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunks of SIZE")))
                .collect();
            Tensor::from_array((init.dims.clone(), data))
                .map_err(|e| format!("initializer {}: {e}", init.name))?
                .into_dyn()
        }};
    }
    let value = match init.data_type {
        1 => from_le!(f32),
        2 => from_le!(u8),
        3 => from_le!(i8),
        4 => from_le!(u16),
        5 => from_le!(i16),
        6 => from_le!(i32),
        7 => from_le!(i64),
        11 => from_le!(f64),
        12 => from_le!(u32),
        13 => from_le!(u64),
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// The graph's initializers that hold their data inline and are not graph inputs.
pub(crate) fn initializers(model: &[u8]) -> Result<Vec<Initializer<'_>>, String> {
    let mut graph = None;
    for field in Fields::new(model) {
        if let Field {
            number: 7,
            value: Wire::Bytes(bytes),
            ..
        } = field?
        {
            graph = Some(bytes);
        }
    }
    let graph = graph.ok_or("the model has no graph")?;
    let mut inputs = Vec::new();
    let mut tensors = Vec::new();
    for field in Fields::new(graph) {
        let field = field?;
        match (field.number, field.value) {
            (5, Wire::Bytes(tensor)) => tensors.push(tensor),
            (11, Wire::Bytes(input)) => {
                for field in Fields::new(input) {
                    let field = field?;
                    if let (1, Wire::Bytes(name)) = (field.number, field.value) {
                        inputs.push(name);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for tensor in tensors {
        let mut name: &[u8] = &[];
        let mut dims = Vec::new();
        let mut data_type = 0;
        let mut raw = None;
        for field in Fields::new(tensor) {
            let field = field?;
            match (field.number, field.value) {
                (1, dim) => push_ints(&dim, &mut dims)?,
                (2, Wire::Varint(t)) => data_type = t,
                (8, Wire::Bytes(n)) => name = n,
                (9, Wire::Bytes(r)) => raw = Some(r),
                _ => {}
            }
        }
        let Some(raw) = raw else { continue };
        if inputs.contains(&name) {
            continue;
        }
        let name = std::str::from_utf8(name).map_err(|_| "an initializer's name is not UTF-8")?;
        out.push(Initializer {
            name,
            dims,
            data_type,
            raw,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protobuf::{put_bytes_field, put_varint_field};

    fn bytes_field(field: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes_field(&mut out, field, body);
        out
    }

    fn varint_field(field: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint_field(&mut out, field, v);
        out
    }

    fn tensor(name: &str, dims: &[u64], data_type: u64, raw: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            t.extend(varint_field(1, d));
        }
        t.extend(varint_field(2, data_type));
        t.extend(bytes_field(8, name.as_bytes()));
        t.extend(bytes_field(9, raw));
        t
    }

    fn model(graph_fields: &[Vec<u8>]) -> Vec<u8> {
        let mut model = varint_field(1, 8); // ir_version
        model.extend(bytes_field(7, &graph_fields.concat()));
        model
    }

    #[test]
    fn reads_inline_initializers_and_skips_graph_inputs() {
        let weights: Vec<u8> = (0..8u8).collect();
        let mut packed = bytes_field(1, &[2, 3]); // dims 2 and 3, packed
        packed.extend(varint_field(2, 6));
        packed.extend(bytes_field(8, b"packed"));
        packed.extend(bytes_field(9, &[0; 24]));
        let input = bytes_field(1, b"default");
        let m = model(&[
            bytes_field(1, b"a node"),
            bytes_field(5, &tensor("w", &[2, 1], 1, &weights)),
            bytes_field(5, &packed),
            bytes_field(5, &tensor("default", &[1], 7, &[0; 8])),
            bytes_field(11, &input),
        ]);
        let found = initializers(&m).expect("a well-formed model");
        assert_eq!(
            found,
            vec![
                Initializer {
                    name: "w",
                    dims: vec![2, 1],
                    data_type: 1,
                    raw: &weights,
                },
                Initializer {
                    name: "packed",
                    dims: vec![2, 3],
                    data_type: 6,
                    raw: &[0; 24],
                },
            ]
        );
    }

    #[test]
    fn a_truncated_model_is_an_error_not_a_panic() {
        let m = model(&[bytes_field(5, &tensor("w", &[4], 1, &[0; 16]))]);
        for cut in 1..m.len() {
            let _ = initializers(&m[..cut]);
        }
        assert!(initializers(&m[..m.len() - 3]).is_err());
        assert!(initializers(&[0xff; 12]).is_err());
    }
}
