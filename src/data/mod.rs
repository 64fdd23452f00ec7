//! Preference data: the built-in experiment's generated images and captions.

pub mod toy;
pub mod words;
