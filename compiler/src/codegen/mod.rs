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

/// Each buffer identifier `b<id>` in C text (a whole identifier: not `ab1`, `b1_x`), as
/// (start, end, id).
fn buffer_idents(text: &str) -> impl Iterator<Item = (usize, usize, u32)> + '_ {
    let bytes = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let start = i;
            i += 1;
            if bytes[start] != b'b' || (start > 0 && ident(bytes[start - 1])) {
                continue;
            }
            let mut j = i;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j == i || (j < bytes.len() && ident(bytes[j])) {
                continue;
            }
            if let Ok(id) = text[i..j].parse::<u32>() {
                i = j;
                return Some((start, j, id));
            }
        }
        None
    })
}

/// Renames every buffer identifier `b<id>` in C text by `map` (ids not in it stay); the rest
/// of the text is copied as it is (UTF-8 included).
pub(crate) fn rename_buffers(text: &str, map: &std::collections::HashMap<u32, usize>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, id) in buffer_idents(text) {
        if let Some(pos) = map.get(&id) {
            out.push_str(&text[copied..start]);
            out.push('b');
            out.push_str(&pos.to_string());
            copied = end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// `bufs` once each, in the order `text` first uses them (those it never names last, by
/// id): positional parameters under which the same computation over buffers numbered
/// another way is the same text.
pub(crate) fn by_first_use(text: &str, bufs: &[u32]) -> Vec<u32> {
    let mut first: std::collections::HashMap<u32, usize> = Default::default();
    for (start, _, id) in buffer_idents(text) {
        first.entry(id).or_insert(start);
    }
    let mut out = bufs.to_vec();
    out.sort_unstable_by_key(|b| (first.get(b).copied().unwrap_or(usize::MAX), *b));
    out.dedup();
    out
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
        assert_eq!(super::by_first_use(text, &[4, 9, 17, 4]), [17, 4, 9]);
    }
}
