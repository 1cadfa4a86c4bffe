//! Progress display shared by the stages: hidden when stderr is not a terminal or the
//! caller asks for quiet, so tests and logs get plain lines only.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A spinner with elapsed time for a step whose length is unknown.
pub fn spinner(show: bool, message: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A byte-counting bar.
pub fn bytes(show: bool, total: u64, prefix: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix:>20} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.into());
    bar
}
