//! The built-in experiment's lower half: its generated data (`data`, `words`), its tiny
//! model and text conditioning (`model`), and its transparent pixel scorer (`score`). It
//! imports only the foundation; the pretraining, evaluation and report wiring that use the
//! trainer live in `experiment::toy`.

pub mod data;
pub mod model;
pub mod score;
pub mod words;
