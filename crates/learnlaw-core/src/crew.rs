//! A CPU engine's own threads, alive as long as the engine, each running the same share of every
//! step: the CPU analogue of a persistent kernel. Starting a step is one store the waiting
//! threads see within a cache-line transfer, and its end a counter they count down, where a
//! thread pool's fork–join queues jobs and wakes sleeping threads at every parallel loop.
//!
//! Between steps the threads spin for a while, then sleep on a condition variable, so an idle
//! engine (or more threads than cores) does not burn the machine.
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a thread spins for the next job before it sleeps: far longer than the gap between
/// two steps, far shorter than anything a user would notice.
const SPIN: Duration = Duration::from_micros(50);

/// A job: run share `i` of the crew's threads.
pub type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// The caller's thread (share 0) and `threads − 1` spawned ones.
pub struct Crew {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

struct Shared {
    threads: usize,
    /// Bumped once per job; a thread runs a job when it sees a number it has not run.
    epoch: AtomicUsize,
    /// The current job with its lifetime erased: `Crew::run` holds the real one and waits for
    /// every share before it returns.
    job: Mutex<Option<&'static Job<'static>>>,
    /// Spawned threads still running the current job.
    pending: AtomicUsize,
    /// A spawned thread's share panicked; `run` panics too once every share is done.
    panicked: AtomicBool,
    quit: AtomicBool,
    /// Threads asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Crew {
    /// A crew of `threads` (at least 1) threads.
    pub fn new(threads: usize) -> Result<Self> {
        let shared = Arc::new(Shared {
            threads: threads.max(1),
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut crew = Crew { shared, handles: Vec::new() };
        for i in 1..crew.shared.threads {
            let shared = Arc::clone(&crew.shared);
            let spawned = std::thread::Builder::new().name(format!("learnlaw-crew-{i}")).spawn(move || shared.work(i));
            // On an error, dropping `crew` stops the threads already started.
            let handle = spawned
                .map_err(|e| Error::Unavailable { backend: "cpu".into(), reason: format!("cannot start thread {i} of {threads}: {e}") })?;
            crew.handles.push(handle);
        }
        Ok(crew)
    }

    /// The number of shares a job is split into.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `job(i)` for every share i, each on its own thread (share 0 on the caller's), and
    /// returns once all are done.
    pub fn run(&mut self, job: &Job<'_>) {
        let s = &*self.shared;
        if s.threads == 1 {
            return job(0);
        }
        // SAFETY: the reference stays in `s.job` only until every share has run (below), and
        // `job` outlives this call; `&mut self` keeps a second `run` from overlapping this one.
        let erased = unsafe { std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job) };
        *s.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(erased);
        s.pending.store(s.threads - 1, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        s.wake_sleepers();
        let mine = panic::catch_unwind(AssertUnwindSafe(|| job(0)));
        let start = Instant::now();
        while s.pending.load(SeqCst) != 0 {
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Err(e) = mine {
            panic::resume_unwind(e);
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("a crew thread panicked in its share of a job");
        }
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.shared.quit.store(true, SeqCst);
        self.shared.wake_sleepers();
        for handle in self.handles.drain(..) {
            // A thread's panics were caught in its shares; nothing is left to report.
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn wake_sleepers(&self) {
        if self.sleepers.load(SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
    }

    /// A spawned thread's life: wait for a job it has not run, run its share, count down.
    fn work(&self, i: usize) {
        let mut seen = 0;
        loop {
            let start = Instant::now();
            loop {
                if self.quit.load(SeqCst) {
                    return;
                }
                if self.epoch.load(SeqCst) != seen {
                    break;
                }
                if start.elapsed() < SPIN {
                    std::hint::spin_loop();
                    continue;
                }
                // Sleep until a job or the end. A thread counts itself a sleeper before it
                // checks `epoch` under the lock, and `run` bumps `epoch` before it reads
                // `sleepers`, so either `run` sees the sleeper and notifies under the lock, or
                // the check sees the new epoch.
                let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                self.sleepers.fetch_add(1, SeqCst);
                while self.epoch.load(SeqCst) == seen && !self.quit.load(SeqCst) {
                    guard = self.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                self.sleepers.fetch_sub(1, SeqCst);
            }
            seen = self.epoch.load(SeqCst);
            let job = *self.job.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(job) = job {
                if panic::catch_unwind(AssertUnwindSafe(|| job(i))).is_err() {
                    self.panicked.store(true, SeqCst);
                }
            }
            self.pending.fetch_sub(1, SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_per_job() {
        for threads in [1, 2, 3, 5] {
            let mut crew = Crew::new(threads).unwrap();
            let counts: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..1000 {
                crew.run(&|i| {
                    counts[i].fetch_add(1, SeqCst);
                });
            }
            assert!(counts.iter().all(|c| c.load(SeqCst) == 1000), "threads {threads}");
        }
    }

    #[test]
    fn sleeping_threads_wake_for_the_next_job() {
        let mut crew = Crew::new(2).unwrap();
        let done = AtomicUsize::new(0);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 5);
            crew.run(&|_| {
                done.fetch_add(1, SeqCst);
            });
        }
        assert_eq!(done.load(SeqCst), 6);
    }

    #[test]
    fn a_share_that_panics_panics_the_caller_and_the_crew_goes_on() {
        let mut crew = Crew::new(3).unwrap();
        let caught = panic::catch_unwind(AssertUnwindSafe(|| crew.run(&|i| assert_ne!(i, 2))));
        assert!(caught.is_err());
        let done = AtomicUsize::new(0);
        crew.run(&|_| {
            done.fetch_add(1, SeqCst);
        });
        assert_eq!(done.load(SeqCst), 3);
    }
}
