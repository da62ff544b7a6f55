//! Progress of a plan run on stderr. On a terminal: one overall bar over all
//! program runs with the elapsed time and an ETA, prefixed by the stage
//! (1-based) or `decode`. Otherwise: plain lines, at most one every
//! [`LINE_EVERY`] and one per tenth of the runs, so logs of long runs show
//! where they are without flooding (a short run prints none).
//! Before a run expected to take more than a few seconds, a line with the
//! estimate (the plan's exact MACs over the backend's measured speed).

use ecarc_runtime::driver::{Observer, Outline};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Plain progress lines come at most this often.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Runs expected to take longer than this get an estimate line first.
const ANNOUNCE_ABOVE: f64 = 3.0;

enum Mode {
    Off,
    Bar,
    Lines,
}

struct State {
    outline: Option<Outline>,
    stage: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    last_tenth: u64,
    bar: Option<ProgressBar>,
}

pub struct Progress {
    mode: Mode,
    state: RefCell<State>,
}

/// `1m 05s`, `42 s`, `0.4 s`.
pub fn duration_text(s: f64) -> String {
    if s >= 60.0 {
        let m = (s / 60.0).floor();
        format!("{m:.0}m {:02.0}s", s - 60.0 * m)
    } else if s >= 10.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

impl Progress {
    /// `on`: report at all (off for `--json`); `terminal`: draw a bar.
    pub fn new(on: bool, terminal: bool) -> Self {
        let mode = match (on, terminal) {
            (false, _) => Mode::Off,
            (true, true) => Mode::Bar,
            (true, false) => Mode::Lines,
        };
        let now = Instant::now();
        Progress {
            mode,
            state: RefCell::new(State {
                outline: None,
                stage: 0,
                done: 0,
                started: now,
                last_line: now,
                last_tenth: 0,
                bar: None,
            }),
        }
    }

    /// Clear the bar (before the command prints its result).
    pub fn finish(&self) {
        if let Some(b) = self.state.borrow_mut().bar.take() {
            b.finish_and_clear();
        }
    }

    fn stage_text(outline: &Outline, stage: u64) -> String {
        if stage >= outline.stages {
            "decode".into()
        } else {
            format!("stage {}/{}", stage + 1, outline.stages)
        }
    }

    fn line(&self, st: &mut State) {
        let Some(o) = &st.outline else { return };
        let elapsed = st.started.elapsed().as_secs_f64();
        let pct = if o.total_runs == 0 { 100.0 } else { 100.0 * st.done as f64 / o.total_runs as f64 };
        let left = if st.done > 0 && st.done < o.total_runs {
            format!(", about {} left", duration_text(elapsed * (o.total_runs - st.done) as f64 / st.done as f64))
        } else {
            String::new()
        };
        eprintln!(
            "{}: {pct:.0}% ({}, {} of {} runs), {}{left}",
            o.plan,
            Self::stage_text(o, st.stage),
            st.done,
            o.total_runs,
            duration_text(elapsed)
        );
        st.last_line = Instant::now();
    }
}

impl Observer for Progress {
    fn begin(&self, outline: &Outline) {
        if matches!(self.mode, Mode::Off) {
            return;
        }
        let mut st = self.state.borrow_mut();
        if let Some(e) = outline.estimate.filter(|&e| e > ANNOUNCE_ABOVE) {
            eprintln!(
                "{}: {} program runs over {} stages, expected to take about {} on this backend",
                outline.plan,
                outline.total_runs,
                outline.stages,
                duration_text(e)
            );
        }
        st.outline = Some(outline.clone());
        st.started = Instant::now();
        st.done = 0;
        st.last_tenth = 0;
        if let Mode::Bar = self.mode {
            let bar = ProgressBar::with_draw_target(Some(outline.total_runs), ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{prefix:>12} [{bar:32}] {pos:>5}/{len:<5} {elapsed_precise} ETA {eta}")
                    .expect("a valid template")
                    .progress_chars("=> ");
            bar.set_style(style);
            st.bar = Some(bar);
        }
    }

    fn stage(&self, stage: u64) {
        let mut st = self.state.borrow_mut();
        st.stage = stage;
        if let (Some(bar), Some(o)) = (&st.bar, &st.outline) {
            bar.set_prefix(Self::stage_text(o, stage));
        }
    }

    fn ran(&self) {
        let mut st = self.state.borrow_mut();
        st.done += 1;
        match self.mode {
            Mode::Off => {}
            Mode::Bar => {
                if let Some(b) = &st.bar {
                    b.inc(1);
                }
            }
            Mode::Lines => {
                let total = st.outline.as_ref().map_or(1, |o| o.total_runs.max(1));
                let tenth = st.done * 10 / total;
                if tenth > st.last_tenth && st.last_line.elapsed() >= LINE_EVERY {
                    st.last_tenth = tenth;
                    self.line(&mut st);
                }
            }
        }
    }
}
