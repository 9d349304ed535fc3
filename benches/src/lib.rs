//! Shared helpers for the ferrocat benchmarks.
