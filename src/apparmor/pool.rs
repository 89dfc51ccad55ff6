//! A tiny scoped thread pool: runs one job per item on up to N threads and keeps the input
//! order, or two different jobs side by side. Used where each job mostly waits on a child
//! process (the parser), so threads are cheap and a work-stealing runtime would add nothing
//! but a dependency.

/// Runs `work` over `items` on up to `threads` threads; results come back in input order.
pub fn map<T: Sync, R: Send>(threads: usize, items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&work).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Runs `a` on a thread of its own while `b` runs on this one; both results, once both ended.
/// A panic in `a` goes on in the caller.
pub fn join<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    std::thread::scope(|scope| {
        let a = scope.spawn(a);
        let b = b();
        (a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_input_order_for_any_thread_count() {
        let items: Vec<u32> = (0..17).collect();
        for threads in [0, 1, 2, 3, 16, 64] {
            let out = map(threads, &items, |i| i * 10);
            assert_eq!(
                out,
                items.iter().map(|i| i * 10).collect::<Vec<_>>(),
                "{threads}"
            );
        }
        assert!(map(4, &[] as &[u32], |i| *i).is_empty());
    }

    /// A meeting point for two jobs that returns whether both arrived within a bound: run one
    /// after the other, the first gives up instead of hanging the test.
    fn meet(arrived: &std::sync::atomic::AtomicUsize) -> bool {
        meet_within(arrived, std::time::Duration::from_secs(10))
    }

    fn meet_within(arrived: &std::sync::atomic::AtomicUsize, bound: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering;
        use std::time::{Duration, Instant};
        arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + bound;
        while arrived.load(Ordering::SeqCst) < 2 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn runs_in_parallel_up_to_the_limit() {
        let arrived = std::sync::atomic::AtomicUsize::new(0);
        // Two jobs that can only both meet if they run at the same time.
        let met = map(2, &[1, 2], |_| meet(&arrived));
        assert_eq!(met, [true, true]);
    }

    #[test]
    fn join_runs_both_at_once_and_returns_both() {
        let arrived = std::sync::atomic::AtomicUsize::new(0);
        let (a, b) = join(|| (meet(&arrived), "a"), || (meet(&arrived), 2));
        assert_eq!((a, b), ((true, "a"), (true, 2)));
    }

    #[test]
    fn one_thread_runs_the_jobs_one_after_the_other() {
        // The meeting point's own check: sequential jobs do not meet, and say so.
        let arrived = std::sync::atomic::AtomicUsize::new(0);
        assert!(!meet_within(&arrived, std::time::Duration::from_millis(50)));
    }
}
