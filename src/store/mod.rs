//! Content-addressed store (placeholder; being built).
