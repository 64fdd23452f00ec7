//! Judging samples: reward models behind the `Scorer` trait (with the exact preprocessing
//! they were trained with), prompt suites, and `mapo eval`'s comparison of model variants.
//! The report that compares training runs is the experiment's (`experiment::report`).

pub mod aesthetic;
pub mod compare;
pub mod images;
pub mod made_with;
pub mod metrics;
pub mod plot;
pub mod preprocess;
pub mod resize;
pub mod scorer;
pub mod stats;
pub mod suite;
pub mod toy;
