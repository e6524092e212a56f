//! `verbose=1`: the progress of an epoch as it trains, one line updated in
//! place on a terminal (at most every second), and elsewhere (a notebook,
//! a log file) a new line at most every ten seconds, so that a long epoch
//! prints a few lines, not one per batch.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub(crate) struct Progress {
    steps: usize,
    start: Instant,
    last: Instant,
    interval: Duration,
    terminal: bool,
    /// the width of the line last drawn in place, to blank what it leaves
    drawn: usize,
}

impl Progress {
    pub fn new(steps: usize) -> Self {
        let terminal = std::io::stdout().is_terminal();
        let now = Instant::now();
        Self {
            steps,
            start: now,
            last: now,
            interval: Duration::from_secs(if terminal { 1 } else { 10 }),
            terminal,
            drawn: 0,
        }
    }

    /// After step `step` (1-based), with the running mean loss and accuracy.
    pub fn update(&mut self, step: usize, loss: f64, accuracy: f64) {
        let now = Instant::now();
        if now - self.last < self.interval || step == self.steps {
            return;
        }
        self.last = now;
        let line = format!(
            "{step}/{} - {:.0}s - loss: {loss:.4} - acc: {accuracy:.4}",
            self.steps,
            (now - self.start).as_secs_f64()
        );
        self.draw(&line, false);
    }

    /// The epoch's final line, in place of the progress.
    pub fn finish(&mut self, line: &str) {
        self.draw(line, true);
    }

    fn draw(&mut self, line: &str, last: bool) {
        let mut out = std::io::stdout().lock();
        let _ = if self.terminal {
            let pad = self.drawn.saturating_sub(line.len());
            self.drawn = line.len();
            write!(out, "\r{line}{:pad$}{}", "", if last { "\n" } else { "" })
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }
}
