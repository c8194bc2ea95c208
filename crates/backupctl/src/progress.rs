//! Progress bars on a terminal only (none when stderr is not a TTY).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use backup_engine::Progress;

pub struct Bar {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

pub fn start(progress: Arc<Progress>, label: &'static str) -> Option<Bar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec}) {elapsed}")
            .expect("valid template"),
    );
    bar.set_message(label);
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let total = progress
                    .total_bytes
                    .load(std::sync::atomic::Ordering::Relaxed);
                if total > 0 && bar.length() != Some(total) {
                    bar.set_length(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                        )
                        .expect("valid template"),
                    );
                }
                bar.set_position(progress.bytes());
            }
        })
    };
    Some(Bar { bar, ticker })
}

pub fn finish(bar: Option<Bar>) {
    if let Some(b) = bar {
        b.ticker.abort();
        b.bar.finish_and_clear();
    }
}
