//! The protobuf wire format, as far as reading and rewriting an ONNX model needs it.
//!
//! A model is read field by field without a schema: the modules that use this know the few
//! field numbers of `onnx.proto` they care about, and every other field is carried over byte
//! for byte, so a rewritten model keeps whatever newer or unknown fields it had.

/// A field's value as its wire type carries it.
#[derive(Debug, PartialEq)]
pub(crate) enum Wire<'m> {
    Varint(u64),
    Fixed,
    Bytes(&'m [u8]),
}

/// One field of a message: its number, its value, and its whole encoding (key included), to be
/// copied unchanged.
#[derive(Debug)]
pub(crate) struct Field<'m> {
    pub number: u64,
    pub value: Wire<'m>,
    pub raw: &'m [u8],
}

/// The fields of one protobuf message, in order.
pub(crate) struct Fields<'m> {
    bytes: &'m [u8],
    at: usize,
    failed: bool,
}

impl<'m> Fields<'m> {
    pub(crate) fn new(bytes: &'m [u8]) -> Self {
        Fields {
            bytes,
            at: 0,
            failed: false,
        }
    }

    fn field(&mut self) -> Result<Field<'m>, String> {
        let start = self.at;
        let key = varint(self.bytes, &mut self.at)?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(self.bytes, &mut self.at)?),
            1 => self.skip(8)?,
            5 => self.skip(4)?,
            2 => {
                let len = usize::try_from(varint(self.bytes, &mut self.at)?)
                    .map_err(|_| "a field's length does not fit in memory")?;
                let end = self
                    .at
                    .checked_add(len)
                    .filter(|&end| end <= self.bytes.len())
                    .ok_or("a field runs past the end of its message")?;
                let bytes = &self.bytes[self.at..end];
                self.at = end;
                Wire::Bytes(bytes)
            }
            wire => return Err(format!("unexpected protobuf wire type {wire}")),
        };
        Ok(Field {
            number: key >> 3,
            value,
            raw: &self.bytes[start..self.at],
        })
    }

    fn skip(&mut self, len: usize) -> Result<Wire<'m>, String> {
        if self.bytes.len() - self.at < len {
            return Err("a field runs past the end of its message".into());
        }
        self.at += len;
        Ok(Wire::Fixed)
    }
}

impl<'m> Iterator for Fields<'m> {
    type Item = Result<Field<'m>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.bytes.len() {
            return None;
        }
        let field = self.field();
        self.failed = field.is_err();
        Some(field)
    }
}

/// A base-128 varint at `at`, which it moves past.
pub(crate) fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("a varint runs past the end")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err("a varint is longer than ten bytes".into())
}

/// A repeated integer field's values, whether they were written packed or one field each; `value`
/// is one occurrence of the field.
pub(crate) fn push_ints(value: &Wire<'_>, into: &mut Vec<i64>) -> Result<(), String> {
    match value {
        // Negative int64 values are ten-byte varints holding the two's complement.
        Wire::Varint(v) => into.push(*v as i64),
        Wire::Bytes(packed) => {
            let mut at = 0;
            while at < packed.len() {
                into.push(varint(packed, &mut at)? as i64);
            }
        }
        Wire::Fixed => return Err("a repeated integer field has a fixed-width value".into()),
    }
    Ok(())
}

/// Appends `value` as a varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a varint field.
pub(crate) fn put_varint_field(out: &mut Vec<u8>, number: u64, value: u64) {
    put_varint(out, number << 3);
    put_varint(out, value);
}

/// Appends a length-delimited field (bytes, a string or an embedded message).
pub(crate) fn put_bytes_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a repeated integer field, packed.
pub(crate) fn put_packed_field(out: &mut Vec<u8>, number: u64, values: &[i64]) {
    let mut packed = Vec::new();
    for &v in values {
        put_varint(&mut packed, v as u64);
    }
    put_bytes_field(out, number, &packed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_whole_encoding() {
        let mut m = Vec::new();
        put_varint_field(&mut m, 1, 300);
        put_bytes_field(&mut m, 7, b"graph");
        put_packed_field(&mut m, 8, &[1, -1, 7]);
        let fields: Vec<_> = Fields::new(&m)
            .collect::<Result<_, _>>()
            .expect("well formed");
        assert_eq!(fields.len(), 3);
        assert_eq!(
            (fields[0].number, &fields[0].value),
            (1, &Wire::Varint(300))
        );
        assert_eq!(fields[1].value, Wire::Bytes(b"graph"));
        let rebuilt: Vec<u8> = fields.iter().flat_map(|f| f.raw.to_vec()).collect();
        assert_eq!(rebuilt, m);
        let mut ints = Vec::new();
        push_ints(&fields[2].value, &mut ints).expect("packed ints");
        assert_eq!(ints, vec![1, -1, 7]);
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_panic() {
        let mut m = Vec::new();
        put_bytes_field(&mut m, 5, &[0; 40]);
        for cut in 0..m.len() {
            let _ = Fields::new(&m[..cut]).collect::<Result<Vec<_>, _>>();
        }
        assert!(
            Fields::new(&m[..m.len() - 1])
                .collect::<Result<Vec<_>, _>>()
                .is_err()
        );
        assert!(
            Fields::new(&[0xff; 12])
                .collect::<Result<Vec<_>, _>>()
                .is_err()
        );
    }
}
