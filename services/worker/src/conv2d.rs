//! A VITS decoder's 1-D convolutions, run as 2-D ones.
//!
//! The decoder of a VITS voice (the HiFi-GAN generator, the `dec` module of Piper's exports)
//! spends most of a synthesis in 1-D convolutions over the audio's length. ONNX Runtime's CPU
//! provider runs 2-D convolutions on its blocked (NCHWc) kernels, but 1-D ones only on its
//! general im2col and matrix-product path. Read as 2-D with a height of 1 (weights `[O, I, K]`
//! as `[O, I, 1, K]`: the same bytes), the same convolutions compute the same numbers in about a
//! fifth less time on one core (docs/PERFORMANCE.md, "The decoder's convolutions as 2-D").
//!
//! The model's bytes are rewritten before any session is built: the decoder's input gains a
//! height axis (`Unsqueeze`), its convolutions' weights and attributes gain a height of 1, and
//! its outputs lose the axis again (`Squeeze`), so the rest of the graph, the model's inputs and
//! its outputs are untouched. Only a decoder that is plainly rank-agnostic is rewritten: every
//! node is a convolution or an element-wise operator, the only constants mixed in element-wise
//! are single numbers, and every tensor from outside enters through a convolution. Anything
//! else leaves the model as it is.

use std::collections::{HashMap, HashSet};

use crate::protobuf::{
    Field, Fields, Wire, push_ints, put_bytes_field, put_packed_field, put_varint_field,
};

/// The node-name prefix of the decoder in a VITS export (PyTorch names nodes after modules).
const DECODER: &str = "/dec/";

const CONVOLUTIONS: [&str; 2] = ["Conv", "ConvTranspose"];

/// Operators whose meaning does not depend on their operands' rank, given operands of one rank
/// or single numbers.
const ELEMENTWISE: [&str; 9] = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "LeakyRelu",
    "Relu",
    "Tanh",
    "Sigmoid",
    "Identity",
];

/// A model rewritten by [`decoder_as_2d`].
#[derive(Debug)]
pub struct Rewritten {
    /// The model's new encoding.
    pub model: Vec<u8>,
    /// How many convolutions now run as 2-D.
    pub convolutions: usize,
    /// The weights of the 2-D `Conv` nodes. ONNX Runtime lays these out afresh for its blocked
    /// kernels in every session and no longer reads the originals, so a copy shared between
    /// sessions would only be kept alive beside theirs.
    pub relaid_weights: Vec<String>,
}

/// `model` with its decoder's 1-D convolutions run as 2-D, or `None` when the model has no
/// decoder this can be done to (see the module's documentation). An error means the bytes are
/// not a well-formed model.
pub fn decoder_as_2d(model: &[u8]) -> Result<Option<Rewritten>, String> {
    let mut graph = None;
    let mut opset = None;
    for field in Fields::new(model) {
        let field = field?;
        match (field.number, field.value) {
            (7, Wire::Bytes(bytes)) => graph = Some(bytes),
            (8, Wire::Bytes(id)) => {
                let (domain, version) = opset_id(id)?;
                if domain.is_empty() || domain == "ai.onnx" {
                    opset = Some(version);
                }
            }
            _ => {}
        }
    }
    let Some(graph) = graph else {
        return Err("the model has no graph".into());
    };
    // Unsqueeze and Squeeze take their axes as an input from operator set 13 on.
    if opset.is_none_or(|version| version < 13) {
        return Ok(None);
    }
    let parsed = Graph::parse(graph)?;
    let Some(plan) = Plan::new(&parsed) else {
        return Ok(None);
    };
    let graph = plan.emit(&parsed)?;
    let mut out = Vec::with_capacity(model.len() + 4096);
    for field in Fields::new(model) {
        let field = field?;
        if field.number == 7 {
            put_bytes_field(&mut out, 7, &graph);
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    let convolutions = parsed
        .nodes
        .iter()
        .zip(&plan.in_decoder)
        .filter(|(n, d)| **d && CONVOLUTIONS.contains(&n.op_type))
        .count();
    let relaid_weights = parsed
        .nodes
        .iter()
        .zip(&plan.in_decoder)
        .filter(|(n, d)| **d && n.op_type == "Conv")
        .map(|(n, _)| n.inputs[1].to_string())
        .collect();
    Ok(Some(Rewritten {
        model: out,
        convolutions,
        relaid_weights,
    }))
}

/// One attribute of a node: its name, its integers (if any) and its encoding.
struct Attribute<'m> {
    name: &'m str,
    ints: Vec<i64>,
    raw: &'m [u8],
    /// Whether it holds a graph (`g` or `graphs`).
    subgraph: bool,
}

struct Node<'m> {
    raw: &'m [u8],
    name: &'m str,
    op_type: &'m str,
    domain: &'m str,
    inputs: Vec<&'m str>,
    outputs: Vec<&'m str>,
    attributes: Vec<Attribute<'m>>,
}

/// The parts of a graph the rewrite reads.
struct Graph<'m> {
    fields: Vec<Field<'m>>,
    nodes: Vec<Node<'m>>,
    /// Initializers' names and dimensions.
    constants: HashMap<&'m str, Vec<i64>>,
    inputs: HashSet<&'m str>,
    outputs: HashSet<&'m str>,
    has_subgraphs: bool,
}

impl<'m> Graph<'m> {
    fn parse(graph: &'m [u8]) -> Result<Self, String> {
        let fields: Vec<Field<'m>> = Fields::new(graph).collect::<Result<_, _>>()?;
        let mut parsed = Graph {
            fields: Vec::new(),
            nodes: Vec::new(),
            constants: HashMap::new(),
            inputs: HashSet::new(),
            outputs: HashSet::new(),
            has_subgraphs: false,
        };
        for field in &fields {
            match (field.number, &field.value) {
                (1, Wire::Bytes(node)) => {
                    let node = parse_node(node)?;
                    parsed.has_subgraphs |= node.attributes.iter().any(|a| a.subgraph);
                    parsed.nodes.push(node);
                }
                (5, Wire::Bytes(tensor)) => {
                    let (name, dims) = tensor_header(tensor)?;
                    parsed.constants.insert(name, dims);
                }
                (11, Wire::Bytes(info)) => {
                    parsed.inputs.insert(value_info_name(info)?);
                }
                (12, Wire::Bytes(info)) => {
                    parsed.outputs.insert(value_info_name(info)?);
                }
                _ => {}
            }
        }
        parsed.fields = fields;
        Ok(parsed)
    }
}

/// What the rewrite changes.
struct Plan<'m> {
    /// Per node, whether it is in the decoder.
    in_decoder: Vec<bool>,
    /// The convolutions' weights, which gain a height of 1.
    widen: HashSet<&'m str>,
    /// Tensors from outside the decoder that it reads, given a height axis on the way in.
    unsqueeze: Vec<&'m str>,
    /// The decoder's outputs read outside it, which lose the height axis on the way out.
    squeeze: HashSet<&'m str>,
    /// The 2-D names of the tensors above.
    renamed: HashMap<&'m str, String>,
    /// The name of the constant holding the height axis.
    axes: String,
    /// Decoder outputs, whose recorded shapes (`value_info`) no longer hold.
    produced: HashSet<&'m str>,
}

impl<'m> Plan<'m> {
    /// What to change in `graph`, or `None` if its decoder cannot be rewritten safely.
    fn new(graph: &Graph<'m>) -> Option<Self> {
        let in_decoder: Vec<bool> = graph
            .nodes
            .iter()
            .map(|n| n.name.starts_with(DECODER))
            .collect();
        // A subgraph (of an If or a Loop) may read any tensor of the graph by name, unseen here.
        if !in_decoder.contains(&true) || graph.has_subgraphs {
            return None;
        }
        let decoder = || {
            graph
                .nodes
                .iter()
                .zip(&in_decoder)
                .filter(|(_, d)| **d)
                .map(|(n, _)| n)
        };
        let produced: HashSet<&str> = decoder().flat_map(|n| n.outputs.iter().copied()).collect();
        let mut widen = HashSet::new();
        let mut unsqueeze = Vec::new();
        for node in decoder() {
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                return None;
            }
            if CONVOLUTIONS.contains(&node.op_type) {
                for a in &node.attributes {
                    let widenable = match a.name {
                        "kernel_shape" | "strides" | "dilations" | "output_padding" => {
                            a.ints.len() == 1
                        }
                        "pads" => a.ints.len() == 2,
                        "group" => true,
                        // auto_pad and output_shape would need their own rewriting.
                        _ => false,
                    };
                    if !widenable {
                        return None;
                    }
                }
                let data = *node.inputs.first()?;
                let weight = *node.inputs.get(1)?;
                if graph.constants.get(weight)?.len() != 3 || graph.inputs.contains(weight) {
                    return None;
                }
                if let Some(&bias) = node.inputs.get(2).filter(|b| !b.is_empty())
                    && graph.constants.get(bias)?.len() != 1
                {
                    return None;
                }
                if !produced.contains(data) {
                    if graph.constants.contains_key(data) {
                        return None;
                    }
                    if !unsqueeze.contains(&data) {
                        unsqueeze.push(data);
                    }
                }
                widen.insert(weight);
            } else if ELEMENTWISE.contains(&node.op_type) {
                // Of constants alone, the result would not have the decoder's rank.
                if !node.inputs.iter().any(|i| produced.contains(i)) {
                    return None;
                }
                for &input in node.inputs.iter().filter(|i| !i.is_empty()) {
                    if produced.contains(input) {
                        continue;
                    }
                    // A single number broadcasts the same against any rank; anything else from
                    // outside might not.
                    let dims = graph.constants.get(input)?;
                    if dims.iter().product::<i64>() != 1 || dims.len() > 3 {
                        return None;
                    }
                }
            } else {
                return None;
            }
        }
        // A widened weight must be read only as a weight of the decoder's convolutions.
        for (node, &inside) in graph.nodes.iter().zip(&in_decoder) {
            for (slot, input) in node.inputs.iter().enumerate() {
                let as_weight = inside && CONVOLUTIONS.contains(&node.op_type) && slot == 1;
                if widen.contains(input) && !as_weight {
                    return None;
                }
            }
        }
        let read_outside: HashSet<&str> = graph
            .nodes
            .iter()
            .zip(&in_decoder)
            .filter(|(_, d)| !**d)
            .flat_map(|(n, _)| n.inputs.iter().copied())
            .chain(graph.outputs.iter().copied())
            .collect();
        let squeeze: HashSet<&str> = produced.intersection(&read_outside).copied().collect();
        let taken: HashSet<&str> = graph
            .nodes
            .iter()
            .flat_map(|n| n.inputs.iter().chain(&n.outputs).copied())
            .chain(graph.constants.keys().copied())
            .chain(graph.inputs.iter().copied())
            .collect();
        let unused = |name: String| (!taken.contains(name.as_str())).then_some(name);
        let mut renamed = HashMap::new();
        for &tensor in unsqueeze.iter().chain(&squeeze) {
            renamed.insert(tensor, unused(format!("{tensor}/2d"))?);
        }
        let axes = unused("/dec/2d/height_axis".to_string())?;
        Some(Plan {
            in_decoder,
            widen,
            unsqueeze,
            squeeze,
            renamed,
            axes,
            produced,
        })
    }

    /// The graph's new encoding.
    fn emit(&self, graph: &Graph<'m>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut nodes = graph.nodes.iter().zip(&self.in_decoder);
        let mut unsqueezed = HashSet::new();
        for field in &graph.fields {
            match (field.number, &field.value) {
                (1, Wire::Bytes(_)) => {
                    let (node, &inside) = nodes.next().expect("one parsed node per node field");
                    if !inside {
                        out.extend_from_slice(field.raw);
                        continue;
                    }
                    for &input in &node.inputs {
                        if self.unsqueeze.contains(&input) && unsqueezed.insert(input) {
                            let to = &self.renamed[input];
                            self.put_axis_node(&mut out, "Unsqueeze", input, to, to);
                        }
                    }
                    put_bytes_field(&mut out, 1, &self.rewrite_node(node)?);
                    for &output in &node.outputs {
                        if self.squeeze.contains(output) {
                            let from = &self.renamed[output];
                            self.put_axis_node(&mut out, "Squeeze", from, output, from);
                        }
                    }
                }
                (5, Wire::Bytes(tensor)) => {
                    let (name, dims) = tensor_header(tensor)?;
                    if self.widen.contains(name) {
                        put_bytes_field(&mut out, 5, &widen_tensor(tensor, &dims)?);
                    } else {
                        out.extend_from_slice(field.raw);
                    }
                }
                (13, Wire::Bytes(info)) => {
                    let name = value_info_name(info)?;
                    if !self.produced.contains(name) || self.squeeze.contains(name) {
                        out.extend_from_slice(field.raw);
                    }
                }
                _ => out.extend_from_slice(field.raw),
            }
        }
        // The height axis, an int64 tensor [2] of shape [1].
        let mut axes = Vec::new();
        put_packed_field(&mut axes, 1, &[1]);
        put_varint_field(&mut axes, 2, 7);
        put_bytes_field(&mut axes, 8, self.axes.as_bytes());
        put_bytes_field(&mut axes, 9, &2i64.to_le_bytes());
        put_bytes_field(&mut out, 5, &axes);
        Ok(out)
    }

    /// Appends an `Unsqueeze` or `Squeeze` node (`op_type`) that adds or removes the height axis,
    /// named after `tensor_2d`, its tensor with the axis.
    fn put_axis_node(
        &self,
        out: &mut Vec<u8>,
        op_type: &str,
        input: &str,
        output: &str,
        tensor_2d: &str,
    ) {
        let mut node = Vec::new();
        put_bytes_field(&mut node, 1, input.as_bytes());
        put_bytes_field(&mut node, 1, self.axes.as_bytes());
        put_bytes_field(&mut node, 2, output.as_bytes());
        put_bytes_field(&mut node, 3, format!("{tensor_2d}/{op_type}").as_bytes());
        put_bytes_field(&mut node, 4, op_type.as_bytes());
        put_bytes_field(out, 1, &node);
    }

    /// A decoder node with its tensors renamed and, for a convolution, its attributes widened.
    fn rewrite_node(&self, node: &Node<'m>) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(node.raw.len() + 64);
        let mut attributes = node.attributes.iter();
        for field in Fields::new(node.raw) {
            let field = field?;
            match (field.number, &field.value) {
                (1 | 2, Wire::Bytes(name)) => {
                    let name = utf8(name)?;
                    match self.renamed.get(name) {
                        Some(to) => put_bytes_field(&mut out, field.number, to.as_bytes()),
                        None => out.extend_from_slice(field.raw),
                    }
                }
                (5, _) => {
                    let attribute = attributes.next().expect("one parsed attribute per field");
                    if CONVOLUTIONS.contains(&node.op_type) {
                        put_bytes_field(&mut out, 5, &widen_attribute(attribute)?);
                    } else {
                        out.extend_from_slice(field.raw);
                    }
                }
                _ => out.extend_from_slice(field.raw),
            }
        }
        Ok(out)
    }
}

/// A convolution's attribute for a height of 1 in front of its one spatial axis.
fn widen_attribute(attribute: &Attribute<'_>) -> Result<Vec<u8>, String> {
    let ints = match (attribute.name, attribute.ints.as_slice()) {
        ("kernel_shape" | "strides" | "dilations", &[v]) => vec![1, v],
        ("output_padding", &[v]) => vec![0, v],
        ("pads", &[begin, end]) => vec![0, begin, 0, end],
        ("group", _) => return Ok(attribute.raw.to_vec()),
        (name, ints) => return Err(format!("cannot widen attribute {name} = {ints:?}")),
    };
    let mut out = Vec::new();
    for field in Fields::new(attribute.raw) {
        let field = field?;
        if field.number != 8 {
            out.extend_from_slice(field.raw);
        }
    }
    put_packed_field(&mut out, 8, &ints);
    Ok(out)
}

/// A weight tensor `[O, I, K]` as `[O, I, 1, K]`: only its dimensions change.
fn widen_tensor(tensor: &[u8], dims: &[i64]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(tensor.len() + 8);
    put_packed_field(&mut out, 1, &[dims[0], dims[1], 1, dims[2]]);
    for field in Fields::new(tensor) {
        let field = field?;
        if field.number != 1 {
            out.extend_from_slice(field.raw);
        }
    }
    Ok(out)
}

fn parse_node(raw: &[u8]) -> Result<Node<'_>, String> {
    let mut node = Node {
        raw,
        name: "",
        op_type: "",
        domain: "",
        inputs: Vec::new(),
        outputs: Vec::new(),
        attributes: Vec::new(),
    };
    for field in Fields::new(raw) {
        let field = field?;
        let Wire::Bytes(bytes) = field.value else {
            continue;
        };
        match field.number {
            1 => node.inputs.push(utf8(bytes)?),
            2 => node.outputs.push(utf8(bytes)?),
            3 => node.name = utf8(bytes)?,
            4 => node.op_type = utf8(bytes)?,
            7 => node.domain = utf8(bytes)?,
            5 => {
                let mut attribute = Attribute {
                    name: "",
                    ints: Vec::new(),
                    raw: bytes,
                    subgraph: false,
                };
                for field in Fields::new(bytes) {
                    let field = field?;
                    match (field.number, &field.value) {
                        (1, Wire::Bytes(name)) => attribute.name = utf8(name)?,
                        (8, value) => push_ints(value, &mut attribute.ints)?,
                        (6 | 11, _) => attribute.subgraph = true,
                        _ => {}
                    }
                }
                node.attributes.push(attribute);
            }
            _ => {}
        }
    }
    Ok(node)
}

/// An initializer's name and dimensions.
fn tensor_header(tensor: &[u8]) -> Result<(&str, Vec<i64>), String> {
    let mut name = "";
    let mut dims = Vec::new();
    for field in Fields::new(tensor) {
        let field = field?;
        match (field.number, &field.value) {
            (1, value) => push_ints(value, &mut dims)?,
            (8, Wire::Bytes(n)) => name = utf8(n)?,
            _ => {}
        }
    }
    Ok((name, dims))
}

fn value_info_name(info: &[u8]) -> Result<&str, String> {
    for field in Fields::new(info) {
        let field = field?;
        if let (1, Wire::Bytes(name)) = (field.number, &field.value) {
            return utf8(name);
        }
    }
    Ok("")
}

/// An operator set's domain and version.
fn opset_id(id: &[u8]) -> Result<(&str, u64), String> {
    let mut domain = "";
    let mut version = 0;
    for field in Fields::new(id) {
        let field = field?;
        match (field.number, &field.value) {
            (1, Wire::Bytes(d)) => domain = utf8(d)?,
            (2, Wire::Varint(v)) => version = *v,
            _ => {}
        }
    }
    Ok((domain, version))
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "a name in the model is not UTF-8".to_string())
}
