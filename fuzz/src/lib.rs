//! Fuzz targets live in `tests/targets.rs`, one `#[test]` each; their
//! corpora are kept beside them in `tests/__fuzz__/`.
