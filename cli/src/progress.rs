//! How `hyper pull` (and a pulling `hyper run`) shows progress: a bar per
//! layer on a terminal, one plain line per step otherwise (logs, CI).

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use hyper_api::images::PullEvent;

pub struct PullView {
    to_stderr: bool,
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
}

/// `sha256:0123456789abcdef…` → `0123456789ab`, as Docker shows layers.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.get(..12).unwrap_or(hex)
}

impl PullView {
    pub fn new(to_stderr: bool) -> Self {
        let terminal = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let bars = terminal.then(|| {
            let target = if to_stderr {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::stdout()
            };
            (MultiProgress::with_draw_target(target), HashMap::new())
        });
        Self { to_stderr, bars }
    }

    fn line(&self, text: String) {
        if self.to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    pub fn show(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Resolved { reference, digest } => {
                self.line(format!("Pulling {reference} ({digest})"));
            }
            PullEvent::Layer {
                digest,
                size,
                cached,
            } => {
                let name = short_digest(digest).to_string();
                match &mut self.bars {
                    Some((multi, bars)) => {
                        let bar = multi.add(ProgressBar::new(*size));
                        let style = ProgressStyle::with_template(
                            "{prefix}: {wide_bar} {bytes}/{total_bytes} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar());
                        bar.set_style(style);
                        bar.set_prefix(name);
                        if *cached {
                            bar.set_position(*size);
                            bar.finish_with_message("already exists");
                        }
                        bars.insert(digest.clone(), bar);
                    }
                    None if *cached => self.line(format!("{name}: already exists")),
                    None => self.line(format!("{name}: downloading {size} bytes")),
                }
            }
            PullEvent::Progress { digest, done } => {
                if let Some((_, bars)) = &self.bars {
                    if let Some(bar) = bars.get(digest) {
                        bar.set_position(*done);
                    }
                }
            }
            PullEvent::LayerDone { digest } => match &self.bars {
                Some((_, bars)) => {
                    if let Some(bar) = bars.get(digest) {
                        if !bar.is_finished() {
                            bar.finish_with_message("done");
                        }
                    }
                }
                None => self.line(format!("{}: done", short_digest(digest))),
            },
            PullEvent::Done { .. } | PullEvent::Error { .. } => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some((multi, bars)) = self.bars.take() {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
            let _ = multi.clear();
        }
    }
}
