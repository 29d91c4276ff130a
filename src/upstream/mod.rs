//! Upstream registry client (placeholder; being built).
