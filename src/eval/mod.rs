//! Scoring samples and comparing runs: the built-in experiment's scorer, reports, plots.

pub mod backends;
pub mod plot;
pub mod report;
