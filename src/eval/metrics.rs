//! Named evaluation metrics: one line of `eval.jsonl` is a step and any number of named
//! values (`{"step": 50, "style_b": 0.4, "pickscore": 21.3}`), so the built-in model's
//! readings and the reward models' scores land in the same report tables and curves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub step: usize,
    #[serde(flatten)]
    pub values: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn new(step: usize) -> Self {
        Self { step, values: BTreeMap::new() }
    }

    pub fn with(mut self, name: &str, value: f64) -> Self {
        self.values.insert(name.to_string(), value);
        self
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }
}

/// Which direction of a metric is better (bold in the report), if either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    Neither,
}

/// How the report shows a metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricInfo {
    pub key: &'static str,
    /// Column title (with ↑/↓ where one direction is better).
    pub title: &'static str,
    /// Curve panel title.
    pub panel: &'static str,
    pub better: Better,
    pub digits: usize,
    /// One sentence for the report's legend.
    pub meaning: &'static str,
}

/// The metrics mapo knows, in report order; any other name is shown as it is.
pub const KNOWN: &[MetricInfo] = &[
    MetricInfo {
        key: "reward",
        title: "reward ↑",
        panel: "online reward of eval samples",
        better: Better::Higher,
        digits: 3,
        meaning: "reward: the experiment's [online.rewards] weighted sum, scored on the evaluation samples of every \
                  row (the reward the online runs train on)",
    },
    MetricInfo {
        key: "style_b",
        title: "style B ↑",
        panel: "style B share of samples",
        better: Better::Higher,
        digits: 3,
        meaning: "style B: share of samples the toy scorer reads as striped (style B)",
    },
    MetricInfo {
        key: "fidelity",
        title: "fidelity ↑",
        panel: "prompt fidelity",
        better: Better::Higher,
        digits: 3,
        meaning: "fidelity: share whose shape, colour and background match the prompt (transparent scorer: \
                  `src/toy/score.rs`)",
    },
    MetricInfo {
        key: "chosen_error",
        title: "chosen err ↓",
        panel: "chosen error (held pairs)",
        better: Better::Lower,
        digits: 4,
        meaning: "chosen/rejected err: mean denoising error of fixed held pairs with fixed noise",
    },
    MetricInfo {
        key: "rejected_error",
        title: "rejected err",
        panel: "rejected error (held pairs)",
        better: Better::Neither,
        digits: 4,
        meaning: "",
    },
    MetricInfo {
        key: "pickscore",
        title: "PickScore ↑",
        panel: "PickScore",
        better: Better::Higher,
        digits: 3,
        meaning: "PickScore: mean exp(logit_scale)·cos(image, prompt) with PickScore_v1",
    },
    MetricInfo {
        key: "hps",
        title: "HPS ↑",
        panel: "HPS",
        better: Better::Higher,
        digits: 4,
        meaning: "HPS: mean cos(image, prompt) with an HPSv2 checkpoint (papers print ×100)",
    },
    MetricInfo {
        key: "aesthetic",
        title: "aesthetic ↑",
        panel: "aesthetic score",
        better: Better::Higher,
        digits: 3,
        meaning: "aesthetic: the LAION improved-aesthetic MLP on ViT-L/14 image embeddings",
    },
    MetricInfo {
        key: "clip",
        title: "CLIP score ↑",
        panel: "CLIP score",
        better: Better::Higher,
        digits: 2,
        meaning: "CLIP score: mean 100·max(cos(image, prompt), 0)",
    },
];

/// The display of `key`: the known entry, or a neutral one named after the key.
pub fn info(key: &str) -> MetricInfo {
    KNOWN.iter().find(|m| m.key == key).copied().unwrap_or(MetricInfo {
        key: "",
        title: "",
        panel: "",
        better: Better::Neither,
        digits: 4,
        meaning: "",
    })
}

/// The metric names present in `lines`, known ones first (in `KNOWN` order), then the
/// rest by name.
pub fn present<'a>(lines: impl IntoIterator<Item = &'a Metrics>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for m in lines {
        for k in m.values.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let rank = |k: &String| KNOWN.iter().position(|m| m.key == k).unwrap_or(KNOWN.len());
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_the_old_fixed_layout_read_as_named_metrics() {
        let old = r#"{"step":50,"style_b":0.25,"fidelity":0.5,"chosen_error":0.1,"rejected_error":0.2}"#;
        let m: Metrics = serde_json::from_str(old).unwrap();
        assert_eq!(m.step, 50);
        assert_eq!(m.get("fidelity"), Some(0.5));
        assert_eq!(m.values.len(), 4);
        // And they are written back the same way.
        let back: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(old).unwrap());
    }

    #[test]
    fn known_metrics_come_first_in_report_order() {
        let a = Metrics::new(0).with("zeta", 1.0).with("pickscore", 2.0);
        let b = Metrics::new(1).with("style_b", 0.0).with("alpha", 3.0);
        assert_eq!(present([&a, &b]), ["style_b", "pickscore", "alpha", "zeta"]);
        assert_eq!(info("hps").better, Better::Higher);
        assert_eq!(info("alpha").better, Better::Neither);
    }
}
