//! The online methods' pieces (docs/design.md §4c): per-group advantages from rewards, and
//! the GRPO and DiffusionNFT losses on what a rollout kept. Their inputs are not per-row
//! errors of pairs, so they sit beside the offline methods' trait rather than behind it;
//! [`OnlineMethod`] is their parameters, read from `method_params` as the offline ones are.

pub mod advantages;
pub mod grpo;
pub mod nft;

use anyhow::{Result, bail, ensure};

use super::Params;

/// The methods that train on rollouts and rewards (not on pairs).
pub const NAMES: [&str; 3] = ["grpo", "nft", "ddpo"];

/// A rollout method and its parameters (official defaults where unset).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnlineMethod {
    /// Flow-GRPO: PPO-clipped ratio of SDE-step log-probabilities, KL to the reference.
    Grpo { clip_range: f64, kl_beta: f64, adv_clip_max: f64 },
    /// DiffusionNFT: implicit positive/negative policies around an old policy that follows
    /// θ by θ_old ← d·θ_old + (1 − d)·θ, d = min(decay_rate · iteration, max_decay).
    Nft { beta: f64, ref_beta: f64, adv_clip_max: f64, decay_rate: f64, max_decay: f64 },
    /// DDPO (ε-models): GRPO's clipped ratio on DDIM-with-η steps, no KL.
    Ddpo { clip_range: f64, adv_clip_max: f64 },
}

impl OnlineMethod {
    pub fn is_online(name: &str) -> bool {
        NAMES.contains(&name)
    }

    pub fn build(name: &str, mut params: Params) -> Result<Self> {
        let method = match name {
            "grpo" => Self::Grpo {
                clip_range: params.take("clip_range", grpo::CLIP_RANGE),
                kl_beta: params.take("kl_beta", grpo::KL_BETA),
                adv_clip_max: params.take("adv_clip_max", advantages::CLIP),
            },
            "nft" => Self::Nft {
                beta: params.take("beta", nft::BETA),
                ref_beta: params.take("ref_beta", nft::REF_BETA),
                adv_clip_max: params.take("adv_clip_max", advantages::CLIP),
                decay_rate: params.take("decay_rate", nft::DECAY_RATE),
                max_decay: params.take("max_decay", nft::MAX_DECAY),
            },
            "ddpo" => Self::Ddpo {
                clip_range: params.take("clip_range", grpo::CLIP_RANGE),
                adv_clip_max: params.take("adv_clip_max", advantages::CLIP),
            },
            other => bail!("{other:?} is not an online method ({})", NAMES.join(", ")),
        };
        let known: &[&str] = match method {
            Self::Grpo { .. } => &["clip_range", "kl_beta", "adv_clip_max"],
            Self::Nft { .. } => &["beta", "ref_beta", "adv_clip_max", "decay_rate", "max_decay"],
            Self::Ddpo { .. } => &["clip_range", "adv_clip_max"],
        };
        params.finish(name, known)?;
        method.check()?;
        Ok(method)
    }

    fn check(&self) -> Result<()> {
        match *self {
            Self::Grpo { clip_range, kl_beta, adv_clip_max } => {
                ensure!(clip_range > 0.0 && clip_range < 1.0, "grpo: clip_range {clip_range} must be in (0, 1)");
                ensure!(kl_beta >= 0.0, "grpo: kl_beta {kl_beta} must be ≥ 0");
                ensure!(adv_clip_max > 0.0, "grpo: adv_clip_max {adv_clip_max} must be > 0");
            }
            Self::Nft { beta, ref_beta, adv_clip_max, decay_rate, max_decay } => {
                ensure!(beta > 0.0, "nft: beta {beta} must be > 0");
                ensure!(ref_beta >= 0.0, "nft: ref_beta {ref_beta} must be ≥ 0");
                ensure!(adv_clip_max > 0.0, "nft: adv_clip_max {adv_clip_max} must be > 0");
                ensure!(decay_rate >= 0.0, "nft: decay_rate {decay_rate} must be ≥ 0");
                ensure!((0.0..1.0).contains(&max_decay), "nft: max_decay {max_decay} must be in [0, 1)");
            }
            Self::Ddpo { clip_range, adv_clip_max } => {
                ensure!(clip_range > 0.0 && clip_range < 1.0, "ddpo: clip_range {clip_range} must be in (0, 1)");
                ensure!(adv_clip_max > 0.0, "ddpo: adv_clip_max {adv_clip_max} must be > 0");
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Grpo { .. } => "grpo",
            Self::Nft { .. } => "nft",
            Self::Ddpo { .. } => "ddpo",
        }
    }

    pub fn adv_clip_max(&self) -> f64 {
        match *self {
            Self::Grpo { adv_clip_max, .. } | Self::Nft { adv_clip_max, .. } | Self::Ddpo { adv_clip_max, .. } => {
                adv_clip_max
            }
        }
    }

    /// Whether training compares with the frozen reference (GRPO's KL, NFT's velocity penalty).
    pub fn uses_reference(&self) -> bool {
        match *self {
            Self::Grpo { kl_beta, .. } => kl_beta > 0.0,
            Self::Nft { ref_beta, .. } => ref_beta > 0.0,
            Self::Ddpo { .. } => false,
        }
    }
}
