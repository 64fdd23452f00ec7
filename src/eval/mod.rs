//! Judging samples and comparing runs: reward models behind the `Scorer` trait (with the
//! exact preprocessing they were trained with), reports and plots.

pub mod aesthetic;
pub mod backends;
pub mod compare;
pub mod images;
pub mod metrics;
pub mod plot;
pub mod preprocess;
pub mod report;
pub mod resize;
pub mod scorer;
pub mod stats;
pub mod suite;
