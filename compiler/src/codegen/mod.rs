//! Renderers from the kernel IR to source text. [`c_style`] holds what CUDA C and C share
//! (expressions, statements, the op table); [`cuda`] adds CUDA's launch model and types, [`c`]
//! the CPU's (blocks as thread-pool tasks, one entry point over one arena).
//! Output is deterministic: names come from the IR, and nothing iterates a hash map.

pub mod c;
pub mod c_style;
pub mod cuda;

use thiserror::Error;

/// Why a kernel cannot be rendered.
#[derive(Debug, Error)]
#[error("kernel '{kernel}': cannot render {what}")]
pub struct RenderError {
    /// Kernel name.
    pub kernel: String,
    /// What is not supported.
    pub what: String,
}

/// Renames every buffer identifier `b<id>` in C text by `map` (ids not in it stay); the rest
/// of the text is copied as it is (UTF-8 included).
pub(crate) fn rename_buffers(text: &str, map: &std::collections::HashMap<u32, usize>) -> String {
    let bytes = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'b' && (i == 0 || !ident(bytes[i - 1])) {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j > i + 1 && (j == bytes.len() || !ident(bytes[j])) {
                if let Some(pos) = text[i + 1..j].parse::<u32>().ok().and_then(|b| map.get(&b)) {
                    out.push_str(&text[copied..i]);
                    out.push('b');
                    out.push_str(&pos.to_string());
                    i = j;
                    copied = j;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// Where the identifier `b<id>` first occurs in `text`.
pub(crate) fn first_use(text: &str, id: u32) -> Option<usize> {
    let needle = format!("b{id}");
    let bytes = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    text.match_indices(&needle).map(|(i, _)| i).find(|&i| {
        let end = i + needle.len();
        (i == 0 || !ident(bytes[i - 1])) && (end == bytes.len() || !ident(bytes[end]))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_rename_as_whole_identifiers_only() {
        let map = [(17u32, 0usize), (4, 1)].into_iter().collect();
        let text = "// k — b17\nb17[i] = b4[i] + b170[i] + ab17 + b17_x + b4;";
        assert_eq!(
            super::rename_buffers(text, &map),
            "// k — b0\nb0[i] = b1[i] + b170[i] + ab17 + b17_x + b1;"
        );
    }
}
