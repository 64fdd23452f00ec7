//! How far the mean chosen and rejected errors have moved since the run's first step
//! (`chosen_drift`, `rejected_drift` in metrics.jsonl). A positive chosen drift while the
//! preference margin grows is the failure the successors of Diffusion-DPO document: the
//! winner's error rises with the loser's.

use std::path::Path;

use serde_json::Value;

const KEYS: [(&str, &str); 2] = [("chosen_loss", "chosen_drift"), ("rejected_loss", "rejected_drift")];

#[derive(Debug, Default)]
pub struct Drift {
    /// The first step's values, once seen.
    first: Option<Value>,
}

impl Drift {
    /// On resume the first step's line is still in the (truncated) metrics file.
    pub fn resume(metrics: &Path, start: usize) -> Self {
        let first = (start > 0)
            .then(|| std::fs::read_to_string(metrics).ok())
            .flatten()
            .and_then(|text| text.lines().next().and_then(|l| serde_json::from_str::<Value>(l).ok()))
            .filter(|v| v["step"].as_u64() == Some(1));
        Self { first }
    }

    /// Adds the drift keys to a metrics line (the first line gets 0).
    pub fn annotate(&mut self, line: &mut Value) {
        // Parsed back from its text as on resume, so that both give the same bits.
        let first = self.first.get_or_insert_with(|| serde_json::from_str(&line.to_string()).unwrap_or(Value::Null));
        for (key, drift) in KEYS {
            if let (Some(now), Some(then)) = (line[key].as_f64(), first[key].as_f64()) {
                line[drift] = serde_json::json!(now - then);
            }
        }
    }
}
