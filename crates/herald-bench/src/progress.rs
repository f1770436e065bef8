//! Progress bars on stderr: drawn only when stderr is a terminal and the
//! output is not `--json`; otherwise hidden (notes still go to stderr).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Makes the bars of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    visible: bool,
}

impl Progress {
    pub(crate) fn new(json: bool) -> Self {
        Self {
            visible: !json && std::io::stderr().is_terminal(),
        }
    }

    /// A bar of `len` steps labelled `label`.
    pub(crate) fn bar(&self, len: u64, label: &'static str) -> ProgressBar {
        if !self.visible {
            return ProgressBar::hidden();
        }
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {elapsed}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(label);
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    }
}

/// Prints `bench: {message}` on stderr without tearing a visible bar.
pub(crate) fn note(bar: &ProgressBar, message: &str) {
    bar.suspend(|| eprintln!("bench: {message}"));
}
