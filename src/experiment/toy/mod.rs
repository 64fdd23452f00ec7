//! The built-in experiment's wiring: the pretraining of its reference model
//! (`pretrain`), its evaluation during training (`eval`) and its sample grid (`grid`). The
//! generator, model and scorer it uses are `crate::toy`'s.

pub mod eval;
pub mod grid;
pub mod pretrain;
