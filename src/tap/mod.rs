//! The log tap.

pub mod logstream;
