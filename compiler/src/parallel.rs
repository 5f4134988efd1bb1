//! A bounded pool for independent jobs of one compile (converting initializers, packing
//! weights, NVRTC programs): at most one thread per core (eight at most), results in the
//! jobs' order.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The pool's size: one thread per core, eight at most.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
}

/// `f` on every job, on every core; the results in the jobs' order. A job that panics
/// panics the caller (jobs are smelt's own code: a panic is a bug, not an input's fault).
pub fn map<J: Sync, T: Send>(jobs: &[J], f: impl Fn(&J) -> T + Sync) -> Vec<T> {
    map_on(cores(), jobs, f)
}

/// [`map`] on at most `threads` threads.
pub fn map_on<J: Sync, T: Send>(threads: usize, jobs: &[J], f: impl Fn(&J) -> T + Sync) -> Vec<T> {
    let n = threads.min(jobs.len()).max(1);
    if n == 1 {
        return jobs.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(j) = jobs.get(i) else { break };
                        out.push((i, f(j)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|d| d.0);
    done.into_iter().map(|d| d.1).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_jobs_order() {
        let jobs: Vec<u64> = (0..1000).collect();
        let out = super::map(&jobs, |&j| j * j);
        assert_eq!(out, jobs.iter().map(|j| j * j).collect::<Vec<_>>());
        assert!(super::map(&[] as &[u8], |_| 0).is_empty());
        assert_eq!(super::map_on(1, &jobs, |&j| j + 1)[999], 1000);
    }
}
