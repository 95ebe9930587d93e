//! Progress bars where a person waits (long `backtest` and `simulate` runs), drawn with
//! `indicatif` on stderr.
//!
//! A bar is drawn only when stderr is a terminal and the output is not JSON: another program
//! reading `--json` output, a pipe, a log file or CI sees no bar and no control codes.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether a bar is drawn: only for a person (stderr is a terminal) and never under `--json`.
pub fn visible(json: bool, stderr_is_terminal: bool) -> bool {
    stderr_is_terminal && !json
}

/// A bar of `len` steps labelled `what` (e.g. "series"), hidden unless [`visible`].
pub fn bar(len: u64, what: &str, json: bool) -> ProgressBar {
    if !visible(json, std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_terminal_without_json_gets_a_bar() {
        assert!(visible(false, true));
        assert!(!visible(true, true));
        assert!(!visible(false, false));
        assert!(!visible(true, false));
    }

    #[test]
    fn json_output_gets_a_hidden_bar() {
        assert!(bar(10, "series", true).is_hidden());
    }
}
