//! Background decoding: a reader thread streams pairs from parquet, worker threads decode
//! and transform them, and the consumer receives them in the reader's order through
//! bounded queues, so memory stays bounded and the accelerator does not wait on JPEG
//! decoding. The order depends only on the seed; `skip` resumes at a position.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};

use super::parquet::{Pair, PairReader, Skipped};
use super::transform::{Prepared, TransformConfig, prepare};

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub transform: TransformConfig,
    /// Seed of the crops, flips and caption dropout.
    pub seed: u64,
    /// Decoding threads.
    pub workers: usize,
    /// Pairs in flight between the stages (per queue).
    pub queue: usize,
    /// Kept pairs to pass over without decoding (resuming).
    pub skip: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8);
        Self { transform: TransformConfig::default(), seed: 0, workers, queue: 16, skip: 0 }
    }
}

/// Calls `each(position, prepared)` for every pair that decodes, in order (positions count
/// kept pairs from the start of the stream, skipped ones included), until it returns false.
/// Pairs whose images do not decode are warned about and counted in `bad_image`.
pub fn for_each_prepared(
    reader: &PairReader,
    config: &LoaderConfig,
    mut each: impl FnMut(usize, Prepared) -> Result<bool>,
) -> Result<Skipped> {
    let (work_tx, work_rx) = sync_channel::<(usize, Pair)>(config.queue.max(1));
    let (done_tx, done_rx) = sync_channel::<(usize, Result<Prepared>)>(config.queue.max(1));
    let work_rx = Arc::new(Mutex::new(work_rx));
    std::thread::scope(|scope| -> Result<Skipped> {
        let producer = scope.spawn(|| produce(reader, config.skip, work_tx));
        for _ in 0..config.workers.max(1) {
            let (rx, tx) = (Arc::clone(&work_rx), done_tx.clone());
            scope.spawn(move || work(rx, tx, &config.transform, config.seed));
        }
        // Only the workers hold the queues' other ends now: when they stop, the stages
        // before them see a hang-up instead of blocking.
        drop(done_tx);
        drop(work_rx);
        let mut bad = 0;
        let mut pending: BTreeMap<usize, Result<Prepared>> = BTreeMap::new();
        let mut next = config.skip;
        let mut stopped = false;
        for (i, r) in &done_rx {
            pending.insert(i, r);
            while let Some(r) = pending.remove(&next) {
                next += 1;
                match r {
                    Ok(p) => {
                        if !stopped && !each(next - 1, p)? {
                            stopped = true;
                        }
                    }
                    Err(e) => {
                        eprintln!("warning: {e:#}; skipped");
                        bad += 1;
                    }
                }
            }
            if stopped {
                break;
            }
        }
        // Unblock the stages so the threads finish.
        drop(done_rx);
        let mut skipped = producer.join().map_err(|_| anyhow!("the parquet reader thread panicked"))??;
        skipped.bad_image += bad;
        Ok(skipped)
    })
}

fn produce(reader: &PairReader, skip: usize, tx: SyncSender<(usize, Pair)>) -> Result<Skipped> {
    let mut position = 0;
    reader.for_each(|pair| {
        let i = position;
        position += 1;
        if i < skip {
            return Ok(true);
        }
        // The consumer hung up: stop reading.
        Ok(tx.send((i, pair)).is_ok())
    })
}

fn work(
    rx: Arc<Mutex<Receiver<(usize, Pair)>>>,
    tx: SyncSender<(usize, Result<Prepared>)>,
    t: &TransformConfig,
    seed: u64,
) {
    loop {
        let job = rx.lock().expect("queue lock").recv();
        let Ok((i, pair)) = job else { return };
        if tx.send((i, prepare(&pair, t, seed, i as u64))).is_err() {
            return;
        }
    }
}
