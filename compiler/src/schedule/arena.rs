//! The memory planner: buffer lifetimes → offsets in one arena. Dead buffers are reused
//! (first fit, lowest offset), every offset is 64-byte aligned, and a buffer is never
//! reused while any kernel that reads or writes it is still to run.

use serde::Serialize;

/// Alignment of every buffer in the arena.
pub const ALIGN: usize = 64;

/// One buffer to place: its size and the steps (kernel indices) during which it is live,
/// inclusive.
#[derive(Clone, Debug)]
pub struct Lifetime {
    /// Bytes.
    pub bytes: usize,
    /// First step it is live (written or, for inputs, 0).
    pub first: usize,
    /// Last step it is read (or the end, for outputs).
    pub last: usize,
}

/// Offsets for each buffer and the arena's total size.
#[derive(Clone, Debug, Serialize)]
pub struct ArenaPlan {
    /// Offset of buffer i.
    pub offsets: Vec<usize>,
    /// Total bytes.
    pub size: usize,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Places buffers so that no two whose lifetimes overlap share bytes.
pub fn plan(buffers: &[Lifetime]) -> ArenaPlan {
    // Place in order of first use (then larger first), each at the lowest offset that does
    // not collide with an already placed buffer whose lifetime overlaps.
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (buffers[i].first, std::cmp::Reverse(buffers[i].bytes), i));
    let mut offsets = vec![0usize; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut size = 0;
    for &i in &order {
        let b = &buffers[i];
        let len = align(b.bytes.max(1));
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].first <= b.last && b.first <= buffers[j].last)
            .map(|&j| (offsets[j], offsets[j] + align(buffers[j].bytes.max(1))))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (start, end) in busy {
            if at + len <= start {
                break;
            }
            at = at.max(end);
        }
        offsets[i] = at;
        size = size.max(at + len);
        placed.push(i);
    }
    ArenaPlan { offsets, size }
}

/// The lifetimes of a lowered program's buffers, by step (kernel index): graph inputs from
/// the start to their last read, intermediates from their first write to their last read,
/// outputs to the end, and constants (uploaded once, read by every run) for the whole run.
pub fn program_lifetimes(p: &crate::kernel::Program) -> Vec<Lifetime> {
    let end = p.kernels.len();
    let mut first: Vec<Option<usize>> = vec![None; p.buffers.len()];
    let mut last = vec![0usize; p.buffers.len()];
    for (step, k) in p.kernels.iter().enumerate() {
        for &b in k.reads.iter().chain(&k.writes) {
            let b = b as usize;
            first[b] = Some(first[b].unwrap_or(step));
            last[b] = step;
        }
    }
    for &(_, b) in &p.inputs {
        first[b as usize] = Some(0);
    }
    for (b, _) in &p.constants {
        first[*b as usize] = Some(0);
        last[*b as usize] = end;
    }
    for (_, b) in &p.outputs {
        last[*b as usize] = end;
    }
    p.buffers
        .iter()
        .enumerate()
        .map(|(i, b)| Lifetime {
            bytes: b.len * b.dtype.size(),
            first: first[i].unwrap_or(0),
            last: last[i].max(first[i].unwrap_or(0)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(bufs: &[Lifetime], p: &ArenaPlan) -> bool {
        for i in 0..bufs.len() {
            for j in i + 1..bufs.len() {
                let live = bufs[i].first <= bufs[j].last && bufs[j].first <= bufs[i].last;
                let (a0, a1) = (p.offsets[i], p.offsets[i] + bufs[i].bytes);
                let (b0, b1) = (p.offsets[j], p.offsets[j] + bufs[j].bytes);
                if live && a0 < b1 && b0 < a1 {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn reuses_dead_buffers_and_never_overlaps_live_ones() {
        let mut s = 12345u64;
        for _ in 0..500 {
            let n = 1 + (s % 12) as usize;
            let bufs: Vec<Lifetime> = (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let first = (s >> 33) as usize % 10;
                    let len = (s >> 20) as usize % 5;
                    Lifetime {
                        bytes: 1 + (s >> 40) as usize % 5000,
                        first,
                        last: first + len,
                    }
                })
                .collect();
            let p = plan(&bufs);
            assert!(!overlaps(&bufs, &p), "{bufs:?} {p:?}");
            assert!(p.offsets.iter().all(|o| o % ALIGN == 0));
            let total: usize = bufs.iter().map(|b| align(b.bytes)).sum();
            assert!(p.size <= total);
        }
        // A chain a → b → c → d: a and c can share, as can b and d.
        let chain: Vec<Lifetime> = (0..4)
            .map(|i| Lifetime {
                bytes: 1000,
                first: i,
                last: i + 1,
            })
            .collect();
        let p = plan(&chain);
        assert_eq!(p.size, 2 * align(1000));
    }
}
