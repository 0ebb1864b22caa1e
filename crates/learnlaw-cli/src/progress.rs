//! Progress of the long jobs (a search's epochs, a retraining's steps): the terminal's bar, a
//! plain line per epoch (and per tenth of the steps) where stderr is a log file instead, and the
//! observer of a program that embeds the command (the Python package's callback), which may also
//! stop a search after its current epoch.
use std::cell::RefCell;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use indicatif::{HumanDuration, ProgressBar, ProgressStyle};
use learnlaw_core::run::History;

/// One update of a long job, as an observer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// What runs, e.g. "perceptron search on cpu-f32".
    pub job: String,
    /// What is counted: "epochs" (a search) or "steps" (a retraining).
    pub unit: &'static str,
    pub done: u64,
    pub total: u64,
    /// A search's J of the constant policy, and J of the policy the epoch just done started from
    /// (its forward pass; the final policy's J is the last of the run's history).
    pub j_first: Option<f64>,
    pub j: Option<f64>,
    /// That policy's acceleration ratio on the desired set (None: not reached).
    pub ar_dev: Option<f64>,
}

/// What an observer says after an event: `Break` stops a search after the current epoch, with
/// its policy saved (other jobs run to their end).
pub type Observer = Box<dyn FnMut(&Event) -> ControlFlow<()>>;

thread_local! {
    static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
}

/// Runs `job` with `observer` told of every progress update made on this thread meanwhile.
pub fn with_observer<T>(observer: Observer, job: impl FnOnce() -> T) -> T {
    struct Restore(Option<Observer>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OBSERVER.with(|o| *o.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(OBSERVER.with(|o| o.borrow_mut().replace(observer)));
    job()
}

/// Tells the observer, if any, of the event `event` builds (only built when there is one).
fn notify(event: impl FnOnce() -> Event) -> ControlFlow<()> {
    OBSERVER.with(|o| match o.borrow_mut().as_mut() {
        Some(observer) => observer(&event()),
        None => ControlFlow::Continue(()),
    })
}

fn has_observer() -> bool {
    OBSERVER.with(|o| o.borrow().is_some())
}

/// A job's progress bar on the terminal, and its observer. Where stderr is not a terminal (a
/// nohup or batch job's log) the bar is hidden and plain lines say the same, so an hours-long
/// run shows its pace; not under an observer, which reports as its program chooses.
pub struct Progress {
    bar: ProgressBar,
    job: String,
    unit: &'static str,
    /// The next position at which a plain line is written (u64::MAX: none are).
    next_line: AtomicU64,
}

impl Progress {
    pub fn new(job: impl Into<String>, unit: &'static str, total: u64) -> Result<Self> {
        Self::with_bar(ProgressBar::new(total), job.into(), unit)
    }

    fn with_bar(bar: ProgressBar, job: String, unit: &'static str) -> Result<Self> {
        let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} ({{elapsed}} < {{eta}})");
        bar.set_style(ProgressStyle::with_template(&template)?.progress_chars("=> "));
        bar.set_prefix(job.clone());
        bar.enable_steady_tick(std::time::Duration::from_secs(1));
        let next_line = if bar.is_hidden() && !has_observer() { 0 } else { u64::MAX };
        Ok(Progress { bar, job, unit, next_line: AtomicU64::new(next_line) })
    }

    /// Writes the plain line, if one is due.
    fn log_line(&self) {
        if let Some(line) = self.plain_line() {
            eprintln!("{line}");
        }
    }

    /// The plain line where the bar is hidden and the position has reached the next tenth of the
    /// steps (every epoch of a search, which has few).
    fn plain_line(&self) -> Option<String> {
        let (done, total) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let next = self.next_line.load(Ordering::Relaxed);
        if done < next || next == u64::MAX || done == 0 {
            return None;
        }
        let step = if self.unit == "epochs" { 1 } else { total.div_ceil(10).max(1) };
        self.next_line.store((done / step + 1) * step, Ordering::Relaxed);
        let message = self.bar.message();
        let message = if message.is_empty() { String::new() } else { format!(", {message}") };
        let elapsed = HumanDuration(self.bar.elapsed());
        Some(format!("{}: {done}/{total} {}{message} ({elapsed} elapsed)", self.job, self.unit))
    }

    fn event(&self) -> Event {
        Event {
            job: self.job.clone(),
            unit: self.unit,
            done: self.bar.position(),
            total: self.bar.length().unwrap_or(0),
            j_first: None,
            j: None,
            ar_dev: None,
        }
    }

    /// `n` more steps done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        self.log_line();
        let _ = notify(|| self.event());
    }

    /// A search's epoch `epoch` done, with the history so far; the observer's answer.
    pub fn epoch(&self, epoch: usize, history: &History) -> ControlFlow<()> {
        self.bar.set_position(epoch as u64);
        let ar_dev = history.ar_dev.last().copied().flatten();
        if let (Some(first), Some(j)) = (history.j.first(), history.j.last()) {
            let ar = ar_dev.map_or(String::new(), |a| format!(", AR dev {a:.2}×"));
            self.bar.set_message(format!("J {first:.5} → {j:.5}{ar}"));
        }
        self.log_line();
        notify(|| Event { j_first: history.j.first().copied(), j: history.j.last().copied(), ar_dev, ..self.event() })
    }

    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    /// Leaves the finished bar on the terminal (a search's, with its last J).
    pub fn finish(&self) {
        self.bar.finish();
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observer_sees_updates_only_within_its_job_and_may_stop() {
        let seen = std::rc::Rc::new(RefCell::new(Vec::new()));
        let log = seen.clone();
        let history = History { j: vec![0.5, 0.25], ar_dev: vec![None, Some(2.0)], ..History::default() };
        let answer = with_observer(
            Box::new(move |e: &Event| {
                log.borrow_mut().push(e.clone());
                if e.unit == "epochs" {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }),
            || {
                let steps = Progress::new("retraining", "steps", 4).unwrap();
                steps.inc(1);
                steps.inc(2);
                Progress::new("search", "epochs", 3).unwrap().epoch(1, &history)
            },
        );
        assert!(answer.is_break());
        Progress::new("after", "steps", 1).unwrap().inc(1);
        let seen = seen.borrow();
        assert_eq!(
            seen.iter().map(|e| (e.unit, e.done, e.total)).collect::<Vec<_>>(),
            [("steps", 1, 4), ("steps", 3, 4), ("epochs", 1, 3)]
        );
        assert_eq!((seen[2].j_first, seen[2].j, seen[2].ar_dev), (Some(0.5), Some(0.25), Some(2.0)));
    }

    fn hidden(unit: &'static str, total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::hidden());
        Progress::with_bar(bar, "job".into(), unit).unwrap()
    }

    #[test]
    fn a_hidden_bar_writes_a_line_per_epoch_and_per_tenth_of_the_steps() {
        let steps = hidden("steps", 400);
        let mut lines = Vec::new();
        for n in [1, 38, 1, 200, 1, 159] {
            steps.bar.inc(n);
            lines.push(steps.plain_line());
        }
        let at: Vec<_> = lines.iter().map(|l| l.as_ref().map(|l| l.split(' ').nth(1).unwrap().to_string())).collect();
        assert_eq!(at, [Some("1/400".into()), None, Some("40/400".into()), Some("240/400".into()), None, Some("400/400".into())]);

        let search = hidden("epochs", 3);
        let history = History { j: vec![0.5, 0.25], ar_dev: vec![None, Some(2.0)], ..History::default() };
        search.bar.set_position(1);
        search.bar.set_message("J 0.50000 → 0.25000");
        assert!(search.plain_line().unwrap().starts_with("job: 1/3 epochs, J 0.50000 → 0.25000 ("));
        let _ = search.epoch(2, &history);
        assert_eq!(search.plain_line(), None, "epoch 2's line was written by epoch() itself");
        search.bar.set_position(3);
        assert!(search.plain_line().is_some());
    }

    #[test]
    fn no_plain_lines_under_an_observer() {
        let quiet = with_observer(Box::new(|_: &Event| ControlFlow::Continue(())), || hidden("epochs", 3));
        quiet.bar.set_position(1);
        assert_eq!(quiet.plain_line(), None);
    }
}
