//! `verbose=1`: Keras's progress bar within an epoch,
//! `120/352 [=======>......................] - ETA: 41s - loss: 1.2301 - acc: 0.5512`.
//!
//! On a terminal the line is redrawn in place (at most every second).
//! Elsewhere each update is a complete, flushed line: evcxr forwards a
//! cell's output line by line, so a `\r` would never reach the notebook.
//! There a line comes every ten seconds and at 25, 50 and 75% of the epoch,
//! so that a long epoch shows a few lines, not one per batch, and the
//! output never goes quiet for long.

use crate::history::{epoch_line, EpochMetrics};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Keras's bar width.
const BAR: usize = 30;

pub(crate) struct Progress {
    steps: usize,
    start: Instant,
    last: Instant,
    interval: Duration,
    terminal: bool,
    /// the next quarter of the epoch (1..=3) that gets a line of its own
    quarter: usize,
    /// the width of the line last drawn in place, to blank what it leaves
    drawn: usize,
}

impl Progress {
    pub fn new(steps: usize) -> Self {
        Self::with(steps, std::io::stdout().is_terminal())
    }

    fn with(steps: usize, terminal: bool) -> Self {
        let now = Instant::now();
        Self {
            steps,
            start: now,
            last: now,
            interval: Duration::from_secs(if terminal { 1 } else { 10 }),
            terminal,
            quarter: 1,
            drawn: 0,
        }
    }

    /// After step `step` (1-based), with the running mean loss and accuracy.
    pub fn update(&mut self, step: usize, loss: f64, accuracy: f64) {
        if let Some(line) = self.due(step, Instant::now(), loss, accuracy) {
            self.draw(&line, false);
        }
    }

    /// The progress line after `step` at `now`, if one is due.
    fn due(&mut self, step: usize, now: Instant, loss: f64, accuracy: f64) -> Option<String> {
        if step >= self.steps {
            return None; // the epoch line follows
        }
        // Passing a quarter mark (steps * quarter / 4) prints even if the
        // last line was recent; several marks at once print one line.
        let mut quarter_passed = false;
        while self.quarter < 4 && step * 4 >= self.steps * self.quarter {
            self.quarter += 1;
            quarter_passed = true;
        }
        let timed = now - self.last >= self.interval;
        if !(timed || (quarter_passed && !self.terminal)) {
            return None;
        }
        self.last = now;
        let elapsed = (now - self.start).as_secs_f64();
        let eta = elapsed / step as f64 * (self.steps - step) as f64;
        Some(format!(
            "{} - ETA: {} - loss: {loss:.4} - acc: {accuracy:.4}",
            bar(step, self.steps),
            duration(eta)
        ))
    }

    /// The epoch's final line, in place of the progress: Keras's
    /// `352/352 [==============================] - 41s - loss: ...`.
    pub fn finish(&mut self, m: &EpochMetrics) {
        let line = epoch_line(self.steps, m);
        let rest = line.split_once(" - ").map_or("", |(_, rest)| rest);
        self.draw(&format!("{} - {rest}", bar(self.steps, self.steps)), true);
    }

    fn draw(&mut self, line: &str, last: bool) {
        let mut out = std::io::stdout().lock();
        let _ = if self.terminal {
            let width = line.chars().count();
            let pad = self.drawn.saturating_sub(width);
            self.drawn = width;
            write!(out, "\r{line}{:pad$}{}", "", if last { "\n" } else { "" })
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }
}

/// `step/steps [====>.....]`, Keras 2's drawing: `=` for what is done,
/// `>` at the front while the epoch runs, `.` for what is left.
fn bar(step: usize, steps: usize) -> String {
    let width = steps.to_string().len();
    let done = (BAR * step / steps.max(1)).min(BAR);
    let mut bar = "=".repeat(done.saturating_sub(1));
    if done > 0 {
        bar.push(if step < steps { '>' } else { '=' });
    }
    bar += &".".repeat(BAR - done);
    format!("{step:>width$}/{steps} [{bar}]")
}

/// Keras's ETA: `41s`, `2:05`, `1:02:05`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}:{:02}", s / 60, s % 60),
        _ => format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_is_keras_drawing() {
        assert_eq!(bar(120, 352), "120/352 [=========>....................]");
        assert_eq!(bar(1, 352), "  1/352 [..............................]");
        assert_eq!(bar(352, 352), "352/352 [==============================]");
        assert_eq!(bar(0, 0), "0/0 [..............................]");
        assert_eq!(duration(41.4), "41s");
        assert_eq!(duration(125.0), "2:05");
        assert_eq!(duration(3725.0), "1:02:05");
    }

    /// Into a pipe: a line at each quarter and every ten seconds, none on
    /// the last step, whatever the pace.
    #[test]
    fn lines_come_at_the_quarters_and_every_ten_seconds() {
        let t0 = Instant::now();
        // 100 steps of 0.2 s: a 20 s epoch, quarters at 25/50/75.
        let mut p = Progress::with(100, false);
        p.start = t0;
        p.last = t0;
        let printed: Vec<usize> = (1..=100)
            .filter(|&s| {
                p.due(s, t0 + Duration::from_millis(200 * s as u64), 1.0, 0.5)
                    .is_some()
            })
            .collect();
        assert_eq!(printed, [25, 50, 75]);
        // 100 steps of 1 s: every ten seconds, the quarters among them.
        let mut p = Progress::with(100, false);
        p.start = t0;
        p.last = t0;
        let printed: Vec<usize> = (1..=100)
            .filter(|&s| {
                p.due(s, t0 + Duration::from_secs(s as u64), 1.0, 0.5)
                    .is_some()
            })
            .collect();
        // (no gap over ten seconds: the quarters restart the clock)
        assert_eq!(printed, [10, 20, 25, 35, 45, 50, 60, 70, 75, 85, 95]);
        // 3 steps: the marks fall on steps 1 and 2, none on the last.
        let mut p = Progress::with(3, false);
        let printed: Vec<usize> = (1..=3)
            .filter(|&s| p.due(s, p.start, 1.0, 0.5).is_some())
            .collect();
        assert_eq!(printed, [1, 2]);
    }

    #[test]
    fn a_line_gives_the_eta_and_the_running_metrics() {
        let t0 = Instant::now();
        let mut p = Progress::with(352, false);
        p.start = t0;
        p.last = t0;
        let line = p
            .due(120, t0 + Duration::from_secs(14), 1.23014, 0.55121)
            .unwrap();
        // 14 s for 120 steps: 232 left take 27 s.
        assert_eq!(
            line,
            "120/352 [=========>....................] - ETA: 27s - loss: 1.2301 - acc: 0.5512"
        );
    }
}
