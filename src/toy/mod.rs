//! The built-in experiment's pieces, in one place: its generated data (`data`, `words`),
//! the pretraining of its reference and the experiment wiring (`experiment`), its
//! transparent scorer (`score`) and evaluation (`eval`), and its sample grid (`grid`).
//! The models, losses and trainer it runs are the library's own.

pub mod data;
pub mod eval;
pub mod experiment;
pub mod grid;
pub mod score;
pub mod words;
