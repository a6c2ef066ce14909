//! The oracles of the fuzz targets (shared with `tests/fuzz_smoke.rs`) and the allocation guard
//! every target runs under.

#[path = "checks.rs"]
pub mod checks;

#[global_allocator]
static GUARD: checks::Guard = checks::Guard;
