//! The online methods' pieces (docs/design.md §4c): per-group advantages from rewards, and
//! the GRPO and DiffusionNFT losses on what a rollout kept. Their inputs are not per-row
//! errors of pairs, so they sit beside the offline methods' trait rather than behind it.

pub mod advantages;
pub mod grpo;
pub mod nft;
